"""Classical pixel and multi-scale fusion rules: what the network has to beat.

Every rule takes two registered gray images ``a`` (CT, or visible) and ``b`` (MRI, or infrared) as
float ``[H, W]`` arrays in one intensity scale, [0, 1] or [0, 255] alike, and returns the fused
``[H, W]`` float32 image in that same scale. The multi-scale rules can overshoot the sources, so
their output is clipped to ``[min(a, b), max(a, b)]`` over both images (the range of the inputs,
which needs no knowledge of the scale).

* :func:`fuse_mean` — per-pixel mean.
* :func:`fuse_max` — per-pixel maximum.
* :func:`fuse_laplacian` — Laplacian pyramid (Burt & Adelson 1983; OpenCV ``pyrDown``/``pyrUp``):
  per detail coefficient the one of larger magnitude, the coarsest Gaussian level averaged.
* :func:`fuse_dwt` — 2-D discrete wavelet transform (PyWavelets): per detail coefficient the one of
  larger magnitude, the approximation band averaged (Li, Manjunath & Mitra 1995).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pywt

from fuse_runtime.errors import FuseError

LAPLACIAN_LEVELS = 4
DWT_WAVELET = "db2"
DWT_LEVELS = 3
DWT_MODE = "symmetric"


def fuse_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean ``(a + b) / 2``, ``[H, W]`` float32 in the inputs' scale."""
    a, b = _check_sources(a, b)
    return ((a + b) / 2.0).astype(np.float32)


def fuse_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel maximum, ``[H, W]`` float32 in the inputs' scale."""
    a, b = _check_sources(a, b)
    return np.maximum(a, b).astype(np.float32)


def fuse_laplacian(a: np.ndarray, b: np.ndarray, levels: int = LAPLACIAN_LEVELS) -> np.ndarray:
    """Laplacian-pyramid fusion with ``levels`` detail bands: max-abs details, mean base.

    Each image needs at least ``2**levels`` pixels along each side. Returns ``[H, W]`` float32,
    clipped to the inputs' joint range.
    """
    a, b = _check_sources(a, b)
    _check_levels(levels)
    if min(a.shape) < 2**levels:
        raise ValueError(f"levels={levels} needs images of at least {2**levels} px a side, got {a.shape}")
    pyramid_a, pyramid_b = _laplacian_pyramid(a, levels), _laplacian_pyramid(b, levels)
    fused = [_max_abs(da, db) for da, db in zip(pyramid_a[:-1], pyramid_b[:-1])]
    image = (pyramid_a[-1] + pyramid_b[-1]) / 2.0
    for detail in reversed(fused):
        image = cv2.pyrUp(image, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return _clip_to_sources(image, a, b)


def fuse_dwt(a: np.ndarray, b: np.ndarray, wavelet: str = DWT_WAVELET, levels: int = DWT_LEVELS) -> np.ndarray:
    """DWT fusion over ``levels`` decompositions: max-abs detail coefficients, mean approximation.

    ``wavelet`` is any discrete PyWavelets name (``"db2"``, ``"haar"``, ...); signal extension
    ``symmetric``. ``levels`` may not exceed ``pywt.dwt_max_level`` for the image size. Returns
    ``[H, W]`` float32, clipped to the inputs' joint range.
    """
    a, b = _check_sources(a, b)
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"wavelet must be a discrete PyWavelets wavelet such as 'db2' or 'haar', got {wavelet!r}")
    _check_levels(levels)
    max_level = pywt.dwt_max_level(min(a.shape), pywt.Wavelet(wavelet).dec_len)
    if levels > max_level:
        raise ValueError(f"levels={levels} is too deep for {wavelet} on a {a.shape} image (at most {max_level})")
    coeffs_a = pywt.wavedec2(a, wavelet, mode=DWT_MODE, level=levels)
    coeffs_b = pywt.wavedec2(b, wavelet, mode=DWT_MODE, level=levels)
    fused: list = [(coeffs_a[0] + coeffs_b[0]) / 2.0]
    for bands_a, bands_b in zip(coeffs_a[1:], coeffs_b[1:]):
        fused.append(tuple(_max_abs(da, db) for da, db in zip(bands_a, bands_b)))
    image = pywt.waverec2(fused, wavelet, mode=DWT_MODE)[: a.shape[0], : a.shape[1]]
    return _clip_to_sources(image, a, b)


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": fuse_mean,
    "max": fuse_max,
    "laplacian": fuse_laplacian,
    "dwt": fuse_dwt,
}
"""The baselines under their table names, each called with the defaults above."""


def _check_sources(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, image in (("a", a), ("b", b)):
        if image.ndim != 2 or image.size == 0:
            raise FuseError(f"source {name}: expected a non-empty [H,W] gray image, got shape {image.shape}")
        if not np.isfinite(image).all():
            raise FuseError(f"source {name}: the image has NaN or Inf pixels; fix the source before fusing")
    if a.shape != b.shape:
        raise FuseError(
            f"sources are not registered: shapes differ ({a.shape} vs {b.shape}); "
            "resample one onto the other's grid first"
        )
    return a, b


def _check_levels(levels: object) -> None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")


def _laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` band-pass images (finest first) followed by the coarsest Gaussian level."""
    pyramid = []
    current = image
    for _ in range(levels):
        smaller = cv2.pyrDown(current)
        expanded = cv2.pyrUp(smaller, dstsize=(current.shape[1], current.shape[0]))
        pyramid.append(current - expanded)
        current = smaller
    pyramid.append(current)
    return pyramid


def _max_abs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) >= np.abs(y), x, y)


def _clip_to_sources(image: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    return np.clip(image, low, high).astype(np.float32)
