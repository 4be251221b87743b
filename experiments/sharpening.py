"""What sharpening pixel max costs on each metric: everywhere, or only on strong edges.

    python -m experiments.sharpening --data VALDIR --out R

writes ``R/sharpening.json`` (per rule: per pair and mean) and ``R/sharpening.md``. Each rule is
pixel max of the two sources plus ``amount × (max − Gaussian blur of max)`` (unsharp masking,
sigma 1 px), added everywhere or only where the Sobel strength of pixel max exceeds an edge threshold
(gray levels, plain 3×3 kernel). SF rises with either; the table shows how much MI, VIF and SSIM each
costs, which is what ``fuse-train --detail-gain-edge`` carries over into the loss. No model is
involved; use it on validation patients (``scripts/validation_folder.py``), not on the test folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from benchmarks.quality import read_gray8
from benchmarks.report import markdown_table, write_report
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import find_pairs

REPORT_STEM = "sharpening"
JSON_NAME = f"{REPORT_STEM}.json"
MARKDOWN_NAME = f"{REPORT_STEM}.md"
METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
BLUR_SIGMA = 1.0
"""Gaussian sigma (pixels) of the unsharp mask's blur."""


@dataclass(frozen=True)
class SharpenRule:
    """Unsharp masking of pixel max by ``amount``, only where its Sobel strength exceeds ``edge`` (0: everywhere)."""

    amount: float
    edge: float = 0.0

    @property
    def label(self) -> str:
        where = f"Sobel > {self.edge:g}" if self.edge > 0 else "everywhere"
        return "pixel max" if self.amount == 0 else f"max + {self.amount:g}·unsharp, {where}"


DEFAULT_RULES: tuple[SharpenRule, ...] = (
    SharpenRule(0.0),
    SharpenRule(0.3), SharpenRule(0.3, 300.0),
    SharpenRule(0.6), SharpenRule(0.6, 300.0),
    SharpenRule(1.0), SharpenRule(1.0, 100.0), SharpenRule(1.0, 300.0),
)


def sharpen_max(ct: np.ndarray, mri: np.ndarray, rule: SharpenRule) -> np.ndarray:
    """Pixel max of two 8-bit gray images (float in [0, 255]) sharpened by ``rule``, quantised to 8 bits."""
    fused = np.maximum(ct, mri).astype(np.float64)
    detail = fused - cv2.GaussianBlur(fused, (0, 0), BLUR_SIGMA)
    if rule.edge > 0:
        strength = np.hypot(cv2.Sobel(fused, cv2.CV_64F, 1, 0), cv2.Sobel(fused, cv2.CV_64F, 0, 1))
        detail = detail * (strength > rule.edge)
    return np.clip(np.round(fused + rule.amount * detail), 0.0, metrics.PEAK)


def run_sharpening(data: str | Path, rules: tuple[SharpenRule, ...] = DEFAULT_RULES, progress: bool = False) -> dict:
    """Score every rule on every CT/MRI pair of ``data``; per rule: per pair and mean of :data:`METRICS`."""
    report = find_pairs(data, task="ct-mri")
    if not report.pairs:
        raise FuseError("no CT/MRI pairs found", data)
    per_rule: dict[str, dict[str, dict[str, float]]] = {rule.label: {} for rule in rules}
    for pair in tqdm(report.pairs, desc="sharpening", unit="pair", disable=not progress):
        ct, mri = read_gray8(pair.first), read_gray8(pair.second)
        for rule in rules:
            scores = metrics.evaluate(ct, mri, sharpen_max(ct, mri, rule))
            per_rule[rule.label][pair.name] = {name: scores[name] for name in METRICS}
    means = {
        label: {name: float(np.mean([row[name] for row in rows.values()])) for name in METRICS}
        for label, rows in per_rule.items()
    }
    return {"data": str(data), "pairs": len(report.pairs), "per_pair": per_rule, "mean": means}


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of registered CT/MRI pairs (CT/ and MRI/), e.g. from scripts/validation_folder.py.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the report.")
def main(data: Path, out: Path) -> None:
    """Score pixel max sharpened everywhere or only on strong edges (no model)."""
    try:
        result = run_sharpening(data, progress=True)
    except FuseError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    rows = [[label, *(values[name] for name in METRICS)] for label, values in result["mean"].items()]
    text = (f"# Sharpened pixel max\n\n{result['pairs']} pairs of {data}; mean per rule\n\n"
            + markdown_table(["rule", *METRICS], rows, digits=3))
    click.echo("wrote {} and {}".format(*write_report(out, REPORT_STEM, result, text)))


if __name__ == "__main__":
    main()
