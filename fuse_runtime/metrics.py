"""Objective image-fusion metrics, with the conventions of the image-fusion literature's tables.

Every metric works on 8-bit grayscale images held as float in [0, 255], ``[H, W]``: the two sources
``a`` (CT, or visible) and ``b`` (MRI, or infrared) and the fused image ``f``. Published tables are
computed on fused images saved as 8-bit files and read back as gray, so:

* a fused float image in [0, 1] is first quantised with :func:`to_8bit` (``f * 255``, rounded to the
  nearest integer, clipped to [0, 255]);
* an RGB fused image is reduced to its luminance with :func:`luminance` (ITU-R BT.601 weights
  ``0.299 R + 0.587 G + 0.114 B``, what OpenCV's ``COLOR_RGB2GRAY`` and MATLAB's ``rgb2gray`` use)
  and rounded, as reading the saved RGB file as gray does.

Conventions follow the Python evaluator used by the CDDFuse / SeAFusion line of papers and the
MATLAB code it mirrors (Xydeas–Petrović Qabf, Sheikh–Bovik pixel-domain VIF). Two-source metrics are
sums over the sources (MI, SCD, VIF, SSIM) or means (PSNR's MSE, CC), as each docstring says. With
``F = max(CT, MRI)`` on the 21 pairs of ``harvard/ct-mri-test`` they reproduce the reference figures
in ``shared/data/README.md`` to two decimals.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from fuse_runtime.errors import FuseError

METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC")
"""Keys of :func:`evaluate`'s result, in table order."""

GRAY_LEVELS = 256
PEAK = 255.0
BT601_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B."""

# Xydeas–Petrović edge-preservation constants (Xydeas & Petrović 2000; the values every table uses).
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8
QABF_L = 1.0
# Pixel-domain VIF (Sheikh & Bovik 2006): scales, HVS noise variance, numerical floor.
VIF_SCALES = 4
VIF_SIGMA_NSQ = 2.0
VIF_EPS = 1e-10
# SSIM data_range: the float default of older scikit-image ([-1, 1] → 2) that published tables used.
SSIM_DATA_RANGE = 2.0

# The reference code convolves with Sobel kernels [[1,2,1],[0,0,0],[-1,-2,-1]] (s_y) and
# [[-1,0,1],[-2,0,2],[-1,0,1]] (s_x); as correlations of separable factors (rows, then columns):
# s_x = smooth ⊗ diff and s_y = -diff ⊗ smooth, with diff = [1, 0, -1].
_SOBEL_SMOOTH = np.array([1.0, 2.0, 1.0])
_SOBEL_DIFF = np.array([1.0, 0.0, -1.0])


def evaluate(ct: np.ndarray, mri: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for one fused image.

    ``ct``, ``mri``, ``fused``: 8-bit images held as float in [0, 255], ``[H, W]`` gray or
    ``[H, W, 3]`` RGB (reduced to rounded BT.601 luminance); all of one height and width.
    Convert a fused [0, 1] model output with :func:`to_8bit` first.
    """
    a, b, f = (_as_gray8(image, name) for image, name in ((ct, "ct"), (mri, "mri"), (fused, "fused")))
    _check_pair(a, b, f)
    return {
        "EN": entropy(f),
        "SD": standard_deviation(f),
        "SF": spatial_frequency(f),
        "AG": average_gradient(f),
        "MI": mutual_information(a, b, f),
        "SCD": scd(a, b, f),
        "VIF": vif(a, b, f),
        "Qabf": qabf(a, b, f),
        "SSIM": ssim(a, b, f),
        "PSNR": psnr(a, b, f),
        "CC": correlation(a, b, f),
    }


def to_8bit(image: np.ndarray) -> np.ndarray:
    """Quantise a float image in [0, 1] to 8-bit values, as saving it to an 8-bit file does.

    Returns float64 of the same shape holding the integers ``clip(round(image * 255), 0, 255)``.
    """
    image = np.asarray(image, dtype=np.float64)
    return np.clip(np.round(image * PEAK), 0.0, PEAK)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of ``[..., 3]`` RGB (channel last), unrounded.

    The result is in the units of the input (an 8-bit RGB image gives gray in [0, 255]).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise FuseError(f"luminance needs RGB with 3 channels last, got shape {rgb.shape}")
    return rgb @ np.asarray(BT601_WEIGHTS)


def entropy(f: np.ndarray) -> float:
    """EN: Shannon entropy of the 256-bin gray histogram of ``f``, in bits.

    ``EN = -sum_l p_l log2 p_l`` over gray levels l = 0..255 (values rounded to integers).
    Roberts, Van Aardt & Ahmed, J. Appl. Remote Sens. 2 (2008) 023522.
    """
    p = _histogram(f) / f.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def standard_deviation(f: np.ndarray) -> float:
    """SD: population standard deviation of the gray values of ``f`` (divides by H·W), gray levels.

    Rao, Meas. Sci. Technol. 8 (1997) 355 (contrast of the fused image).
    """
    return float(np.std(f))


def spatial_frequency(f: np.ndarray) -> float:
    """SF: ``sqrt(RF² + CF²)``, RF and CF the RMS of horizontal and vertical neighbour differences.

    ``RF² = mean((f[i, j] - f[i, j-1])²)``, ``CF² = mean((f[i, j] - f[i-1, j])²)`` over the pixels
    where the difference exists. Eskicioglu & Fisher, IEEE Trans. Commun. 43 (1995) 2959.
    """
    rf2 = np.mean(np.diff(f, axis=1) ** 2)
    cf2 = np.mean(np.diff(f, axis=0) ** 2)
    return float(np.sqrt(rf2 + cf2))


def average_gradient(f: np.ndarray) -> float:
    """AG: ``mean(sqrt((gx² + gy²) / 2))`` over all pixels, gray levels per pixel.

    ``gx``, ``gy`` are central differences inside the image and one-sided differences on its border
    (MATLAB's ``gradient`` / ``numpy.gradient``), the convention of the MATLAB and Python fusion
    evaluators. Cui et al., Opt. Commun. 341 (2015) 199.
    """
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def mutual_information(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """MI: ``MI(A, F) + MI(B, F)``, each from the 256×256-bin joint gray histogram, in nats.

    ``MI(X, F) = sum p(x, f) ln(p(x, f) / (p(x) p(f)))``. The natural logarithm is the literature's
    convention (``sklearn.metrics.mutual_info_score`` in the Python evaluators): the reference 3.63
    for pixel-max fusion in shared/data/README.md is in nats (it would read 5.24 in bits; divide by
    ln 2 to convert). Qu, Zhang & Yan, Electron. Lett. 38 (2002) 313.
    """
    return _mutual_information(a, f) + _mutual_information(b, f)


def scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """SCD, sum of the correlations of differences: ``r(F - B, A) + r(F - A, B)``, in [-2, 2].

    ``r`` is Pearson's correlation over all pixels; a constant image has no linear relation to
    anything and its correlation is taken as 0 (e.g. when F equals a source). Aslantas & Bendes,
    AEU Int. J. Electron. Commun. 69 (2015) 1890.
    """
    return _pearson(f - b, a) + _pearson(f - a, b)


def vif(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """VIF: ``VIF(A, F) + VIF(B, F)``, 4-scale pixel-domain VIF with ``sigma_nsq = 2``.

    Per scale s = 1..4 a Gaussian window of ``N = 2^(5-s) + 1`` pixels and sigma ``N / 5``
    ('valid' filtering; before scales 2–4 the images are filtered and subsampled by 2); local
    variances give the gain ``g`` and distortion variance ``sv²`` and
    ``VIF = sum log10(1 + g² σ_ref² / (sv² + σ_n²)) / sum log10(1 + σ_ref² / σ_n²)`` summed over
    scales, with the reference code's clamps (negative gain → 0). A constant reference makes the
    ratio 0/0, which the reference code reports as 1. Sheikh & Bovik, IEEE TIP 15 (2006) 430.
    """
    return _vif_one(a, f) + _vif_one(b, f)


def qabf(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Qabf: Xydeas–Petrović gradient-based fusion performance, in [0, 1].

    Sobel strength ``g`` and orientation ``α = atan(s_y / s_x)`` (π/2 where ``s_x = 0``) with zero
    padding; relative strength ``G = min(g_X, g_F) / max(g_X, g_F)`` and orientation
    ``Α = 1 - |α_X - α_F| / (π/2)``; preservation
    ``Q^XF = Tg / (1 + e^{kg (G - Dg)}) · Ta / (1 + e^{ka (Α - Da)})`` with Tg 0.9994, kg -15,
    Dg 0.5, Ta 0.9879, ka -22, Da 0.8; ``Qabf = sum(Q^AF g_A^L + Q^BF g_B^L) / sum(g_A^L + g_B^L)``,
    L = 1. As in the reference MATLAB code, where ``g_X == g_F`` the relative strength is set to
    ``g_F`` itself (so equal non-zero strengths saturate the sigmoid). NaN when neither source has
    an edge. Xydeas & Petrović, Electron. Lett. 36 (2000) 308.
    """
    g_a, angle_a = _sobel_strength_angle(a)
    g_b, angle_b = _sobel_strength_angle(b)
    g_f, angle_f = _sobel_strength_angle(f)
    weight_a, weight_b = g_a**QABF_L, g_b**QABF_L
    total = float(np.sum(weight_a + weight_b))
    if total == 0.0:
        return math.nan
    q_af = _edge_preservation(g_a, angle_a, g_f, angle_f)
    q_bf = _edge_preservation(g_b, angle_b, g_f, angle_f)
    return float(np.sum(q_af * weight_a + q_bf * weight_b) / total)


def ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """SSIM: ``SSIM(A, F) + SSIM(B, F)``, scikit-image's with ``data_range = 2``, in [-2, 2].

    7×7 uniform window, K1 0.01, K2 0.03, sample covariance. ``data_range = 2`` (the float
    default of older scikit-image, which published tables were computed with) makes the stabilising
    constants negligible on [0, 255] data, so this is mostly the structure term. Wang et al.,
    IEEE TIP 13 (2004) 600.
    """
    return float(
        structural_similarity(f, a, data_range=SSIM_DATA_RANGE)
        + structural_similarity(f, b, data_range=SSIM_DATA_RANGE)
    )


def psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """PSNR in dB: ``10 log10(255² / MSE)``, ``MSE = (MSE(A, F) + MSE(B, F)) / 2``.

    Peak 255 (the 8-bit range), as in the VIFB/MEFB and SeAFusion evaluators (CDDFuse's evaluator
    uses ``max(F)²`` instead, which differs only when F never reaches 255). Infinite when F equals
    both sources. Jagalingam & Hegde, Aquatic Procedia 4 (2015) 133.
    """
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2.0
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(PEAK**2 / mse))


def correlation(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """CC: mean Pearson correlation ``(r(A, F) + r(B, F)) / 2``, in [-1, 1].

    A constant image's correlation is taken as 0. Ma et al., Inf. Fusion 45 (2019) 153 (CC as used
    in the fusion tables).
    """
    return (_pearson(a, f) + _pearson(b, f)) / 2.0


def _as_gray8(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = np.round(luminance(image))
    if image.ndim != 2:
        raise FuseError(f"{name}: expected an [H,W] gray or [H,W,3] RGB image, got shape {image.shape}")
    if image.size == 0:
        raise FuseError(f"{name}: the image is empty")
    if not np.isfinite(image).all():
        raise FuseError(f"{name}: the image has NaN or Inf pixels; fix the source before evaluating")
    if image.min() < 0.0 or image.max() > PEAK:
        raise FuseError(
            f"{name}: values span [{image.min():g}, {image.max():g}], outside the 8-bit range [0, 255]; "
            "scale a [0,1] image with fuse_runtime.metrics.to_8bit first"
        )
    return image


def _check_pair(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> None:
    if not a.shape == b.shape == f.shape:
        raise FuseError(
            f"ct, mri and fused must have one shape, got {a.shape}, {b.shape} and {f.shape}; "
            "restore the fused image to the sources' geometry first"
        )
    if f.max() <= 1.0 < max(a.max(), b.max()):
        raise FuseError(
            "fused looks like a [0,1] image while the sources are 8-bit; "
            "scale it with fuse_runtime.metrics.to_8bit first"
        )


def _histogram(image: np.ndarray) -> np.ndarray:
    return np.bincount(_levels(image).ravel(), minlength=GRAY_LEVELS).astype(np.float64)


def _levels(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, GRAY_LEVELS - 1).astype(np.intp)


def _mutual_information(x: np.ndarray, f: np.ndarray) -> float:
    codes = _levels(x).ravel() * GRAY_LEVELS + _levels(f).ravel()
    joint = np.bincount(codes, minlength=GRAY_LEVELS**2).reshape(GRAY_LEVELS, GRAY_LEVELS) / codes.size
    p_x, p_f = joint.sum(axis=1), joint.sum(axis=0)
    rows, cols = np.nonzero(joint)
    p = joint[rows, cols]
    return float(np.sum(p * np.log(p / (p_x[rows] * p_f[cols]))))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if denominator == 0.0:
        return 0.0
    return float(np.sum(dx * dy) / denominator)


def _gaussian_1d(size: int) -> np.ndarray:
    """Normalised 1-D factor of MATLAB's ``fspecial('gaussian', size, size / 5)`` (it is separable)."""
    sigma = size / 5.0
    half = (size - 1) / 2.0
    x = np.arange(-half, half + 1.0)
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation with ``kernel ⊗ kernel``, keeping only the 'valid' region."""
    r = (kernel.size - 1) // 2
    rows = ndimage.correlate1d(image, kernel, axis=0, mode="constant")[r : image.shape[0] - r]
    return ndimage.correlate1d(rows, kernel, axis=1, mode="constant")[:, r : image.shape[1] - r]


def _vif_one(ref: np.ndarray, dist: np.ndarray) -> float:
    numerator = denominator = 0.0
    for scale in range(1, VIF_SCALES + 1):
        kernel = _gaussian_1d(2 ** (VIF_SCALES - scale + 1) + 1)
        if scale > 1:
            ref = _filter_valid(ref, kernel)[::2, ::2]
            dist = _filter_valid(dist, kernel)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, kernel), _filter_valid(dist, kernel)
        sigma1_sq = np.maximum(_filter_valid(ref * ref, kernel) - mu1 * mu1, 0.0)
        sigma2_sq = np.maximum(_filter_valid(dist * dist, kernel) - mu2 * mu2, 0.0)
        sigma12 = _filter_valid(ref * dist, kernel) - mu1 * mu2

        gain = sigma12 / (sigma1_sq + VIF_EPS)
        sv_sq = sigma2_sq - gain * sigma12
        flat_ref = sigma1_sq < VIF_EPS
        gain[flat_ref] = 0.0
        sv_sq[flat_ref] = sigma2_sq[flat_ref]
        sigma1_sq[flat_ref] = 0.0
        flat_dist = sigma2_sq < VIF_EPS
        gain[flat_dist] = 0.0
        sv_sq[flat_dist] = 0.0
        negative = gain < 0.0
        sv_sq[negative] = sigma2_sq[negative]
        gain[negative] = 0.0
        sv_sq = np.maximum(sv_sq, VIF_EPS)

        numerator += float(np.sum(np.log10(1.0 + gain * gain * sigma1_sq / (sv_sq + VIF_SIGMA_NSQ))))
        denominator += float(np.sum(np.log10(1.0 + sigma1_sq / VIF_SIGMA_NSQ)))
    if denominator == 0.0:
        return 1.0
    return numerator / denominator


def _correlate_separable(image: np.ndarray, along_rows: np.ndarray, along_cols: np.ndarray) -> np.ndarray:
    """Correlation with ``outer(along_rows, along_cols)``, zero padding, same size."""
    out = ndimage.correlate1d(image, along_rows, axis=0, mode="constant")
    return ndimage.correlate1d(out, along_cols, axis=1, mode="constant")


def _sobel_strength_angle(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel gradient strength and orientation, zero padding ('same' size), as in the Qabf code."""
    s_x = _correlate_separable(image, _SOBEL_SMOOTH, _SOBEL_DIFF)
    s_y = _correlate_separable(image, -_SOBEL_DIFF, _SOBEL_SMOOTH)
    strength = np.hypot(s_x, s_y)
    angle = np.full_like(image, math.pi / 2.0)
    np.arctan(np.divide(s_y, s_x, where=s_x != 0, out=np.zeros_like(s_y)), where=s_x != 0, out=angle)
    return strength, angle


def _edge_preservation(g_x: np.ndarray, angle_x: np.ndarray, g_f: np.ndarray, angle_f: np.ndarray) -> np.ndarray:
    larger = np.maximum(g_x, g_f)
    relative = np.divide(np.minimum(g_x, g_f), larger, out=np.zeros_like(larger), where=larger > 0)
    relative = np.where(g_x == g_f, g_f, relative)
    orientation = 1.0 - np.abs(angle_x - angle_f) / (math.pi / 2.0)
    strength_term = QABF_TG / (1.0 + np.exp(QABF_KG * (relative - QABF_DG)))
    angle_term = QABF_TA / (1.0 + np.exp(QABF_KA * (orientation - QABF_DA)))
    return strength_term * angle_term


def pair_metrics(ct: np.ndarray, mri: np.ndarray, fused: np.ndarray) -> dict[str, float | None]:
    """Fusion metrics of one pair averaged over slices, on 8-bit values (what fuse-run reports).

    ``ct``, ``mri``: normalised inputs ``[S,H,W]`` in [0,1] (what the model was given, at the native
    size); ``fused``: the written 8-bit result ``[S,H,W,3]`` or ``[S,H,W]`` (luminance taken here).
    Slices where a metric is undefined are left out of its mean (None when it is undefined on all).
    """
    per_slice = [evaluate(to_8bit(a), to_8bit(b), f.astype(np.float64)) for a, b, f in zip(ct, mri, fused)]
    means: dict[str, float | None] = {}
    for name in per_slice[0]:
        finite = [v[name] for v in per_slice if v[name] is not None and np.isfinite(v[name])]
        means[name] = float(np.mean(finite)) if finite else None
    return means
