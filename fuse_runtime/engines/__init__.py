"""Inference engines: ``open_engine(path)`` picks the library that runs an exported model fastest here.

TensorRT and the CUDA bindings are imported only when a ``.plan`` is opened, and OpenVINO only when it
is chosen, so the CPU runtime works without them.

``backend="auto"`` (:func:`choose_backend`): a ``.plan`` runs on TensorRT. A ``.onnx`` runs on ONNX
Runtime, except on a CPU-only machine whose CPU computes bf16 natively (AVX512-BF16/AMX), or for
``model.int8.onnx`` has int8 dot products (AMX-INT8/VNNI), when OpenVINO is installed and no ONNX
Runtime provider was named: there OpenVINO runs it in bf16 (or its int8 kernels for
``model.int8.onnx``), in latency mode unless ``streams`` asks for throughput (fuse-run on folders).
Measured on this project's 2-core AMX Xeon with the release model at 256 px
(``python -m benchmarks.latency``): OpenVINO bf16 19.8 slices/s against ONNX Runtime FP32 5.1 at batch
8, and ``fuse-run`` end to end 18.8 against 6.0 pairs/s, with every fusion metric on the 21 test pairs
within 0.004 of FP32 (``python -m benchmarks.quality --backend openvino``). On CPUs without native bf16
OpenVINO would have to run f32, where it was only ~10 % faster than ONNX Runtime (2-core AVX2 EPYC), so
ONNX Runtime stays the choice there. Naming ``provider`` (cpu, cuda, tensorrt), an ONNX Runtime concept,
selects ONNX Runtime. The choice and its reason are the engine's first notice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fuse_runtime.engines.base import UNBOUNDED_BATCH, Engine
from fuse_runtime.errors import FuseError

__all__ = [
    "UNBOUNDED_BATCH", "Engine", "open_engine", "choose_backend", "ENGINE_SUFFIXES", "PROVIDER_CHOICES",
    "BACKEND_CHOICES",
]

ENGINE_SUFFIXES = (".onnx", ".plan", ".engine")
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
BACKEND_CHOICES = ("auto", "onnxruntime", "openvino", "tensorrt")
INT8_SUFFIX = ".int8.onnx"
"""How fuse-export names the INT8 model (``model.int8.onnx``)."""


def open_engine(
    path: str | Path,
    provider: str = "auto",
    threads: int | None = None,
    backend: str = "auto",
    device: int = 0,
    streams: int = 1,
) -> Engine:
    """Load ``model.onnx`` (ONNX Runtime) or ``model.plan`` (TensorRT) as an Engine.

    provider: for ``.onnx`` — ``auto``, ``cpu``, ``cuda`` or ``tensorrt`` (ONNX Runtime execution
        providers; a missing one falls back to the CPU with a notice in ``engine.notices``). A ``.plan``
        always runs on TensorRT; asking it for ``cpu`` or ``cuda`` is an error.
    threads: CPU threads for ONNX Runtime or OpenVINO (None: the library's default).
    backend: ``auto`` (see :func:`choose_backend`), ``onnxruntime``, ``openvino`` (``.onnx`` on the
        CPU, bf16 where the CPU has it natively; see ``OpenVinoEngine``) or ``tensorrt`` (a ``.plan``).
    device: CUDA device index for TensorRT and ONNX Runtime's CUDA/TensorRT providers.
    streams: OpenVINO only: 1 (latency, the default for single pairs and the Python API), 0 (throughput,
        OpenVINO chooses the streams; what fuse-run uses for folders) or N streams. Other backends run
        one call at a time whatever it says.
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
    if suffix == ".onnx":
        why = None
        if backend == "auto":
            backend, why = choose_backend(provider, int8=path.name.lower().endswith(INT8_SUFFIX))
        engine: Engine | None = None
        if backend == "openvino":
            from fuse_runtime.engines.openvino_engine import OpenVinoEngine

            try:
                engine = OpenVinoEngine(path, threads=threads, streams=streams)
            except FuseError as error:
                if why is None:  # asked for by name: its error is the answer
                    raise
                why = f"backend auto: OpenVINO could not open the model ({error.reason}), so ONNX Runtime runs it"
        if engine is None:
            from fuse_runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

            engine = OnnxRuntimeEngine(path, provider=provider, threads=threads, device=device)
        if why is not None:
            engine.notices.insert(0, why)
        return engine
    if suffix in (".plan", ".engine"):
        if provider not in ("auto", "tensorrt"):
            raise FuseError(
                f"a TensorRT plan runs only on TensorRT, not --provider {provider}; pass model.onnx to use {provider}",
                path,
            )
        from fuse_runtime.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path, device=device)
    raise FuseError(
        f"unknown engine type {path.suffix!r}; pass a .onnx or .plan file written by fuse-export", path
    )


def choose_backend(
    provider: str = "auto", cpuinfo: str | Path | None = None, int8: bool = False
) -> tuple[str, str | None]:
    """The library ``backend="auto"`` runs an ``.onnx`` file with, and the reason (None when there is
    nothing to say: ONNX Runtime on a CPU without native bf16, or on a GPU).

    OpenVINO where it is installed, the CPU has native bf16 and neither a named ONNX Runtime provider
    nor ONNX Runtime's CUDA provider asks for ONNX Runtime; otherwise ONNX Runtime. ``int8``: the file
    is fuse-export's ``model.int8.onnx``, which OpenVINO also runs on CPUs with int8 dot products
    (AMX-INT8, AVX512-VNNI, AVX-VNNI) but no bf16. ``cpuinfo``: where the CPU flags are read (default
    /proc/cpuinfo; tests pass other CPUs' flags).
    """
    from fuse_runtime.cpu_features import CPUINFO, native_bf16, native_int8

    if provider != "auto":
        return "onnxruntime", None
    try:
        import onnxruntime
    except ImportError:  # no ONNX Runtime flavour installed: OpenVINO may still run the model
        onnxruntime = None
    if onnxruntime is not None and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "onnxruntime", None
    cpuinfo = CPUINFO if cpuinfo is None else cpuinfo
    native, reason = native_bf16(cpuinfo)
    if int8 and not native:
        native, reason = native_int8(cpuinfo)
    if not native:
        return "onnxruntime", None
    if importlib.util.find_spec("openvino") is None:
        return "onnxruntime", (
            f"backend auto: ONNX Runtime; {reason}, where OpenVINO runs it in bf16 about 4x faster "
            "(measured on a 2-core AMX Xeon, same fusion metrics): pip install 'fuse-ctmri[openvino]'"
        )
    return "openvino", (
        f"backend auto: OpenVINO, because {reason} and OpenVINO is installed (about 4x ONNX Runtime FP32 "
        "on a 2-core AMX Xeon, fusion metrics within 0.004); --backend onnxruntime keeps ONNX Runtime"
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
