"""A Triton Inference Server model repository for an exported model.

``write_model(root, name, ...)`` writes ``root/<name>/``::

    config.pbtxt          platform tensorrt_plan (model.plan) or onnxruntime_onnx (model.onnx);
                          max_batch_size = the export's largest batch; inputs ct [3,S,S] and mri
                          [1,S,S], output fused [3,S,S], all TYPE_FP32 (Triton adds the batch axis);
                          dynamic batching preferring the export's OPT and MAX batches; one instance
                          (KIND_GPU for a plan, KIND_AUTO for ONNX: the GPU when there is one)
    preprocessing.json    what a client must do before sending and after receiving (the model's own
                          PreprocessConfig, tensor layouts and ranges)
    1/model.plan | 1/model.onnx   a copy of the checked artifact (Triton's default file names)

The config is Triton's protobuf text format (``inference.ModelConfig``); the tests parse it with
Triton's own schema (``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import file_sha256

CONFIG_NAME = "config.pbtxt"
PREPROCESSING_NAME = "preprocessing.json"
VERSION = "1"
#: Artifact suffix → (Triton platform, file name Triton looks for, instance kind).
PLATFORMS = {
    ".plan": ("tensorrt_plan", "model.plan", "KIND_GPU"),
    ".onnx": ("onnxruntime_onnx", "model.onnx", "KIND_AUTO"),
}
#: How long Triton may hold a request to form a larger batch, in microseconds.
MAX_QUEUE_DELAY_US = 500
DEFAULT_NAME = "fuse_ct_mri"


def write_model(
    root: Path,
    name: str,
    artifact: Path,
    batch: tuple[int, int, int],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    preprocess: PreprocessConfig,
    checkpoint_sha256: str,
) -> dict[str, Any]:
    """Write ``root/<name>/`` for ``artifact`` (a .plan or .onnx); ``inputs``/``outputs`` as in the
    manifest (shape [batch, C, S, S]). Returns the manifest's description of the repository."""
    platform, file_name, kind = PLATFORMS[artifact.suffix]
    folder = root / name
    (folder / VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact, folder / VERSION / file_name)
    (folder / CONFIG_NAME).write_text(config_text(name, platform, batch, inputs, outputs, kind))
    client = {
        "model": name,
        "platform": platform,
        "inputs": inputs,
        "outputs": outputs,
        "preprocess": preprocess.to_dict(),
        "checkpoint_sha256": checkpoint_sha256,
        "client_steps": [
            "read the registered CT/MRI pair (fuse_runtime.pairing.load_pair)",
            (
                "preprocess it with these settings: fuse_runtime.preprocess.prepare_pair(ct, mri, roles, "
                "PreprocessConfig.from_dict(preprocess)); it gives ct [N,3,S,S] (gray repeated) and mri "
                "[N,1,S,S], float32 in [0,1], N slices"
            ),
            (
                "send ct and mri as FP32 tensors of at most max_batch_size slices; receive fused "
                "[N,3,S,S] RGB float32 in [0,1]"
            ),
            "restore the fused slices to the source size and write them as fuse-run does",
        ],
    }
    (folder / PREPROCESSING_NAME).write_text(json.dumps(client, indent=2) + "\n")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        "model": name,
        "platform": platform,
        "serves": artifact.name,
        "model_sha256": file_sha256(folder / VERSION / file_name),
        "files": [str(p.relative_to(root)) for p in files],
        "bytes": sum(p.stat().st_size for p in files),
    }


def config_text(
    name: str,
    platform: str,
    batch: tuple[int, int, int],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    kind: str,
) -> str:
    """``config.pbtxt`` in Triton's protobuf text format (see the module docstring)."""
    _, opt, high = batch
    preferred = sorted({opt, high})
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {high}",
        *_tensors("input", inputs),
        *_tensors("output", outputs),
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        "instance_group [",
        "  {",
        "    count: 1",
        f"    kind: {kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def _tensors(field: str, tensors: list[dict[str, Any]]) -> list[str]:
    """A repeated ModelInput/ModelOutput field; the batch axis is left to max_batch_size."""
    lines = [f"{field} ["]
    for index, tensor in enumerate(tensors):
        dims = ", ".join(str(d) for d in tensor["shape"][1:])
        lines += [
            "  {",
            f'    name: "{tensor["name"]}"',
            f"    data_type: {_DATA_TYPES[tensor['dtype']]}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if index < len(tensors) - 1 else ""),
        ]
    return [*lines, "]"]


_DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
