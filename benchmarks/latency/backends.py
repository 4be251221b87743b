"""The one table of backends the latency benchmark knows: what each runs, on which model files, and
what it needs. Every other module reads this table instead of keeping its own lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["torch", "engine", "fuse-run"]
Files = Literal["checkpoint", "onnx", "plan", "onnx+plan"]
PLAN_SUFFIXES = (".plan", ".engine")


@dataclass(frozen=True)
class Backend:
    """One backend of the table.

    kind: ``torch`` (the checkpoint's FusionNet in PyTorch), ``engine`` (a ``fuse_runtime`` engine
        timed call by call in a worker process) or ``fuse-run`` (the serving CLI end to end).
    files: which model files it runs (``onnx+plan``: every .onnx, and plans where TensorRT runs).
    precision: the row's precision before its process says (torch rows decide cuda or cpu).
    engine_backend, provider: what ``open_engine`` / ``fuse-run --backend/--provider`` are given
        (a fuse-run provider of None: ``auto`` on a GPU, else ``cpu``).
    needs_module: a package that must be importable; needs_gpu: an NVIDIA GPU must be visible.
    streams: OpenVINO streams (``open_engine(streams=)``, ``fuse-run --streams``): 1 latency (one
        stream, every thread per call), 0 throughput (OpenVINO chooses; a timed call then submits one
        batch per infer request and waits for all); None: the backend's own default.
    """

    name: str
    kind: Kind
    files: Files
    precision: str = "–"
    engine_backend: str = "auto"
    provider: str | None = "cpu"
    needs_module: str | None = None
    needs_gpu: bool = False
    streams: int | None = None
    profile: bool = False


TABLE: tuple[Backend, ...] = (
    Backend("pytorch-eager", "torch", "checkpoint", "fp32"),
    Backend("pytorch-autocast", "torch", "checkpoint", "fp16 (cuda) / bf16 (cpu)"),
    Backend("pytorch-compile", "torch", "checkpoint", "fp32"),
    Backend("onnxruntime-cpu", "engine", "onnx", engine_backend="onnxruntime"),
    Backend("onnxruntime-cuda", "engine", "onnx", engine_backend="onnxruntime", provider="cuda", needs_gpu=True),
    Backend("openvino-cpu", "engine", "onnx", engine_backend="openvino", needs_module="openvino", streams=1,
            profile=True),
    Backend("openvino-cpu-throughput", "engine", "onnx", engine_backend="openvino", needs_module="openvino",
            streams=0),
    Backend("tensorrt", "engine", "plan", engine_backend="tensorrt", provider="auto", needs_module="tensorrt",
            needs_gpu=True),
    # fuse-run names --provider (cpu, or auto on a GPU), which makes auto pick ONNX Runtime for a .onnx
    # (TensorRT for a .plan), so that row stays ONNX Runtime.
    Backend("fuse-run", "fuse-run", "onnx+plan", provider=None),
    Backend("fuse-run-openvino", "fuse-run", "onnx", engine_backend="openvino", needs_module="openvino"),
    Backend("fuse-run-openvino-latency", "fuse-run", "onnx", engine_backend="openvino", needs_module="openvino",
            streams=1),
)
"""Every backend, in table order."""

BY_NAME = {backend.name: backend for backend in TABLE}
BACKENDS: tuple[str, ...] = tuple(BY_NAME)
TORCH_PRECISIONS = {b.name: b.precision for b in TABLE if b.kind == "torch"}
"""What a PyTorch row's precision is before its process says (it decides cuda or cpu)."""
