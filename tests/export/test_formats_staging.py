"""The format table drives validation, and exports are published only when every check passes.

Issue 20 item 6: ``--parity-data`` an empty folder used to leave an unchecked model.onnx in OUT (exit
2, no manifest), which fuse-run served and a re-run refused; now OUT is left as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fuse_export import formats as formats_module
from fuse_export.config import (
    MODEL_FP16_ONNX,
    MODEL_ONNX,
    MODEL_PLAN,
    PARITY_JSON,
    ExportConfig,
)
from fuse_export.formats import ARTIFACT_NAMES, FORMAT_NAMES, FORMATS, resolve_formats
from fuse_export.int8 import INT8_PARITY_JSON, MODEL_INT8_ONNX
from fuse_export.staging import Staging
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import MANIFEST_NAME

SIZE = 64


def test_table_rows_name_files_requirements_builder_and_check():
    assert FORMAT_NAMES == ("onnx", "fp16", "int8", "plan", "triton")
    rows = {f.name: f for f in FORMATS}
    assert rows["onnx"].files == (MODEL_ONNX,) and rows["plan"].files == (MODEL_PLAN,)
    assert rows["plan"].after == ("fp16",) and rows["plan"].needs_gpu
    assert rows["int8"].needs_calibration and rows["int8"].files == (MODEL_INT8_ONNX, INT8_PARITY_JSON)
    assert all(callable(f.build) and callable(f.check) for f in FORMATS)
    assert ARTIFACT_NAMES == (MODEL_ONNX, MODEL_FP16_ONNX, MODEL_INT8_ONNX, INT8_PARITY_JSON, MODEL_PLAN, PARITY_JSON)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["onnx"]),
        ({"fp16": True}, ["onnx", "fp16", "plan"]),  # the product command's alias
        ({"fp16": True, "onnx_only": True}, ["onnx", "fp16"]),
        ({"formats": ("plan",)}, ["onnx", "fp16", "plan"]),  # plan pulls in what it is built from
        ({"formats": ("triton", "fp16")}, ["onnx", "fp16", "triton"]),
        ({"triton_dir": Path("/tmp/repo")}, ["onnx", "triton"]),
        ({"formats": ("int8",), "calibration_data": "{train}"}, ["onnx", "int8"]),
    ],
)
def test_resolve_formats_in_table_order(kwargs, expected, harvard_train, harvard_test):
    kwargs = {k: (harvard_train if v == "{train}" else v) for k, v in kwargs.items()}
    config = ExportConfig(parity_data=harvard_test, **kwargs)
    assert [f.name for f in resolve_formats(config)] == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"formats": ("tflite",)}, "unknown export format tflite; choose from onnx, fp16, int8, plan, triton"),
        ({"formats": ("plan",), "onnx_only": True}, "--onnx-only never builds an engine"),
        ({"formats": ("int8",)}, "--int8 needs --calibration-data DIR"),
        ({"calibration_data": Path("/x")}, "--calibration-data is used only with --int8"),
    ],
)
def test_resolve_formats_refusals(kwargs, message):
    with pytest.raises(FuseError, match=message.replace("(", r"\(")):
        resolve_formats(ExportConfig(**kwargs))


def test_cli_format_list_and_repeats_are_validated_before_out_is_touched(cli, ct_mri_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--format", "onnx,fp16",
                  "--format", "bogus"])
    assert result.exit_code == 2 and "unknown export format bogus" in result.stderr
    assert not out.exists()


def test_empty_parity_folder_leaves_out_as_it_was_and_a_rerun_works(cli, ct_mri_checkpoint, tmp_path, harvard_test):
    """Issue 20 item 6: on the old code this left model.onnx (no manifest) in OUT and exited 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = ["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE), "--batch", "1,2,4",
            "--no-simplify"]
    result = cli([*args, "--parity-data", str(empty)])
    assert result.exit_code == 2 and "no usable CT/MRI pair for the parity check" in result.stderr
    assert not out.exists()  # created by the failed run, so removed with it: nothing left behind
    again = cli([*args, "--parity-data", str(harvard_test), "--parity-pairs", "1"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_ONNX, PARITY_JSON, MANIFEST_NAME])


def test_failure_after_the_model_is_written_keeps_the_earlier_export(
    cli, ct_mri_checkpoint, tmp_path, harvard_test, monkeypatch
):
    """A check failing late (here: the FP16 build) with --overwrite leaves the earlier export untouched."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = {MODEL_ONNX: b"earlier model", MANIFEST_NAME: b"{}", "notes.txt": b"the user's"}
    for name, content in earlier.items():
        (out / name).write_bytes(content)

    def broken(ctx):
        assert (ctx.stage / MODEL_ONNX).is_file() and ctx.stage.parent == out  # staged, not published
        raise FuseError("FP16 conversion failed (simulated)")

    rows = tuple(dataclasses.replace(f, build=broken) if f.name == "fp16" else f for f in FORMATS)
    monkeypatch.setattr(formats_module, "FORMATS", rows)
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE),
                  "--format", "fp16", "--overwrite", "--no-simplify", "--parity-data", str(harvard_test),
                  "--parity-pairs", "1"])
    assert result.exit_code == 2 and "FP16 conversion failed (simulated)" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no staging folder, nothing replaced


def test_parity_failure_publishes_nothing(cli, ct_mri_checkpoint, tmp_path, harvard_test, monkeypatch):
    monkeypatch.setattr("fuse_export.parity.limits_for", lambda precision, tolerances: {"max_abs": 0.0})
    out = tmp_path / "out"
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE),
                  "--no-simplify", "--parity-data", str(harvard_test), "--parity-pairs", "1"])
    assert result.exit_code == 4, result.output
    assert "parity failed: onnxruntime-fp32" in result.stderr and "nothing was published" in result.stderr
    assert not out.exists()


def test_staging_refuses_an_existing_export_and_publishes_by_rename(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MODEL_PLAN).write_bytes(b"old engine")
    with pytest.raises(FuseError, match="already holds model.plan"):
        Staging.open(out, overwrite=False, artifact_names=ARTIFACT_NAMES)
    staging = Staging.open(out, overwrite=True, artifact_names=ARTIFACT_NAMES)
    (staging.stage / MODEL_ONNX).write_bytes(b"new")
    (staging.stage / MANIFEST_NAME).write_text("{}")
    assert (out / MODEL_PLAN).read_bytes() == b"old engine"  # nothing published yet
    removed = []
    staging.publish([MODEL_ONNX], ARTIFACT_NAMES, removed.append)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, MODEL_ONNX]
    assert removed == ["  removed model.plan left by an earlier export (it no longer matches model.onnx)"]


def test_stale_int8_files_are_removed_on_overwrite(tmp_path):
    """Moved from test_int8 (remove_stale_int8): an earlier export's INT8 files go with --overwrite."""
    (tmp_path / MODEL_INT8_ONNX).write_bytes(b"old")
    (tmp_path / INT8_PARITY_JSON).write_text("{}")
    staging = Staging.open(tmp_path, overwrite=True, artifact_names=ARTIFACT_NAMES)
    (staging.stage / MODEL_ONNX).write_bytes(b"new")
    (staging.stage / MANIFEST_NAME).write_text("{}")
    removed = []
    staging.publish([MODEL_ONNX], ARTIFACT_NAMES, removed.append)
    assert [line.split()[1] for line in removed] == [MODEL_INT8_ONNX, INT8_PARITY_JSON]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, MODEL_ONNX]


def test_discard_removes_the_folders_it_created(tmp_path):
    out = tmp_path / "a" / "b"
    staging = Staging.open(out, overwrite=False, artifact_names=ARTIFACT_NAMES)
    staging.stage_folder(out / "triton" / "m", "--triton folder")
    staging.discard()
    assert not (tmp_path / "a").exists()
