"""Build and run an FP16 TensorRT engine (``model.plan``) from ``model.fp16.onnx``.

The only module of fuse_export that imports ``tensorrt``; fuse_export imports it only when an engine
is to be built, so everything else works on machines without TensorRT.

One path serves TensorRT 10 and 11: the network is created strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT 11 is always strongly typed), so each
layer's precision is the one written in the FP16 ONNX graph (FP16 compute, FP32 where the graph
keeps it, float32 I/O) and no ``BuilderFlag.FP16`` is needed (TensorRT 11 removed it). Only a
TensorRT without strong typing falls back to weak typing with ``BuilderFlag.FP16``. TF32 is off
unless asked for, so the layers the graph keeps in FP32 really run in FP32.

The build uses one optimisation profile covering the batch range (H and W fixed), a memory-pool
(workspace) limit, and a persistent timing cache keyed by TensorRT version and compute capability
(``timing_cache_path``): a cache from another TensorRT or GPU is never read. Engines are specific to
the GPU model and TensorRT version that built them; ``gpu_info`` records both for the manifest.
Every failure of the builder or runtime is a FuseError naming driver, CUDA and TensorRT versions and
the fix. All TensorRT objects share the process's one logger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt
import torch

from fuse_runtime.atomic import atomic_path
from fuse_runtime.engines.nvidia import TENSORRT_FIX, shared_logger, versions_text
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, OUTPUT

GIB = 1 << 30


@dataclass(frozen=True)
class EngineBuild:
    """What a build produced and under which conditions."""

    typing: str
    """``strongly-typed`` or ``builder-flag-fp16`` (the fallback)."""
    tensorrt_version: str
    gpu: dict[str, Any]
    timing_cache: str
    """The keyed cache file used, or ``""`` when this TensorRT could not create a timing cache."""
    timing_cache_reused: bool
    workspace_bytes: int
    tf32: bool = False


def tensorrt_version() -> str:
    return str(trt.__version__)


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of the CUDA device engines are built for."""
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "name": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
        "device_index": device,
    }


def timing_cache_path(base: str | Path, version: str, compute_capability: str) -> Path:
    """``base`` with TensorRT version and compute capability in its name:
    ``tensorrt-timing.cache`` → ``tensorrt-timing-trt10.16.1.11-sm9.0.cache``."""
    base = Path(base)
    return base.with_name(f"{base.stem}-trt{version}-sm{compute_capability}{base.suffix}")


def failure(what: str, path: Path | None = None, device: int = 0) -> FuseError:
    """FuseError for a TensorRT failure: what failed, the versions involved and the fix."""
    return FuseError(f"{what} ({versions_text(tensorrt_version(), torch.version.cuda, device)}); {TENSORRT_FIX}", path)


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    image_size: int,
    batch: tuple[int, int, int],
    workspace_gb: float,
    timing_cache: str | Path,
    tf32: bool = False,
    device: int = 0,
) -> EngineBuild:
    """Parse ``onnx_path``, build an engine for batches ``batch`` = (min, opt, max) of
    ``image_size``² images and write it to ``plan_path`` (atomically).

    ``timing_cache``: the base name of the timing cache; the file used is ``timing_cache_path`` of it
    for this TensorRT and GPU. ``tf32``: let FP32 layers run in TF32 (off: exact FP32).
    Raises FuseError naming the ONNX file when TensorRT cannot start, parse or build.
    """
    onnx_path = Path(onnx_path)
    gpu = gpu_info(device)
    cache_path = timing_cache_path(timing_cache, tensorrt_version(), gpu["compute_capability"])
    logger = shared_logger(trt)
    builder = _started(lambda: trt.Builder(logger), "the TensorRT builder cannot start", onnx_path, device)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = _started(
        lambda: builder.create_network(1 << int(strongly_typed) if strongly_typed is not None else 0),
        "TensorRT cannot create a network", onnx_path, device,
    )
    parser = _started(lambda: trt.OnnxParser(network, logger), "TensorRT's ONNX parser cannot start", onnx_path, device)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FuseError(f"TensorRT {trt.__version__} cannot parse the ONNX graph: {errors}", onnx_path)

    config = _started(builder.create_builder_config, "TensorRT cannot create a builder config", onnx_path, device)
    workspace = int(workspace_gb * GIB)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if strongly_typed is None:
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is None:
            raise failure("this TensorRT has neither strong typing nor BuilderFlag.FP16", onnx_path, device)
        config.set_flag(fp16)
    profile = builder.create_optimization_profile()
    for name, channels in ((INPUT_FIRST, 3), (INPUT_SECOND, 1)):
        low, opt, high = ((n, channels, image_size, image_size) for n in batch)
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    state = _attach_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise failure(
            f"TensorRT could not build an engine (see its log above); a larger --workspace-gb (now "
            f"{workspace_gb:g}) or a smaller batch range may help",
            onnx_path, device,
        )
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    timing = config.get_timing_cache() if state != "unavailable" else None
    if timing is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(timing.serialize()))
    return EngineBuild(
        typing="strongly-typed" if strongly_typed is not None else "builder-flag-fp16",
        tensorrt_version=tensorrt_version(),
        gpu=gpu,
        timing_cache=str(cache_path) if timing is not None else "",
        timing_cache_reused=state == "reused",
        workspace_bytes=workspace,
        tf32=tf32,
    )


class PlanRunner:
    """A built engine loaded once (one deserialisation, one execution context) for many batches,
    run on its own CUDA stream (not the legacy default stream).

    Call it with ``ct`` float32 [N,3,S,S] and ``mri`` [N,1,S,S] → ``fused`` [N,3,S,S] float32; N must
    lie inside the engine's profile. Device buffers are torch CUDA tensors.
    """

    def __init__(self, plan_path: str | Path, device: int = 0) -> None:
        self.path = Path(plan_path)
        self._device = _torch_device(device)
        self._index = device
        runtime = _started(
            lambda: trt.Runtime(shared_logger(trt)), "the TensorRT runtime cannot start", self.path, device
        )
        self._engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise failure(
                "TensorRT cannot load this engine: it was built for another GPU or TensorRT version, or is "
                "damaged; rebuild it here with fuse-export --fp16",
                self.path, device,
            )
        self._context = _started(
            self._engine.create_execution_context, "TensorRT cannot create an execution context (GPU memory?)",
            self.path, device,
        )
        low, _, high = (shape[0] for shape in self._engine.get_tensor_profile_shape(INPUT_FIRST, 0))
        self.batch_range = (int(low), int(high))
        self._stream = _new_stream(self._device)

    def __call__(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        low, high = self.batch_range
        if not low <= len(ct) <= high:
            raise FuseError(
                f"batch of {len(ct)} is outside the engine's optimisation profile {low}..{high}; "
                "use a batch inside it or rebuild with a wider fuse-export --batch",
                self.path,
            )
        context = self._context
        inputs = {
            INPUT_FIRST: torch.from_numpy(np.ascontiguousarray(ct, np.float32)).to(self._device),
            INPUT_SECOND: torch.from_numpy(np.ascontiguousarray(mri, np.float32)).to(self._device),
        }
        for name, tensor in inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise FuseError(f"the engine refuses input {name!r} of shape {tuple(tensor.shape)}", self.path)
            context.set_tensor_address(name, tensor.data_ptr())
        dtype = torch.float16 if self._engine.get_tensor_dtype(OUTPUT) == trt.DataType.HALF else torch.float32
        fused = torch.empty(tuple(context.get_tensor_shape(OUTPUT)), dtype=dtype, device=self._device)
        context.set_tensor_address(OUTPUT, fused.data_ptr())
        self._stream.wait_stream(_current_stream(self._device))  # the copies above ran on the current stream
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise failure("TensorRT failed to run the engine (see its log above)", self.path, self._index)
        self._stream.synchronize()
        return fused.float().cpu().numpy()

    def close(self) -> None:
        self._context = None
        self._engine = None

    def __enter__(self) -> PlanRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_engine(plan_path: str | Path, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """Load the plan and run one batch (for many batches keep a ``PlanRunner``)."""
    with PlanRunner(plan_path) as runner:
        return runner(ct, mri)


def _torch_device(index: int) -> torch.device:
    return torch.device("cuda", index)


def _new_stream(device: torch.device) -> Any:
    return torch.cuda.Stream(device)


def _current_stream(device: torch.device) -> Any:
    return torch.cuda.current_stream(device)


def _started(create: Any, what: str, path: Path, device: int) -> Any:
    """``create()``, turning TensorRT's None or raw exception (a builder that cannot start raises
    TypeError) into a FuseError with the versions and the fix."""
    try:
        made = create()
    except (TypeError, RuntimeError) as error:
        raise failure(f"{what}: {error}", path, device) from None
    if made is None:
        raise failure(what, path, device)
    return made


def _attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> str:
    """Load the timing cache at ``path`` into ``config``, else a fresh one.

    Returns ``reused``, ``new`` or ``unavailable`` (this TensorRT could not create a timing cache:
    ``create_timing_cache`` returned None; the build goes on without one).
    """
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "reused"
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        return "unavailable"
    return "new"
