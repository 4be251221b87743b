"""The parity machinery on real preprocessed pairs: figures, tolerances, failure messages, table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fuse_export.config import Tolerances
from fuse_export.parity import compare, format_table, limits_for, load_samples, psnr_db, run_batched
from fuse_runtime.preprocess import PreprocessConfig

TOL = Tolerances()


@pytest.fixture(scope="module")
def samples(harvard_test):
    return load_samples(harvard_test, PreprocessConfig(image_size=64), 3)


@pytest.fixture(scope="module")
def fused(samples):
    """A real fused picture: the per-pixel maximum of CT and MRI, as RGB."""
    return np.repeat(np.maximum(samples.ct[:, :1], samples.mri), 3, axis=1).astype(np.float32)


def test_samples_are_real_preprocessed_pairs_spread_over_the_folder(samples):
    assert samples.names == ["11", "21", "31"]  # first, middle and last of the 21 test pairs (11..31)
    assert samples.ct.shape == (3, 3, 64, 64) and samples.mri.shape == (3, 1, 64, 64)
    assert 0.0 <= samples.ct.min() and samples.ct.max() <= 1.0 and samples.mri.std() > 0.05


def test_phantoms_are_the_fallback_without_shared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSE_SHARED_DATA", str(tmp_path))
    found = load_samples(None, PreprocessConfig(image_size=64), 3)
    assert "phantoms" in found.source and len(found.names) == 3
    assert found.ct.shape == (3, 3, 64, 64) and found.ct.std() > 0.05


def test_identical_outputs_pass_with_infinite_psnr(samples, fused):
    result = compare("onnxruntime-fp32", "fp32", fused, fused.copy(), samples, TOL)
    assert result.passed and result.max_abs == 0 and result.psnr_db is None
    assert all(value == 0 for value in result.metric_diff.values())
    assert "inf" in format_table([result], samples, 64)


@pytest.mark.parametrize(
    ("precision", "delta", "passes"),
    [("fp32", 5e-5, True), ("fp32", 2e-4, False), ("fp16", 1.5e-2, True), ("fp16", 3e-2, False)],
)
def test_max_abs_tolerance_names_output_pair_and_pixel(samples, fused, precision, delta, passes):
    candidate = fused.copy()
    candidate[1, 2, 10, 20] += delta
    result = compare("candidate", precision, fused, candidate, samples, TOL)
    assert math.isclose(result.max_abs, delta, rel_tol=1e-3)
    assert result.max_abs_at == {"sample": "21", "channel": 2, "row": 10, "col": 20}
    assert result.passed is passes
    if not passes:
        assert "output 'fused' of pair 21" in result.failures[0]
        assert "channel 2, row 10, column 20" in result.failures[0]


def test_fp16_mean_and_psnr_tolerances(samples, fused):
    rng = np.random.default_rng(0)
    noisy = fused + rng.normal(0, 0.015, fused.shape).astype(np.float32) * (np.arange(3) == 2)[:, None, None, None]
    result = compare("tensorrt-fp16", "fp16", fused, noisy, samples, TOL)
    assert result.mean_abs_sample == "31" and result.psnr_sample == "31"
    assert result.psnr_db < TOL.fp16_psnr_db and result.mean_abs > TOL.fp16_mean_abs
    messages = " ".join(result.failures)
    assert "mean abs difference" in messages and "PSNR" in messages and "pair 31" in messages
    assert "FAIL" in format_table([result], samples, 64)


def test_metric_differences_follow_the_output(samples, fused):
    brighter = np.clip(fused * 1.2, 0, 1)
    result = compare("candidate", "fp16", fused, brighter, samples, TOL)
    assert result.metric_diff["SD"] > 1.0 and result.metric_diff["EN"] > 0


def test_run_batched_splits_and_keeps_order(samples):
    seen = []

    def runner(ct, mri):
        seen.append(len(ct))
        return np.repeat(mri, 3, axis=1)

    out = run_batched(runner, samples, batch=2)
    assert seen == [2, 1]
    np.testing.assert_array_equal(out[:, 0], samples.mri[:, 0])


@pytest.mark.parametrize(("mse", "expected"), [(0.0, None), (1e-4, 40.0), (1e-6, 60.0)])
def test_psnr(mse, expected):
    value = psnr_db(mse)
    assert value == expected if expected is None else math.isclose(value, expected)


def test_unknown_precision_and_shape_mismatch_raise(samples, fused):
    with pytest.raises(ValueError, match="precision"):
        limits_for("int8", TOL)
    with pytest.raises(Exception, match="shape"):
        compare("candidate", "fp32", fused, fused[:2], samples, TOL)
