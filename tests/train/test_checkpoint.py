"""Checkpoints: weights_only round trip, load_model, bad files, and the vis/ir → ct/mri initialisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import init_from_checkpoint, load_model, read_checkpoint, save_checkpoint
from fuse_train.cli import main
from fuse_train.config import TrainConfig
from fuse_train.data import FusionDataset, load_training_data
from fuse_train.model import FusionNet
from fuse_train.trainer import RunOptions, run_training

SIZE = 64


def small_config(task: str = "ct-mri", **changes) -> TrainConfig:
    values = {"crop_size": SIZE, "imagenet": False, "precision": "fp32", "batch_size": 2, **changes}
    return TrainConfig(task=task, preprocess=PreprocessConfig(image_size=SIZE), **values)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder for the module's (large) checkpoints, removed afterwards."""
    path = tmp_path_factory.mktemp("checkpoints")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def model() -> FusionNet:
    torch.manual_seed(3)
    return FusionNet(imagenet=False).eval()


@pytest.fixture(scope="module")
def real_batch(harvard_train) -> tuple[torch.Tensor, torch.Tensor]:
    config = small_config(max_pairs=2)
    data = load_training_data(harvard_train, config)
    first, second = FusionDataset(data.train, config, train=False)[0]
    return first[None], second[None]


@pytest.fixture(scope="module")
def visir_run(vis_ir, workdir):
    """A real vis-ir checkpoint: one epoch on six TNO/RoadScene pairs at 64 px."""
    config = small_config("vis-ir", epochs=1, max_pairs=6)
    result = run_training(
        config, RunOptions(data=vis_ir, out=workdir / "visir", device="cpu", progress=False), echo=lambda _: None
    )
    return result


def test_round_trip_with_weights_only(model, workdir, real_batch):
    config = small_config(lr=3e-4)
    path = save_checkpoint(workdir / "rt.pt", model, config, epoch=7, val_loss=8.5, run={"data": "somewhere"})
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format_version"] == 1 and payload["task"] == "ct-mri"
    assert payload["modalities"] == ["ct", "mri"] and payload["epoch"] == 7 and payload["val_loss"] == 8.5
    assert TrainConfig.from_dict(payload["config"]) == config
    assert set(payload["model"]) == set(model.state_dict())

    loaded, loaded_config, info = load_model(path)
    assert loaded_config == config
    assert not loaded.training and loaded.modalities == ("ct", "mri")
    assert info["task"] == "ct-mri" and info["epoch"] == 7 and info["val_loss"] == 8.5
    assert len(info["sha256"]) == 64 and info["run"] == {"data": "somewhere"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(model(*real_batch), loaded(*real_batch))
    assert not list(workdir.glob(".rt.pt*")), "a temporary file was left behind"


def _write(path: Path, kind: str, model: FusionNet) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text(json.dumps({"not": "a checkpoint"}))
    elif kind == "pickled object":
        torch.save({"format_version": 1, "model": {}, "extra": Path("x")}, path)
    elif kind == "bare state dict":
        torch.save(model.state_dict(), path)
    elif kind == "future version":
        torch.save(
            {"format_version": 99, "model": {}, "task": "ct-mri", "modalities": ["ct", "mri"], "config": {}}, path
        )
    elif kind == "wrong weights":
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder1")}
        torch.save(
            {"format_version": 1, "model": state, "task": "ct-mri", "modalities": ["ct", "mri"],
             "config": small_config().to_dict()},
            path,
        )
    return path


def test_blend_head_round_trips_and_keeps_its_outputs(workdir, real_batch):
    torch.manual_seed(5)
    net = FusionNet(imagenet=False, head="blend").eval()
    path = save_checkpoint(workdir / "blend.pt", net, small_config(head="blend"), epoch=1, val_loss=1.0, run={})
    loaded, config, _ = load_model(path)
    assert config.head == "blend" and loaded.head == "blend"
    with torch.no_grad():
        assert torch.equal(net(*real_batch), loaded(*real_batch))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "not found"),
        ("empty", "not a PyTorch checkpoint"),
        ("text", "not a PyTorch checkpoint"),
        ("pickled object", "objects other than tensors and plain data"),
        ("bare state dict", "not a fuse checkpoint"),
        ("future version", "format_version 99"),
        ("wrong weights", "do not fit"),
    ],
)
def test_bad_checkpoints_raise_fuse_error_naming_the_file(tmp_path, model, kind, message):
    path = tmp_path / f"{kind.replace(' ', '_')}.pt"
    if kind != "missing":
        _write(path, kind, model)
    with pytest.raises(FuseError, match=message) as error:
        load_model(path)
    assert str(path) in str(error.value)
    assert "weights_only" not in str(error.value)  # never torch's advice to turn the safety check off


def test_vis_ir_checkpoint_is_recognisable(visir_run):
    model, config, info = load_model(visir_run.run_dir / "best.pt")
    assert info["task"] == "vis-ir" and config.task == "vis-ir"
    assert model.modalities == ("vis", "ir")
    assert any(key.startswith("vis_encoder.") for key in model.state_dict())


def test_vis_ir_weights_map_onto_ct_mri(visir_run):
    source = read_checkpoint(visir_run.run_dir / "best.pt")["model"]
    torch.manual_seed(0)
    target = FusionNet(("ct", "mri"), imagenet=False)
    report = init_from_checkpoint(target, visir_run.run_dir / "best.pt", ("ct", "mri"))
    assert (report.loaded, report.skipped, report.new) == (len(source), 0, 0)
    assert report.source_task == "vis-ir"
    state = target.state_dict()
    for key, value in source.items():
        mapped = key.replace("vis_encoder.", "ct_encoder.").replace("ir_encoder.", "mri_encoder.")
        assert torch.equal(state[mapped], value), key


def test_mapping_loads_only_equal_names_and_shapes(visir_run, tmp_path):
    """Like the original (562 loaded, 4 new): a pretrained model without the medical attention layer."""
    payload = read_checkpoint(visir_run.run_dir / "best.pt")
    state = payload["model"]
    dropped = [k for k in state if k.startswith("medical_attention.")]
    for key in dropped:
        del state[key]
    state["decoder4.0.weight"] = torch.zeros(3, 3, 3, 3)  # same name, other shape
    state["vis_extra.weight"] = torch.zeros(2)  # no such tensor in the target
    torch.save(payload, tmp_path / "partial.pt")

    target = FusionNet(("ct", "mri"), imagenet=False)
    total = len(target.state_dict())
    report = init_from_checkpoint(target, tmp_path / "partial.pt", ("ct", "mri"))
    assert len(dropped) == 4
    assert (report.loaded, report.skipped, report.new) == (total - 5, 2, 5)
    assert f"{total - 5} tensors loaded, 2 skipped" in report.summary()


def test_cli_init_prints_the_counts(visir_run, harvard_train, workdir):
    out = workdir / "ctmri-init"
    result = CliRunner().invoke(
        main,
        [
            "--task", "ct-mri", "--data", str(harvard_train), "--init", str(visir_run.run_dir / "best.pt"),
            "--out", str(out), "--epochs", "1", "--max-pairs", "4", "--image-size", str(SIZE),
            "--crop-size", str(SIZE), "--batch-size", "2", "--no-imagenet", "--precision", "fp32",
            "--no-progress", "--device", "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    total = len(FusionNet(imagenet=False).state_dict())
    assert f"initialised from a vis-ir checkpoint: {total} tensors loaded, 0 skipped" in result.output
    assert "0 newly initialised" in result.output
    _, config, info = load_model(out / "best.pt")
    assert info["task"] == "ct-mri" and info["run"]["init"] == str(visir_run.run_dir / "best.pt")


def test_init_from_a_bad_file_is_a_fuse_error(tmp_path):
    (tmp_path / "bad.pt").write_text("nope")
    with pytest.raises(FuseError, match="bad.pt"):
        init_from_checkpoint(FusionNet(imagenet=False), tmp_path / "bad.pt", ("ct", "mri"))
