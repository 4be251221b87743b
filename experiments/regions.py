"""Which region of the fused image wins or loses each metric: inside saturated CT bone, or outside it.

    python -m experiments.regions --data VALDIR --checkpoint RUN/best.pt --out R

writes ``R/regions.json`` (per rule: per pair and mean) and ``R/regions.md``. Each rule composes two
images: one inside the bone mask (CT at or above :data:`SATURATED_CT`, grown by one pixel so the
bone's own edge belongs to it) and one outside it. The parts are the model's fused image, pixel max,
pixel max sharpened on strong edges (:mod:`experiments.sharpening`'s rule) and pixel max moved half
way to the model. Swapping one region at a time shows which metrics the model's output there buys and
which it costs. Use it on validation patients (``scripts/validation_folder.py``), not on the test folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from benchmarks.quality import model_method, read_gray8
from benchmarks.report import markdown_table, write_report
from experiments.options import model_diagnostic_options
from experiments.sharpening import SharpenRule, sharpen_max
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import find_pairs

REPORT_STEM = "regions"
JSON_NAME = f"{REPORT_STEM}.json"
MARKDOWN_NAME = f"{REPORT_STEM}.md"
METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
SATURATED_CT = 250.0
"""8-bit CT level at and above which a pixel counts as saturated (dense) bone."""
SHARPENING = SharpenRule(amount=1.0, edge=300.0)
"""The strong-edge unsharp mask of the "sharpened max" part."""
PARTS: tuple[str, ...] = ("model", "max", "sharpened max", "half model")


@dataclass(frozen=True)
class RegionRule:
    """Part ``inside`` within the bone mask, part ``outside`` elsewhere (each one of :data:`PARTS`)."""

    inside: str
    outside: str

    @property
    def label(self) -> str:
        if self.inside == self.outside:
            return self.inside
        return f"{self.inside} in bone, {self.outside} elsewhere"


DEFAULT_RULES: tuple[RegionRule, ...] = (
    RegionRule("max", "max"),
    RegionRule("model", "model"),
    RegionRule("model", "max"),
    RegionRule("max", "model"),
    RegionRule("model", "sharpened max"),
    RegionRule("half model", "max"),
    RegionRule("half model", "sharpened max"),
)


def bone_mask(ct: np.ndarray) -> np.ndarray:
    """Pixels of saturated CT (≥ :data:`SATURATED_CT`) and their 8-neighbours, as bool ``[H,W]``."""
    return ndimage.binary_dilation(ct >= SATURATED_CT, structure=np.ones((3, 3), bool))


def compose(ct: np.ndarray, mri: np.ndarray, fused: np.ndarray, rule: RegionRule) -> np.ndarray:
    """The image of ``rule`` for one pair; all inputs 8-bit gray as float in [0, 255] of one shape."""
    if not ct.shape == mri.shape == fused.shape or ct.ndim != 2:
        raise FuseError(f"ct, mri and fused must be [H,W] of one shape, got {ct.shape}, {mri.shape}, {fused.shape}")
    inside, outside = _part(rule.inside, ct, mri, fused), _part(rule.outside, ct, mri, fused)
    return np.where(bone_mask(ct), inside, outside)


def run_regions(
    data: str | Path,
    checkpoint: Path | None,
    engine: Path | None,
    rules: tuple[RegionRule, ...] = DEFAULT_RULES,
    progress: bool = False,
) -> dict:
    """Fuse every pair of ``data`` with the model and score each rule; per rule: per pair and mean."""
    report = find_pairs(data, task="ct-mri")
    if not report.pairs:
        raise FuseError("no CT/MRI pairs found", data)
    method = model_method(checkpoint, engine, data)
    per_rule: dict[str, dict[str, dict[str, float]]] = {rule.label: {} for rule in rules}
    try:
        for pair in tqdm(report.pairs, desc="regions", unit="pair", disable=not progress):
            ct, mri = read_gray8(pair.first), read_gray8(pair.second)
            fused = np.round(metrics.luminance(method.fuse(pair, ct, mri)))
            for rule in rules:
                scores = metrics.evaluate(ct, mri, compose(ct, mri, fused, rule))
                per_rule[rule.label][pair.name] = {name: scores[name] for name in METRICS}
    finally:
        if method.close is not None:
            method.close()
    means = {
        label: {name: float(np.mean([row[name] for row in rows.values()])) for name in METRICS}
        for label, rows in per_rule.items()
    }
    return {"method": method.label, "data": str(data), "pairs": len(report.pairs), "per_pair": per_rule, "mean": means}


def _part(name: str, ct: np.ndarray, mri: np.ndarray, fused: np.ndarray) -> np.ndarray:
    if name == "model":
        return fused
    if name == "max":
        return np.maximum(ct, mri)
    if name == "sharpened max":
        return sharpen_max(ct, mri, SHARPENING)
    if name == "half model":
        return np.round((np.maximum(ct, mri) + fused) / 2.0)
    raise FuseError(f"unknown part {name!r}; use one of {', '.join(PARTS)}")


@click.command()
@model_diagnostic_options
def main(data: Path, checkpoint: Path | None, engine: Path | None, out: Path) -> None:
    """Score the model's output inside saturated CT bone and outside it, each swapped for pixel max."""
    try:
        result = run_regions(data, checkpoint, engine, progress=True)
    except FuseError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    rows = [[label, *(values[name] for name in METRICS)] for label, values in result["mean"].items()]
    text = (f"# Model output by region\n\n{result['method']} on {result['pairs']} pairs of {data}; "
            f"bone = CT ≥ {SATURATED_CT:g} grown by one pixel; mean per rule\n\n"
            + markdown_table(["rule", *METRICS], rows, digits=3))
    click.echo("wrote {} and {}".format(*write_report(out, REPORT_STEM, result, text)))


if __name__ == "__main__":
    main()
