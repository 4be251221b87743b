"""Differentiable Qabf, VIF and SSIM: the evaluation's edge, fidelity and structure metrics as losses.

The design's six losses are proxies for what the fusion tables score. Two of those scores pull
against each other on CT–MRI (README "Release model"): Xydeas–Petrović Qabf rewards MRI edges drawn
into saturated CT bone, pixel-domain VIF penalises the darkening that drawing them costs. A proxy
(the detail loss's "k × the stronger gradient") fixes one point of that trade-off; these terms let
training weigh it as the metrics do. Qabf's strength term, for one, saturates once an edge keeps
about 70 % of its source's strength, which no L1 on gradients knows.

Each follows :mod:`fuse_runtime.metrics` operation for operation (its Sobel kernels and orientation,
Qabf's constants and its ``g_X == g_F`` quirk, VIF's Gaussian windows, 'valid' filtering,
subsampling and clamps, scikit-image's 7×7 uniform-window SSIM with ``data_range = 2``; the design's
structure loss is a different, 11×11 SSIM), on gray images in [0, 255] held as float tensors ``[N, 1, H, W]``; the one
difference is that nothing is rounded to 8 bits, so gradients exist. tests/train/test_metric_losses.py
checks them against the numpy metrics on real Harvard pairs. Each returns one value per image;
the ``*_parts`` functions return the numerator and denominator per image instead, so that a loss can
pool a batch of crops (a crop without edges, or with flat CT, then weighs nothing instead of being
undefined).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from fuse_runtime import metrics

#: Qabf of a fused image that keeps every edge of a source at full strength and orientation (relative
#: strength 1, orientation 1). Dividing by it puts such a fusion at 1, so ``1 - qabf / QABF_PERFECT``
#: is 0 for it; the metric's ``g_X == g_F`` quirk can score bit-identical edges up to 0.06 % higher.
QABF_PERFECT = (
    metrics.QABF_TG / (1.0 + math.exp(metrics.QABF_KG * (1.0 - metrics.QABF_DG)))
    * metrics.QABF_TA / (1.0 + math.exp(metrics.QABF_KA * (1.0 - metrics.QABF_DA)))
)
#: scikit-image's SSIM window for uniform weights.
_SSIM_WINDOW = 7
#: Floor of VIF's pooled denominator.
_EPS = 1e-12
#: Squared Sobel strength under which an orientation carries no gradient (see _sobel_strength_angle).
_ANGLE_FLOOR = 1e-12


def qabf(first: torch.Tensor, second: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """Xydeas–Petrović Qabf of ``fused`` for sources ``first``, ``second`` (all [N,1,H,W] in [0,255]) → [N].

    As :func:`fuse_runtime.metrics.qabf`; NaN for an image in which neither source has an edge.
    """
    numerator, denominator = qabf_parts(first, second, fused)
    return numerator / denominator


def qabf_parts(first: torch.Tensor, second: torch.Tensor, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qabf's edge-weighted preservation sum and its weight sum per image ([N] each)."""
    g_a, angle_a = _sobel_strength_angle(first)
    g_b, angle_b = _sobel_strength_angle(second)
    g_f, angle_f = _sobel_strength_angle(fused)
    q_af = _edge_preservation(g_a, angle_a, g_f, angle_f)
    q_bf = _edge_preservation(g_b, angle_b, g_f, angle_f)
    dims = (1, 2, 3)
    return (q_af * g_a + q_bf * g_b).sum(dims), (g_a + g_b).sum(dims)


def vif(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    """4-scale pixel-domain VIF of ``distorted`` against ``reference`` ([N,1,H,W] in [0,255]) → [N].

    As :func:`fuse_runtime.metrics.vif` for one source (the metric sums this over both sources).
    Images need at least 49 pixels a side for the four scales' 'valid' windows.
    """
    numerator, denominator = vif_parts(reference, distorted)
    return torch.where(denominator == 0.0, torch.ones_like(numerator), numerator / denominator.clamp(min=_EPS))


def vif_parts(reference: torch.Tensor, distorted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VIF's information sums: what ``distorted`` keeps of ``reference``, and what there is ([N] each)."""
    numerator = torch.zeros(reference.shape[0], dtype=reference.dtype, device=reference.device)
    denominator = torch.zeros_like(numerator)
    ref, dist = reference, distorted
    for scale in range(1, metrics.VIF_SCALES + 1):
        kernel = _gaussian(2 ** (metrics.VIF_SCALES - scale + 1) + 1, ref)
        if scale > 1:
            ref = _filter_valid(ref, kernel)[..., ::2, ::2]
            dist = _filter_valid(dist, kernel)[..., ::2, ::2]
        mu1, mu2 = _filter_valid(ref, kernel), _filter_valid(dist, kernel)
        sigma1_sq = (_filter_valid(ref * ref, kernel) - mu1 * mu1).clamp(min=0.0)
        sigma2_sq = (_filter_valid(dist * dist, kernel) - mu2 * mu2).clamp(min=0.0)
        sigma12 = _filter_valid(ref * dist, kernel) - mu1 * mu2

        eps = metrics.VIF_EPS
        gain = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - gain * sigma12
        flat_ref = sigma1_sq < eps
        gain = torch.where(flat_ref, 0.0, gain)
        sv_sq = torch.where(flat_ref, sigma2_sq, sv_sq)
        sigma1_sq = torch.where(flat_ref, 0.0, sigma1_sq)
        flat_dist = sigma2_sq < eps
        gain = torch.where(flat_dist, 0.0, gain)
        sv_sq = torch.where(flat_dist, 0.0, sv_sq)
        negative = gain < 0.0
        sv_sq = torch.where(negative, sigma2_sq, sv_sq)
        gain = torch.where(negative, 0.0, gain).clamp(min=0.0)
        sv_sq = sv_sq.clamp(min=eps)

        dims = (1, 2, 3)
        numerator = numerator + torch.log10(1.0 + gain * gain * sigma1_sq / (sv_sq + metrics.VIF_SIGMA_NSQ)).sum(dims)
        denominator = denominator + torch.log10(1.0 + sigma1_sq / metrics.VIF_SIGMA_NSQ).sum(dims)
    return numerator, denominator


def ssim(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """SSIM of two [N,1,H,W] images in [0,255] → [N], as :func:`fuse_runtime.metrics.ssim` for one source.

    scikit-image's ``structural_similarity(data_range=2)``: 7×7 uniform window, sample covariance,
    mean over the pixels whose window lies inside the image (which makes its border mode moot).
    Its constants are tiny on [0, 255] data, so bright flat regions need float64: in float32,
    E[x²] − E[x]² at 255 carries rounding noise as large as C2.
    """
    window = _SSIM_WINDOW
    pool = partial(F.avg_pool2d, kernel_size=window, stride=1)
    c1 = (0.01 * metrics.SSIM_DATA_RANGE) ** 2
    c2 = (0.03 * metrics.SSIM_DATA_RANGE) ** 2
    cov_norm = window * window / (window * window - 1)
    mu_x, mu_y = pool(first), pool(second)
    var_x = cov_norm * (pool(first * first) - mu_x * mu_x)
    var_y = cov_norm * (pool(second * second) - mu_y * mu_y)
    cov = cov_norm * (pool(first * second) - mu_x * mu_y)
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3))


def mutual_information(source: torch.Tensor, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MI(source, fused) and the source's entropy H(source), in nats, per image ([N,1,H,W] in [0,255] → [N], [N]).

    As :func:`fuse_runtime.metrics.mutual_information` for one source: the 256×256-bin joint gray
    histogram, the source's values rounded to levels. ``fused`` is binned softly instead of rounded
    (a value between two levels splits its count between them, in proportion), which equals the
    rounded histogram for whole-level images and gives MI a gradient. MI ≤ H(source), with equality
    when the fused image keeps every distinction the source makes.
    """
    batch = source.shape[0]
    levels = metrics.GRAY_LEVELS
    source_levels = source.detach().round().clamp(0, levels - 1).long().flatten(1)
    value = fused.clamp(0.0, levels - 1.0).flatten(1)
    low = value.detach().floor().clamp(max=levels - 2)
    upper_share = value - low
    codes = source_levels * levels + low.long()
    joint = torch.zeros(batch, levels * levels, dtype=fused.dtype, device=fused.device)
    joint = joint.scatter_add(1, codes, 1.0 - upper_share).scatter_add(1, codes + 1, upper_share)
    joint = (joint / value.shape[1]).view(batch, levels, levels)
    p_source, p_fused = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    present = joint > 0
    safe = torch.where(present, joint, 1.0)
    ratio = safe / torch.where(present, p_source * p_fused, 1.0)
    information = (torch.where(present, joint * torch.log(ratio), 0.0)).sum((1, 2))
    p = p_source.squeeze(2)
    entropy = -(torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)).sum(1)
    return information, entropy


def _gaussian(size: int, like: torch.Tensor) -> torch.Tensor:
    """The metric's normalised Gaussian factor (MATLAB ``fspecial('gaussian', size, size / 5)``)."""
    return torch.as_tensor(metrics._gaussian_1d(size), dtype=like.dtype, device=like.device)


def _filter_valid(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable correlation with ``kernel ⊗ kernel``, 'valid' region only ([N,1,H,W])."""
    rows = F.conv2d(image, kernel.view(1, 1, -1, 1))
    return F.conv2d(rows, kernel.view(1, 1, 1, -1))


def _sobel_strength_angle(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric's Sobel strength and orientation ``atan(s_y / s_x)`` (π/2 where ``s_x = 0``)."""
    smooth = torch.as_tensor(metrics._SOBEL_SMOOTH, dtype=image.dtype, device=image.device)
    diff = torch.as_tensor(metrics._SOBEL_DIFF, dtype=image.dtype, device=image.device)
    kernels = torch.stack([torch.outer(smooth, diff), torch.outer(-diff, smooth)]).unsqueeze(1)
    s = F.conv2d(image, kernels, padding=1)
    s_x, s_y = s[:, 0:1], s[:, 1:2]
    square = s_x * s_x + s_y * s_y
    edge = square > 0
    strength = torch.where(edge, torch.sqrt(torch.where(edge, square, 1.0)), 0.0)  # no 0/0 in the gradient
    vertical = s_x == 0
    # atan(s_y / s_x) through atan2, whose gradient stays finite for small s_x, folded back to
    # (-π/2, π/2). Below _ANGLE_FLOOR atan2's gradient underflows to NaN, and the orientation of so
    # faint a gradient does not matter: there it is the plain value, without a gradient.
    steep = square > _ANGLE_FLOOR
    angle = torch.atan2(torch.where(steep, s_y, 0.0), torch.where(steep, s_x, 1.0))
    angle = angle - math.pi * (angle > math.pi / 2) + math.pi * (angle < -math.pi / 2)
    faint = torch.atan(s_y.detach() / torch.where(vertical, 1.0, s_x.detach()))
    return strength, torch.where(vertical, math.pi / 2, torch.where(steep, angle, faint))


def _edge_preservation(
    g_x: torch.Tensor, angle_x: torch.Tensor, g_f: torch.Tensor, angle_f: torch.Tensor
) -> torch.Tensor:
    larger = torch.maximum(g_x, g_f)
    relative = torch.where(larger > 0, torch.minimum(g_x, g_f) / torch.where(larger > 0, larger, 1.0), 0.0)
    relative = torch.where(g_x == g_f, g_f, relative)
    orientation = 1.0 - (angle_x - angle_f).abs() / (math.pi / 2)
    strength_term = metrics.QABF_TG / (1.0 + torch.exp(metrics.QABF_KG * (relative - metrics.QABF_DG)))
    angle_term = metrics.QABF_TA / (1.0 + torch.exp(metrics.QABF_KA * (orientation - metrics.QABF_DA)))
    return strength_term * angle_term
