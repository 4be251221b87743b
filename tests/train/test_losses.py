"""FusionLoss on real Harvard CT/MRI slices: zero on identical inputs, positive otherwise, weighted
total, gradients, bf16 autocast, and the SSIM / Sobel operators checked against scikit-image / scipy."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from fuse_train.config import LossWeights, TrainConfig
from fuse_train.losses import (
    COMPONENTS,
    FusionLoss,
    medical_fusion_losses,
    sobel_magnitude,
    sobel_xy,
    ssim_loss,
    ssim_map,
    to_gray,
)

SLICES = ("20005", "28015")
#: The design's weights with every metric term on, so that every component is computed.
EVERY_TERM = LossWeights(qabf=1.0, vif=1.0, mi=1.0, ssim=1.0)


def _read_gray(path: Path) -> torch.Tensor:
    """8-bit PNG → [1,1,H,W] float32 in [0,1]."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, f"cannot read {path}"
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]


@pytest.fixture(scope="module")
def pair(harvard_train: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 real registered pairs: ct [2,3,256,256] (gray ×3), mri [2,1,256,256]."""
    ct = torch.cat([_read_gray(harvard_train / "CT" / f"{s}.png") for s in SLICES])
    mri = torch.cat([_read_gray(harvard_train / "MRI" / f"{s}.png") for s in SLICES])
    return ct.expand(-1, 3, -1, -1).contiguous(), mri


@pytest.fixture(scope="module")
def fused(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A plausible but imperfect fused image: the mean of the two sources, [2,3,H,W]."""
    ct, mri = pair
    return 0.5 * (ct + mri.expand_as(ct))


def test_identical_inputs_give_zero_components(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    gray = pair[0][:, :1]
    rgb = gray.expand(-1, 3, -1, -1)
    total, _ = FusionLoss(LossWeights())(rgb, rgb, gray)
    _, parts = FusionLoss(EVERY_TERM)(rgb, rgb, gray)
    assert set(parts) == set(COMPONENTS)
    for name in COMPONENTS:
        # Qabf scores bit-identical edge strengths by its g_X == g_F quirk, a hair above QABF_PERFECT.
        assert parts[name].item() == pytest.approx(0.0, abs=1e-3 if name == "qabf" else 1e-5), name
    assert total.item() == pytest.approx(0.0, abs=1e-4)


def test_different_inputs_give_positive_components(
    pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor
) -> None:
    ct, mri = pair
    assert (ct[:, 0] > 0.5).any() and (mri > 0.5).any(), "both medical masks must be non-empty"
    _, parts = FusionLoss(EVERY_TERM)(fused, ct, mri)
    assert set(parts) == set(COMPONENTS)
    for name in COMPONENTS:
        assert parts[name].item() > 1e-4, name
        assert parts[name].dtype == torch.float32 and parts[name].dim() == 0
        assert not parts[name].requires_grad


@pytest.mark.parametrize(
    "weights",
    [
        LossWeights(),
        LossWeights(1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        LossWeights(content=1.0, structure=0.0, detail=0.0, consistency=0.0, gradient=0.0, medical=0.0),
        LossWeights(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        LossWeights(medical=4.0, medical_threshold=0.3),
        LossWeights(vif=20.0, mi=3.0, ssim=8.0),
    ],
)
def test_total_is_weighted_sum(
    pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor, weights: LossWeights
) -> None:
    ct, mri = pair
    loss = FusionLoss(weights)
    total, parts = loss(fused, ct, mri)
    assert tuple(parts) == loss.components
    expected = sum(getattr(weights, name) * parts[name] for name in parts)
    assert total.item() == pytest.approx(float(expected), rel=1e-6, abs=1e-7)


def test_design_formulas_on_real_pair(pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor) -> None:
    """Spot-check three components against numpy written straight from design-notes.md."""
    ct, mri = pair
    _, parts = FusionLoss(LossWeights())(fused, ct, mri)
    f = fused.numpy().astype(np.float64)
    c = ct.numpy().astype(np.float64)
    m = mri.numpy().astype(np.float64)
    f_gray = 0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]
    c_gray = 0.299 * c[:, 0] + 0.587 * c[:, 1] + 0.114 * c[:, 2]
    content = np.abs(f_gray - np.maximum(c_gray, m[:, 0])).mean()
    consistency = 0.5 * (((f - c) ** 2).mean() + ((f - m) ** 2).mean())
    ct_mask, mri_mask = c_gray > 0.5, m[:, 0] > 0.5
    medical = 0.5 * ((((f_gray - c_gray) * ct_mask) ** 2).mean() + (((f_gray - m[:, 0]) * mri_mask) ** 2).mean())
    assert parts["content"].item() == pytest.approx(content, rel=1e-4)
    assert parts["consistency"].item() == pytest.approx(consistency, rel=1e-4)
    assert parts["medical"].item() == pytest.approx(medical, rel=1e-4)


def test_medical_threshold_selects_pixels(pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor) -> None:
    ct, mri = pair
    _, nothing_masked = FusionLoss(LossWeights(medical_threshold=1.0))(fused, ct, mri)
    _, default = FusionLoss(LossWeights())(fused, ct, mri)
    assert nothing_masked["medical"].item() == 0.0
    assert default["medical"].item() > 0.0


def test_gradients_reach_fused_from_every_component(
    pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor
) -> None:
    ct, mri = pair
    for name in COMPONENTS:
        x = fused.clone().requires_grad_(True)
        medical_fusion_losses(x, ct, mri)[name].backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), name
        assert x.grad.abs().sum() > 0, name
    x = fused.clone().requires_grad_(True)
    total, _ = FusionLoss(LossWeights())(x, ct, mri)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_flat_image_gradient_is_finite() -> None:
    """The Sobel epsilon keeps d|∇|/dx finite where the image is flat (|∇| = 0)."""
    x = torch.full((1, 3, 64, 64), 0.5, requires_grad=True)
    total, _ = FusionLoss(LossWeights())(x, torch.full((1, 3, 64, 64), 0.5), torch.full((1, 1, 64, 64), 0.5))
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_bf16_autocast_computes_in_float32(pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor) -> None:
    ct, mri = pair
    half = fused.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        total, parts = FusionLoss(LossWeights())(half, ct, mri)
    assert total.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in parts.values())
    reference, _ = FusionLoss(LossWeights())(half.detach().float(), ct, mri)
    assert total.item() == pytest.approx(reference.item(), rel=1e-6)
    total.backward()
    assert half.grad is not None and half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()


@pytest.mark.parametrize(
    ("fused_shape", "first_shape", "second_shape", "match"),
    [
        ((2, 1, 64, 64), (2, 3, 64, 64), (2, 1, 64, 64), r"fused must be \[N,3,H,W\]"),
        ((2, 3, 64, 64), (2, 1, 64, 64), (2, 1, 64, 64), r"first must be \[N,3,H,W\]"),
        ((2, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64), r"second must be \[N,1,H,W\]"),
        ((3, 64, 64), (2, 3, 64, 64), (2, 1, 64, 64), r"fused must be \[N,3,H,W\]"),
        ((2, 3, 64, 64), (2, 3, 32, 64), (2, 1, 64, 64), r"must share N, H, W"),
        ((2, 3, 64, 64), (2, 3, 64, 64), (1, 1, 64, 64), r"must share N, H, W"),
    ],
)
def test_loss_rejects_bad_shapes(
    fused_shape: tuple[int, ...], first_shape: tuple[int, ...], second_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        FusionLoss(LossWeights())(torch.rand(fused_shape), torch.rand(first_shape), torch.rand(second_shape))


def test_to_gray_weights() -> None:
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1) * torch.ones(1, 3, 2, 2)
    assert torch.allclose(to_gray(rgb), torch.full((1, 1, 2, 2), 0.299))
    assert to_gray(torch.rand(1, 1, 4, 4)).shape == (1, 1, 4, 4)


@pytest.mark.parametrize("which", ["ct-vs-mri", "ct-vs-fused", "mri-vs-noisy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_scikit_image_uniform_window(
    pair: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor, which: str, dtype: torch.dtype
) -> None:
    """Interior of our box-window SSIM map == skimage's uniform-filter SSIM (borders differ by padding)."""
    ct, mri = pair
    noisy = (mri + 0.05 * torch.randn(mri.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    x, y = {"ct-vs-mri": (ct[:1, :1], mri[:1]), "ct-vs-fused": (ct[:1, :1], to_gray(fused[:1])),
            "mri-vs-noisy": (mri[:1], noisy[:1])}[which]
    ours = ssim_map(x.to(dtype), y.to(dtype))[0, 0].double().numpy()
    mssim, reference = structural_similarity(
        x[0, 0].double().numpy(), y[0, 0].double().numpy(), win_size=11, gaussian_weights=False,
        use_sample_covariance=False, data_range=1.0, full=True,
    )
    # float32: E[x²] − μ² cancels to ~1e-7 absolute, which C2 = 9e-4 turns into ~1e-4 per pixel.
    pixel_atol, mean_atol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-3, 1e-5)
    np.testing.assert_allclose(ours[5:-5, 5:-5], reference[5:-5, 5:-5], atol=pixel_atol)
    assert ours[5:-5, 5:-5].mean() == pytest.approx(mssim, abs=mean_atol)


def test_ssim_loss_bounds(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    ct, mri = pair
    assert ssim_loss(mri, mri).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < ssim_loss(ct[:, :1], mri).item() < 2.0
    assert ssim_loss(mri, 1.0 - mri).item() > ssim_loss(ct[:, :1], mri).item()


def test_sobel_matches_scipy(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    mri = pair[1][:1].double()
    image = mri[0, 0].numpy()
    reference = np.sqrt(ndimage.sobel(image, axis=0) ** 2 + ndimage.sobel(image, axis=1) ** 2 + 1e-8)
    ours = sobel_magnitude(mri)[0, 0].numpy()
    np.testing.assert_allclose(ours[1:-1, 1:-1], reference[1:-1, 1:-1], atol=1e-9)
    step = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    step[..., 4:] = 1.0
    assert sobel_magnitude(step)[0, 0, 4, 3].item() == pytest.approx(4.0)


def test_detail_gain_scales_the_detail_target(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """With identical sources the design's detail loss is 0; gain k asks for k× their gradient, so the
    loss becomes (k − 1)·mean(∇source), and no other component moves."""
    gray = pair[0][:, :1]
    rgb = gray.expand(-1, 3, -1, -1)
    _, design = FusionLoss(EVERY_TERM)(rgb, rgb, gray)
    _, sharper = FusionLoss(replace(EVERY_TERM, detail_gain=1.5))(rgb, rgb, gray)
    expected = 0.5 * sobel_magnitude(gray.double()).mean().item()
    assert design["detail"].item() == pytest.approx(0.0, abs=1e-5)
    assert sharper["detail"].item() == pytest.approx(expected, rel=1e-4)
    for name in set(COMPONENTS) - {"detail"}:
        assert sharper[name].item() == pytest.approx(design[name].item(), abs=1e-6), name


def test_detail_gain_edge_limits_the_gain_to_strong_edges(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Fused = the CT with a flat MRI: the detail error is (k − 1)·∇ wherever the gain k applies. With
    detail_gain_edge = t it applies only where the CT's ∇ exceeds t, so the loss is exactly the mean of
    (k − 1)·∇ over those pixels; above the largest ∇ it is 0, and 0 turns the gate off."""
    ct = pair[0]
    flat_mri = torch.zeros_like(ct[:, :1])
    grad = sobel_magnitude(to_gray(ct))
    edge = grad.median().item()
    losses = partial(medical_fusion_losses, ct, ct, flat_mri, detail_gain=1.5)
    expected = (0.5 * grad * (grad > edge)).mean().item()
    assert expected > 0.001
    assert losses(detail_gain_edge=edge)["detail"].item() == pytest.approx(expected, rel=1e-4)
    assert losses(detail_gain_edge=grad.max().item() + 1)["detail"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses(detail_gain_edge=0.0)["detail"].item() == pytest.approx((0.5 * grad).mean().item(), rel=1e-4)


def test_vector_detail_target_sees_edge_orientation(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The negated CT has exactly the CT's gradient strength with every edge reversed (and the same
    zero border): the design's magnitude detail loss cannot tell them apart, the vector target charges
    2× the CT's mean Sobel derivative."""
    ct = pair[0]
    flat_mri = torch.zeros_like(ct[:, :1])
    losses = partial(medical_fusion_losses, first=ct, second=flat_mri)
    assert losses(-ct)["detail"].item() == pytest.approx(losses(ct)["detail"].item(), abs=1e-5)
    assert losses(ct, detail_target="vector")["detail"].item() == pytest.approx(0.0, abs=1e-6)
    expected = 2 * sobel_xy(to_gray(ct)).abs().mean().item()
    assert losses(-ct, detail_target="vector")["detail"].item() == pytest.approx(expected, rel=1e-4)


def test_unknown_detail_target_is_refused() -> None:
    with pytest.raises(ValueError, match="detail_target must be one of magnitude, vector"):
        LossWeights(detail_target="angle")


def test_removed_options_load_from_old_runs_only_at_their_neutral_value() -> None:
    """Runs written before detail/content saturation were removed name them at 1 (off): those still
    load; a run that used them cannot be reproduced and is refused with the reason."""
    old = {
        **TrainConfig().to_dict(),
        "loss": {**LossWeights().__dict__, "detail_saturation": 1.0, "content_saturation": 1.0},
    }
    assert TrainConfig.from_dict(old).loss == LossWeights()
    old["loss"]["content_saturation"] = 0.94
    with pytest.raises(ValueError, match="content_saturation was a rejected experiment and has been removed"):
        TrainConfig.from_dict(old)
