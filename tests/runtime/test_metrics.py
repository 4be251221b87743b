"""Fusion metrics: the literature's reference figures on real pairs, hand-computable cases, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuse_runtime import metrics
from fuse_runtime.errors import FuseError

# shared/data/README.md: F = max(CT, MRI) over the 21 pairs of harvard/ct-mri-test, mean over pairs.
PIXEL_MAX_REFERENCE = {
    "EN": 4.47,
    "SD": 84.22,
    "SF": 33.53,
    "MI": 3.63,
    "SCD": 1.50,
    "VIF": 0.64,
    "Qabf": 0.63,
    "SSIM": 1.38,
}
TOLERANCE = 0.01


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image.astype(np.float64)


@pytest.fixture(scope="module")
def test_pairs(harvard_test: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(p.name for p in (harvard_test / "CT").glob("*.png"))
    assert len(names) == 21
    return [(_read_gray(harvard_test / "CT" / n), _read_gray(harvard_test / "MRI" / n)) for n in names]


@pytest.fixture(scope="module")
def pixel_max_means(test_pairs) -> dict[str, float]:
    results = [metrics.evaluate(ct, mri, np.maximum(ct, mri)) for ct, mri in test_pairs]
    return {name: float(np.mean([r[name] for r in results])) for name in metrics.METRIC_NAMES}


@pytest.mark.parametrize("name", sorted(PIXEL_MAX_REFERENCE))
def test_pixel_max_reproduces_published_reference(pixel_max_means, name):
    assert pixel_max_means[name] == pytest.approx(PIXEL_MAX_REFERENCE[name], abs=TOLERANCE)


def test_evaluate_returns_every_metric_as_finite_float(test_pairs):
    ct, mri = test_pairs[0]
    result = metrics.evaluate(ct, mri, (ct + mri) / 2)
    assert list(result) == list(metrics.METRIC_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values())


@pytest.mark.parametrize("name", ["MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC"])
def test_two_source_metrics_are_symmetric_in_the_sources(test_pairs, name):
    ct, mri = test_pairs[3]
    fused = np.round(0.7 * ct + 0.3 * mri)
    forward = metrics.evaluate(ct, mri, fused)[name]
    swapped = metrics.evaluate(mri, ct, fused)[name]
    assert forward == pytest.approx(swapped, rel=1e-9)


def test_rgb_fused_is_scored_on_its_rounded_bt601_luminance(test_pairs):
    ct, mri = test_pairs[5]
    rgb = np.stack([ct, mri, np.maximum(ct, mri)], axis=-1)
    gray = np.round(0.299 * ct + 0.587 * mri + 0.114 * np.maximum(ct, mri))
    assert metrics.evaluate(ct, mri, rgb) == metrics.evaluate(ct, mri, gray)


def test_rgb_with_equal_channels_scores_like_gray(test_pairs):
    ct, mri = test_pairs[2]
    fused = np.maximum(ct, mri)
    rgb = np.repeat(fused[..., None], 3, axis=-1)
    for name, value in metrics.evaluate(ct, mri, rgb).items():
        assert value == pytest.approx(metrics.evaluate(ct, mri, fused)[name], rel=1e-12), name


# --- hand-computable cases -------------------------------------------------------------------------

RNG = np.random.default_rng(0)
TEXTURE = np.round(RNG.uniform(0, 255, size=(48, 48)))
HALVES = np.concatenate([np.zeros((16, 32)), np.full((16, 32), 200.0)])
COLUMN_STRIPES = np.tile([0.0, 10.0], (20, 10))
RAMP = np.tile(np.arange(32, dtype=np.float64) * 2.0, (32, 1))


@pytest.mark.parametrize(
    ("function", "image", "expected"),
    [
        (metrics.entropy, np.full((8, 8), 77.0), 0.0),
        (metrics.entropy, HALVES, 1.0),
        (metrics.entropy, np.arange(256, dtype=np.float64).reshape(16, 16), 8.0),
        (metrics.standard_deviation, HALVES, 100.0),
        (metrics.standard_deviation, np.full((8, 8), 5.0), 0.0),
        (metrics.spatial_frequency, COLUMN_STRIPES, 10.0),
        (metrics.spatial_frequency, COLUMN_STRIPES.T, 10.0),
        (metrics.spatial_frequency, RAMP, 2.0),
        (metrics.average_gradient, RAMP, math.sqrt(2.0)),
        (metrics.average_gradient, np.full((8, 8), 9.0), 0.0),
    ],
)
def test_single_image_metrics_by_hand(function, image, expected):
    assert function(image) == pytest.approx(expected, abs=1e-9)


def test_mutual_information_of_identical_two_level_images_is_2_ln2():
    # Each source shares all of its 1 bit (= ln 2 nats) with F.
    assert metrics.mutual_information(HALVES, HALVES, HALVES) == pytest.approx(2 * math.log(2))


def test_mutual_information_is_invariant_to_relabelling_gray_levels():
    relabelled = 255.0 - TEXTURE
    entropy_nats = metrics.entropy(TEXTURE) * math.log(2)
    assert metrics.mutual_information(TEXTURE, TEXTURE, relabelled) == pytest.approx(2 * entropy_nats)


def test_mutual_information_with_a_constant_fused_is_zero():
    assert metrics.mutual_information(TEXTURE, TEXTURE.T, np.zeros((48, 48))) == pytest.approx(0.0)


def test_ssim_of_identical_images_is_2():
    assert metrics.ssim(TEXTURE, TEXTURE, TEXTURE) == pytest.approx(2.0)


def test_vif_of_identical_images_is_2():
    assert metrics.vif(TEXTURE, TEXTURE, TEXTURE) == pytest.approx(2.0, abs=1e-6)


def test_vif_of_a_constant_reference_follows_the_reference_code():
    flat = np.full((48, 48), 30.0)
    assert metrics.vif(flat, flat, TEXTURE) == pytest.approx(2.0)


def test_scd_of_the_sum_of_the_sources_is_2():
    a, b = np.round(TEXTURE / 2), np.round(TEXTURE.T / 2)
    assert metrics.scd(a, b, a + b) == pytest.approx(2.0)


def test_scd_takes_a_constant_difference_as_uncorrelated():
    # F == A == B: every difference image is constant, so both correlations count as 0.
    assert metrics.scd(TEXTURE, TEXTURE, TEXTURE) == 0.0


@pytest.mark.parametrize(
    ("a", "b", "f", "expected"),
    [
        (TEXTURE, TEXTURE, TEXTURE, 1.0),
        (TEXTURE, TEXTURE, 255.0 - TEXTURE, -1.0),
        (TEXTURE, np.full((48, 48), 3.0), TEXTURE, 0.5),
    ],
)
def test_correlation_by_hand(a, b, f, expected):
    assert metrics.correlation(a, b, f) == pytest.approx(expected)


def test_psnr_by_hand():
    shifted = np.clip(TEXTURE + 10.0, 0, 255)
    mse = (0.0 + np.mean((shifted - TEXTURE) ** 2)) / 2
    assert metrics.psnr(TEXTURE, shifted, TEXTURE) == pytest.approx(10 * math.log10(255**2 / mse))
    assert metrics.psnr(TEXTURE, TEXTURE, TEXTURE) == math.inf


def test_qabf_of_a_perfect_copy_is_the_product_of_the_saturated_sigmoids():
    # Equal strengths and orientations everywhere: G saturates, orientation term at Α = 1.
    expected = 0.9994 * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert metrics.qabf(TEXTURE, TEXTURE, TEXTURE) == pytest.approx(expected, rel=1e-3)


def test_qabf_of_an_edgeless_fused_image_is_near_zero():
    # All-zero F has no edges even at the zero-padded border: G = 0, Q^XF = Tg / (1 + e^7.5) · (...).
    assert metrics.qabf(TEXTURE, TEXTURE.T, np.zeros((48, 48))) < 0.9994 / (1 + math.exp(7.5))


def test_qabf_is_undefined_without_source_edges():
    flat = np.zeros((16, 16))  # zero padding: only an all-zero image has no edge at its border
    assert math.isnan(metrics.qabf(flat, flat, TEXTURE[:16, :16]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, 0.0), (1.0, 255.0), (0.5, 128.0), (0.2, 51.0), (-0.3, 0.0), (1.7, 255.0), (0.1, 26.0)],
)
def test_to_8bit_rounds_and_clips(value, expected):
    assert metrics.to_8bit(np.array([value]))[0] == expected


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [((255, 0, 0), 76.245), ((0, 255, 0), 149.685), ((0, 0, 255), 29.07), ((90, 90, 90), 90.0)],
)
def test_luminance_uses_bt601_weights(rgb, expected):
    assert metrics.luminance(np.array(rgb, dtype=np.float64)) == pytest.approx(expected)


# --- bad input -------------------------------------------------------------------------------------

GOOD = np.full((16, 16), 100.0) + np.eye(16) * 50


@pytest.mark.parametrize(
    ("ct", "mri", "fused", "message"),
    [
        (GOOD, GOOD[:8], GOOD, "one shape"),
        (GOOD, GOOD, GOOD[:, :8], "one shape"),
        (GOOD, GOOD, np.where(np.eye(16) > 0, np.nan, GOOD), "NaN"),
        (GOOD, GOOD * 2, GOOD, "8-bit range"),
        (GOOD - 120, GOOD, GOOD, "8-bit range"),
        (GOOD, GOOD, GOOD / 255, "to_8bit"),
        (GOOD, GOOD, GOOD[None, None], "shape"),
        (GOOD, GOOD, np.zeros((16, 16, 4)), "shape"),
        (np.zeros((0, 0)), GOOD, GOOD, "empty"),
    ],
)
def test_evaluate_refuses_bad_input(ct, mri, fused, message):
    with pytest.raises(FuseError, match=message):
        metrics.evaluate(ct, mri, fused)


def test_luminance_refuses_non_rgb():
    with pytest.raises(FuseError, match="3 channels"):
        metrics.luminance(np.zeros((4, 4, 2)))
