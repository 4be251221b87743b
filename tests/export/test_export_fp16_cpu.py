"""``fuse-export --fp16`` at 64 px on this machine: the ONNX files, metadata, manifest and parity.

One export (the ``export_64`` fixture) is shared by every test here; each reloads the artifacts and
checks them against PyTorch or against the files themselves.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fuse_export.config import MODEL_FP16_ONNX, MODEL_ONNX, MODEL_PLAN, PARITY_JSON, Tolerances
from fuse_export.onnx_export import BATCH_AXIS
from fuse_runtime.manifest import (
    INPUT_FIRST,
    INPUT_SECOND,
    MANIFEST_NAME,
    META_CHECKPOINT_SHA256,
    META_FORMAT,
    META_IMAGE_SIZE,
    META_MODALITIES,
    META_PRECISION,
    META_PREPROCESS,
    OUTPUT,
    read_manifest,
)
from fuse_runtime.preprocess import PreprocessConfig

SIZE = 64
TOL = Tolerances()


def _engine_expected() -> bool:
    """Whether this machine can build the engine (then --fp16 must succeed with model.plan)."""
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fp16_exit_status_and_message_without_gpu(export_64):
    result = export_64.result
    if _engine_expected():
        assert result.exit_code == 0, result.output
        assert (export_64.out / MODEL_PLAN).is_file()
        return
    assert result.exit_code == 3, result.output
    assert not (export_64.out / MODEL_PLAN).exists()
    last = result.stderr.strip().splitlines()[-1]
    assert "model.plan was not built because no CUDA GPU is visible" in last
    assert "run the same command on the machine with the NVIDIA GPU" in last
    assert f"--checkpoint {export_64.checkpoint}" in last and "--fp16" in last and "--overwrite" in last


def test_each_artifact_reported_with_size_and_time(export_64):
    lines = export_64.result.stdout.splitlines()
    for name in (MODEL_ONNX, MODEL_FP16_ONNX):
        line = next(line for line in lines if line.strip().startswith(name))
        assert " MB " in line and line.split(" MB ")[1].strip().split()[1] == "s"


@pytest.mark.parametrize("name", [MODEL_ONNX, MODEL_FP16_ONNX])
def test_onnx_files_pass_the_full_checker_with_a_dynamic_batch(export_64, name):
    path = export_64.out / name
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert shapes == {
        INPUT_FIRST: [BATCH_AXIS, 3, SIZE, SIZE],
        INPUT_SECOND: [BATCH_AXIS, 1, SIZE, SIZE],
        OUTPUT: [BATCH_AXIS, 3, SIZE, SIZE],
    }
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_matches_pytorch_on_real_pairs(export_64, torch_model, samples_64, reference, run_model, batch):
    ct, mri = samples_64.ct[:batch], samples_64.mri[:batch]
    expected = reference(torch_model, ct, mri)
    fused = run_model(export_64.out / MODEL_ONNX, ct, mri)
    assert fused.shape == (batch, 3, SIZE, SIZE)
    assert np.abs(fused - expected).max() <= TOL.fp32_max_abs
    assert fused.std() > 0.01  # a real picture, not a constant the export would match trivially


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fp16_onnx_within_fp16_tolerance_on_real_pairs(export_64, torch_model, samples_64, reference, run_model, batch):
    ct, mri = samples_64.ct[:batch], samples_64.mri[:batch]
    expected = reference(torch_model, ct, mri)
    fused = run_model(export_64.out / MODEL_FP16_ONNX, ct, mri)
    diff = np.abs(fused.astype(np.float64) - expected)
    assert fused.dtype == np.float32
    assert diff.max() <= TOL.fp16_max_abs
    assert diff.mean() <= TOL.fp16_mean_abs
    assert 10 * np.log10(1.0 / np.mean(diff**2)) >= TOL.fp16_psnr_db
    assert diff.max() > 0  # FP16 weights really are in there


def test_fp16_graph_keeps_gates_in_fp32_and_the_rest_in_fp16(export_64):
    graph = onnx.load(str(export_64.out / MODEL_FP16_ONNX)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    producer = {out: node for node in graph.node for out in node.output}
    sigmoids = [node for node in graph.node if node.op_type == "Sigmoid"]
    assert len(sigmoids) == 18  # 4 fusion blocks × 2 gates × 2 modalities, output head, medical attention
    for node in sigmoids:
        assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
        pre = producer[node.input[0]]
        assert pre.op_type in ("Conv", "MatMul", "Gemm") and types[pre.output[0]] == onnx.TensorProto.FLOAT
    convs = [node for node in graph.node if node.op_type == "Conv"]
    half = sum(types.get(node.output[0]) == onnx.TensorProto.FLOAT16 for node in convs)
    assert half >= len(convs) - 10
    weights = [t for t in graph.initializer if len(t.dims) == 4]
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in weights) > 0.8 * len(weights)
    assert (export_64.out / MODEL_FP16_ONNX).stat().st_size < 0.55 * (export_64.out / MODEL_ONNX).stat().st_size


@pytest.mark.parametrize(("name", "precision"), [(MODEL_ONNX, "fp32"), (MODEL_FP16_ONNX, "fp16")])
def test_metadata_round_trip_through_onnx_and_onnxruntime(export_64, name, precision):
    path = export_64.out / name
    from_onnx = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_ort = dict(session.get_modelmeta().custom_metadata_map)
    assert from_ort == from_onnx
    assert from_onnx[META_IMAGE_SIZE] == str(SIZE)
    assert from_onnx[META_MODALITIES] == "ct,mri"
    assert from_onnx[META_PRECISION] == precision
    assert from_onnx[META_FORMAT] == "1"
    assert from_onnx[META_CHECKPOINT_SHA256] == _sha256(export_64.checkpoint)
    preprocess = PreprocessConfig.from_dict(json.loads(from_onnx[META_PREPROCESS]))
    assert preprocess == PreprocessConfig(image_size=SIZE)  # the checkpoint's settings at the export size


def test_manifest_names_shapes_hashes_and_parity(export_64):
    out = export_64.out
    manifest = read_manifest(out / MANIFEST_NAME)
    assert manifest.image_size == SIZE and manifest.preprocess == PreprocessConfig(image_size=SIZE)
    assert manifest.modalities == ("ct", "mri")
    assert manifest.batch == {"min": 1, "opt": 2, "max": 4}
    assert [(t["name"], t["shape"]) for t in manifest.inputs] == [
        (INPUT_FIRST, [BATCH_AXIS, 3, SIZE, SIZE]),
        (INPUT_SECOND, [BATCH_AXIS, 1, SIZE, SIZE]),
    ]
    assert [(t["name"], t["shape"]) for t in manifest.outputs] == [(OUTPUT, [BATCH_AXIS, 3, SIZE, SIZE])]
    written = {MODEL_ONNX, MODEL_FP16_ONNX, PARITY_JSON} | ({MODEL_PLAN} if _engine_expected() else set())
    assert set(manifest.artifacts) == written
    for name, entry in manifest.artifacts.items():
        assert entry["bytes"] == (out / name).stat().st_size
        assert entry["sha256"] == _sha256(out / name)
        assert entry["seconds"] >= 0
    assert {"torch", "onnx", "onnxruntime", "onnxslim", "fuse"} <= set(manifest.versions)
    assert manifest.source_checkpoint["sha256"] == _sha256(export_64.checkpoint)
    assert manifest.source_checkpoint["task"] == "ct-mri" and manifest.source_checkpoint["epoch"] == 3
    assert manifest.parity["passed"] is True
    assert set(manifest.parity["results"]) >= {"onnxruntime-fp32", "onnxruntime-fp16"}
    assert manifest.export["fp16"] is True and manifest.export["image_size"] == SIZE
    if not _engine_expected():
        assert manifest.gpu is None and manifest.precision == "fp32" and "tensorrt" not in manifest.versions
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, MANIFEST_NAME])  # no temporary files left


def test_parity_json_and_table_within_tolerance(export_64):
    parity = json.loads((export_64.out / PARITY_JSON).read_text())
    assert parity["passed"] is True and parity["image_size"] == SIZE
    assert len(parity["pairs"]) == 4 and "ct-mri-test" in parity["source"]
    fp32, fp16 = parity["results"]["onnxruntime-fp32"], parity["results"]["onnxruntime-fp16"]
    assert fp32["max_abs"] <= TOL.fp32_max_abs
    assert fp16["max_abs"] <= TOL.fp16_max_abs and fp16["mean_abs"] <= TOL.fp16_mean_abs
    assert fp16["psnr_db"] >= TOL.fp16_psnr_db
    assert set(fp16["metric_diff"]) >= {"EN", "MI", "VIF", "Qabf", "SSIM"}
    assert fp16["max_abs_at"]["sample"] in parity["pairs"]
    table = export_64.result.stdout
    assert "onnxruntime-fp32" in table and "onnxruntime-fp16" in table and "PSNR dB" in table


@pytest.mark.parametrize("name", [MODEL_ONNX, MODEL_FP16_ONNX])
def test_runtime_serves_the_export_with_its_own_preprocessing(export_64, samples_64, run_model, name):
    from fuse_runtime.engines import open_engine

    with open_engine(export_64.out / name, provider="cpu") as engine:
        assert engine.image_size == SIZE and engine.preprocess == PreprocessConfig(image_size=SIZE)
        fused = engine.infer(samples_64.ct[:3], samples_64.mri[:3])
    np.testing.assert_array_equal(fused, run_model(export_64.out / name, samples_64.ct[:3], samples_64.mri[:3]))
