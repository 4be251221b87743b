"""Fixtures shared by the benchmark tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.quality import read_gray8
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

#: The real test pair whose sources the rule-level tests fuse (it has saturated CT bone).
PAIR = "11"
#: The two real test pairs that the per-model diagnostics (departure, regions) are run on.
DIAGNOSTIC_PAIRS: tuple[str, ...] = (PAIR, "17")


@pytest.fixture(scope="session")
def pair_name() -> str:
    """The name of :data:`PAIR`, for tests that look it up in a report."""
    return PAIR


@pytest.fixture(scope="session")
def sources(harvard_test: Path) -> tuple[np.ndarray, np.ndarray]:
    """CT and MRI of :data:`PAIR`, 8-bit gray as float."""
    return read_gray8(harvard_test / "CT" / f"{PAIR}.png"), read_gray8(harvard_test / "MRI" / f"{PAIR}.png")


@pytest.fixture
def diagnostic_inputs(harvard_test: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A folder with :data:`DIAGNOSTIC_PAIRS` (CT/, MRI/) and an untrained select-head checkpoint (64 px)."""
    data = tmp_path / "data"
    for folder in ("CT", "MRI"):
        (data / folder).mkdir(parents=True)
        for name in DIAGNOSTIC_PAIRS:
            shutil.copy(harvard_test / folder / f"{name}.png", data / folder / f"{name}.png")
    torch.manual_seed(0)
    config = TrainConfig(crop_size=64, imagenet=False, head="select", preprocess=PreprocessConfig(image_size=64))
    checkpoint = save_checkpoint(
        tmp_path / "best.pt", FusionNet(imagenet=False, head="select"), config, epoch=1, val_loss=1.0
    )
    return data, checkpoint
