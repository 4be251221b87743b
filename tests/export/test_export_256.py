"""The one export at the design's 256 px: ``--onnx-only`` exits 0 and the model matches PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fuse_export.config import MODEL_FP16_ONNX, MODEL_ONNX, MODEL_PLAN, PARITY_JSON, Tolerances
from fuse_export.parity import load_samples
from fuse_runtime.manifest import MANIFEST_NAME, read_manifest
from fuse_runtime.preprocess import PreprocessConfig

SIZE = 256


@pytest.fixture(scope="module")
def export_256(cli, ct_mri_checkpoint, harvard_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("export256") / "out"
    out.mkdir()
    # An earlier export's engine and manifest: --overwrite must not leave them beside the new model.
    (out / MODEL_PLAN).write_bytes(b"engine of an earlier export")
    (out / MANIFEST_NAME).write_text("{}")
    # No --image-size: the checkpoint's own size (TrainConfig default, the design's 256) is used.
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--onnx-only", "--overwrite",
                  "--parity-data", str(harvard_test), "--parity-pairs", "3"])
    return out, result


def test_onnx_only_exits_0_and_overwrite_removes_the_stale_engine(export_256):
    out, result = export_256
    assert result.exit_code == 0, result.output
    assert "removed model.plan left by an earlier export" in result.stdout
    assert not (out / MODEL_PLAN).exists() and not (out / MODEL_FP16_ONNX).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_ONNX, PARITY_JSON, MANIFEST_NAME])


def test_256_graph_is_valid_and_matches_pytorch_on_real_pairs(
    export_256, torch_model, harvard_test, reference, run_model
):
    out, _ = export_256
    onnx.checker.check_model(str(out / MODEL_ONNX), full_check=True)
    samples = load_samples(harvard_test, PreprocessConfig(), 3)
    fused = run_model(out / MODEL_ONNX, samples.ct, samples.mri)
    assert fused.shape == (3, 3, SIZE, SIZE)
    assert np.abs(fused - reference(torch_model, samples.ct, samples.mri)).max() <= Tolerances().fp32_max_abs


def test_256_manifest_records_size_simplification_and_parity(export_256):
    out, _ = export_256
    manifest = read_manifest(out / MANIFEST_NAME)
    assert manifest.image_size == SIZE and manifest.preprocess == PreprocessConfig()
    assert manifest.inputs[0]["shape"][1:] == [3, SIZE, SIZE]
    slim = manifest.artifacts[MODEL_ONNX]["onnxslim"]
    assert slim["nodes_after"] <= slim["nodes_before"] and slim["bytes_before"] > 0
    assert slim["kept"] == (slim["reason"] == "outputs identical")
    parity = json.loads((out / PARITY_JSON).read_text())
    assert parity["passed"] and list(parity["results"]) == ["onnxruntime-fp32"]
