"""Preprocessing: intensity rules, CLAHE, model size and its inverse, bad input, the config contract."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import (
    PreprocessConfig,
    apply_clahe,
    check_registered,
    normalise_intensity,
    normalise_scan,
    prepare_pair,
    restore_geometry,
    to_model_size,
)
from fuse_runtime.scan import Scan

DEFAULT = PreprocessConfig()


def make_scan(pixels, modality="CT", *, is_hu=False, bit_depth=None, source="scan.png", spacing=None, affine=None):
    pixels = np.asarray(pixels, dtype=np.float32)
    if spacing is None:
        spacing = (1.0,) * pixels.ndim
    return Scan(
        pixels=pixels,
        modality=modality,
        source=Path(source),
        source_format="image",
        is_hu=is_hu,
        bit_depth=bit_depth,
        spacing=spacing,
        affine=affine,
    )


def read_gray_png(path: Path) -> Scan:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return make_scan(image, "CT" if path.parent.name == "CT" else "MR", bit_depth=8, source=path)


def smooth_image(height: int, width: int) -> np.ndarray:
    """A smooth, non-constant [H,W] float32 image in [0,1] (interpolation-friendly)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return (0.5 + 0.25 * np.sin(2 * np.pi * x / width) * np.cos(2 * np.pi * y / height)).astype(np.float32)


# --- intensity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-160.0, 0.0), (240.0, 1.0), (40.0, 0.5), (-60.0, 0.25), (140.0, 0.75), (-1000.0, 0.0), (3071.0, 1.0)],
)
def test_ct_window_maps_hu_edges(hu, expected):
    # The other pixels keep the scan non-constant; the window, not the scan's range, sets the scale.
    scan = make_scan([[hu, -1024.0, 2000.0, 0.0]], is_hu=True, bit_depth=16)
    out = normalise_intensity(scan, "ct", DEFAULT)
    assert out.shape == (1, 1, 4)
    assert out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(expected, abs=1e-6)


def test_ct_window_follows_config():
    config = PreprocessConfig(ct_window_center=500.0, ct_window_width=2000.0)  # a bone window
    scan = make_scan([[-500.0, 500.0, 1500.0, 2500.0]], is_hu=True)
    out = normalise_intensity(scan, "ct", config)[0, 0]
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_ct_window_on_a_volume_scales_all_slices_alike():
    volume = np.stack([np.full((4, 4), -160.0), np.full((4, 4), 240.0)]).astype(np.float32)
    out = normalise_intensity(make_scan(volume, is_hu=True), "ct", DEFAULT)
    assert out.shape == (2, 4, 4)
    assert (out[0] == 0.0).all() and (out[1] == 1.0).all()


@pytest.mark.parametrize("folder", ["CT", "MRI"])
def test_eight_bit_images_are_divided_by_255(harvard_train, folder):
    path = harvard_train / folder / "20010.png"
    scan = read_gray_png(path)
    out = normalise_intensity(scan, "ct" if folder == "CT" else "mri", DEFAULT)
    np.testing.assert_array_equal(out[0], scan.pixels / np.float32(255.0))


def test_eight_bit_rule_wins_over_min_max():
    # A dark 8-bit image stays dark: its range is not stretched to [0,1].
    scan = make_scan([[10.0, 20.0, 30.0]], "MR", bit_depth=8)
    out = normalise_intensity(scan, "mri", DEFAULT)[0, 0]
    np.testing.assert_allclose(out, np.array([10, 20, 30], np.float32) / 255)


def test_mri_sixteen_bit_uses_robust_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 3000, size=(64, 64)).astype(np.uint16)
    image[0, 0] = 65535  # one hot pixel must not compress the range
    path = tmp_path / "mri16.png"
    assert cv2.imwrite(str(path), image)
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels.dtype == np.uint16
    scan = make_scan(pixels, "MR", bit_depth=16, source=path)

    out = normalise_intensity(scan, "mri", DEFAULT)[0]

    low, high = np.percentile(pixels.astype(np.float32), DEFAULT.mri_percentiles)
    expected = np.clip((pixels.astype(np.float32) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 0] == 1.0
    assert out.min() == 0.0
    # Min-max would squeeze the bulk into [0, 0.05]; robust scaling keeps it spread over [0,1].
    assert np.median(out) == pytest.approx(0.5, abs=0.05)


def test_ct_that_is_neither_hu_nor_eight_bit_is_min_max_scaled():
    scan = make_scan([[100.0, 300.0, 500.0]], bit_depth=16)
    out = normalise_intensity(scan, "ct", DEFAULT)[0, 0]
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


# --- CLAHE -------------------------------------------------------------------------------------


def test_clahe_on_changes_the_image_and_stays_in_unit_range(harvard_train):
    scan = read_gray_png(harvard_train / "MRI" / "28015.png")
    plain = normalise_scan(scan, "mri", PreprocessConfig(clahe=False))
    enhanced = normalise_scan(scan, "mri", PreprocessConfig(clahe=True))
    assert enhanced.shape == plain.shape
    assert enhanced.dtype == np.float32
    assert 0.0 <= enhanced.min() and enhanced.max() <= 1.0
    assert np.abs(enhanced - plain).mean() > 0.005


def test_clahe_matches_opencv_on_eight_bit(harvard_train):
    scan = read_gray_png(harvard_train / "CT" / "28015.png")
    out = apply_clahe(normalise_intensity(scan, "ct", DEFAULT), DEFAULT)[0]
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(scan.pixels.astype(np.uint8))
    np.testing.assert_array_equal(out, expected.astype(np.float32) / 255)


def test_clahe_off_is_bit_identical_to_normalisation(harvard_train):
    scan = read_gray_png(harvard_train / "CT" / "28015.png")
    config = PreprocessConfig(clahe=False)
    np.testing.assert_array_equal(normalise_scan(scan, "ct", config), normalise_intensity(scan, "ct", config))


# --- geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["letterbox", "resize"])
@pytest.mark.parametrize(
    ("height", "width", "size"), [(200, 300, 64), (300, 200, 64), (50, 120, 64), (40, 40, 64), (100, 70, 96)]
)
def test_round_trip_restores_original_geometry(mode, height, width, size):
    config = PreprocessConfig(image_size=size, resize_mode=mode)
    image = smooth_image(height, width)
    model_input, restore = to_model_size(image[None], config)
    assert model_input.shape == (1, size, size)
    fused = np.repeat(model_input[:, None], 3, axis=1)  # an "identity" model: [S,3,size,size]
    back = restore_geometry(fused, restore)
    assert back.shape == (1, 3, height, width)
    assert back.dtype == np.float32
    assert np.abs(back[0, 0] - image).max() < 0.03


@pytest.mark.parametrize("mode", ["letterbox", "resize"])
def test_model_size_is_identity_both_ways(mode):
    config = PreprocessConfig(image_size=64, resize_mode=mode)
    images = np.random.default_rng(1).random((2, 64, 64), dtype=np.float32)
    model_input, restore = to_model_size(images, config)
    np.testing.assert_array_equal(model_input, images)
    np.testing.assert_array_equal(restore_geometry(model_input[:, None], restore)[:, 0], images)


def test_letterbox_keeps_aspect_and_pads_with_zeros():
    config = PreprocessConfig(image_size=64)
    images = np.ones((1, 100, 200), np.float32)
    model_input, restore = to_model_size(images, config)
    assert restore.scaled_hw == (32, 64)
    assert restore.offset == (16, 0)
    assert (model_input[0, :16] == 0).all() and (model_input[0, 48:] == 0).all()
    np.testing.assert_allclose(model_input[0, 16:48], 1.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 64, 64), (1, 3, 64, 32)])
def test_restore_geometry_refuses_wrong_shape(shape):
    _, restore = to_model_size(np.ones((1, 40, 50), np.float32), PreprocessConfig(image_size=64))
    with pytest.raises(ValueError, match="expected"):
        restore_geometry(np.zeros(shape, np.float32), restore)


def test_prepare_pair_gives_the_model_contract(harvard_train):
    ct = read_gray_png(harvard_train / "CT" / "20010.png")
    mri = read_gray_png(harvard_train / "MRI" / "20010.png")
    prepared = prepare_pair(ct, mri, ("ct", "mri"), PreprocessConfig(image_size=64))
    assert prepared.first.shape == (1, 3, 64, 64)
    assert prepared.second.shape == (1, 1, 64, 64)
    for array in (prepared.first, prepared.second):
        assert array.dtype == np.float32
        assert 0.0 <= array.min() and array.max() <= 1.0
    np.testing.assert_array_equal(prepared.first[:, 0], prepared.first[:, 2])
    assert prepared.restore.original_hw == (256, 256)


# --- bad input ---------------------------------------------------------------------------------


def _with_nan():
    pixels = np.ones((8, 8), np.float32)
    pixels[3, 3] = np.nan
    pixels[0, 0] = 2
    return pixels


def _with_inf():
    pixels = np.arange(64, dtype=np.float32).reshape(8, 8)
    pixels[1, 2] = -np.inf
    return pixels


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (_with_nan(), "NaN or Inf"),
        (_with_inf(), "NaN or Inf"),
        (np.zeros((0, 0), np.float32), "empty"),
        (np.zeros((2, 0, 5), np.float32), "empty"),
        (np.full((8, 8), 7.0, np.float32), "constant"),
        (np.zeros((2, 8, 8, 3), np.float32) + np.arange(3), "gray"),
        (np.arange(16, dtype=np.float32), "gray"),
    ],
    ids=["nan", "inf", "empty-2d", "empty-volume", "constant", "colour", "1d"],
)
def test_bad_pixels_raise_fuse_error_naming_the_file(pixels, match):
    scan = make_scan(pixels, source="/data/bad/slice07.dcm")
    with pytest.raises(FuseError, match=match) as caught:
        normalise_scan(scan, "ct", DEFAULT)
    assert "slice07.dcm" in str(caught.value)
    assert caught.value.path == Path("/data/bad/slice07.dcm")


def test_nan_in_a_volume_written_to_disk_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    volume = np.random.default_rng(2).random((16, 16, 4)).astype(np.float32)
    volume[5, 5, 2] = np.nan
    path = tmp_path / "nan_volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    pixels = np.asarray(nib.load(path).dataobj, dtype=np.float32).transpose(2, 1, 0)
    with pytest.raises(FuseError, match="1 pixel"):
        normalise_intensity(make_scan(pixels, "MR", source=path), "mri", DEFAULT)


# --- pair geometry -----------------------------------------------------------------------------


def test_check_registered_accepts_equal_geometry():
    image = smooth_image(16, 16)
    check_registered(make_scan(image, affine=np.eye(4)), make_scan(image, "MR", affine=np.eye(4)))


def _shifted_affine():
    affine = np.eye(4)
    affine[0, 3] = 2.0
    return affine


@pytest.mark.parametrize(
    ("second", "match"),
    [
        ({"pixels": smooth_image(16, 20)}, "shapes differ"),
        ({"spacing": (1.0, 1.2)}, "spacing differs"),
        ({"affine": _shifted_affine()}, "affines"),
    ],
    ids=["shape", "spacing", "affine"],
)
def test_check_registered_names_both_files(second, match):
    first = make_scan(smooth_image(16, 16), source="CT/a.png", affine=np.eye(4))
    kwargs = {"pixels": smooth_image(16, 16), "affine": np.eye(4)} | second
    other = make_scan(kwargs.pop("pixels"), "MR", source="MRI/a.png", **kwargs)
    with pytest.raises(FuseError, match=match) as caught:
        check_registered(first, other)
    assert "CT/a.png" in str(caught.value) and "MRI/a.png" in str(caught.value)


# --- the config contract -----------------------------------------------------------------------


def test_defaults_are_the_design_values():
    assert (DEFAULT.ct_window_center, DEFAULT.ct_window_width) == (40.0, 400.0)
    assert (DEFAULT.clahe, DEFAULT.clahe_clip_limit, DEFAULT.clahe_tile_grid) == (True, 2.0, (8, 8))
    assert DEFAULT.image_size == 256


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ct_window_width": 0},
        {"ct_window_width": -400},
        {"ct_window_width": float("nan")},
        {"ct_window_center": float("inf")},
        {"ct_window_center": "40"},
        {"mri_percentiles": (99.5, 0.5)},
        {"mri_percentiles": (-1.0, 99.0)},
        {"mri_percentiles": (1.0, 101.0)},
        {"mri_percentiles": (1.0,)},
        {"mri_percentiles": (1.0, 50.0, 99.0)},
        {"clahe": "yes"},
        {"clahe_clip_limit": 0},
        {"clahe_clip_limit": float("nan")},
        {"clahe_tile_grid": (8,)},
        {"clahe_tile_grid": (0, 8)},
        {"clahe_tile_grid": (8.5, 8)},
        {"image_size": 0},
        {"image_size": 100},
        {"image_size": 256.0},
        {"image_size": True},
        {"resize_mode": "crop"},
    ],
    ids=lambda kwargs: "-".join(f"{k}={v}" for k, v in kwargs.items()),
)
def test_bad_config_raises_value_error(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        PreprocessConfig(**kwargs)


@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig(),
        PreprocessConfig(ct_window_center=-600, ct_window_width=1500, mri_percentiles=(1.0, 99.0), clahe=False),
        PreprocessConfig(clahe_clip_limit=3.5, clahe_tile_grid=(4, 16), image_size=64, resize_mode="resize"),
    ],
)
def test_config_dict_round_trip_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert PreprocessConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "data",
    [{"window": 40}, {"mri_percentiles": 5}, {"image_size": 250}],
    ids=["unknown-key", "scalar-percentiles", "bad-size"],
)
def test_config_from_bad_dict_raises_value_error(data):
    with pytest.raises(ValueError):
        PreprocessConfig.from_dict(data)
