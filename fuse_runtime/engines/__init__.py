"""Inference engines: ``open_engine(path)`` picks ONNX Runtime for ``.onnx`` and TensorRT for ``.plan``.

TensorRT and the CUDA bindings are imported only when a ``.plan`` is opened, and OpenVINO only when
``backend="openvino"`` is asked for, so the CPU runtime works without them.

``backend="auto"`` keeps ONNX Runtime for ``.onnx`` files. Measured on the 2-core AVX2 machine this
project develops on (AMD EPYC, no AVX-512/VNNI/AMX, shared with a training run; 256 px, batch 8,
2 threads), OpenVINO ran about 10 % faster than ONNX Runtime on the FP32 model and about 40 %
faster on the INT8 one, end to end in fuse-run as well; but it is an optional extra, its bf16 path
could not be measured here (no native bf16), its INT8 arithmetic is not the one parity.int8.json
measured, and ONNX Runtime also drives CUDA; so OpenVINO is chosen explicitly, never silently.
"""

from __future__ import annotations

from pathlib import Path

from fuse_runtime.engines.base import UNBOUNDED_BATCH, Engine
from fuse_runtime.errors import FuseError

__all__ = ["UNBOUNDED_BATCH", "Engine", "open_engine", "ENGINE_SUFFIXES", "PROVIDER_CHOICES", "BACKEND_CHOICES"]

ENGINE_SUFFIXES = (".onnx", ".plan", ".engine")
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
BACKEND_CHOICES = ("auto", "onnxruntime", "openvino", "tensorrt")


def open_engine(path: str | Path, provider: str = "auto", threads: int | None = None, backend: str = "auto") -> Engine:
    """Load ``model.onnx`` (ONNX Runtime) or ``model.plan`` (TensorRT) as an Engine.

    provider: for ``.onnx`` — ``auto``, ``cpu``, ``cuda`` or ``tensorrt`` (ONNX Runtime execution
        providers; a missing one falls back to the CPU with a notice in ``engine.notices``). A ``.plan``
        always runs on TensorRT; asking it for ``cpu`` or ``cuda`` is an error.
    threads: CPU threads for ONNX Runtime or OpenVINO (None: the library's default).
    backend: ``auto`` (ONNX Runtime for ``.onnx``, TensorRT for ``.plan``), ``onnxruntime``,
        ``openvino`` (``.onnx`` on the CPU, bf16 where the CPU has it natively; see
        ``OpenVinoEngine``) or ``tensorrt`` (a ``.plan``).
    Raises FuseError for a missing, unreadable or incompatible model, or a backend that cannot run it.
    """
    path = Path(path)
    if provider not in PROVIDER_CHOICES:
        raise FuseError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDER_CHOICES)}", path)
    if backend not in BACKEND_CHOICES:
        raise FuseError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_CHOICES)}", path)
    if not path.is_file():
        raise FuseError("engine file not found; pass the model.onnx or model.plan written by fuse-export", path)
    suffix = path.suffix.lower()
    _check_backend(path, suffix, backend, provider)
    if suffix == ".onnx" and backend == "openvino":
        from fuse_runtime.engines.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(path, threads=threads)
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


def _check_backend(path: Path, suffix: str, backend: str, provider: str) -> None:
    """Refuse a backend that cannot run this kind of file, or a provider the backend does not have."""
    if backend in ("onnxruntime", "openvino") and suffix in (".plan", ".engine"):
        raise FuseError(
            f"a TensorRT plan runs only on TensorRT, not --backend {backend}; pass model.onnx to use {backend}", path
        )
    if backend == "tensorrt" and suffix == ".onnx":
        raise FuseError(
            "--backend tensorrt runs a TensorRT plan: pass model.plan (fuse-export --fp16 builds it), or run "
            "model.onnx through ONNX Runtime's TensorRT provider with --backend onnxruntime --provider tensorrt",
            path,
        )
    if backend == "openvino" and provider not in ("auto", "cpu"):
        raise FuseError(
            f"the OpenVINO backend runs on the CPU only, not --provider {provider}; use --backend onnxruntime "
            f"--provider {provider} for the GPU",
            path,
        )
