"""Single DICOM files: HU from pydicom's own rescale, kept tags, compressed syntaxes, bad files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, get_decoder

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.io.dicom import read_dicom_file


def sample(name: str) -> Path:
    """A file bundled with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom no longer bundles {name}"
    return Path(path)


def test_ct_small_pixels_are_hounsfield_units_as_pydicom_computes_them() -> None:
    path = sample("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = read_scan(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    assert scan.pixels.dtype == np.float32
    np.testing.assert_array_equal(scan.pixels, expected.astype(np.float32))
    assert float(ds.RescaleIntercept) != 0  # the rescale really changes the values
    assert (scan.modality, scan.is_hu, scan.source_format) == ("CT", True, "dicom")
    assert scan.pixels.min() < -500  # air and background in HU
    assert scan.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert scan.bit_depth == ds.BitsStored


@pytest.mark.parametrize(
    "keyword",
    [
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "FrameOfReferenceUID",
        "StudyDate",
        "Modality",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SliceThickness",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
    ],
)
def test_ct_small_keeps_the_tags_needed_to_write_back(keyword: str) -> None:
    path = sample("CT_small.dcm")
    ds = pydicom.dcmread(path)
    kept = read_scan(path).metadata["dicom"][keyword]
    value = ds[keyword].value
    if isinstance(value, pydicom.multival.MultiValue):
        assert kept == pytest.approx([float(v) for v in value])
    elif isinstance(value, float):
        assert kept == pytest.approx(float(value))
    else:
        assert kept == str(value)


def test_mr_small_is_not_hu_and_keeps_its_window() -> None:
    path = sample("MR_small.dcm")
    ds = pydicom.dcmread(path)
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.pixels, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert (scan.modality, scan.is_hu) == ("MR", False)
    assert scan.pixels.shape == (64, 64)
    assert scan.metadata["window_center"] == pytest.approx(float(ds.WindowCenter))
    assert scan.metadata["window_width"] == pytest.approx(float(ds.WindowWidth))


def test_caller_modality_alias_is_accepted_when_it_agrees_with_the_file() -> None:
    assert read_scan(sample("MR_small.dcm"), modality="mri").modality == "MR"


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"],
)
def test_encoded_mr_small_decodes_to_the_same_values_or_names_the_missing_decoder(name: str) -> None:
    """Lossless encodings of MR_small: equal to the plain file, or a FuseError naming what to install."""
    reference = read_scan(sample("MR_small.dcm")).pixels
    path = sample(name)
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    decoder = get_decoder(syntax) if syntax.is_compressed else None
    if decoder is None or decoder.is_available:
        np.testing.assert_array_equal(read_scan(path).pixels, reference)
    else:
        with pytest.raises(FuseError, match="no decoder for it is installed: install one of") as caught:
            read_scan(path)
        message = str(caught.value)
        assert name in message and syntax.name in message
        assert "pylibjpeg" in message or "gdcm" in message


def test_rle_is_decoded_by_pydicom_itself() -> None:
    """RLE needs no optional package, so this encoding is decoded on every install."""
    np.testing.assert_array_equal(
        read_scan(sample("MR_small_RLE.dcm")).pixels, read_scan(sample("MR_small.dcm")).pixels
    )


def test_jpeg_ls_without_its_plugins_names_the_decoders_to_install() -> None:
    path = sample("MR_small_jpeg_ls_lossless.dcm")
    decoder = get_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if decoder.is_available:
        np.testing.assert_array_equal(read_scan(path).pixels, read_scan(sample("MR_small.dcm")).pixels)
        return
    with pytest.raises(FuseError) as caught:
        read_scan(path)
    for package in ("gdcm", "pylibjpeg-libjpeg", "pyjpegls"):
        assert package in str(caught.value)


def test_colour_dicom_becomes_bt601_luma() -> None:
    path = sample("SC_rgb_small_odd.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    scan = read_scan(path)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-3)
    assert scan.metadata["colour"] == "bt601-luma"


def test_classic_multi_frame_file_gives_frames_as_slices() -> None:
    scan = read_scan(sample("SC_rgb_rle_2frame.dcm"))
    assert scan.pixels.shape == (2, 100, 100)
    assert len(scan.spacing) == 3


def _non_dicom_with_dcm_suffix(tmp_path: Path) -> Path:
    path = tmp_path / "report.dcm"
    path.write_text("patient report, not an image\n" * 20)
    return path


def _header_only_ct(tmp_path: Path) -> Path:
    """CT_small cut inside its header: an image SOP class with no pixel data left."""
    path = tmp_path / "cut.dcm"
    path.write_bytes(sample("CT_small.dcm").read_bytes()[:1000])
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: sample("MR_truncated.dcm"), "truncated"),
        (_header_only_ct, "no pixel data .* truncated"),
        (lambda tmp: sample("rtstruct.dcm"), "holds no image"),
        (lambda tmp: sample("liver_1frame.dcm"), "enhanced multi-frame"),
        (_non_dicom_with_dcm_suffix, "not a DICOM file"),
    ],
    ids=["truncated", "truncated-header", "no-pixels", "enhanced-multiframe", "not-dicom"],
)
def test_bad_dicom_files_raise_fuse_error_naming_the_file(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(FuseError, match=reason) as caught:
        read_dicom_file(path)
    assert path.name in str(caught.value)
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("name", "modality", "reason"),
    [
        ("CT_small.dcm", "MR", "says Modality CT but MR was asked for"),
        ("MR_small.dcm", "CT", "says Modality MR but CT was asked for"),
        ("MR_small.dcm", "XRAY", "unknown modality"),
    ],
)
def test_bad_modality_arguments_raise(name: str, modality: str, reason: str) -> None:
    with pytest.raises(FuseError, match=reason):
        read_scan(sample(name), modality=modality)
