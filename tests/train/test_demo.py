"""The demo's first run shows fusion: its model, trained exactly as scripts/demo.sh trains it, beats
pixel mean on edge transfer (Qabf) and spatial frequency (SF) on the phantoms, scored as the
benchmarks score (8-bit sources, fused output at the source size)."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fuse_runtime import Fuser, baselines, metrics
from fuse_runtime.pairing import find_pairs, load_pair
from fuse_runtime.phantoms import write_phantoms
from fuse_train.cli import main as train_main
from fuse_train.torch_engine import TorchEngine

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "scripts" / "demo.sh"
SHORTER = ("--epochs", "2")


def demo_train_args(samples: Path, run: Path) -> list[str]:
    """The options scripts/demo.sh gives fuse-train, with its folders replaced by ``samples`` and ``run``."""
    lines = [line for line in DEMO.read_text().splitlines() if line.strip().startswith(".venv/bin/fuse-train")]
    assert len(lines) == 1, "scripts/demo.sh should call fuse-train exactly once"
    args = shlex.split(lines[0].replace('"$OUT/samples"', str(samples)).replace('"$OUT/run"', str(run)))[1:]
    return [str(REPO_ROOT / a) if a.startswith("configs/") else a for a in args]


def test_demo_trains_with_the_release_recipe_select_head() -> None:
    args = demo_train_args(Path("S"), Path("R"))
    assert args[args.index("--config") + 1].endswith("configs/release/ctmri.json")
    assert "--head" not in args  # the release recipe's select head
    assert args[args.index("--data") + 1] == "S" and args[args.index("--out") + 1] == "R"


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    samples = write_phantoms(folder / "samples")
    # The demo's recipe, two of its epochs (the select head fuses from the first step; later epochs refine).
    # One thread: at 96 px crops a second OpenMP thread mostly spins (measured ~5x the CPU time on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(train_main, [*demo_train_args(samples, folder / "run"), *SHORTER, "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.pt"


def test_the_demo_model_fuses_better_than_pixel_mean(demo_model: Path, tmp_path: Path) -> None:
    samples = write_phantoms(tmp_path / "samples")
    ours, mean = [], []
    with Fuser(TorchEngine.from_checkpoint(demo_model)) as fuser:
        for pair in find_pairs(samples / "png").pairs:
            ct, mri = load_pair(pair)
            fused = fuser.fuse(ct, mri).astype(np.float64)
            blend = metrics.to_8bit(baselines.BASELINES["mean"](ct.pixels / 255.0, mri.pixels / 255.0))
            ours.append(metrics.evaluate(ct.pixels, mri.pixels, fused))
            mean.append(metrics.evaluate(ct.pixels, mri.pixels, blend))
    assert len(ours) == 4
    for name in ("Qabf", "SF"):
        model_score = np.mean([scores[name] for scores in ours])
        mean_score = np.mean([scores[name] for scores in mean])
        assert model_score > 1.2 * mean_score, (name, model_score, mean_score)
