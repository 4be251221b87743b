"""Running a model over slices: the one chunk-and-pad loop every caller uses.

``infer_chunks`` cuts ``[S,...]`` inputs into batches of at most ``batch_size`` slices; a batch below
``min_batch`` (a fixed-batch engine, e.g. a TensorRT plan built for batch 8) is padded with blank
(zero) slices whose results are dropped. The model fuses each slice on its own, so the padding never
changes a result. ``infer_batch`` and ``infer_slices`` run an ``Engine`` the same way and turn any
backend failure into one FuseError.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fuse_runtime.engines.base import Engine
from fuse_runtime.errors import FuseError

__all__ = ["Infer", "infer_batch", "infer_chunks", "infer_slices", "pad_batch"]

Infer = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(ct [N,3,H,W], mri [N,1,H,W]) -> fused [N,3,H,W]``, float32 in [0,1]."""


def pad_batch(array: np.ndarray, count: int) -> np.ndarray:
    """``array`` ``[N,...]`` followed by zero slices up to ``count`` (unchanged when ``N >= count``)."""
    missing = count - len(array)
    if missing <= 0:
        return array
    return np.concatenate([array, np.zeros((missing, *array.shape[1:]), dtype=array.dtype)])


def infer_chunks(infer: Infer, ct: np.ndarray, mri: np.ndarray, batch_size: int, min_batch: int = 1) -> np.ndarray:
    """Run ``infer`` over ``ct`` ``[S,3,H,W]`` and ``mri`` ``[S,1,H,W]`` in batches of at most ``batch_size``.

    Batches below ``min_batch`` are padded with zero slices (see the module docstring). Returns
    float32 ``[S,3,H,W]``.
    """
    if batch_size < 1 or min_batch < 1:
        raise ValueError(f"batch_size and min_batch must be >= 1, got {batch_size} and {min_batch}")
    if len(ct) != len(mri):
        raise ValueError(f"ct has {len(ct)} slices but mri has {len(mri)}")
    outputs = []
    for start in range(0, len(ct), batch_size):
        a, b = ct[start : start + batch_size], mri[start : start + batch_size]
        count = len(a)
        fused = infer(pad_batch(a, min_batch), pad_batch(b, min_batch))
        outputs.append(np.asarray(fused, dtype=np.float32)[:count])
    if not outputs:
        return np.empty((0, 3, *ct.shape[2:]), dtype=np.float32)
    return np.concatenate(outputs)


def infer_slices(engine: Engine, ct: np.ndarray, mri: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Fuse ``[S,...]`` model inputs with ``engine``, ``batch_size`` slices per call (None: all at once),
    clamped to the engine's batch range. Raises FuseError for any engine failure."""
    low, high = engine.batch_range
    batch = min(max(batch_size or len(ct), low, 1), high)
    try:
        return infer_chunks(engine.infer, ct, mri, batch, low)
    except FuseError:
        raise
    except Exception as error:  # a backend failure must not stop the other pairs
        raise FuseError(f"the engine failed on this batch: {type(error).__name__}: {error}") from None


def infer_batch(engine: Engine, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """Run one batch ``ct [N,3,H,W]``, ``mri [N,1,H,W]`` → fused ``[N,3,H,W]`` (N inside the engine's
    maximum; below its minimum it is padded). Raises FuseError for any engine failure."""
    return infer_slices(engine, ct, mri)
