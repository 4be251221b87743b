"""PNG / TIFF / JPEG reading: 8- and 16-bit values kept exactly, colour → BT.601 luma, bad files named."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.io.images import read_image


def _write(path: Path, image: np.ndarray, params: tuple[int, ...] = ()) -> Path:
    assert cv2.imwrite(str(path), image, list(params)), f"cv2 could not write {path}"
    return path


def _ramp(dtype: type, shape: tuple[int, ...] = (48, 80)) -> np.ndarray:
    """Values covering the whole range of ``dtype``, including both ends."""
    top = np.iinfo(dtype).max
    values = np.linspace(0, top, num=int(np.prod(shape))).round()
    return values.astype(dtype).reshape(shape)


@pytest.mark.parametrize(
    ("suffix", "dtype", "bits"),
    [
        (".png", np.uint8, 8),
        (".png", np.uint16, 16),
        (".tif", np.uint8, 8),
        (".tiff", np.uint16, 16),
    ],
)
def test_lossless_gray_values_are_exact(tmp_path: Path, suffix: str, dtype: type, bits: int) -> None:
    stored = _ramp(dtype)
    scan = read_scan(_write(tmp_path / f"gray{suffix}", stored))
    assert scan.pixels.dtype == np.float32
    assert scan.pixels.shape == stored.shape
    np.testing.assert_array_equal(scan.pixels, stored.astype(np.float32))
    assert scan.bit_depth == bits
    assert (scan.source_format, scan.modality, scan.spacing) == ("image", "OT", (1.0, 1.0))
    assert scan.affine is None and scan.is_hu is False
    assert scan.pixels.max() == np.iinfo(dtype).max


def test_float_tiff_keeps_values_and_has_no_bit_depth(tmp_path: Path) -> None:
    stored = np.linspace(-1000.0, 3000.0, 64 * 32, dtype=np.float32).reshape(64, 32)
    scan = read_scan(_write(tmp_path / "float.tif", stored))
    np.testing.assert_array_equal(scan.pixels, stored)
    assert scan.bit_depth is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_colour_becomes_bt601_luma(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, np.iinfo(dtype).max, size=(40, 56, 3), endpoint=True).astype(dtype)
    scan = read_scan(_write(tmp_path / "colour.png", bgr))
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    np.testing.assert_allclose(scan.pixels, 0.299 * r + 0.587 * g + 0.114 * b, rtol=1e-5, atol=1e-2)
    # OpenCV's own integer BGR2GRAY differs only by its fixed-point weights and rounding.
    opencv = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(scan.pixels, opencv, atol=0.5 + 4e-5 * np.iinfo(dtype).max)
    assert scan.metadata["colour"] == "bt601-luma"
    assert scan.bit_depth == np.iinfo(dtype).bits


def test_equal_channels_are_read_as_gray_exactly(tmp_path: Path) -> None:
    gray = _ramp(np.uint16)
    scan = read_scan(_write(tmp_path / "gray3.png", np.dstack([gray, gray, gray])))
    np.testing.assert_array_equal(scan.pixels, gray.astype(np.float32))
    assert scan.metadata["colour"] == "equal-channels"


def test_alpha_channel_is_dropped(tmp_path: Path) -> None:
    gray = _ramp(np.uint8)
    alpha = np.full_like(gray, 7)
    scan = read_scan(_write(tmp_path / "alpha.png", np.dstack([gray, gray, gray, alpha])))
    np.testing.assert_array_equal(scan.pixels, gray.astype(np.float32))
    assert scan.metadata["channels"] == 4


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_reads_close_to_what_was_written(tmp_path: Path, channels: int) -> None:
    gray = np.tile(np.linspace(0, 255, 64), (48, 1)).astype(np.uint8)
    image = gray if channels == 1 else np.dstack([gray] * 3)
    scan = read_scan(_write(tmp_path / "lossy.jpg", image, (cv2.IMWRITE_JPEG_QUALITY, 100)))
    assert scan.pixels.shape == gray.shape
    assert scan.bit_depth == 8
    assert np.abs(scan.pixels - gray).mean() < 1.5


def test_harvard_test_pngs_store_gray_as_three_channels_and_read_as_2d(harvard_test: Path) -> None:
    path = sorted((harvard_test / "CT").glob("*.png"))[0]
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (256, 256, 3)
    scan = read_scan(path, modality="CT")
    assert scan.pixels.shape == (256, 256)
    np.testing.assert_array_equal(scan.pixels, raw[..., 0].astype(np.float32))
    assert (scan.modality, scan.bit_depth, scan.is_hu) == ("CT", 8, False)


def test_harvard_train_pngs_read_as_8_bit_gray(harvard_train: Path) -> None:
    paths = sorted((harvard_train / "MRI").glob("*.png"))[:3]
    assert paths
    for path in paths:
        scan = read_scan(path, modality="mri")
        assert scan.pixels.shape == (256, 256)
        assert scan.modality == "MR"
        assert 0.0 <= scan.pixels.min() <= scan.pixels.max() <= 255.0


def _truncated_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    good = _write(tmp_path / "full.png", rng.integers(0, 65535, (64, 64), dtype=np.uint16))
    data = good.read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _text_as_png(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    return path


def _empty_tiff(tmp_path: Path) -> Path:
    path = tmp_path / "empty.tif"
    path.touch()
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [(_truncated_png, "cannot decode"), (_text_as_png, "cannot decode"), (_empty_tiff, "empty")],
)
def test_bad_image_files_raise_fuse_error_naming_the_file(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    for reader in (read_scan, read_image):
        with pytest.raises(FuseError, match=reason) as caught:
            reader(path)
        assert path.name in str(caught.value)
        assert caught.value.path == path
