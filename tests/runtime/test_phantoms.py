"""The embedded phantom scans: registered, deterministic, small, and readable by the pipeline."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from fuse_runtime.pairing import find_pairs, load_pair
from fuse_runtime.phantoms import HEAD, PhantomSpec, main, volume_affine, write_phantoms
from fuse_runtime.preprocess import PreprocessConfig, prepare_pair

SPEC = PhantomSpec()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms"))


def _digest(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_layout_and_size(phantoms):
    files = _digest(phantoms)
    expected = (
        {f"png/{role}/phantom{i:02d}.png" for role in ("CT", "MRI") for i in range(1, SPEC.png_slices + 1)}
        | {f"dicom/case01/CT/CT_{i:03d}.dcm" for i in range(1, SPEC.volume_slices + 1)}
        | {f"dicom/case01/MRI/MR_{i:03d}.dcm" for i in range(1, SPEC.volume_slices + 1)}
        | {"nifti/case01/ct.nii.gz", "nifti/case01/mri.nii.gz"}
    )
    assert set(files) == expected  # no partial files left behind either
    total = sum(path.stat().st_size for path in phantoms.rglob("*") if path.is_file())
    assert total <= 2 * 1024 * 1024


def test_deterministic_bytes(phantoms, tmp_path):
    assert _digest(write_phantoms(tmp_path / "again")) == _digest(phantoms)


def test_rewriting_replaces_files_in_place(phantoms, tmp_path):
    out = write_phantoms(tmp_path / "twice")
    first = _digest(out)
    write_phantoms(out)
    assert _digest(out) == first


def test_every_pair_is_found(phantoms):
    report = find_pairs(phantoms)
    assert report.problems == []
    names = {pair.name: pair.kind for pair in report.pairs}
    assert names == {
        **{f"png/phantom{i:02d}": "image" for i in range(1, SPEC.png_slices + 1)},
        "dicom/case01": "dicom-series",
        "nifti/case01": "nifti",
    }


def test_every_pair_loads_registered(phantoms):
    for pair in find_pairs(phantoms).pairs:
        ct, mri = load_pair(pair)  # raises unless shape, spacing and affine agree
        assert ct.modality == "CT" and mri.modality == "MR"
        assert ct.pixels.shape == mri.pixels.shape
        np.testing.assert_allclose(ct.spacing, mri.spacing)
        if pair.kind != "image":
            assert ct.pixels.shape == (SPEC.volume_slices, SPEC.volume_size, SPEC.volume_size)
            assert ct.is_hu, pair.name
            assert ct.pixels.max() > 500  # skull read back in Hounsfield units
            assert ct.pixels.min() < -900  # air
            np.testing.assert_allclose(ct.affine, mri.affine, atol=1e-4)
            np.testing.assert_allclose(
                sorted(ct.spacing),
                sorted((SPEC.slice_spacing_mm, SPEC.pixel_spacing_mm, SPEC.pixel_spacing_mm)),
                rtol=1e-5,
            )
        prepared = prepare_pair(ct, mri, pair.roles, PreprocessConfig(image_size=64))
        assert prepared.first.shape[1:] == (3, 64, 64) and prepared.second.shape[1:] == (1, 64, 64)


def test_dicom_series_reads_hu_through_pydicom_rescale(phantoms):
    ct_files = sorted((phantoms / "dicom" / "case01" / "CT").glob("*.dcm"))
    mr_files = sorted((phantoms / "dicom" / "case01" / "MRI").glob("*.dcm"))
    ct_sets = [pydicom.dcmread(path) for path in ct_files]
    mr_sets = [pydicom.dcmread(path) for path in mr_files]
    hu = np.stack([pydicom.pixels.apply_modality_lut(ds.pixel_array, ds) for ds in ct_sets])
    assert hu.max() > 900 and hu.min() < -900
    # Same grid and frame of reference, distinct series and instances, valid UIDs.
    for ct, mr in zip(ct_sets, mr_sets):
        for keyword in (
            "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID", "StudyInstanceUID"
        ):
            assert ct[keyword].value == mr[keyword].value, keyword
    uids = [ds.SOPInstanceUID for ds in ct_sets + mr_sets]
    assert len(set(uids)) == len(uids)
    assert len({ds.SeriesInstanceUID for ds in ct_sets + mr_sets}) == 2
    assert all(pydicom.uid.UID(uid).is_valid for uid in uids)
    z = [float(ds.ImagePositionPatient[2]) for ds in ct_sets]
    np.testing.assert_allclose(np.diff(z), SPEC.slice_spacing_mm)


def test_nifti_pair_shares_the_dicom_geometry(phantoms):
    ct = nib.load(phantoms / "nifti" / "case01" / "ct.nii.gz")
    mri = nib.load(phantoms / "nifti" / "case01" / "mri.nii.gz")
    np.testing.assert_array_equal(ct.affine, mri.affine)
    np.testing.assert_allclose(ct.affine, volume_affine(SPEC), atol=1e-5)
    assert ct.shape == mri.shape == (SPEC.volume_size, SPEC.volume_size, SPEC.volume_slices)
    # Voxel (col 0, row 0, slice 0) sits where the first DICOM slice's ImagePositionPatient says (LPS → RAS).
    first = pydicom.dcmread(phantoms / "dicom" / "case01" / "CT" / "CT_001.dcm")
    lps = np.array([float(v) for v in first.ImagePositionPatient])
    np.testing.assert_allclose(ct.affine[:3, 3], lps * [-1, -1, 1], atol=1e-3)
    # The NIfTI holds the same HU as the DICOM series.
    dicom_hu = pydicom.pixels.apply_modality_lut(first.pixel_array, first)
    np.testing.assert_array_equal(np.asarray(ct.dataobj)[:, :, 0].T, dicom_hu)


def _voxel_of(part_name: str) -> tuple[int, int, int]:
    """(slice, row, col) of a structure's centre in the volume grid."""
    part = next(p for p in HEAD if p.name == part_name)
    cx, cy, cz = part.centre
    z = np.linspace(-SPEC.z_extent, SPEC.z_extent, SPEC.volume_slices)
    to_index = lambda v: int((v + 1) / 2 * SPEC.volume_size)  # noqa: E731
    return int(np.abs(z - cz).argmin()), to_index(cy), to_index(cx)


@pytest.mark.parametrize(
    ("part", "ct_visible", "mri_visible"),
    [
        ("calcification", True, False), ("lesion", False, True), ("small lesion", False, True),
        ("left ventricle", False, True),
    ],
)
def test_structures_show_in_the_right_modality(phantoms, part, ct_visible, mri_visible):
    ct = np.asarray(nib.load(phantoms / "nifti" / "case01" / "ct.nii.gz").dataobj).transpose(2, 1, 0).astype(float)
    mri = np.asarray(nib.load(phantoms / "nifti" / "case01" / "mri.nii.gz").dataobj).transpose(2, 1, 0).astype(float)
    s, r, c = _voxel_of(part)
    s_wm, r_wm, c_wm = _voxel_of("white matter")
    near = (slice(s, s + 1), slice(r - 1, r + 2), slice(c - 1, c + 2))
    ct_contrast = ct[near].mean() - ct[s_wm, r_wm + 10, c_wm].mean()
    mri_contrast = (mri[near].mean() - mri[s_wm, r_wm + 10, c_wm]) / SPEC.mri_stored_max
    assert (abs(ct_contrast) > 100) == ct_visible, ct_contrast
    assert (abs(mri_contrast) > 0.2) == mri_visible, mri_contrast


def test_grey_and_white_matter_differ_on_mri_more_than_on_ct(phantoms):
    ct = np.asarray(nib.load(phantoms / "nifti" / "case01" / "ct.nii.gz").dataobj).transpose(2, 1, 0).astype(float)
    mri = np.asarray(nib.load(phantoms / "nifti" / "case01" / "mri.nii.gz").dataobj).transpose(2, 1, 0).astype(float)
    s, row = SPEC.volume_slices // 2, SPEC.volume_size // 2
    grey_col = int((1 - 0.63) / 2 * SPEC.volume_size)  # between white matter (0.57) and skull (0.69)
    white_col = SPEC.volume_size // 2 - 25
    ct_gap = ct[s, row - 2 : row + 3, grey_col].mean() - ct[s, row - 2 : row + 3, white_col].mean()
    mri_gap = (
        mri[s, row - 2 : row + 3, grey_col].mean() - mri[s, row - 2 : row + 3, white_col].mean()
    ) / SPEC.mri_stored_max
    assert 0 < ct_gap < 20  # grey 38 HU vs white 30 HU: barely visible on CT
    assert mri_gap > 0.1


def test_command_line_writes_the_set(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "nifti" / "case01" / "mri.nii.gz").is_file()
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "OUT_DIR" in help_text and "nii.gz" in help_text


def test_command_line_refuses_a_file_as_out_dir(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    result = CliRunner().invoke(main, [str(target)])
    assert result.exit_code != 0
    assert target.read_text() == "keep me"


def test_runs_as_a_module(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fuse_runtime.phantoms", str(tmp_path / "m")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "m").rglob("*.dcm"))) == 2 * SPEC.volume_slices


def test_dicom_and_nifti_phantoms_read_identically(phantoms):
    pairs = {pair.name: pair for pair in find_pairs(phantoms).pairs}
    dicom_ct, dicom_mri = load_pair(pairs["dicom/case01"])
    nifti_ct, nifti_mri = load_pair(pairs["nifti/case01"])
    np.testing.assert_array_equal(dicom_ct.pixels, nifti_ct.pixels)
    np.testing.assert_array_equal(dicom_mri.pixels, nifti_mri.pixels)
    np.testing.assert_allclose(dicom_ct.affine, nifti_ct.affine, atol=1e-4)
