"""DDP on the CPU: two gloo processes train on real pairs; rank 0 writes, both end with one model."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet
from fuse_train.trainer import RunOptions, run_training

WORLD_SIZE = 2
DEADLINE_S = 300

# Epoch 1 with frozen encoders, epoch 2 unfrozen: the DDP wrapper is rebuilt when the frozen set
# changes, and the encoders' gradients must then be averaged over both ranks too. Three validation
# patients (one image each) at batch 1 give the ranks 2 and 1 validation batches: uneven shards.
CONFIG = TrainConfig(
    crop_size=64,
    preprocess=PreprocessConfig(image_size=64),
    epochs=2,
    freeze_encoder_epochs=1,
    warmup_epochs=0,
    lr=1e-3,
    max_pairs=8,
    val_fraction=0.35,
    batch_size=1,
    imagenet=False,
    precision="fp32",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, data: str, out: str, results: str) -> None:
    """One torchrun-like process: the environment torchrun would set, then the ordinary entry point."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE)
    )
    torch.set_num_threads(1)
    lines: list[str] = []
    result = run_training(CONFIG, RunOptions(Path(data), Path(out), device="cpu", progress=False), lines.append)
    torch.save(
        {"state": result.model.state_dict(), "history": result.history, "lines": lines},
        Path(results) / f"rank{rank}.pt",
    )


def test_two_cpu_processes_train_one_model(harvard_train, tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    context = mp.spawn(
        _worker,
        args=(_free_port(), str(harvard_train), str(out), str(results)),
        nprocs=WORLD_SIZE,
        join=False,
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            raise AssertionError(f"the DDP run did not finish within {DEADLINE_S} s")
    try:
        _check(out, results)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check(out: Path, results: Path) -> None:
    ranks = [torch.load(results / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]

    assert {"best.pt", "last.pt", "config.json", "history.json", "history.csv", "history.png"} <= {
        p.name for p in out.iterdir()
    }
    assert any(line.startswith("epoch   2/2") for line in ranks[0]["lines"])
    assert ranks[1]["lines"] == [], "only rank 0 prints"
    assert any("cpu ×2" in line for line in ranks[0]["lines"])

    # Metrics are all-reduced: both ranks saw the same losses.
    for mine, theirs in zip(ranks[0]["history"], ranks[1]["history"]):
        assert mine["train_loss"] == theirs["train_loss"] and mine["val_loss"] == theirs["val_loss"]

    # Identical weights (and BatchNorm statistics) on both ranks after the last step...
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    assert state0.keys() == state1.keys()
    for key in state0:
        assert torch.equal(state0[key], state1[key]), f"{key} differs between ranks"

    # ...and they did train: encoders (unfrozen in epoch 2) and decoder moved from the seeded start.
    torch.manual_seed(CONFIG.seed)
    start = FusionNet(imagenet=False).state_dict()
    for key in (
        "ct_encoder.conv1.weight",
        "mri_encoder.layer1.0.conv1.weight",
        "fusion1.fusion_conv.0.weight",
        "decoder1.0.weight",
        "medical_attention.0.weight",
    ):
        assert not torch.equal(start[key], state0[key]), f"{key} did not move"
    moved = [k for k in start if k.endswith("weight") and not torch.equal(start[k], state0[k])]
    assert len(moved) > 0.9 * sum(k.endswith("weight") for k in start)

    # rank 0's checkpoint is the model both ranks hold
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["run"]["world_size"] == WORLD_SIZE
    for key, value in last["model"].items():
        assert torch.equal(value, state0[key]), key
