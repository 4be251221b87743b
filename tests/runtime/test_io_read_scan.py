"""read_scan dispatch: each kind of path goes to its reader; anything else is a FuseError naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from fuse_runtime.errors import FuseError
from fuse_runtime.io import ACCEPTED_FORMATS, read_scan


def _png(tmp: Path) -> Path:
    cv2.imwrite(str(tmp / "a.png"), np.zeros((8, 8), np.uint8))
    return tmp / "a.png"


def _dicom_without_suffix(tmp: Path) -> Path:
    """A DICOM file named without .dcm is recognised by its DICM marker."""
    path = tmp / "IM0001"
    path.write_bytes(Path(get_testdata_file("MR_small.dcm", download=False)).read_bytes())
    return path


@pytest.mark.parametrize(
    ("make", "source_format", "ndim"),
    [
        (_png, "image", 2),
        (lambda tmp: Path(get_testdata_file("CT_small.dcm", download=False)), "dicom", 2),
        (_dicom_without_suffix, "dicom", 2),
        (lambda tmp: Path(data_path) / "anatomical.nii", "nifti", 3),
    ],
    ids=["png", "dicom", "dicom-no-suffix", "nifti"],
)
def test_dispatch_by_what_the_path_is(tmp_path: Path, make, source_format: str, ndim: int) -> None:
    path = make(tmp_path)
    scan = read_scan(str(path))
    assert scan.source_format == source_format
    assert scan.pixels.ndim == ndim and scan.pixels.dtype == np.float32
    assert scan.source == path


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere" / "scan.dcm"


def _empty(name: str):
    def make(tmp: Path) -> Path:
        (tmp / name).touch()
        return tmp / name

    return make


def _text(name: str, text: str = "hello\n"):
    def make(tmp: Path) -> Path:
        (tmp / name).write_text(text)
        return tmp / name

    return make


def _folder_of_pngs(tmp: Path) -> Path:
    folder = tmp / "case"
    (folder / "CT").mkdir(parents=True)
    cv2.imwrite(str(folder / "CT" / "1.png"), np.zeros((8, 8), np.uint8))
    return folder


BAD_PATHS = [
    (_missing, "no such file or folder"),
    (_empty("empty.png"), "empty"),
    (_empty("empty.dcm"), "empty"),
    (_empty("empty.nii.gz"), "empty"),
    (_empty("noext"), "empty"),
    (_text("notes.txt"), "unknown file format '.txt'"),
    (_text("README"), "unknown file format '\\(no suffix\\)'"),
    (_text("fake.png"), "OpenCV cannot decode"),
    (_text("fake.dcm", "x" * 300), "not a DICOM file"),
    (_text("fake.nii", "x" * 400), "not a readable NIfTI"),
    (_folder_of_pngs, "holds no DICOM files"),
]


@pytest.mark.parametrize(("make", "reason"), BAD_PATHS, ids=[f"{i}-{r[:16]}" for i, (_, r) in enumerate(BAD_PATHS)])
def test_bad_paths_raise_fuse_error_naming_the_path(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(FuseError, match=reason) as caught:
        read_scan(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("make", [_missing, _text("notes.txt"), _folder_of_pngs])
def test_messages_for_unknown_input_list_the_accepted_formats(tmp_path: Path, make) -> None:
    with pytest.raises(FuseError) as caught:
        read_scan(make(tmp_path))
    assert ACCEPTED_FORMATS in str(caught.value)


@pytest.mark.parametrize("modality", ["xray", "", "C T"])
def test_unknown_modality_names_are_refused(tmp_path: Path, modality: str) -> None:
    with pytest.raises(FuseError, match="unknown modality"):
        read_scan(_png(tmp_path), modality=modality)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("ct", "CT"),
        ("MRI", "MR"),
        ("mr", "MR"),
        ("pet", "PT"),
        ("spect", "NM"),
        ("vi", "VIS"),
        ("IR", "IR"),
        (None, "OT"),
    ],
)
def test_modality_aliases(tmp_path: Path, given: str | None, stored: str) -> None:
    assert read_scan(_png(tmp_path), modality=given).modality == stored


def test_importing_the_readers_loads_no_torch() -> None:
    code = (
        "import sys, fuse_runtime.io, fuse_runtime.io.nifti, fuse_runtime.io.dicom_series; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
