"""``fuse-export --triton DIR``: a Triton model repository whose config.pbtxt parses with Triton's own
protobuf schema (``tritonclient.grpc.model_config_pb2``) and matches the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fuse_export.config import MODEL_ONNX
from fuse_export.triton import CONFIG_NAME, PREPROCESSING_NAME, config_text
from fuse_runtime.manifest import MANIFEST_NAME, read_manifest
from fuse_runtime.preprocess import PreprocessConfig

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (the dev extra) ships Triton's schema"
)
text_format = pytest.importorskip("google.protobuf.text_format")

SIZE = 64
NAME = "ctmri"


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_against_manifest(config, manifest, name: str) -> None:
    assert config.name == name
    assert config.max_batch_size == manifest.batch["max"]
    for tensors, described in ((config.input, manifest.inputs), (config.output, manifest.outputs)):
        assert [t.name for t in tensors] == [d["name"] for d in described]
        for tensor, entry in zip(tensors, described):
            assert list(tensor.dims) == entry["shape"][1:]  # Triton adds the batch axis itself
            assert tensor.data_type == model_config_pb2.TYPE_FP32 and entry["dtype"] == "float32"
    assert config.HasField("dynamic_batching")
    assert max(config.dynamic_batching.preferred_batch_size) == manifest.batch["max"]
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1


@pytest.fixture(scope="module")
def triton_export(tmp_path_factory, ct_mri_checkpoint, harvard_test, cli):
    root = tmp_path_factory.mktemp("triton")
    out, repository = root / "out", root / "repository"
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE),
                  "--batch", "1,2,4", "--no-simplify", "--parity-data", str(harvard_test), "--parity-pairs", "1",
                  "--triton", str(repository), "--triton-name", NAME])
    return out, repository, result


def test_repository_layout_and_report(triton_export):
    out, repository, result = triton_export
    assert result.exit_code == 0, result.output
    model = repository / NAME
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*")) == sorted(
        ["1", "1/model.onnx", CONFIG_NAME, PREPROCESSING_NAME]
    )
    assert not list(repository.glob(".*"))  # no staging folder left
    assert (model / "1" / "model.onnx").read_bytes() == (out / MODEL_ONNX).read_bytes()
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"triton/{NAME}"))
    assert " MB " in line and "onnxruntime_onnx serving model.onnx" in line


def test_config_parses_with_tritons_schema_and_matches_the_manifest(triton_export):
    out, repository, _ = triton_export
    manifest = read_manifest(out / MANIFEST_NAME)
    config = parse(repository / NAME / CONFIG_NAME)
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    check_against_manifest(config, manifest, NAME)
    entry = manifest.artifacts["triton"]
    assert entry["platform"] == "onnxruntime_onnx" and entry["serves"] == MODEL_ONNX
    assert entry["repository"] == str(repository.resolve())
    assert entry["model_sha256"] == hashlib.sha256((out / MODEL_ONNX).read_bytes()).hexdigest()


def test_preprocessing_json_is_what_the_model_was_exported_with(triton_export):
    out, repository, _ = triton_export
    client = json.loads((repository / NAME / PREPROCESSING_NAME).read_text())
    assert PreprocessConfig.from_dict(client["preprocess"]) == read_manifest(out / MANIFEST_NAME).preprocess
    assert PreprocessConfig.from_dict(client["preprocess"]).image_size == SIZE
    assert [t["name"] for t in client["inputs"]] == ["ct", "mri"] and client["outputs"][0]["name"] == "fused"


def test_existing_model_folder_needs_overwrite(triton_export, ct_mri_checkpoint, harvard_test, cli, tmp_path):
    _, repository, _ = triton_export
    out = tmp_path / "out"
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE),
                  "--parity-data", str(harvard_test), "--triton", str(repository), "--triton-name", NAME])
    assert result.exit_code == 2 and "pass --overwrite" in result.stderr and str(repository / NAME) in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(("platform", "kind"), [("tensorrt_plan", "KIND_GPU"), ("onnxruntime_onnx", "KIND_AUTO")])
def test_plan_config_parses_and_matches_a_manifest(platform, kind):
    """The plan variant (built only on a GPU machine) checked without one, from the same generator."""
    from fuse_export.formats import io_tensors
    from fuse_runtime.manifest import Manifest

    inputs, outputs = io_tensors(256)
    manifest = Manifest(image_size=256, preprocess=PreprocessConfig(), batch={"min": 1, "opt": 8, "max": 32},
                        inputs=inputs, outputs=outputs)
    text = config_text("fuse_ct_mri", platform, (1, 8, 32), inputs, outputs, kind)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == platform
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.Kind.Value(kind)
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    check_against_manifest(config, manifest, "fuse_ct_mri")
