"""Shared fixtures: the real data under ../shared/data and markers for GPU-only tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FUSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.fail(
            f"test data folder {path} is missing: tests read the real images from ../shared/data "
            "(set FUSE_SHARED_DATA to point elsewhere)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def harvard_train() -> Path:
    return _require(SHARED_DATA / "harvard" / "ct-mri-train")


@pytest.fixture(scope="session")
def harvard_test() -> Path:
    return _require(SHARED_DATA / "harvard" / "ct-mri-test")


@pytest.fixture(scope="session")
def vis_ir() -> Path:
    return _require(SHARED_DATA / "vis-ir")
