"""Fixtures for the export tests: real checkpoints, one shared 64 px export, a parity helper.

The checkpoints hold a randomly initialised FusionNet whose BatchNorm running statistics were
measured on real Harvard training pairs (a forward pass in train mode), so activations have the
scale a trained model's have; random BN statistics (mean 0, variance 1) would give a nearly
constant output that any export matches trivially. The statistics are measured at 256 px, the size
the design trains at: measured at 64 px they left the 256 px network so ill-conditioned that PyTorch
FP32 itself was 2e-4 away from a float64 run, more than the ONNX FP32 tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner, Result

from fuse_export.cli import main
from fuse_export.onnx_export import cpu_session
from fuse_export.parity import Samples, load_samples
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, OUTPUT
from fuse_runtime.pairing import find_pairs, load_pair
from fuse_runtime.preprocess import PreprocessConfig, prepare_pair
from fuse_train.checkpoint import load_model, save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

SIZE = 64
CALIBRATION_SIZE = 256
CALIBRATION_PAIRS = 8


@dataclass
class Export:
    """One fuse-export run: its folder, the CLI result and the checkpoint it came from."""

    out: Path
    result: Result
    checkpoint: Path


def calibrated_model(modalities: tuple[str, str], train_dir: Path) -> FusionNet:
    """A random FusionNet whose BatchNorm statistics come from real pairs at CALIBRATION_SIZE px."""
    torch.manual_seed(0)
    model = FusionNet(modalities=modalities, imagenet=False)
    report = find_pairs(train_dir)
    config = PreprocessConfig(image_size=CALIBRATION_SIZE)
    prepared = [
        prepare_pair(*load_pair(p), p.roles, config) for p in report.pairs[:: len(report.pairs) // CALIBRATION_PAIRS]
    ]
    first = torch.from_numpy(np.concatenate([p.first for p in prepared]))
    second = torch.from_numpy(np.concatenate([p.second for p in prepared]))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(first, second)
    return model.eval()


@pytest.fixture(scope="session")
def ct_mri_checkpoint(tmp_path_factory: pytest.TempPathFactory, harvard_train: Path) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, calibrated_model(("ct", "mri"), harvard_train), TrainConfig(), epoch=3, val_loss=8.5)
    return path


@pytest.fixture(scope="session")
def vis_ir_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt-visir") / "best.pt"
    torch.manual_seed(1)
    model = FusionNet(modalities=("vis", "ir"), imagenet=False)
    save_checkpoint(path, model, TrainConfig(task="vis-ir"), epoch=1, val_loss=None)
    return path


@pytest.fixture(scope="session")
def torch_model(ct_mri_checkpoint: Path) -> FusionNet:
    model, _, _ = load_model(ct_mri_checkpoint)
    return model


@pytest.fixture(scope="session")
def export_64(tmp_path_factory: pytest.TempPathFactory, ct_mri_checkpoint: Path, harvard_test: Path) -> Export:
    """``fuse-export --fp16`` at 64 px: on this CPU-only machine it writes everything but model.plan."""
    out = tmp_path_factory.mktemp("export64") / "out"
    args = ["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--fp16", "--image-size", str(SIZE),
            "--parity-data", str(harvard_test), "--batch", "1,2,4"]
    return Export(out, run_cli(args), ct_mri_checkpoint)


@pytest.fixture(scope="session")
def samples_64(harvard_test: Path) -> Samples:
    """Eight real test pairs preprocessed at 64 px by fuse_runtime, as serving does."""
    return load_samples(harvard_test, replace(PreprocessConfig(), image_size=SIZE), 8)


@pytest.fixture(scope="session")
def cli() -> Callable[[list[str]], Result]:
    """Run ``fuse-export`` in-process with the given arguments; returns click's Result."""
    return run_cli


@pytest.fixture(scope="session")
def reference() -> Callable[[FusionNet, np.ndarray, np.ndarray], np.ndarray]:
    """PyTorch FP32 output of a model for ``ct`` [N,3,S,S] and ``mri`` [N,1,S,S]: the parity baseline."""
    return torch_reference


@pytest.fixture(scope="session")
def run_model() -> Callable[[Path, np.ndarray, np.ndarray], np.ndarray]:
    """Run an exported ONNX file on the CPU with ONNX Runtime; one session per file, reused."""
    sessions: dict[Path, ort.InferenceSession] = {}

    def run(path: Path, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        if path not in sessions:
            sessions[path] = cpu_session(path)
        return sessions[path].run([OUTPUT], {INPUT_FIRST: ct, INPUT_SECOND: mri})[0]

    return run


def run_cli(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def torch_reference(model: FusionNet, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ct), torch.from_numpy(mri)).numpy()
