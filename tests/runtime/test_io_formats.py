"""fuse_runtime.io.formats: one answer, for pairing and read_scan, to which reader a file is for."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from fuse_runtime.io.formats import file_kind, format_suffix, looks_like_dicom


def test_suffixes_are_matched_whole_and_case_blind(tmp_path: Path) -> None:
    assert format_suffix(tmp_path / "case01" / "CT.NII.GZ") == ".nii.gz"
    assert format_suffix("20005.Png") == ".png" and format_suffix("IM0001") == "" and format_suffix("x.txt") == ""
    assert [file_kind(name) for name in ("a.tiff", "a.nii", "a.DCM")] == ["image", "nifti", "dicom-file"]


def test_dicom_without_a_suffix_is_found_by_its_marker(tmp_path: Path) -> None:
    shipped = Path(get_testdata_file("CT_small.dcm"))
    unnamed = tmp_path / "IM0001"
    unnamed.write_bytes(shipped.read_bytes())
    assert pydicom.dcmread(unnamed).Modality == "CT"
    assert looks_like_dicom(unnamed) and file_kind(unnamed) == "dicom-file"
    text = tmp_path / "notes"
    text.write_text("not an image")
    assert not looks_like_dicom(text) and file_kind(text) is None
    assert not looks_like_dicom(tmp_path / "missing")
    disguised = tmp_path / "slice.png"
    disguised.write_bytes(shipped.read_bytes())
    assert file_kind(disguised) == "image", "a known suffix decides before the marker is read"
