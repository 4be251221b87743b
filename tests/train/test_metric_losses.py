"""The differentiable Qabf and VIF of fuse_train.metric_losses against fuse_runtime.metrics on real
Harvard CT/MRI pairs, their gradients, and their place in FusionLoss."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fuse_runtime import metrics
from fuse_train import metric_losses
from fuse_train.config import LossWeights
from fuse_train.losses import COMPONENTS, FusionLoss

SLICES = ("20005", "28015", "33012")


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, f"cannot read {path}"
    return image.astype(np.float64)


@pytest.fixture(scope="module")
def sources(harvard_train: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(_read(harvard_train / "CT" / f"{s}.png"), _read(harvard_train / "MRI" / f"{s}.png")) for s in SLICES]


def _fusions(ct: np.ndarray, mri: np.ndarray) -> dict[str, np.ndarray]:
    """Three 8-bit fused images of different character: selection, averaging, and a sharpened blend."""
    blurred = cv2.GaussianBlur(0.6 * ct + 0.5 * mri, (0, 0), 2.0)
    return {
        "max": np.maximum(ct, mri),
        "mean": np.round((ct + mri) / 2.0),
        "sharpened": np.clip(np.round(2.0 * (0.6 * ct + 0.5 * mri) - blurred), 0, 255),
    }


def _tensor(image: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(image, dtype=dtype)[None, None]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_qabf_and_vif_equal_the_evaluation_metrics(sources, dtype: torch.dtype, tolerance: float) -> None:
    for ct, mri in sources:
        for name, fused in _fusions(ct, mri).items():
            a, b, f = (_tensor(image, dtype) for image in (ct, mri, fused))
            ours_qabf = metric_losses.qabf(a, b, f).item()
            ours_vif = (metric_losses.vif(a, f) + metric_losses.vif(b, f)).item()
            assert ours_qabf == pytest.approx(metrics.qabf(ct, mri, fused), abs=tolerance), name
            assert ours_vif == pytest.approx(metrics.vif(ct, mri, fused), abs=tolerance), name


def test_batched_values_are_per_image(sources) -> None:
    a = torch.cat([_tensor(ct) for ct, _ in sources])
    b = torch.cat([_tensor(mri) for _, mri in sources])
    f = torch.maximum(a, b)
    batched = metric_losses.qabf(a, b, f)
    assert batched.shape == (len(sources),)
    for index, (ct, mri) in enumerate(sources):
        assert batched[index].item() == pytest.approx(metrics.qabf(ct, mri, np.maximum(ct, mri)), abs=1e-7)


def test_a_perfect_fusion_scores_one(sources) -> None:
    ct = _tensor(sources[0][0])
    assert (metric_losses.qabf(ct, ct, ct) / metric_losses.QABF_PERFECT).item() == pytest.approx(1.0, abs=1e-3)
    assert metric_losses.vif(ct, ct).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("which", ["qabf", "vif"])
def test_gradient_steps_raise_the_evaluation_metric(sources, which: str) -> None:
    """Ascending the torch metric from the mean fusion raises the numpy metric on the saved 8-bit image."""
    ct, mri = sources[1]
    a, b = _tensor(ct, torch.float32), _tensor(mri, torch.float32)
    start = np.round((ct + mri) / 2.0)
    fused = _tensor(start, torch.float32).requires_grad_()
    optimiser = torch.optim.Adam([fused], lr=2.0)
    for _ in range(20):
        if which == "qabf":
            score = metric_losses.qabf(a, b, fused)
        else:
            score = metric_losses.vif(a, fused) + metric_losses.vif(b, fused)
        optimiser.zero_grad()
        (-score.sum()).backward()
        assert torch.isfinite(fused.grad).all()
        optimiser.step()
        with torch.no_grad():
            fused.clamp_(0.0, 255.0)
    after = np.round(fused.detach().numpy()[0, 0])
    evaluate = getattr(metrics, which)
    assert evaluate(ct, mri, after) > evaluate(ct, mri, start) + 0.02


def test_fusion_loss_carries_both_terms_off_by_default(sources) -> None:
    ct, mri = sources[0]
    first = _tensor(ct / 255.0, torch.float32).expand(-1, 3, -1, -1)
    second = _tensor(mri / 255.0, torch.float32)
    fused = torch.maximum(first, second).clone().requires_grad_()
    assert COMPONENTS[-2:] == ("qabf", "vif")
    design_total, parts = FusionLoss(LossWeights())(fused, first, second)
    expected_qabf = 1.0 - metrics.qabf(ct, mri, np.maximum(ct, mri)) / metric_losses.QABF_PERFECT
    assert parts["qabf"].item() == pytest.approx(expected_qabf, abs=1e-4)
    assert parts["vif"].item() == pytest.approx(1.0 - metrics.vif(ct, mri, np.maximum(ct, mri)) / 2.0, abs=1e-4)
    weighted, _ = FusionLoss(LossWeights(qabf=2.0, vif=3.0))(fused, first, second)
    assert weighted.item() == pytest.approx(
        design_total.item() + 2.0 * parts["qabf"].item() + 3.0 * parts["vif"].item(), rel=1e-5
    )
    weighted.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


def test_a_batch_with_flat_crops_pools_instead_of_failing() -> None:
    """A background-only crop has no edges and flat CT: pooled over the batch it weighs nothing."""
    flat = torch.zeros(1, 1, 64, 64)
    ramp = torch.linspace(0.0, 1.0, 64).expand(1, 1, 64, 64)
    first = torch.cat([flat, ramp]).expand(-1, 3, -1, -1)
    second = torch.cat([flat, ramp.transpose(-1, -2)])
    fused = torch.maximum(first, second)
    _, parts = FusionLoss(LossWeights(qabf=1.0, vif=1.0))(fused, first, second)
    assert torch.isfinite(parts["qabf"]) and torch.isfinite(parts["vif"])
    _, only_flat = FusionLoss(LossWeights(qabf=1.0, vif=1.0))(fused[:1], first[:1], second[:1])
    assert only_flat["vif"].item() == 0.0
