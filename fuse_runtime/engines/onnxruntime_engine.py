"""ONNX Runtime engine for ``model.onnx``: CPU, CUDA or TensorRT execution providers.

On a GPU the session gets its providers from :func:`session_providers`: TensorRT (when asked for) with
FP16, its engine and timing caches in a folder beside the model named by TensorRT version and GPU
(so a restart or a new batch size inside the profile reuses the built engine) and one optimisation
profile covering the manifest's batch range; then CUDA as its fallback, then the CPU; all on
``device``. Graph optimisations are fully on (``ORT_ENABLE_ALL``). On a GPU provider the inputs are bound with
IO binding and the output is allocated on the device once per batch shape and reused, so ONNX
Runtime does not reallocate it on every call.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

try:
    import onnxruntime as ort
except ImportError:  # the base install has no ONNX Runtime: the user picks a flavour
    ort = None

from fuse_runtime.engines.base import (
    REEXPORT_HINT,
    UNBOUNDED_BATCH,
    Engine,
    check_signature,
    find_manifest,
    model_settings,
)
from fuse_runtime.engines.nvidia import gpu_label
from fuse_runtime.errors import FuseError
from fuse_runtime.install import GPU_INSTALL, ONNXRUNTIME_MISSING
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, OUTPUT, Manifest
from fuse_runtime.preprocess import PreprocessConfig

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]

#: fuse's provider names → ONNX Runtime execution providers, in order of preference.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: What ``auto`` tries, best first. TensorRT is left to ``.plan`` files (built once by fuse-export and
#: parity-checked there) and to an explicit ``--provider tensorrt``, whose first start builds an engine
#: (later starts reuse it from the cache beside the model).
AUTO_ORDER = ("cuda", "cpu")
#: Folder beside the model holding the TensorRT provider's engine and timing caches.
TRT_CACHE_DIR = "ort-tensorrt-cache"
#: Batch profile when no manifest gives one (the manifest's own defaults).
DEFAULT_BATCH = Manifest.__dataclass_fields__["batch"].default_factory()

log = logging.getLogger(__name__)


class OnnxRuntimeEngine(Engine):
    """Runs ``model.onnx`` with ONNX Runtime.

    provider: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``tensorrt``. A requested
        provider that this onnxruntime build lacks falls back to the CPU with a notice.
    threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    device: CUDA device index for the CUDA and TensorRT providers.
    """

    def __init__(
        self, path: str | Path, provider: Provider = "auto", threads: int | None = None, device: int = 0
    ) -> None:
        self.path = Path(path)
        self.notices = []
        self.device = device
        if ort is None:
            raise FuseError(ONNXRUNTIME_MISSING, self.path)
        if device < 0:
            raise FuseError(f"device must be a CUDA device index >= 0, got {device}", self.path)
        if provider not in ("auto", *PROVIDERS):
            raise FuseError(f"unknown provider {provider!r}; use auto, cpu, cuda or tensorrt", self.path)
        if threads is not None and threads < 1:
            raise FuseError(f"threads must be >= 1, got {threads}", self.path)
        chosen = self._choose_provider(provider)
        available = ort.get_available_providers()
        manifest = find_manifest(self.path)
        providers = session_providers(
            chosen, available, self.path, manifest.batch if manifest else DEFAULT_BATCH,
            manifest.image_size if manifest else None, device,
            gpu_label(device) if chosen == "tensorrt" else "", _tensorrt_version() if chosen == "tensorrt" else "",
        )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=[name for name, _ in providers],
                provider_options=[opts for _, opts in providers],
            )
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise FuseError(f"ONNX Runtime cannot load the model ({error}); {REEXPORT_HINT}", self.path) from None
        self.provider = _short_name(self.session.get_providers()[0])
        if self.provider != chosen:
            self._notice(f"provider {chosen} could not be started; running on {self.provider} instead")
        self._check_signature()
        self.preprocess, self.image_size = self._read_preprocess()
        self.batch_range = self._batch_range()
        if self.provider == "tensorrt":  # a batch outside the profile would make TensorRT rebuild
            trt_options = providers[0][1]
            self.batch_range = (
                max(self.batch_range[0], _profile_batch(trt_options["trt_profile_min_shapes"])),
                min(self.batch_range[1], _profile_batch(trt_options["trt_profile_max_shapes"])),
            )
        self._binding_output: ort.OrtValue | None = None

    @property
    def description(self) -> str:
        chain = " -> ".join(_short_name(name) for name in self.session.get_providers()) if self.session else "closed"
        device = f" on GPU {self.device}" if self.provider != "cpu" else ""
        return f"ONNX Runtime {ort.__version__} (providers {chain}{device}) {self.path.name}: {self.shape_text}"

    def _run(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise FuseError("the engine was closed; open it again with open_engine", self.path)
        if self.provider == "cpu":
            (fused,) = self.session.run([OUTPUT], {INPUT_FIRST: ct, INPUT_SECOND: mri})
            return np.asarray(fused, dtype=np.float32)
        return self._run_bound(ct, mri)

    def _run_bound(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        """GPU path: inputs copied once to the device, output kept in a reused device buffer."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_FIRST, ct)
        binding.bind_cpu_input(INPUT_SECOND, mri)
        shape = (ct.shape[0], 3, self.image_size, self.image_size)
        if self._binding_output is None or tuple(self._binding_output.shape()) != shape:
            self._binding_output = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", self.device)
        binding.bind_ortvalue_output(OUTPUT, self._binding_output)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def close(self) -> None:
        """Drop the session (and its thread pool); the engine cannot run afterwards."""
        self._binding_output = None
        self.session = None

    def _choose_provider(self, requested: str) -> str:
        available = set(ort.get_available_providers())
        if requested == "auto":
            return next(name for name in AUTO_ORDER if PROVIDERS[name] in available)
        if PROVIDERS[requested] in available:
            return requested
        self._notice(
            f"provider {requested} is not available in this onnxruntime build "
            f"(it has: {', '.join(sorted(available))}); running on cpu instead. "
            f"For GPUs install ONNX Runtime's GPU flavour instead of the CPU one: {GPU_INSTALL}"
        )
        return "cpu"

    def _check_signature(self) -> None:
        inputs = {node.name: tuple(node.shape) for node in self.session.get_inputs()}
        check_signature(self.path, inputs, {node.name for node in self.session.get_outputs()})

    def _read_preprocess(self) -> tuple[PreprocessConfig, int]:
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        static_hw = tuple(self.session.get_inputs()[0].shape[2:])
        config, size, self.modalities = model_settings(self.path, metadata, static_hw)
        return config, size

    def _batch_range(self) -> tuple[int, int]:
        batch = self.session.get_inputs()[0].shape[0]
        if isinstance(batch, int) and batch > 0:
            return (batch, batch)
        return (1, UNBOUNDED_BATCH)

    def _notice(self, message: str) -> None:
        """Kept in ``notices`` for the caller to show once (fuse-run prints them), and logged at INFO."""
        log.info("%s: %s", self.path, message)
        self.notices.append(message)


def session_providers(
    chosen: str,
    available: Sequence[str],
    model_path: Path,
    batch: dict[str, int],
    image_size: int | None,
    device: int = 0,
    gpu_label: str = "",
    tensorrt_version: str = "",
) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime providers and their options, best first, for provider ``chosen``.

    ``tensorrt``: TensorRT (FP16, engine + timing cache in ``TRT_CACHE_DIR/trt<version>-<gpu>`` beside
    the model, one profile ``batch`` min/opt/max of ``image_size``² images) → CUDA → CPU; ``cuda``:
    CUDA → CPU; ``cpu``: CPU. Providers missing from ``available`` are left out; the CPU is always last.
    ``image_size`` None (no manifest) leaves the profile to TensorRT (it builds per new shape).
    """
    order = {"tensorrt": ("tensorrt", "cuda", "cpu"), "cuda": ("cuda", "cpu"), "cpu": ("cpu",)}[chosen]
    result: list[tuple[str, dict[str, Any]]] = []
    for name in order:
        ort_name = PROVIDERS[name]
        if ort_name not in available and name != "cpu":
            continue
        if name == "tensorrt":
            result.append(
                (ort_name, _tensorrt_options(model_path, batch, image_size, device, gpu_label, tensorrt_version))
            )
        elif name == "cuda":
            result.append((ort_name, {"device_id": device}))
        else:
            result.append((ort_name, {}))
    return result


def tensorrt_cache_dir(model_path: Path, gpu_label: str, tensorrt_version: str) -> Path:
    """Where the TensorRT provider keeps engines and timing caches for this TensorRT and GPU."""
    tag = "-".join(_slug(part) for part in (f"trt{tensorrt_version or 'unknown'}", gpu_label or "gpu"))
    return model_path.parent / TRT_CACHE_DIR / tag


def _tensorrt_options(
    model_path: Path, batch: dict[str, int], image_size: int | None, device: int, gpu_label: str, version: str
) -> dict[str, Any]:
    cache = str(tensorrt_cache_dir(model_path, gpu_label, version))
    options: dict[str, Any] = {
        "device_id": device,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    if image_size is not None:
        for key, which in (
            ("trt_profile_min_shapes", "min"), ("trt_profile_opt_shapes", "opt"), ("trt_profile_max_shapes", "max")
        ):
            n = int(batch[which])
            options[key] = (
                f"{INPUT_FIRST}:{n}x3x{image_size}x{image_size},{INPUT_SECOND}:{n}x1x{image_size}x{image_size}"
            )
    return options


def _profile_batch(shapes: str) -> int:
    """``"ct:8x3x256x256,mri:8x1x256x256"`` → 8."""
    return int(shapes.split(":", 1)[1].split("x", 1)[0])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def _tensorrt_version() -> str:
    """Version of the TensorRT libraries installed from wheels ('' when none is found)."""
    for name in (
        "tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt-libs", "tensorrt", "tensorrt-cu12", "tensorrt-cu13"
    ):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def _short_name(ort_provider: str) -> str:
    reverse = {value: key for key, value in PROVIDERS.items()}
    return reverse.get(ort_provider, ort_provider)
