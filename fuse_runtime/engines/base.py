"""The small interface every inference engine offers, and what all engines share.

An engine turns model inputs into a fused image, nothing else: ``infer(ct [N,3,H,W], mri [N,1,H,W])
-> fused [N,3,H,W]``, float32 in [0,1] in and out, with ``H == W == image_size`` and ``N`` inside
``batch_range``. Preprocessing parameters travel with the model (manifest.json beside it, else the
ONNX metadata) and are exposed as ``preprocess``; an engine never falls back to default settings.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import (
    INPUT_FIRST,
    INPUT_SECOND,
    MANIFEST_NAME,
    META_IMAGE_SIZE,
    META_MODALITIES,
    META_PREPROCESS,
    OUTPUT,
    Manifest,
    read_manifest,
)
from fuse_runtime.preprocess import PreprocessConfig

UNBOUNDED_BATCH = 2**31 - 1
"""Upper end of ``batch_range`` for a model whose batch axis is dynamic and unlimited."""

REEXPORT_HINT = "re-export the model with fuse-export, which writes manifest.json and the ONNX metadata"


class Pending(Protocol):
    """A batch handed to ``Engine.submit``: ``result()`` waits for it and returns the fused batch (or
    raises what the engine raised). Call it once."""

    def result(self) -> np.ndarray: ...


class Done:
    """A batch that already ran, or failed to start (engines without asynchronous requests)."""

    def __init__(self, value: np.ndarray | None = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error

    def result(self) -> np.ndarray:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class Engine(ABC):
    """A loaded fusion model ready to run batches.

    Attributes set by every implementation:
        path: the model file.
        image_size: model input height and width in pixels.
        batch_range: ``(min, max)`` batch sizes one ``infer`` call accepts.
        preprocess: the PreprocessConfig the model was trained and exported with.
        modalities: the model's two inputs, e.g. ``("ct", "mri")`` or ``("vis", "ir")``.
        provider: the backend actually in use (``"cpu"``, ``"cuda"``, ``"tensorrt"``).
        notices: messages for the user (e.g. a requested provider was missing and what was used).

    ``in_flight``: how many batches a caller may ``submit`` before it takes the first result; 1 for
    engines that run one call at a time, more for a throughput engine whose requests run at once.
    """

    in_flight: int = 1

    path: Path
    image_size: int
    batch_range: tuple[int, int]
    preprocess: PreprocessConfig
    modalities: tuple[str, str]
    provider: str
    notices: list[str]

    @abstractmethod
    def _run(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        """Run validated, contiguous float32 inputs; return ``[N,3,H,W]`` float32."""

    @property
    @abstractmethod
    def description(self) -> str:
        """One line naming the model file, backend, input size and batch range."""

    @property
    def shape_text(self) -> str:
        """``256x256, batch 1..any``: the input size and batch range, for :attr:`description`."""
        low, high = self.batch_range
        return f"{self.image_size}x{self.image_size}, batch {low}..{'any' if high == UNBOUNDED_BATCH else high}"

    def infer(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        """Fuse a batch: ``ct`` float32 ``[N,3,H,W]`` and ``mri`` float32 ``[N,1,H,W]`` in [0,1].

        Returns float32 ``[N,3,H,W]`` in [0,1]. Raises FuseError naming the engine file when the
        shapes, the batch size or the image size do not fit this engine.
        """
        ct, mri = self.check_inputs(ct, mri)
        return self._run(ct, mri)

    def submit(self, ct: np.ndarray, mri: np.ndarray) -> Pending:
        """Start fusing a batch (same inputs and checks as ``infer``) and return at once where the
        engine runs requests asynchronously; ``result()`` on the returned object gives the fused batch.
        Engines without asynchronous requests run it here and return it done. Input errors raise here."""
        ct, mri = self.check_inputs(ct, mri)
        try:
            return Done(self._run(ct, mri))
        except Exception as error:  # handed to result(), as an asynchronous engine would
            return Done(error=error)

    def check_inputs(self, ct: np.ndarray, mri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate shapes against the engine; return both as C-contiguous float32."""
        size = self.image_size
        for name, array, channels in ((INPUT_FIRST, ct, 3), (INPUT_SECOND, mri, 1)):
            if array.ndim != 4 or array.shape[1] != channels:
                raise FuseError(
                    f"input {name!r} must be [N,{channels},H,W], got shape {tuple(array.shape)}", self.path
                )
            if array.shape[2:] != (size, size):
                raise FuseError(
                    f"this engine takes {size}x{size} images but input {name!r} is "
                    f"{array.shape[2]}x{array.shape[3]}; preprocess with the engine's own settings "
                    f"(image_size={size}) or export a model for the other size",
                    self.path,
                )
        if ct.shape[0] != mri.shape[0]:
            raise FuseError(f"batch sizes differ: ct has {ct.shape[0]}, mri has {mri.shape[0]}", self.path)
        low, high = self.batch_range
        if not low <= ct.shape[0] <= high:
            raise FuseError(
                f"batch of {ct.shape[0]} is outside the engine's range {low}..{high}; "
                "use a batch size inside it (fuse-run --batch-size) or rebuild the engine with a wider profile",
                self.path,
            )
        return (
            np.ascontiguousarray(ct, dtype=np.float32),
            np.ascontiguousarray(mri, dtype=np.float32),
        )

    def close(self) -> None:
        """Release the backend's resources (device memory, sessions)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def infer_batch(engine: Engine, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """Run one batch ``ct [N,3,H,W]``, ``mri [N,1,H,W]`` → fused ``[N,3,H,W]``.

    A batch below the engine's minimum (a fixed-batch engine) is padded with blank slices whose
    results are dropped. Raises FuseError for any engine failure.
    """
    return submit_batch(engine, ct, mri)()


def submit_batch(engine: Engine, ct: np.ndarray, mri: np.ndarray) -> Callable[[], np.ndarray]:
    """Start one batch as ``infer_batch`` runs it and return at once where the engine runs requests
    asynchronously; calling the result waits for the fused ``[N,3,H,W]`` or raises FuseError."""
    count, low = len(ct), engine.batch_range[0]
    if count < low:
        ct = np.concatenate([ct, np.zeros((low - count, *ct.shape[1:]), np.float32)])
        mri = np.concatenate([mri, np.zeros((low - count, *mri.shape[1:]), np.float32)])
    try:
        pending: Pending = engine.submit(ct, mri)
    except Exception as error:  # reported with the result: a backend failure must not stop the other pairs
        pending = Done(error=error)

    def result() -> np.ndarray:
        try:
            return pending.result()[:count]
        except FuseError:
            raise
        except Exception as error:
            raise FuseError(f"the engine failed on this batch: {type(error).__name__}: {error}") from None

    return result


def find_manifest(model_path: Path) -> Manifest | None:
    """The manifest.json beside ``model_path``, or None when there is none."""
    candidate = model_path.parent / MANIFEST_NAME
    return read_manifest(candidate) if candidate.is_file() else None


def model_settings(
    model_path: Path, metadata: dict[str, str], static_hw: Any
) -> tuple[PreprocessConfig, int, tuple[str, str]]:
    """Preprocessing, image size and modalities of an exported model: from the manifest.json beside
    it, else from its ONNX metadata (both must agree where both are there), checked against the
    graph's static H,W."""
    manifest = find_manifest(model_path)
    if manifest is None:
        config, size = preprocess_from_metadata(model_path, metadata)
        modalities = modalities_from_metadata(model_path, metadata)
    else:
        config, size = manifest.preprocess, manifest.image_size
        modalities = tuple(manifest.modalities)
        if META_PREPROCESS in metadata and preprocess_from_metadata(model_path, metadata)[0] != config:
            raise FuseError(
                "manifest.json beside the model and the model's own metadata disagree about "
                f"preprocessing, so the manifest may belong to another model; {REEXPORT_HINT}",
                model_path,
            )
    return config, check_image_size(model_path, size, config, static_hw), modalities  # type: ignore[return-value]


def check_signature(model_path: Path, inputs: dict[str, tuple[Any, ...] | None], outputs: set[str]) -> None:
    """The graph takes ``first`` [N,3,H,W] and ``second`` [N,1,H,W] and gives ``fused``; ``inputs`` maps
    each input name to its shape (None where the rank is unknown), ``outputs`` holds the output names."""
    for name, channels in ((INPUT_FIRST, 3), (INPUT_SECOND, 1)):
        shape = inputs.get(name)
        if shape is None or len(shape) != 4 or shape[1] != channels:
            raise FuseError(
                f"the model must take input {name!r} shaped [N,{channels},H,W] (found inputs {inputs}); "
                f"{REEXPORT_HINT}",
                model_path,
            )
    if OUTPUT not in outputs:
        raise FuseError(f"the model has no output {OUTPUT!r} (found {sorted(outputs)}); {REEXPORT_HINT}", model_path)


def preprocess_from_metadata(model_path: Path, metadata: dict[str, str]) -> tuple[PreprocessConfig, int]:
    """Preprocessing and image size from ONNX ``metadata_props`` (``fuse.preprocess``, ``fuse.image_size``)."""
    if META_PREPROCESS not in metadata:
        raise FuseError(
            f"the model carries no preprocessing settings (no {MANIFEST_NAME} beside it and no "
            f"{META_PREPROCESS!r} ONNX metadata), so it cannot be served faithfully; {REEXPORT_HINT}",
            model_path,
        )
    try:
        config = PreprocessConfig.from_dict(json.loads(metadata[META_PREPROCESS]))
        size = int(metadata.get(META_IMAGE_SIZE, config.image_size))
    except (ValueError, TypeError, json.JSONDecodeError) as error:
        raise FuseError(
            f"the model's {META_PREPROCESS!r} metadata is invalid ({error}); {REEXPORT_HINT}", model_path
        ) from None
    return config, size


def check_image_size(model_path: Path, declared: int, config: PreprocessConfig, static_hw: Any) -> int:
    """Make sure the declared size, the preprocessing size and the graph's static H,W agree."""
    sizes = {declared, config.image_size}
    if isinstance(static_hw, tuple) and all(isinstance(v, int) for v in static_hw):
        sizes |= set(static_hw)
    if len(sizes) != 1:
        raise FuseError(
            f"the model's image sizes disagree (manifest/metadata {declared}, preprocessing "
            f"{config.image_size}, graph {static_hw}); {REEXPORT_HINT}",
            model_path,
        )
    return declared


def modalities_from_metadata(model_path: Path, metadata: dict[str, str]) -> tuple[str, str]:
    """``fuse.modalities`` (``"ct,mri"``) as a pair; a model without it is a CT–MRI model."""
    names = tuple(name.strip().lower() for name in metadata.get(META_MODALITIES, "ct,mri").split(","))
    if len(names) != 2 or not all(names):
        raise FuseError(
            f"the model's {META_MODALITIES!r} metadata {names} is not two names; {REEXPORT_HINT}", model_path
        )
    return names  # type: ignore[return-value]
