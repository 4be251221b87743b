"""Where a fused image departs from the pixel maximum of its sources, region by region.

    python -m experiments.departure --data VALDIR --checkpoint RUN/best.pt --out R
    python -m experiments.departure --data VALDIR --engine OUT/model.onnx --out R

writes ``R/departure.json`` (per pair and mean) and ``R/departure.md``. Pixel max keeps MI and VIF
highest of all methods on CT–MRI, so a model that scores lower there departs from it somewhere; this
says where, in 8-bit gray levels, on the same protocol as ``benchmarks.quality`` (sources read as
8-bit gray, the fused image quantised and reduced to luminance):

* ``background nonzero``: share of the pixels where both sources are 0 (air, outside the field of
  view) that the fused image does not leave at 0 — the SSIM of the tables punishes each one heavily;
* ``foreground bias`` / ``foreground abs``: mean signed / absolute ``fused − max`` where a source is
  non-zero;
* ``saturated CT bias``: the same inside saturated CT (CT = 255, eroded by 2 pixels: dense bone),
  where the CT has no edge and the MRI's edges can only be drawn by leaving 255;
* ``MRI edges in saturated CT``: mean Sobel strength of the MRI there (what an edge-preserving loss
  asks the fused image to copy).

Use it on validation patients (``scripts/validation_folder.py``), not on the test folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from benchmarks.quality import model_method, read_gray8
from benchmarks.report import markdown_table, write_report
from experiments.options import model_diagnostic_options
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import find_pairs

REPORT_STEM = "departure"
JSON_NAME = f"{REPORT_STEM}.json"
MARKDOWN_NAME = f"{REPORT_STEM}.md"
SATURATED_EROSION = 2
"""Pixels peeled off the saturated-CT mask, so its edge (where the CT does have a gradient) is left out."""
FIELDS: tuple[str, ...] = (
    "background nonzero", "foreground bias", "foreground abs", "saturated CT bias", "MRI edges in saturated CT",
)


def departure(ct: np.ndarray, mri: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """The :data:`FIELDS` of one pair; all three images 8-bit gray as float in [0, 255], one shape.

    A field whose region is empty (no background, no saturated CT) is NaN.
    """
    if not ct.shape == mri.shape == fused.shape or ct.ndim != 2:
        raise FuseError(f"ct, mri and fused must be [H,W] of one shape, got {ct.shape}, {mri.shape}, {fused.shape}")
    reference = np.maximum(ct, mri)
    background = reference == 0
    difference = fused - reference
    saturated = ndimage.binary_erosion(ct >= metrics.PEAK, iterations=SATURATED_EROSION)
    mri_edges = np.hypot(ndimage.sobel(mri, axis=1), ndimage.sobel(mri, axis=0))
    return {
        "background nonzero": _mean(fused[background] > 0),
        "foreground bias": _mean(difference[~background]),
        "foreground abs": _mean(np.abs(difference[~background])),
        "saturated CT bias": _mean(difference[saturated]),
        "MRI edges in saturated CT": _mean(mri_edges[saturated]),
    }


def run_departure(data: str | Path, checkpoint: Path | None, engine: Path | None, progress: bool = False) -> dict:
    """Fuse every pair in ``data`` with the model and measure :func:`departure`; per pair and mean."""
    method = model_method(checkpoint, engine, data)
    report = find_pairs(data, task="ct-mri")
    per_pair = {}
    try:
        for pair in tqdm(report.pairs, desc="departure", unit="pair", disable=not progress):
            ct, mri = read_gray8(pair.first), read_gray8(pair.second)
            fused = np.round(metrics.luminance(method.fuse(pair, ct, mri)))
            per_pair[pair.name] = departure(ct, mri, fused)
    finally:
        if method.close is not None:
            method.close()
    mean = {name: float(np.nanmean([row[name] for row in per_pair.values()])) for name in FIELDS}
    return {"method": method.label, "data": str(data), "pairs": per_pair, "mean": mean}


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


@click.command()
@model_diagnostic_options
def main(data: Path, checkpoint: Path | None, engine: Path | None, out: Path) -> None:
    """Measure where the model's fused images depart from pixel max (background, foreground, dense bone)."""
    try:
        result = run_departure(data, checkpoint, engine, progress=True)
    except FuseError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    rows = [[name, result["mean"][name]] for name in FIELDS]
    text = (f"# Departure from pixel max: {result['method']}\n\n{len(result['pairs'])} pairs of {data}; gray levels "
            f"(background nonzero: share of pixels)\n\n" + markdown_table(["measure", "mean"], rows, digits=3))
    click.echo("wrote {} and {}".format(*write_report(out, REPORT_STEM, result, text)))


if __name__ == "__main__":
    main()
