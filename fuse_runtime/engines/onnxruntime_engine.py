"""ONNX Runtime engine for ``model.onnx``: CPU, CUDA or TensorRT execution providers.

Graph optimisations are fully on (``ORT_ENABLE_ALL``). On a GPU provider the inputs are bound with
IO binding and the output is allocated on the device once per batch shape and reused, so ONNX
Runtime does not reallocate it on every call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from fuse_runtime.engines.base import (
    REEXPORT_HINT,
    UNBOUNDED_BATCH,
    Engine,
    check_image_size,
    find_manifest,
    modalities_from_metadata,
    preprocess_from_metadata,
)
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, META_PREPROCESS, OUTPUT
from fuse_runtime.preprocess import PreprocessConfig

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]

#: fuse's provider names → ONNX Runtime execution providers, in order of preference.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: What ``auto`` tries, best first. TensorRT is left to ``.plan`` files (built once by fuse-export)
#: because the TensorRT provider would rebuild an engine at every start.
AUTO_ORDER = ("cuda", "cpu")

log = logging.getLogger(__name__)


class OnnxRuntimeEngine(Engine):
    """Runs ``model.onnx`` with ONNX Runtime.

    provider: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``tensorrt``. A requested
        provider that this onnxruntime build lacks falls back to the CPU with a notice.
    threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, path: str | Path, provider: Provider = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.notices = []
        if provider not in ("auto", *PROVIDERS):
            raise FuseError(f"unknown provider {provider!r}; use auto, cpu, cuda or tensorrt", self.path)
        if threads is not None and threads < 1:
            raise FuseError(f"threads must be >= 1, got {threads}", self.path)
        chosen = self._choose_provider(provider)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=_provider_list(chosen)
            )
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise FuseError(f"ONNX Runtime cannot load the model ({error}); {REEXPORT_HINT}", self.path) from None
        self.provider = _short_name(self.session.get_providers()[0])
        if self.provider != chosen:
            self._notice(f"provider {chosen} could not be started; running on {self.provider} instead")
        self._check_signature()
        self.preprocess, self.image_size = self._read_preprocess()
        self.batch_range = self._batch_range()
        self._binding_output: ort.OrtValue | None = None

    @property
    def description(self) -> str:
        low, high = self.batch_range
        high_text = "any" if high == UNBOUNDED_BATCH else str(high)
        return (
            f"ONNX Runtime {ort.__version__} ({self.provider}) {self.path.name}: "
            f"{self.image_size}x{self.image_size}, batch {low}..{high_text}"
        )

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
            self._binding_output = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0)
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
            "For GPUs install the gpu extra: pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13])"
        )
        return "cpu"

    def _check_signature(self) -> None:
        inputs = {node.name: node for node in self.session.get_inputs()}
        outputs = {node.name: node for node in self.session.get_outputs()}
        expected = {INPUT_FIRST: 3, INPUT_SECOND: 1}
        for name, channels in expected.items():
            node = inputs.get(name)
            if node is None or len(node.shape) != 4 or node.shape[1] != channels:
                found = {n: v.shape for n, v in inputs.items()}
                raise FuseError(
                    f"the model must take input {name!r} shaped [N,{channels},H,W] (found inputs {found}); "
                    f"{REEXPORT_HINT}",
                    self.path,
                )
        if OUTPUT not in outputs:
            raise FuseError(
                f"the model has no output {OUTPUT!r} (found {sorted(outputs)}); {REEXPORT_HINT}", self.path
            )

    def _read_preprocess(self) -> tuple[PreprocessConfig, int]:
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        static_hw = tuple(self.session.get_inputs()[0].shape[2:])
        manifest = find_manifest(self.path)
        if manifest is None:
            config, size = preprocess_from_metadata(self.path, metadata)
            self.modalities = modalities_from_metadata(self.path, metadata)
        else:
            config, size = manifest.preprocess, manifest.image_size
            self.modalities = tuple(manifest.modalities)
            if META_PREPROCESS in metadata and preprocess_from_metadata(self.path, metadata)[0] != config:
                raise FuseError(
                    "manifest.json beside the model and the model's own metadata disagree about "
                    f"preprocessing, so the manifest may belong to another model; {REEXPORT_HINT}",
                    self.path,
                )
        return config, check_image_size(self.path, size, config, static_hw)

    def _batch_range(self) -> tuple[int, int]:
        batch = self.session.get_inputs()[0].shape[0]
        if isinstance(batch, int) and batch > 0:
            return (batch, batch)
        return (1, UNBOUNDED_BATCH)

    def _notice(self, message: str) -> None:
        log.warning("%s: %s", self.path, message)
        self.notices.append(message)


def _provider_list(chosen: str) -> list[str]:
    return [PROVIDERS[chosen]] if chosen == "cpu" else [PROVIDERS[chosen], PROVIDERS["cpu"]]


def _short_name(ort_provider: str) -> str:
    reverse = {value: key for key, value in PROVIDERS.items()}
    return reverse.get(ort_provider, ort_provider)
