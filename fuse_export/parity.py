"""Parity: how far each exported artifact's output is from PyTorch FP32 on real, preprocessed pairs.

Samples come from ``fuse_export.samples`` (read and preprocessed exactly as serving does, one 2-D
sample per pair: the middle slice of a volume). Every figure is computed per sample and the worst sample is
reported, so a tolerance holds for each pair, not just on average:

* ``max_abs``: largest |candidate − reference| over all pixels and channels, with where it is
  (sample, channel, row, column);
* ``mean_abs``: mean |difference| of the worst sample;
* ``psnr_db``: PSNR of the candidate against the reference, peak 1.0, worst sample (None: identical);
* ``metric_diff``: per fusion metric (``fuse_runtime.metrics.evaluate`` on the 8-bit gray images the
  literature uses), the largest |metric(candidate) − metric(reference)| over the samples. Reported,
  not gated: the pixel tolerances already bound it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fuse_export.config import Tolerances
from fuse_export.samples import Samples, default_parity_dir, load_samples
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError
from fuse_runtime.inference import infer_chunks

__all__ = [
    "FP16",
    "FP32",
    "Comparison",
    "Runner",
    "Samples",
    "compare",
    "default_parity_dir",
    "format_table",
    "limits_for",
    "load_samples",
    "metric_differences",
    "psnr_db",
    "run_batched",
    "sample_metrics",
]

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Runs a batch: ``ct`` float32 [N,3,S,S], ``mri`` [N,1,S,S] → ``fused`` float32 [N,3,S,S]."""

#: Candidate names → which tolerance family applies.
FP32 = "fp32"
FP16 = "fp16"


@dataclass
class Comparison:
    """One candidate against the PyTorch FP32 reference (see the module docstring)."""

    candidate: str
    precision: str
    max_abs: float
    max_abs_at: dict[str, Any]
    mean_abs: float
    mean_abs_sample: str
    psnr_db: float | None
    psnr_sample: str
    metric_diff: dict[str, float]
    limits: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "precision": self.precision,
            "max_abs": self.max_abs,
            "max_abs_at": self.max_abs_at,
            "mean_abs": self.mean_abs,
            "mean_abs_sample": self.mean_abs_sample,
            "psnr_db": self.psnr_db,
            "psnr_sample": self.psnr_sample,
            "metric_diff": self.metric_diff,
            "limits": self.limits,
            "passed": self.passed,
            "failures": self.failures,
        }


def run_batched(runner: Runner, samples: Samples, batch: int) -> np.ndarray:
    """Run ``runner`` over the samples in batches of at most ``batch`` (``fuse_runtime.inference.infer_chunks``);
    returns [N,3,S,S] float32."""
    return infer_chunks(runner, samples.ct, samples.mri, batch)


def compare(
    candidate: str,
    precision: str,
    reference: np.ndarray,
    output: np.ndarray,
    samples: Samples,
    tolerances: Tolerances,
    reference_metrics: Sequence[dict[str, float]] | None = None,
) -> Comparison:
    """Compare ``output`` with ``reference`` (both [N,3,S,S] in [0,1]) and apply the tolerances.

    ``precision`` ``fp32`` checks max abs only; ``fp16`` checks max abs, mean abs and PSNR. A failure
    message names the candidate, the output tensor, the sample and the pixel.
    """
    if output.shape != reference.shape:
        raise FuseError(f"{candidate} returned shape {output.shape}, PyTorch {reference.shape}")
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    n, channel, row, col = (int(v) for v in np.unravel_index(int(np.argmax(diff)), diff.shape))
    where = {"sample": samples.names[n], "channel": channel, "row": row, "col": col}
    per_mean = diff.reshape(len(diff), -1).mean(axis=1)
    per_mse = (diff.reshape(len(diff), -1) ** 2).mean(axis=1)
    worst_mean = int(np.argmax(per_mean))
    worst_psnr = int(np.argmax(per_mse))
    comparison = Comparison(
        candidate=candidate,
        precision=precision,
        max_abs=float(diff.max()),
        max_abs_at=where,
        mean_abs=float(per_mean[worst_mean]),
        mean_abs_sample=samples.names[worst_mean],
        psnr_db=psnr_db(float(per_mse[worst_psnr])),
        psnr_sample=samples.names[worst_psnr],
        metric_diff=metric_differences(samples, reference, output, reference_metrics),
        limits=limits_for(precision, tolerances),
    )
    comparison.failures = _failures(comparison)
    return comparison


def psnr_db(mse: float, peak: float = 1.0) -> float | None:
    """PSNR in dB for a mean squared error on data with the given peak; None when identical."""
    return None if mse <= 0.0 else 10.0 * math.log10(peak * peak / mse)


def limits_for(precision: str, tolerances: Tolerances) -> dict[str, float]:
    """The tolerance figures that apply to a candidate of ``precision`` (``fp32`` or ``fp16``)."""
    if precision == FP32:
        return {"max_abs": tolerances.fp32_max_abs}
    if precision == FP16:
        return {
            "max_abs": tolerances.fp16_max_abs,
            "mean_abs": tolerances.fp16_mean_abs,
            "psnr_db": tolerances.fp16_psnr_db,
        }
    raise ValueError(f"precision must be {FP32!r} or {FP16!r}, got {precision!r}")


def sample_metrics(samples: Samples, fused: np.ndarray) -> list[dict[str, float]]:
    """Fusion metrics of each sample's fused image (8-bit gray, as the literature's tables)."""
    results = []
    for index in range(len(samples.names)):
        ct8 = metrics.to_8bit(samples.ct[index, 0])
        mri8 = metrics.to_8bit(samples.mri[index, 0])
        fused8 = metrics.to_8bit(np.moveaxis(fused[index], 0, -1))
        results.append(metrics.evaluate(ct8, mri8, fused8))
    return results


def metric_differences(
    samples: Samples,
    reference: np.ndarray,
    output: np.ndarray,
    reference_metrics: Sequence[dict[str, float]] | None = None,
) -> dict[str, float]:
    """Per metric, the largest |metric(output) − metric(reference)| over the samples."""
    before = reference_metrics if reference_metrics is not None else sample_metrics(samples, reference)
    after = sample_metrics(samples, output)
    return {
        name: max(abs(a[name] - b[name]) for a, b in zip(after, before))
        for name in metrics.METRIC_NAMES
    }


def format_table(comparisons: Sequence[Comparison], samples: Samples, image_size: int) -> str:
    """A plain-text table of the comparisons, one row per candidate, worst sample for each figure."""
    header = (
        f"parity against PyTorch FP32 on {len(samples.names)} pairs at {image_size} px "
        f"({samples.source}); figures are the worst pair's"
    )
    columns = (
        f"{'candidate':<18} {'max abs':>9} {'mean abs':>9} {'PSNR dB':>8}  "
        f"{'largest metric diff':<22} {'limits':<34} result"
    )
    lines = [header, columns, "-" * len(columns)]
    for c in comparisons:
        psnr = "inf" if c.psnr_db is None else f"{c.psnr_db:.1f}"
        name, value = max(c.metric_diff.items(), key=lambda item: item[1]) if c.metric_diff else ("-", 0.0)
        limits = ", ".join(f"{_LIMIT_LABELS[key]} {val:g}" for key, val in c.limits.items())
        lines.append(
            f"{c.candidate:<18} {c.max_abs:>9.2e} {c.mean_abs:>9.2e} {psnr:>8}  "
            f"{f'{name} {value:.4f}':<22} {limits:<34} {'ok' if c.passed else 'FAIL'}"
        )
    return "\n".join(lines)


def _failures(c: Comparison) -> list[str]:
    where = c.max_abs_at
    failures = []
    if c.max_abs > c.limits["max_abs"]:
        failures.append(
            f"{c.candidate}: output 'fused' of pair {where['sample']} differs from PyTorch by "
            f"{c.max_abs:.3g} at channel {where['channel']}, row {where['row']}, column {where['col']} "
            f"(limit {c.limits['max_abs']:g})"
        )
    if "mean_abs" in c.limits and c.mean_abs > c.limits["mean_abs"]:
        failures.append(
            f"{c.candidate}: output 'fused' of pair {c.mean_abs_sample} has mean abs difference "
            f"{c.mean_abs:.3g} (limit {c.limits['mean_abs']:g}); its largest is at channel "
            f"{where['channel']}, row {where['row']}, column {where['col']} of pair {where['sample']}"
        )
    if "psnr_db" in c.limits and c.psnr_db is not None and c.psnr_db < c.limits["psnr_db"]:
        failures.append(
            f"{c.candidate}: output 'fused' of pair {c.psnr_sample} has PSNR {c.psnr_db:.1f} dB against "
            f"PyTorch (limit {c.limits['psnr_db']:g} dB)"
        )
    return failures


_LIMIT_LABELS = {"max_abs": "max≤", "mean_abs": "mean≤", "psnr_db": "PSNR≥"}
