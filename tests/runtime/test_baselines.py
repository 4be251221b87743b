"""Classical fusion baselines: shape, range, exactness, reconstruction, and bad arguments."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuse_runtime import baselines, metrics
from fuse_runtime.errors import FuseError

RNG = np.random.default_rng(7)
A01 = RNG.uniform(0.1, 0.9, size=(64, 64))
B01 = RNG.uniform(0.0, 1.0, size=(64, 64))

ALL_RULES = {
    "mean": baselines.fuse_mean,
    "max": baselines.fuse_max,
    "laplacian": baselines.fuse_laplacian,
    "laplacian-2": partial(baselines.fuse_laplacian, levels=2),
    "dwt-db2": baselines.fuse_dwt,
    "dwt-haar": partial(baselines.fuse_dwt, wavelet="haar", levels=3),
}


@pytest.fixture(scope="module")
def real_pair(harvard_test: Path) -> tuple[np.ndarray, np.ndarray]:
    read = lambda p: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float64)  # noqa: E731
    return read(harvard_test / "CT" / "17.png"), read(harvard_test / "MRI" / "17.png")


def test_registry_names_the_four_baselines():
    assert list(baselines.BASELINES) == ["mean", "max", "laplacian", "dwt"]


@pytest.mark.parametrize("rule", list(ALL_RULES))
@pytest.mark.parametrize("scale", [1.0, 255.0])
@pytest.mark.parametrize("shape", [(64, 64), (65, 78)])
def test_output_shape_dtype_and_range(rule, scale, shape):
    a, b = cv2.resize(A01, shape[::-1]), cv2.resize(B01, shape[::-1])
    fused = ALL_RULES[rule](a * scale, b * scale)
    assert fused.shape == shape
    assert fused.dtype == np.float32
    assert fused.min() >= min(a.min(), b.min()) * scale - 1e-4 * scale
    assert fused.max() <= max(a.max(), b.max()) * scale + 1e-4 * scale


def test_mean_and_max_are_exact():
    np.testing.assert_array_equal(baselines.fuse_max(A01, B01), np.maximum(A01, B01).astype(np.float32))
    np.testing.assert_array_equal(baselines.fuse_mean(A01, B01), ((A01 + B01) / 2).astype(np.float32))


@pytest.mark.parametrize("rule", ["laplacian", "laplacian-2", "dwt-db2", "dwt-haar"])
@pytest.mark.parametrize("shape", [(64, 64), (67, 90)])
def test_multiscale_rules_reconstruct_an_image_fused_with_itself(rule, shape):
    image = cv2.resize(A01, shape[::-1]) * 255.0
    np.testing.assert_allclose(ALL_RULES[rule](image, image), image, atol=1e-3)


@pytest.mark.parametrize("rule", ["laplacian", "dwt-db2", "dwt-haar"])
def test_multiscale_rules_do_not_depend_on_the_intensity_scale(rule):
    np.testing.assert_allclose(ALL_RULES[rule](A01 * 255, B01 * 255), ALL_RULES[rule](A01, B01) * 255, atol=1e-3)


@pytest.mark.parametrize("rule", ["laplacian", "dwt-db2"])
def test_multiscale_rules_keep_more_detail_than_the_mean_on_a_real_pair(real_pair, rule):
    ct, mri = real_pair
    detail = {
        name: metrics.spatial_frequency(metrics.to_8bit(ALL_RULES[name](ct / 255, mri / 255)))
        for name in ("mean", rule)
    }
    assert detail[rule] > 1.5 * detail["mean"]


@pytest.mark.parametrize("rule", ["laplacian", "dwt-db2", "dwt-haar"])
def test_max_abs_detail_keeps_the_stronger_source_edge(rule):
    # A has a unit step between columns 32 and 33, B is flat: the mean halves the step, max-abs
    # detail selection keeps most of it (the averaged base band takes the rest).
    a = np.zeros((64, 64))
    a[:, 33:] = 1.0
    b = np.full((64, 64), 0.5)
    step = lambda image: float(np.mean(image[:, 33] - image[:, 32]))  # noqa: E731
    assert step(baselines.fuse_mean(a, b)) == pytest.approx(0.5)
    assert step(ALL_RULES[rule](a, b)) > 0.8


GOOD = np.zeros((64, 64))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: baselines.fuse_mean(GOOD, GOOD[:32]), FuseError, "not registered"),
        (lambda: baselines.fuse_max(GOOD[None], GOOD[None]), FuseError, r"\[H,W\]"),
        (lambda: baselines.fuse_dwt(np.full((64, 64), np.nan), GOOD), FuseError, "NaN"),
        (lambda: baselines.fuse_laplacian(np.zeros((0, 0)), np.zeros((0, 0))), FuseError, "non-empty"),
        (lambda: baselines.fuse_laplacian(GOOD, GOOD, levels=0), ValueError, "levels"),
        (lambda: baselines.fuse_laplacian(GOOD, GOOD, levels=2.5), ValueError, "levels"),
        (lambda: baselines.fuse_laplacian(GOOD, GOOD, levels=True), ValueError, "levels"),
        (lambda: baselines.fuse_laplacian(GOOD, GOOD, levels=7), ValueError, "at least 128 px"),
        (lambda: baselines.fuse_dwt(GOOD, GOOD, levels=-1), ValueError, "levels"),
        (lambda: baselines.fuse_dwt(GOOD, GOOD, levels=9), ValueError, "too deep"),
        (lambda: baselines.fuse_dwt(GOOD, GOOD, wavelet="nope"), ValueError, "wavelet"),
        (lambda: baselines.fuse_dwt(GOOD, GOOD, wavelet="morl"), ValueError, "wavelet"),
    ],
)
def test_bad_arguments_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()
