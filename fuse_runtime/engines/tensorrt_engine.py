"""TensorRT engine for ``model.plan`` (TensorRT 10/11 name-based tensor API, cuda-python runtime).

The only module that imports ``tensorrt`` and the CUDA bindings; ``open_engine`` imports it only when
a ``.plan`` is opened. A plan is tied to the GPU architecture and TensorRT version it was built with,
so the manifest beside it is checked first and a mismatch is refused with the way to rebuild.

Buffers: pinned host buffers and device buffers are allocated once for the profile's largest batch
and reused; each ``infer`` sets the input shapes, copies in on one CUDA stream, runs
``execute_async_v3`` and copies the result out on the same stream.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_runtime.engines.base import Engine, check_image_size, find_manifest
from fuse_runtime.engines.nvidia import TENSORRT_FIX, shared_logger, versions_text
from fuse_runtime.errors import FuseError
from fuse_runtime.install import GPU_INSTALL
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, OUTPUT, Manifest

REBUILD_HINT = (
    "rebuild the plan on this machine from model.onnx: fuse-export --fp16 (it writes model.plan and "
    "manifest.json), or serve model.onnx with --provider cuda"
)


@dataclass
class _Buffer:
    """One I/O tensor: pinned host array ``[max_batch, C, H, W]`` and its device twin."""

    name: str
    host: np.ndarray
    host_ptr: int
    device_ptr: int
    item_bytes: int
    """Bytes of one batch item."""


class TensorRTEngine(Engine):
    """Runs a serialized TensorRT engine (``.plan``) on the current CUDA device."""

    def __init__(self, path: str | Path, device: int = 0) -> None:
        self.path = Path(path)
        self.notices = []
        self.provider = "tensorrt"
        self._trt, self._cudart = _import_backends(self.path)
        self._device = device
        self._buffers: dict[str, _Buffer] = {}
        self._stream = None
        manifest = find_manifest(self.path)
        if manifest is None:
            raise FuseError(f"a TensorRT plan needs the manifest.json written beside it; {REBUILD_HINT}", self.path)
        self.preprocess = manifest.preprocess
        self.modalities = tuple(manifest.modalities)
        self._gpu_name, capability = self._current_gpu()
        self._check_compatible(manifest, capability)
        self._engine = self._deserialize()
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise self._failure("TensorRT could not create an execution context (out of GPU memory?)")
        self._check_signature()
        profile_min, _, profile_max = self._engine.get_tensor_profile_shape(INPUT_FIRST, 0)
        self.batch_range = (int(profile_min[0]), int(profile_max[0]))
        static_hw = tuple(int(v) for v in self._engine.get_tensor_shape(INPUT_FIRST)[2:])
        static_hw = static_hw if min(static_hw) > 0 else tuple(int(v) for v in profile_max[2:])
        self.image_size = check_image_size(self.path, manifest.image_size, self.preprocess, static_hw)
        self._stream = self._call(self._cudart.cudaStreamCreate())
        self._allocate()

    @property
    def description(self) -> str:
        return f"TensorRT {self._trt.__version__} on {self._gpu_name} {self.path.name}: {self.shape_text}"

    def _run(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        self._call(cudart.cudaSetDevice(self._device))
        count = ct.shape[0]
        for name, array in ((INPUT_FIRST, ct), (INPUT_SECOND, mri)):
            buffer = self._buffers[name]
            buffer.host[:count] = array
            if not self._context.set_input_shape(name, array.shape):
                raise FuseError(f"TensorRT refused input shape {array.shape} for {name!r}", self.path)
            self._call(
                cudart.cudaMemcpyAsync(
                    buffer.device_ptr,
                    buffer.host_ptr,
                    count * buffer.item_bytes,
                    cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self._stream,
                )
            )
        if not self._context.execute_async_v3(int(self._stream)):
            raise self._failure("TensorRT failed to run the batch (see the TensorRT log above)")
        out = self._buffers[OUTPUT]
        self._call(
            cudart.cudaMemcpyAsync(
                out.host_ptr,
                out.device_ptr,
                count * out.item_bytes,
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                self._stream,
            )
        )
        self._call(cudart.cudaStreamSynchronize(self._stream))
        return out.host[:count].astype(np.float32, copy=True)

    def close(self) -> None:
        cudart = self._cudart
        for buffer in self._buffers.values():
            cudart.cudaFree(buffer.device_ptr)
            cudart.cudaFreeHost(buffer.host_ptr)
        self._buffers.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        if getattr(self, "_buffers", None) or getattr(self, "_stream", None) is not None:
            try:
                self.close()
            except Exception:  # the CUDA runtime may already be gone at interpreter exit
                pass

    def _current_gpu(self) -> tuple[str, tuple[int, int]]:
        cudart = self._cudart
        self._call(cudart.cudaSetDevice(self._device))
        props = self._call(cudart.cudaGetDeviceProperties(self._device))
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return name, (int(props.major), int(props.minor))

    def _check_compatible(self, manifest: Manifest, capability: tuple[int, int]) -> None:
        built_trt = manifest.versions.get("tensorrt")
        if built_trt and _release(built_trt) != _release(self._trt.__version__):
            raise FuseError(
                f"the plan was built with TensorRT {built_trt} but this machine has TensorRT "
                f"{self._trt.__version__}; {REBUILD_HINT}",
                self.path,
            )
        gpu: dict[str, Any] = manifest.gpu or {}
        built_cc = _capability(gpu.get("compute_capability"))
        if built_cc is not None and built_cc != capability:
            raise FuseError(
                f"the plan was built for {gpu.get('name', 'another GPU')} (compute capability "
                f"{built_cc[0]}.{built_cc[1]}) but this GPU is {self._gpu_name} "
                f"({capability[0]}.{capability[1]}); {REBUILD_HINT}",
                self.path,
            )
        if gpu.get("name") and gpu["name"] != self._gpu_name:
            self.notices.append(
                f"the plan was built on {gpu['name']}, running on {self._gpu_name} (same architecture); "
                "rebuild on this GPU for the best speed"
            )

    def _failure(self, what: str) -> FuseError:
        """FuseError naming what failed, the driver/CUDA/TensorRT versions and the fix."""
        return FuseError(f"{what} ({versions_text(self._trt.__version__, self._cuda_runtime(), self._device)}); "
                         f"{TENSORRT_FIX}", self.path)

    def _cuda_runtime(self) -> str | None:
        try:
            error, version = self._cudart.cudaRuntimeGetVersion()
        except Exception:  # a broken CUDA install: the message says unknown
            return None
        return f"{int(version) // 1000}.{int(version) % 1000 // 10}" if int(error) == 0 else None

    def _deserialize(self) -> Any:
        trt = self._trt
        try:
            self._runtime = trt.Runtime(shared_logger(trt))
        except (TypeError, RuntimeError) as error:
            raise self._failure(f"the TensorRT runtime cannot start: {error}") from None
        if self._runtime is None:
            raise self._failure("the TensorRT runtime cannot start")
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise FuseError(f"cannot read the plan ({error.strerror})", self.path) from None
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise FuseError(
                "TensorRT could not load the plan: it is damaged or was built for another GPU or "
                f"TensorRT version ({versions_text(trt.__version__, self._cuda_runtime(), self._device)} here); "
                f"{REBUILD_HINT}",
                self.path,
            )
        return engine

    def _check_signature(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {name: engine.get_tensor_mode(name) for name in names}
        wanted = {
            INPUT_FIRST: trt.TensorIOMode.INPUT,
            INPUT_SECOND: trt.TensorIOMode.INPUT,
            OUTPUT: trt.TensorIOMode.OUTPUT,
        }
        if any(modes.get(name) != mode for name, mode in wanted.items()):
            raise FuseError(
                f"the plan's tensors are {sorted(modes)}, expected inputs 'ct', 'mri' and output 'fused'; "
                f"{REBUILD_HINT}",
                self.path,
            )

    def _allocate(self) -> None:
        """Pinned host and device buffers for the largest batch, addresses bound once."""
        cudart, trt, engine = self._cudart, self._trt, self._engine
        max_batch, size = self.batch_range[1], self.image_size
        for name, channels in ((INPUT_FIRST, 3), (INPUT_SECOND, 1), (OUTPUT, 3)):
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = (max_batch, channels, size, size)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            host_ptr = self._call(cudart.cudaMallocHost(nbytes))
            device_ptr = self._call(cudart.cudaMalloc(nbytes))
            raw = (ctypes.c_byte * nbytes).from_address(int(host_ptr))
            host = np.frombuffer(raw, dtype=dtype).reshape(shape)
            self._buffers[name] = _Buffer(name, host, int(host_ptr), int(device_ptr), nbytes // max_batch)
            if not self._context.set_tensor_address(name, int(device_ptr)):
                raise FuseError(f"TensorRT refused the device buffer for {name!r}", self.path)

    def _call(self, result: Any) -> Any:
        """Unpack a cuda-python ``(error, value...)`` tuple, raising FuseError on a CUDA error."""
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            _, text = self._cudart.cudaGetErrorString(error)
            message = text.decode() if isinstance(text, bytes) else str(text)
            raise self._failure(f"CUDA error {int(error)} ({message})")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)


def _import_backends(path: Path) -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError:
        raise FuseError(
            f"TensorRT is not installed, so a .plan cannot be run here: {GPU_INSTALL}; or run model.onnx instead",
            path,
        ) from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise FuseError(
                f"the CUDA Python bindings are missing: {GPU_INSTALL}", path
            ) from None
    return trt, cudart


def _release(version: str) -> tuple[str, ...]:
    """``"10.3.0.26"`` → ``("10", "3", "0")``: plans are portable across builds of one release only."""
    return tuple(str(version).split(".")[:3])


def _capability(value: Any) -> tuple[int, int] | None:
    """Compute capability as ``(major, minor)`` from ``"8.9"``, ``[8, 9]`` or ``"sm_89"``; None if absent."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    return int(text[:-1]), int(text[-1])
