"""Inference engines: ``open_engine(path)`` picks ONNX Runtime for ``.onnx`` and TensorRT for ``.plan``.

TensorRT and the CUDA bindings are imported only when a ``.plan`` is opened, so the CPU runtime
works without them.
"""

from __future__ import annotations

from pathlib import Path

from fuse_runtime.engines.base import UNBOUNDED_BATCH, Engine
from fuse_runtime.errors import FuseError

__all__ = ["UNBOUNDED_BATCH", "Engine", "open_engine", "ENGINE_SUFFIXES", "PROVIDER_CHOICES"]

ENGINE_SUFFIXES = (".onnx", ".plan", ".engine")
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")


def open_engine(path: str | Path, provider: str = "auto", threads: int | None = None) -> Engine:
    """Load ``model.onnx`` (ONNX Runtime) or ``model.plan`` (TensorRT) as an Engine.

    provider: for ``.onnx`` — ``auto``, ``cpu``, ``cuda`` or ``tensorrt`` (ONNX Runtime execution
        providers; a missing one falls back to the CPU with a notice in ``engine.notices``). A ``.plan``
        always runs on TensorRT; asking it for ``cpu`` or ``cuda`` is an error.
    threads: CPU intra-op threads for ONNX Runtime (None: its default).
    Raises FuseError for a missing, unreadable or incompatible model.
    """
    path = Path(path)
    if provider not in PROVIDER_CHOICES:
        raise FuseError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDER_CHOICES)}", path)
    if not path.is_file():
        raise FuseError("engine file not found; pass the model.onnx or model.plan written by fuse-export", path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from fuse_runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, provider=provider, threads=threads)
    if suffix in (".plan", ".engine"):
        if provider not in ("auto", "tensorrt"):
            raise FuseError(
                f"a TensorRT plan runs only on TensorRT, not --provider {provider}; pass model.onnx to use {provider}",
                path,
            )
        from fuse_runtime.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path)
    raise FuseError(
        f"unknown engine type {path.suffix!r}; pass a .onnx or .plan file written by fuse-export", path
    )
