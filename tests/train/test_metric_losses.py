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


def _first(value: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


@pytest.mark.parametrize("which", ["qabf", "vif", "mutual_information"])
def test_gradient_steps_raise_the_evaluation_metric(sources, which: str) -> None:
    """Gradient ascent on the torch metric from the mean fusion raises the numpy metric of the 8-bit image."""
    ct, mri = sources[1]
    a, b = _tensor(ct), _tensor(mri)
    start = np.round((ct + mri) / 2.0)
    fused = _tensor(start).requires_grad_()
    for _ in range(20):
        if which == "qabf":
            score = metric_losses.qabf(a, b, fused)
        else:
            measure = getattr(metric_losses, which)
            score = sum(_first(measure(source, fused)) for source in (a, b))
        (grad,) = torch.autograd.grad(score.sum(), fused)
        assert torch.isfinite(grad).all()
        with torch.no_grad():  # steps of at most 2 gray levels, along the gradient
            fused += 2.0 * grad / grad.abs().max()
            fused.clamp_(0.0, 255.0)
    after = np.round(fused.detach().numpy()[0, 0])
    evaluate = getattr(metrics, which)
    assert evaluate(ct, mri, after) > evaluate(ct, mri, start) + 0.02


def test_fusion_loss_carries_both_terms_off_by_default(sources) -> None:
    ct, mri = sources[0]
    first = _tensor(ct / 255.0, torch.float32).expand(-1, 3, -1, -1)
    second = _tensor(mri / 255.0, torch.float32)
    fused = torch.maximum(first, second).clone().requires_grad_()
    assert COMPONENTS[-4:] == ("qabf", "vif", "mi", "ssim")
    design_total, design_parts = FusionLoss(LossWeights())(fused, first, second)
    assert not set(design_parts) & {"qabf", "vif", "mi", "ssim"}
    extra = {"qabf": 2.0, "vif": 3.0, "mi": 4.0, "ssim": 5.0}
    weighted, parts = FusionLoss(LossWeights(**extra))(fused, first, second)
    expected_qabf = 1.0 - metrics.qabf(ct, mri, np.maximum(ct, mri)) / metric_losses.QABF_PERFECT
    assert parts["qabf"].item() == pytest.approx(expected_qabf, abs=1e-4)
    assert parts["vif"].item() == pytest.approx(1.0 - metrics.vif(ct, mri, np.maximum(ct, mri)) / 2.0, abs=1e-4)
    mi = metrics.mutual_information(ct, mri, np.maximum(ct, mri))
    entropy = sum(metrics.mutual_information(x, x, x) / 2.0 for x in (ct, mri))
    assert parts["mi"].item() == pytest.approx(1.0 - mi / entropy, abs=1e-5)
    assert parts["ssim"].item() == pytest.approx(1.0 - metrics.ssim(ct, mri, np.maximum(ct, mri)) / 2.0, abs=1e-5)
    expected = design_total.item() + sum(weight * parts[name].item() for name, weight in extra.items())
    assert weighted.item() == pytest.approx(expected, rel=1e-5)
    weighted.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["qabf", "vif", "mi", "ssim"])
def test_a_metric_term_of_weight_zero_is_never_computed(monkeypatch, name: str) -> None:
    """Every metric function raises: the design's weights (all four 0) never reach one, and giving a
    term a weight reaches its function."""

    def refuse(*args, **kwargs):
        raise AssertionError("a metric term of weight 0 was computed")

    for function in ("qabf_parts", "vif_parts", "mutual_information", "ssim"):
        monkeypatch.setattr(metric_losses, function, refuse)
    image = torch.rand(2, 1, 64, 64)
    first, second = image.expand(-1, 3, -1, -1), image.flip(-1)
    total, parts = FusionLoss(LossWeights())(first, first, second)
    assert torch.isfinite(total) and set(parts) == set(COMPONENTS[:6])
    with pytest.raises(AssertionError, match="weight 0 was computed"):
        FusionLoss(LossWeights(**{name: 1.0}))(first, first, second)


def test_a_batch_with_flat_crops_pools_instead_of_failing() -> None:
    """A background-only crop has no edges and flat CT: pooled over the batch it weighs nothing."""
    flat = torch.zeros(1, 1, 64, 64)
    ramp = torch.linspace(0.0, 1.0, 64).expand(1, 1, 64, 64)
    first = torch.cat([flat, ramp]).expand(-1, 3, -1, -1)
    second = torch.cat([flat, ramp.transpose(-1, -2)])
    fused = torch.maximum(first, second)
    metric_terms = LossWeights(qabf=1.0, vif=1.0, mi=1.0, ssim=1.0)
    _, parts = FusionLoss(metric_terms)(fused, first, second)
    assert all(torch.isfinite(parts[name]) for name in ("qabf", "vif", "mi", "ssim"))
    _, only_flat = FusionLoss(metric_terms)(fused[:1], first[:1], second[:1])
    assert only_flat["vif"].item() == 0.0


def test_ssim_equals_the_evaluation_metric(sources) -> None:
    for ct, mri in sources:
        for name, fused in _fusions(ct, mri).items():
            a, b, f = (_tensor(image) for image in (ct, mri, fused))
            ours = (metric_losses.ssim(f, a) + metric_losses.ssim(f, b)).item()
            assert ours == pytest.approx(metrics.ssim(ct, mri, fused), abs=1e-7), name


def test_mutual_information_equals_the_evaluation_metric(sources) -> None:
    for ct, mri in sources:
        for name, fused in _fusions(ct, mri).items():
            a, b, f = (_tensor(image) for image in (ct, mri, fused))
            (mi_a, h_a), (mi_b, h_b) = (metric_losses.mutual_information(x, f) for x in (a, b))
            assert (mi_a + mi_b).item() == pytest.approx(metrics.mutual_information(ct, mri, fused), abs=1e-9), name
            assert h_a.item() == pytest.approx(metrics.mutual_information(ct, ct, ct) / 2.0, abs=1e-9)
            assert 0.0 < mi_a.item() <= h_a.item() + 1e-12 and 0.0 < mi_b.item() <= h_b.item() + 1e-12
