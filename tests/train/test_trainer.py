"""The training loop on real pairs: the loss goes down, the run directory, resume, and CLI errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fuse_runtime.cpu_features import has_native_bf16
from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import read_checkpoint
from fuse_train.cli import main
from fuse_train.config import TrainConfig
from fuse_train.losses import COMPONENTS
from fuse_train.trainer import (
    EarlyStopping,
    RunOptions,
    resolve_precision,
    run_training,
)

SIZE = 64

# lr 1e-3 rather than the design's 1e-5: at 1e-5 (warmed up over 3 epochs, encoders frozen) three
# epochs move the loss by less than its batch-to-batch noise, so "the loss goes down" would test
# nothing. No warm-up, no freezing and no augmentation for the same reason: a fixed training set.
FAST = dict(
    lr=1e-3, warmup_epochs=0, freeze_encoder_epochs=0, hflip_p=0.0, rotate_degrees=0.0, intensity_jitter=0.0,
    epochs=3, max_pairs=6, batch_size=5, checkpoint_every=2, imagenet=False, precision="fp32",
)


def small_config(**changes) -> TrainConfig:
    values = {"crop_size": SIZE, **FAST, **changes}
    return TrainConfig(preprocess=PreprocessConfig(image_size=SIZE), **values)


class Interrupted(Exception):
    """Raised from the echo callback to stop a run after a given epoch, as a crash would."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(harvard_train, workdir):
    """Three uninterrupted epochs on six real pairs (five patients train, one validates)."""
    lines: list[str] = []
    result = run_training(
        small_config(), RunOptions(harvard_train, workdir / "ref", device="cpu", progress=False), lines.append
    )
    return result, lines


def test_a_short_run_lowers_the_training_loss(reference):
    result, lines = reference
    losses = [record["train_loss"] for record in result.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    summaries = [line for line in lines if line.startswith("epoch ")]
    assert len(summaries) == 3
    assert all("images/s" in line and "s/epoch" in line and "val " in line for line in summaries)


def test_the_run_directory_holds_checkpoints_history_and_config(reference):
    result, _ = reference
    run = result.run_dir
    names = {p.name for p in run.iterdir()}
    assert {"best.pt", "last.pt", "epoch_002.pt", "config.json", "history.json", "history.csv", "history.png"} <= names
    assert not any(name.startswith(".") for name in names), "temporary files were left behind"
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == result.config

    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    expected = {"train_loss", "val_loss", "seconds", "images_per_s", "lr_encoder", "lr_fusion", "lr_decoder"}
    expected |= {f"{side}_{name}" for side in ("train", "val") for name in COMPONENTS[:6]}
    assert expected <= set(history[0])
    assert not {f"train_{name}" for name in COMPONENTS[6:]} & set(history[0]), "a metric term of weight 0 was computed"
    csv_lines = (run / "history.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "val_medical" in csv_lines[0]
    assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for record in history:  # lr of each group during the epoch: cosine from the start (no warm-up)
        factor = 0.5 * (1 + math.cos(math.pi * (record["epoch"] - 1) / 3))
        assert record["lr_decoder"] == pytest.approx(1e-3 * factor)
        assert record["lr_encoder"] == pytest.approx(1e-4 * factor)

    best = read_checkpoint(run / "best.pt")
    assert best["epoch"] == result.best_epoch and best["val_loss"] == pytest.approx(result.best_val_loss)
    assert "training" not in best
    assert best["run"]["val_groups"] == result.data.val_groups
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and set(last["training"]) >= {"optimizer", "scheduler", "scaler", "early_stopping", "rng"}


def test_resume_continues_where_the_run_stopped(reference, harvard_train, workdir):
    result, _ = reference
    out = workdir / "interrupted"

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch   2/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        run_training(small_config(), RunOptions(harvard_train, out, device="cpu", progress=False), stop_after_two)
    assert read_checkpoint(out / "last.pt")["epoch"] == 2

    lines: list[str] = []
    resumed = run_training(
        small_config(), RunOptions(harvard_train, out, resume=True, device="cpu", progress=False), lines.append
    )
    assert any(line.startswith("resuming") and "after epoch 2" in line for line in lines)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["3/3"]
    for ours, theirs in zip(resumed.history, result.history):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert ours["lr_decoder"] == pytest.approx(theirs["lr_decoder"])
    reference_state = result.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.allclose(value.float(), reference_state[key].float(), rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize(
    "losses, stop_after",
    [([5, 4, 3, 2, 1], None), ([5, 6, 7], 3), ([5, 4, 4.5, 3.9, 6, 7], 6), ([3, 3, 3], 3)],
)
def test_early_stopping_after_patience_epochs_without_improvement(losses, stop_after):
    stopper = EarlyStopping(patience=2)
    stopped = None
    for epoch, loss in enumerate(losses, start=1):
        stopper.update(loss, epoch)
        if stopper.should_stop:
            stopped = epoch
            break
    assert stopped == stop_after
    assert stopper.best == min(losses[: stopped or len(losses)])


def test_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    for epoch in range(1, 50):
        stopper.update(float(epoch), epoch)
    assert not stopper.should_stop and stopper.best_epoch == 1


@pytest.mark.parametrize(
    "requested, dtype, scaler",
    [
        ("fp32", None, False),
        ("bf16", torch.bfloat16, False),
        ("auto", torch.bfloat16 if has_native_bf16() else None, False),
    ],
)
def test_precision_on_the_cpu(requested, dtype, scaler):
    precision = resolve_precision(requested, torch.device("cpu"))
    assert precision.dtype == dtype and precision.scaler is scaler


def test_fp16_needs_cuda():
    with pytest.raises(FuseError, match="CUDA"):
        resolve_precision("fp16", torch.device("cpu"))


def _existing_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    return run


def _json_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(text)
    return path


# (arguments builder, expected message fragment); every case must exit 2 with one line and no run dir.
CLI_ERRORS = {
    "missing data dir": (lambda t, d: ["--data", str(t / "nowhere"), "--out", str(t / "new")], "data folder not found"),
    "existing run dir": (lambda t, d: ["--data", str(d), "--out", str(_existing_run(t))], "already exists"),
    "no data or out": (lambda t, d: ["--epochs", "2"], "--data and --out are required"),
    "crop not multiple of 32": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--crop-size", "48"], "multiple of 32"
    ),
    "crop above model size": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--crop-size", "512"], "must not exceed"
    ),
    "val fraction": (lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--val-fraction", "1.5"], "val_fraction"),
    "fp16 on cpu": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--precision", "fp16", "--device", "cpu"],
        "needs a CUDA GPU",
    ),
    "missing config file": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--config", str(t / "none.json")],
        "cannot read the settings file",
    ),
    "config not json": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--config", str(_json_file(t, "{batch"))],
        "not valid JSON",
    ),
    "config unknown key": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--config", str(_json_file(t, '{"batchsize": 4}'))],
        "unknown training settings",
    ),
    "missing init": (
        lambda t, d: ["--data", str(d), "--out", str(t / "new"), "--init", str(t / "visir.pt")], "not found"
    ),
    "resume without last.pt": (lambda t, d: ["--resume", str(_existing_run(t))], "checkpoint not found"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_errors_give_one_message_and_exit_code_2(tmp_path, harvard_train, case):
    build, fragment = CLI_ERRORS[case]
    result = CliRunner().invoke(main, [*build(tmp_path, harvard_train), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("fuse-train: error:"), result.stderr
    assert fragment in message[0]
    assert not (tmp_path / "new").exists()


def test_cli_resume_refuses_changed_settings(reference):
    result, _ = reference
    cli = CliRunner().invoke(main, ["--resume", str(result.run_dir), "--lr", "0.5"])
    assert cli.exit_code == 2 and "--lr" in cli.stderr and "Traceback" not in cli.output


def test_cli_resume_of_a_finished_run_has_nothing_to_do(reference):
    result, _ = reference
    cli = CliRunner().invoke(main, ["--resume", str(result.run_dir), "--no-progress", "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    assert "nothing to do" in cli.output
