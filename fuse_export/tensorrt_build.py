"""Build and run an FP16 TensorRT engine (``model.plan``) from ``model.fp16.onnx``.

The only module of fuse that imports ``tensorrt``; fuse_export imports it only when an engine is
to be built, so everything else works on machines without TensorRT.

One path serves TensorRT 10 and 11: the network is created strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT 9.x/10.x; always on and the flag ignored
in 11.x), so each layer's precision is the one written in the FP16 ONNX graph (FP16 compute, FP32
where the graph keeps it, float32 I/O). Only a TensorRT without strong typing falls back to weak
typing with ``BuilderFlag.FP16`` (a flag TensorRT 11 removed).

The build uses one optimisation profile covering the batch range (H and W fixed), a memory-pool
(workspace) limit, and a persistent timing cache: read before the build when present, written back
after, so a rebuild on the same GPU and TensorRT version skips the kernel timing it already did.
Engines are specific to the GPU model (compute capability) and TensorRT version that built them;
``gpu_info`` records both for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt
import torch

from fuse_runtime.atomic import atomic_path
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
    timing_cache_reused: bool
    workspace_bytes: int


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


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    image_size: int,
    batch: tuple[int, int, int],
    workspace_gb: float,
    timing_cache: str | Path,
) -> EngineBuild:
    """Parse ``onnx_path``, build an engine for batches ``batch`` = (min, opt, max) of
    ``image_size``² images and write it to ``plan_path`` (atomically).

    Raises FuseError naming the ONNX file when TensorRT cannot parse or build it.
    """
    onnx_path, timing_cache = Path(onnx_path), Path(timing_cache)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(strongly_typed) if strongly_typed is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FuseError(f"TensorRT {trt.__version__} cannot parse the ONNX graph: {errors}", onnx_path)

    config = builder.create_builder_config()
    workspace = int(workspace_gb * GIB)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if strongly_typed is None:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, channels in ((INPUT_FIRST, 3), (INPUT_SECOND, 1)):
        low, opt, high = ((n, channels, image_size, image_size) for n in batch)
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    reused = _attach_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FuseError(
            f"TensorRT {trt.__version__} could not build an engine (see its log above); "
            f"a larger --workspace-gb (now {workspace_gb:g}) or a smaller batch range may help",
            onnx_path,
        )
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(timing_cache) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return EngineBuild(
        typing="strongly-typed" if strongly_typed is not None else "builder-flag-fp16",
        tensorrt_version=tensorrt_version(),
        gpu=gpu_info(),
        timing_cache=str(timing_cache),
        timing_cache_reused=reused,
        workspace_bytes=workspace,
    )


def run_engine(plan_path: str | Path, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """Run a built engine once: ``ct`` float32 [N,3,S,S], ``mri`` [N,1,S,S] → ``fused`` [N,3,S,S].

    Device buffers are torch CUDA tensors; N must lie inside the engine's profile.
    """
    plan_path = Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise FuseError(
            f"TensorRT {trt.__version__} cannot load this engine; it was built for another GPU or "
            "TensorRT version: rebuild it here with fuse-export --fp16",
            plan_path,
        )
    context = engine.create_execution_context()
    inputs = {
        INPUT_FIRST: torch.from_numpy(np.ascontiguousarray(ct, np.float32)).cuda(),
        INPUT_SECOND: torch.from_numpy(np.ascontiguousarray(mri, np.float32)).cuda(),
    }
    low, _, high = (shape[0] for shape in engine.get_tensor_profile_shape(INPUT_FIRST, 0))
    if not low <= len(ct) <= high:
        raise FuseError(
            f"batch of {len(ct)} is outside the engine's optimisation profile {low}..{high}; "
            "use a batch inside it or rebuild with a wider fuse-export --batch",
            plan_path,
        )
    for name, tensor in inputs.items():
        if not context.set_input_shape(name, tuple(tensor.shape)):
            raise FuseError(f"the engine refuses input {name!r} of shape {tuple(tensor.shape)}", plan_path)
        context.set_tensor_address(name, tensor.data_ptr())
    dtype = torch.float16 if engine.get_tensor_dtype(OUTPUT) == trt.DataType.HALF else torch.float32
    fused = torch.empty(tuple(context.get_tensor_shape(OUTPUT)), dtype=dtype, device="cuda")
    context.set_tensor_address(OUTPUT, fused.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise FuseError("TensorRT failed to run the engine (see its log above)", plan_path)
    stream.synchronize()
    return fused.float().cpu().numpy()


def _attach_timing_cache(config: "trt.IBuilderConfig", path: Path) -> bool:
    """Load the timing cache at ``path`` into ``config`` (a fresh one when absent or stale).

    Returns True when an existing cache was reused.
    """
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if blob and config.set_timing_cache(cache, ignore_mismatch=False):
        return True
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False
