"""benchmarks.quality: the baseline table on the real test set, the model paths, the CLI and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from benchmarks import quality
from benchmarks.report import format_value, markdown_table, to_jsonable
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, META_FORMAT, META_IMAGE_SIZE, META_PREPROCESS, OUTPUT
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

PIXEL_MAX_REFERENCE = {
    "EN": 4.47, "SD": 84.22, "SF": 33.53, "MI": 3.63, "SCD": 1.50, "VIF": 0.64, "Qabf": 0.63, "SSIM": 1.38
}
BASELINES = ["mean", "max", "laplacian", "dwt"]
SMALL_PAIRS = ("11", "17", "25")


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def full_run(harvard_test: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("quality-full")
    return out, quality.run_quality(harvard_test, out, grid_pairs=2, progress=False)


@pytest.fixture
def small_data(harvard_test: Path, tmp_path: Path) -> Path:
    """Three real pairs copied into a temporary tree (never into the repository)."""
    root = tmp_path / "data"
    for folder in ("CT", "MRI"):
        (root / folder).mkdir(parents=True)
        for name in SMALL_PAIRS:
            shutil.copy(harvard_test / folder / f"{name}.png", root / folder / f"{name}.png")
    return root


def _write_max_onnx(path: Path, preprocess: PreprocessConfig) -> Path:
    """An ONNX model with fuse's tensor names computing ``fused = max(ct, mri)`` (mri broadcast to 3 channels)."""
    size = preprocess.image_size
    graph = helper.make_graph(
        [helper.make_node("Max", [INPUT_FIRST, INPUT_SECOND], [OUTPUT])],
        "max_fusion",
        [
            helper.make_tensor_value_info(INPUT_FIRST, TensorProto.FLOAT, ["N", 3, size, size]),
            helper.make_tensor_value_info(INPUT_SECOND, TensorProto.FLOAT, ["N", 1, size, size]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 3, size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {META_PREPROCESS: json.dumps(preprocess.to_dict()), META_IMAGE_SIZE: str(size), META_FORMAT: "1"},
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- the baseline table on harvard/ct-mri-test ----------------------------------------------------


def test_full_run_writes_strict_json_markdown_and_grid(full_run):
    out, result = full_run
    data = _strict_json(out / quality.JSON_NAME)
    assert data["pairs_scored"] == 21 and len(data["pairs"]) == 21
    assert data["problems"] == []
    assert list(data["methods"]) == BASELINES
    for method in data["methods"].values():
        assert len(method["per_pair"]) == 21
        assert set(method["mean"]) == set(metrics.METRIC_NAMES)
    grid = cv2.imread(str(out / quality.GRID_NAME))
    assert grid.shape == (quality.GRID_HEADER + 2 * quality.GRID_TILE, 6 * quality.GRID_TILE, 3)


@pytest.mark.parametrize("name", sorted(PIXEL_MAX_REFERENCE))
def test_pixel_max_row_matches_the_published_reference(full_run, name):
    _, result = full_run
    assert result["methods"]["max"]["mean"][name] == pytest.approx(PIXEL_MAX_REFERENCE[name], abs=0.01)


def test_markdown_has_one_row_per_method_and_the_labelled_reference(full_run):
    out, result = full_run
    text = (out / quality.MARKDOWN_NAME).read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1:-1] == [f" {h} " for h in ["method", "pairs", *metrics.METRIC_NAMES]]
    rows = table[2:]
    assert len(rows) == len(BASELINES) + 1
    for row, name in zip(rows, BASELINES):
        assert row.startswith(f"| {quality.BASELINE_LABELS[name]} | 21 |")
    assert "best published learned model" in rows[-1] and "not run here" in rows[-1]
    assert "| 4.88 | 79.17 | 38.14 |" in rows[-1]
    max_row = rows[1].split("|")
    assert max_row[3].strip() == f"{result['methods']['max']['mean']['EN']:.2f}"
    assert "nats" in text and "luminance" in text


# --- the model paths ------------------------------------------------------------------------------


def test_engine_path_uses_the_engines_preprocessing_and_restores_geometry(small_data, tmp_path):
    # No CLAHE and the native size: the ONNX max model must score exactly like the pixel-max baseline.
    model = _write_max_onnx(tmp_path / "model.onnx", PreprocessConfig(clahe=False, image_size=256))
    result = quality.run_quality(small_data, tmp_path / "R", engine=model, grid_pairs=1, progress=False)
    assert list(result["methods"]) == [*BASELINES, quality.MODEL_METHOD]
    fuse, pixel_max = result["methods"]["fuse"], result["methods"]["max"]
    assert fuse["provider"] == "cpu"
    for name in SMALL_PAIRS:
        assert fuse["per_pair"][name] == pytest.approx(pixel_max["per_pair"][name], rel=1e-12)
    grid = cv2.imread(str(tmp_path / "R" / quality.GRID_NAME))
    assert grid.shape[1] == 7 * quality.GRID_TILE


def test_openvino_backend_scores_what_openvino_computes(small_data, tmp_path):
    """The max-fusion graph has no arithmetic bf16 could round, so OpenVINO scores exactly pixel max;
    the label says it was OpenVINO and in which precision."""
    model = _write_max_onnx(tmp_path / "model.onnx", PreprocessConfig(clahe=False, image_size=256))
    result = quality.run_quality(small_data, tmp_path / "R", engine=model, grid_pairs=0, progress=False,
                                 backend="openvino")
    fuse, pixel_max = result["methods"]["fuse"], result["methods"]["max"]
    assert "OpenVINO cpu " in fuse["label"] and fuse["description"].startswith("OpenVINO")
    for name in SMALL_PAIRS:
        assert fuse["per_pair"][name] == pytest.approx(pixel_max["per_pair"][name], rel=1e-6)


def test_engine_at_another_size_is_letterboxed_and_restored(small_data, tmp_path):
    model = _write_max_onnx(tmp_path / "model.onnx", PreprocessConfig(clahe=True, image_size=64))
    result = quality.run_quality(small_data, tmp_path / "R", engine=model, grid_pairs=0, progress=False)
    scores = result["methods"]["fuse"]["mean"]
    assert all(np.isfinite(list(scores.values())))
    # Upsampled from 64 px the fused image is blurrier than the 256-px pixel max.
    assert scores["SF"] < result["methods"]["max"]["mean"]["SF"]
    assert not (tmp_path / "R" / quality.GRID_NAME).exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained ct-mri FusionNet checkpoint whose preprocessing runs the model at 64 px."""
    torch.manual_seed(0)
    config = TrainConfig(crop_size=64, imagenet=False, preprocess=PreprocessConfig(image_size=64))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    return save_checkpoint(path, FusionNet(imagenet=False), config, epoch=1, val_loss=1.0)


def test_checkpoint_path_runs_the_torch_model(small_data, tmp_path, checkpoint):
    for folder in ("CT", "MRI"):  # one pair keeps the CPU forward passes few
        for name in SMALL_PAIRS[1:]:
            (small_data / folder / f"{name}.png").unlink()
    result = quality.run_quality(small_data, tmp_path / "R", checkpoint=checkpoint, grid_pairs=1, progress=False)
    fuse = result["methods"]["fuse"]
    assert fuse["epoch"] == 1 and "PyTorch" in fuse["label"]
    assert list(fuse["per_pair"]) == [SMALL_PAIRS[0]]
    assert all(np.isfinite(v) for scores in fuse["per_pair"].values() for v in scores.values())
    # The model's RGB output is restored to the sources' 256 px before scoring.
    assert cv2.imread(str(tmp_path / "R" / quality.GRID_NAME)).shape[1] == 7 * quality.GRID_TILE


def test_checkpoint_of_another_task_is_refused_before_any_work(small_data, tmp_path, checkpoint):
    with pytest.raises(FuseError, match="--task ct-mri"):
        quality.run_quality(small_data, tmp_path / "R", checkpoint=checkpoint, task="vis-ir", progress=False)
    assert not (tmp_path / "R").exists()


# --- problems, CLI and bad input ------------------------------------------------------------------


def test_unusable_pairs_are_reported_and_the_rest_scored(small_data, tmp_path):
    shutil.copy(small_data / "CT" / "11.png", small_data / "CT" / "lonely.png")
    cv2.imwrite(str(small_data / "CT" / "deep.png"), np.full((64, 64), 1000, dtype=np.uint16))
    cv2.imwrite(str(small_data / "MRI" / "deep.png"), np.full((64, 64), 2000, dtype=np.uint16))
    result = quality.run_quality(small_data, tmp_path / "R", grid_pairs=0, progress=False)
    assert result["pairs"] == sorted(SMALL_PAIRS)
    reasons = {problem["name"]: problem["reason"] for problem in result["problems"]}
    assert set(reasons) == {"lonely", "deep"}
    assert "8-bit" in reasons["deep"]
    assert "2 skipped" in (tmp_path / "R" / quality.MARKDOWN_NAME).read_text()


def test_cli_writes_the_report_and_prints_where(small_data, tmp_path):
    out = tmp_path / "R"
    result = CliRunner().invoke(quality.main, ["--data", str(small_data), "--out", str(out), "--grid-pairs", "0"])
    assert result.exit_code == 0, result.output
    assert str(out / quality.MARKDOWN_NAME) in result.output
    assert (out / quality.JSON_NAME).is_file() and not (out / quality.GRID_NAME).exists()
    assert "python -m benchmarks.quality" in _strict_json(out / quality.JSON_NAME)["command"]


def test_cli_help_explains_every_option():
    result = CliRunner().invoke(quality.main, ["--help"])
    assert result.exit_code == 0
    for option in ("--data", "--checkpoint", "--engine", "--out", "--grid-pairs", "--task", "--provider", "--backend"):
        assert option in result.output


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        (["--checkpoint", "a.pt", "--engine", "b.onnx"], 2, "not both"),
        (["--grid-pairs", "-1"], 2, "--grid-pairs"),
        (["--task", "pet-mri"], 2, "--task"),
        (["--engine", "missing.onnx"], 1, "engine file not found"),
        (["--checkpoint", "missing.pt"], 1, "checkpoint not found"),
    ],
)
def test_cli_bad_arguments_fail_without_traceback(small_data, tmp_path, arguments, exit_code, message):
    result = CliRunner().invoke(quality.main, ["--data", str(small_data), "--out", str(tmp_path / "R"), *arguments])
    assert result.exit_code == exit_code
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_on_a_folder_without_pairs_fails_with_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(quality.main, ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "R")])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "no CT/MRI pairs found" in result.output
    assert not (tmp_path / "R").exists()


def test_no_scorable_pair_raises(small_data, tmp_path):
    for folder in ("CT", "MRI"):
        for name in SMALL_PAIRS:
            (small_data / folder / f"{name}.png").write_bytes(b"not a png")
    with pytest.raises(FuseError, match="none of the 3 pair"):
        quality.run_quality(small_data, tmp_path / "R", progress=False)


# --- report helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.23456, "1.23"), (21, "21"), (None, "–"), (float("nan"), "–"), (float("inf"), "inf"), ("a|b", "a\\|b")],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_markdown_table_refuses_ragged_rows():
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a", "b"], [[1]])


def test_to_jsonable_makes_strict_json():
    data = to_jsonable({"x": np.float32(1.5), "y": [float("inf"), np.int64(3)], "p": Path("/a"), "z": np.arange(2)})
    assert data == {"x": 1.5, "y": [None, 3], "p": "/a", "z": [0, 1]}
    json.dumps(data, allow_nan=False)
