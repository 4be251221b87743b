"""The six-part medical fusion loss (design-notes.md "Loss") and its SSIM and Sobel operators.

Why our own SSIM and Sobel rather than kornia / pytorch-msssim: the design fixes an 11×11 *box*
window with zero padding (average pooling, stride 1) and a plain 3×3 Sobel magnitude
sqrt(gx² + gy² + 1e-8). kornia's ``metrics.ssim`` and pytorch-msssim use a Gaussian window
(pytorch-msssim also drops the border instead of padding), and kornia's ``filters.sobel`` normalises
the kernel by 1/8, pads by replication and uses a different epsilon — each would change the loss
values and their balance against the design's weights. Both operators are a few lines of
``avg_pool2d``/``conv2d``; tests/train/test_losses.py proves them against scikit-image's uniform-window
SSIM and scipy's Sobel on interior pixels (where the padding choice cannot matter).

All inputs are in [0,1]. The loss is always computed in float32, also under bf16/fp16 autocast.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from fuse_train import metric_losses
from fuse_train.config import DetailTarget, LossWeights

#: Component names, in the order of the design (and of the logged history columns); the design's six,
#: then the four metric terms of :mod:`fuse_train.metric_losses` (weight 0 in the design).
COMPONENTS: tuple[str, ...] = (
    "content", "structure", "detail", "consistency", "gradient", "medical", "qabf", "vif", "mi", "ssim"
)
#: The design's six, computed at every step whatever their weights (they are cheap).
DESIGN_TERMS: tuple[str, ...] = COMPONENTS[:6]
#: The metric terms among them, computed by :func:`metric_terms` only where their weight is above 0.
METRIC_TERMS: tuple[str, ...] = COMPONENTS[6:]
#: Floor of the metric terms' pooled denominators.
_METRIC_FLOOR = 1e-8
#: ITU-R BT.601 luma weights for RGB → gray.
GRAY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: SSIM box window side in pixels and stability constants (for data range 1).
SSIM_WINDOW = 11
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
#: Added under the square root of the Sobel magnitude so its gradient stays finite at flat pixels.
SOBEL_EPS = 1e-8


class FusionLoss(nn.Module):
    """Weighted sum of the content, structure, detail, consistency, gradient and medical losses
    (the design's six) and the Qabf, VIF, MI and SSIM metric terms (off in the design).

    ``forward(fused [N,3,H,W], first [N,3,H,W], second [N,1,H,W]) -> (total, components)``; all
    images in [0,1]; ``first`` is the CT (visible) image, ``second`` the MRI (infrared) image.
    ``total`` is a float32 scalar carrying gradients to ``fused``; ``components`` maps each name in
    :attr:`components` to its detached, unweighted float32 scalar, so that
    ``total == sum(weights.<name> * components[name])``. A metric term whose weight is 0 is neither
    computed nor reported (VIF and SSIM in float64 are most of the loss's time).
    """

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights if weights is not None else LossWeights()
        self.components: tuple[str, ...] = DESIGN_TERMS + tuple(
            name for name in METRIC_TERMS if getattr(self.weights, name) > 0
        )

    def forward(
        self, fused: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _check_shapes(fused, first, second)
        with torch.autocast(device_type=fused.device.type, enabled=False):
            parts = medical_fusion_losses(
                fused.float(),
                first.float(),
                second.float(),
                threshold=self.weights.medical_threshold,
                detail_gain=self.weights.detail_gain,
                detail_gain_edge=self.weights.detail_gain_edge,
                detail_target=self.weights.detail_target,
                metrics=self.components[len(DESIGN_TERMS):],
            )
            total = sum(getattr(self.weights, name) * parts[name] for name in self.components)
        return total, {name: parts[name].detach() for name in self.components}


def medical_fusion_losses(
    fused: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    threshold: float = 0.5,
    detail_gain: float = 1.0,
    detail_gain_edge: float = 0.0,
    detail_target: DetailTarget = "magnitude",
    metrics: Collection[str] = METRIC_TERMS,
) -> dict[str, torch.Tensor]:
    """The unweighted components (not detached) for fused/first [N,3,H,W], second [N,1,H,W]: the
    design's six and the metric terms named in ``metrics``.

    content     L1(gray(fused), max(gray(first), second))
    structure   ½[(1 − SSIM(fused, first)) + (1 − SSIM(gray(fused), second))]
    detail      L1(∇fused, k·max(∇first, ∇second)), k = detail_gain (design: 1); with
                detail_target "vector", L1 of the Sobel (x, y) vector of fused to k × the vector of
                whichever source has the larger ∇ at that pixel (edge orientation too, not only strength);
                k is 1 where the chosen source's ∇ is at most detail_gain_edge (0: k everywhere)
    consistency ½[MSE(fused, first) + MSE(fused, second×3)]
    gradient    ½[L1(∇fused, ∇first) + L1(∇fused, ∇second)]
    medical     ½[MSE(gray(fused)·m₁, gray(first)·m₁) + MSE(gray(fused)·m₂, second·m₂)],
                m₁ = gray(first) > threshold, m₂ = second > threshold (means over all pixels)
    qabf        1 − Qabf(first, second, fused) / QABF_PERFECT, the batch's crops pooled
    vif         1 − ½[VIF(first, fused) + VIF(second, fused)], each pooled over the batch
    mi          1 − [MI(first, fused) + MI(second, fused)] / [H(first) + H(second)], mean over the batch
    ssim        1 − ½[SSIM(fused, first) + SSIM(fused, second)], the evaluation's 7×7 SSIM with
                data range 2 (not the structure term's 11×11 one), mean over the batch
                (all four on gray × 255, as fuse_runtime.metrics scores them; 0 for a perfect fusion;
                VIF and SSIM in float64, whose flat-region variances float32 rounding would swamp)

    ∇ is :func:`sobel_magnitude` of the gray image.
    """
    fused_gray = to_gray(fused)
    first_gray = to_gray(first)
    second_gray = second
    sobel_fused, sobel_first, sobel_second = (sobel_xy(image) for image in (fused_gray, first_gray, second_gray))
    grad_fused, grad_first, grad_second = (_magnitude(xy) for xy in (sobel_fused, sobel_first, sobel_second))
    take_first = grad_first >= grad_second
    target_grad = torch.where(take_first, grad_first, grad_second)
    gain = torch.where(target_grad > detail_gain_edge, detail_gain, 1.0) if detail_gain_edge > 0 else detail_gain
    if detail_target == "vector":
        detail = F.l1_loss(sobel_fused, gain * torch.where(take_first, sobel_first, sobel_second))
    elif detail_target == "magnitude":
        detail = F.l1_loss(grad_fused, gain * target_grad)
    else:
        raise ValueError(f"detail_target must be one of {', '.join(get_args(DetailTarget))}, got {detail_target!r}")
    first_mask = (first_gray > threshold).to(fused.dtype)
    second_mask = (second_gray > threshold).to(fused.dtype)
    return {
        "content": F.l1_loss(fused_gray, torch.maximum(first_gray, second_gray)),
        "structure": 0.5 * (ssim_loss(fused, first) + ssim_loss(fused_gray, second_gray)),
        "detail": detail,
        "consistency": 0.5 * (F.mse_loss(fused, first) + F.mse_loss(fused, second_gray.expand_as(fused))),
        "gradient": 0.5 * (F.l1_loss(grad_fused, grad_first) + F.l1_loss(grad_fused, grad_second)),
        "medical": 0.5
        * (
            F.mse_loss(fused_gray * first_mask, first_gray * first_mask)
            + F.mse_loss(fused_gray * second_mask, second_gray * second_mask)
        ),
        **metric_terms(fused_gray, first_gray, second_gray, metrics),
    }


def metric_terms(
    fused_gray: torch.Tensor,
    first_gray: torch.Tensor,
    second_gray: torch.Tensor,
    names: Collection[str] = METRIC_TERMS,
) -> dict[str, torch.Tensor]:
    """The metric terms among qabf, vif, mi and ssim that ``names`` asks for, of gray [N,1,H,W]
    images in [0,1] (see :func:`medical_fusion_losses`); the others are not computed at all."""
    fused_8, first_8, second_8 = (255.0 * image for image in (fused_gray, first_gray, second_gray))

    def qabf() -> torch.Tensor:
        kept, weight = metric_losses.qabf_parts(first_8, second_8, fused_8)
        return 1.0 - kept.sum() / weight.sum().clamp(min=_METRIC_FLOOR) / metric_losses.QABF_PERFECT

    def vif() -> torch.Tensor:
        parts = (metric_losses.vif_parts(source.double(), fused_8.double()) for source in (first_8, second_8))
        return (1.0 - 0.5 * sum(_pooled_ratio(kept, total) for kept, total in parts)).float()

    def mi() -> torch.Tensor:
        (mi_first, h_first), (mi_second, h_second) = (
            metric_losses.mutual_information(source, fused_8) for source in (first_8, second_8)
        )
        return (1.0 - (mi_first + mi_second) / (h_first + h_second).clamp(min=_METRIC_FLOOR)).mean()

    def ssim() -> torch.Tensor:
        first, second = (metric_losses.ssim(fused_8.double(), source.double()) for source in (first_8, second_8))
        return (1.0 - 0.5 * (first + second)).mean().float()

    terms = {"qabf": qabf, "vif": vif, "mi": mi, "ssim": ssim}
    unknown = set(names) - set(terms)
    if unknown:
        raise ValueError(f"unknown metric terms {sorted(unknown)}; choose from {', '.join(terms)}")
    return {name: term() for name, term in terms.items() if name in names}


def _pooled_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Σ numerator / Σ denominator over a batch; 1 where the batch has nothing to measure (VIF's convention)."""
    total = denominator.sum()
    return numerator.sum() / total if total > 0 else torch.ones_like(total)


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] RGB → [N,1,H,W] gray as 0.299 R + 0.587 G + 0.114 B; [N,1,H,W] passes through."""
    if image.shape[1] == 1:
        return image
    r, g, b = GRAY_WEIGHTS
    return r * image[:, 0:1] + g * image[:, 1:2] + b * image[:, 2:3]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """Per-pixel, per-channel SSIM [N,C,H,W] of x, y [N,C,H,W] in [0,1] (data range 1).

    Local means, variances and covariance over a window×window box (average pooling, stride 1,
    zero padding, divisor window² everywhere), population (biased) variances, C1 = 0.01²,
    C2 = 0.03². Away from the border (``window // 2`` pixels) this equals scikit-image's
    ``structural_similarity(gaussian_weights=False, use_sample_covariance=False, data_range=1)``.
    """
    pool = partial(F.avg_pool2d, kernel_size=window, stride=1, padding=window // 2)
    mu_x, mu_y = pool(x), pool(y)
    var_x = pool(x * x) - mu_x * mu_x
    var_y = pool(y * y) - mu_y * mu_y
    cov = pool(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return numerator / denominator


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − mean of :func:`ssim_map` (a scalar in [0, 2]; 0 for identical images)."""
    return 1.0 - ssim_map(x, y).mean()


def sobel_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """3×3 Sobel gradient magnitude sqrt(gx² + gy² + 1e-8) of gray [N,1,H,W], zero padding → [N,1,H,W].

    Unnormalised kernels (a unit step gives 4), as in scipy.ndimage.sobel.
    """
    return _magnitude(sobel_xy(gray))


def sobel_xy(gray: torch.Tensor) -> torch.Tensor:
    """3×3 Sobel derivatives (d/dx, d/dy) of gray [N,1,H,W], zero padding → [N,2,H,W]."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype, device=gray.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # [2,1,3,3]: d/dx, d/dy
    return F.conv2d(gray, kernels, padding=1)


def _magnitude(xy: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(xy[:, 0:1] ** 2 + xy[:, 1:2] ** 2 + SOBEL_EPS)


def _check_shapes(fused: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> None:
    for name, tensor, channels in (("fused", fused, 3), ("first", first, 3), ("second", second, 1)):
        if tensor.dim() != 4 or tensor.shape[1] != channels:
            raise ValueError(f"{name} must be [N,{channels},H,W], got shape {tuple(tensor.shape)}")
    if not (fused.shape[0] == first.shape[0] == second.shape[0]) or not (
        fused.shape[-2:] == first.shape[-2:] == second.shape[-2:]
    ):
        raise ValueError(
            "fused, first and second must share N, H, W, got "
            f"{tuple(fused.shape)}, {tuple(first.shape)} and {tuple(second.shape)}"
        )
