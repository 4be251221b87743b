"""Registered CT/MRI pairs read and preprocessed exactly as serving does, for parity, calibration and
latency inputs: the one sample loader of fuse_export.

``fuse_runtime.pairing.find_pairs`` → ``pipeline.read_pair`` (fuse-run's reader) with the model's own
PreprocessConfig. Pairs are picked evenly over the folder's pairs sorted by name; a volume gives its
middle slice (``slices="middle"``) or every slice (``slices="all"``, taken in order until ``count``).
A slice of a volume is named ``pair[index]``, a 2-D pair by its name. A pair that cannot be read is
skipped and listed in ``Samples.skipped``; FuseError only when no pair can be used.

benchmarks can reuse it: ``load_samples(folder, preprocess, count, purpose="for the latency inputs",
spread=False, slices="all")`` gives the first ``count`` slices in name order.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import find_pairs
from fuse_runtime.phantoms import write_phantoms
from fuse_runtime.pipeline import read_pair
from fuse_runtime.preprocess import PreprocessConfig


@dataclass
class Samples:
    """Preprocessed inputs: ``ct`` [N,3,S,S], ``mri`` [N,1,S,S] float32 in [0,1], one name each."""

    names: list[str]
    ct: np.ndarray
    mri: np.ndarray
    source: str
    skipped: list[str] = field(default_factory=list)


def default_parity_dir() -> Path | None:
    """``../shared/data/harvard/ct-mri-test`` beside the repository (or under $FUSE_SHARED_DATA), if present."""
    shared = os.environ.get("FUSE_SHARED_DATA")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared" / "data"
    candidate = base / "harvard" / "ct-mri-test"
    return candidate if candidate.is_dir() else None


def load_samples(
    directory: str | Path | None,
    config: PreprocessConfig,
    count: int,
    purpose: str = "for the parity check",
    hint: str = "",
    spread: bool = True,
    slices: Literal["middle", "all"] = "middle",
) -> Samples:
    """Preprocess up to ``count`` samples of the pairs in ``directory`` (see the module docstring).

    ``directory`` None: the Harvard test pairs when present (``default_parity_dir``), else synthetic
    phantoms written to a temporary folder. ``spread``: pick pairs evenly over the folder (else the
    first ones by name). ``purpose`` and ``hint`` complete the FuseError raised when no pair is usable.
    """
    if directory is None:
        directory = default_parity_dir()
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="fuse-samples-") as tmp:
            samples = _load(write_phantoms(Path(tmp)), config, count, purpose, hint, spread, slices)
        samples.source = "synthetic phantoms (fuse_runtime.phantoms; no ../shared/data here)"
        return samples
    return _load(Path(directory), config, count, purpose, hint, spread, slices)


def _load(
    directory: Path, config: PreprocessConfig, count: int, purpose: str, hint: str, spread: bool, slices: str
) -> Samples:
    try:
        report = find_pairs(directory, task="ct-mri")
    except FuseError as error:
        raise FuseError(f"no usable CT/MRI pair {purpose} ({error.reason}){hint}", directory) from None
    problems = [str(p) for p in report.problems]
    total = len(report.pairs)
    order = (
        np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
        if spread and total
        else range(total)
    )
    names: list[str] = []
    cts, mris = [], []
    for index in order:
        if len(names) >= count:
            break
        pair = report.pairs[int(index)]
        try:
            _, prepared, _ = read_pair(pair, config, native=False)
        except FuseError as error:
            problems.append(str(error))
            continue
        depth = len(prepared.first)
        picks = [depth // 2] if slices == "middle" else list(range(min(depth, count - len(names))))
        for i in picks:
            names.append(pair.name if depth == 1 else f"{pair.name}[{i}]")
            cts.append(prepared.first[i])
            mris.append(prepared.second[i])
    if not names:
        found = "; ".join(problems[:3]) or "no CT/ + MRI/ folders, DICOM series or NIfTI cases found"
        raise FuseError(f"no usable CT/MRI pair {purpose} ({found}){hint}", directory)
    skipped = problems[len(report.problems) :]
    return Samples(names, np.stack(cts).astype(np.float32), np.stack(mris).astype(np.float32), str(directory), skipped)
