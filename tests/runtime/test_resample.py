"""Resampling the MRI onto the CT's grid by world coordinates: phantoms, nibabel's and pydicom's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as nibabel_data
from pydicom.data import get_testdata_file

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.pairing import Pair, load_pair
from fuse_runtime.phantoms import write_phantoms
from fuse_runtime.resample import align_to_ct, to_sitk


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms"))


def other_grid(image: sitk.Image, spacing: tuple[float, float, float], size: tuple[int, int, int],
               direction: np.ndarray, centre_shift_mm: tuple[float, float, float]) -> sitk.Image:
    """``image`` resampled (linear) onto another grid: other spacing, orientation and field of view."""
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    centre = centre + np.asarray(centre_shift_mm)
    half = direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection([float(v) for v in direction.ravel()])
    grid.SetOrigin([float(v) for v in centre - half])
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


#: A sagittal-ish oblique frame: columns along −y, rows along z, slices along x, tilted 10° about z.
_TILT = np.radians(10.0)
OBLIQUE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) @ np.array(
    [[np.cos(_TILT), -np.sin(_TILT), 0.0], [np.sin(_TILT), np.cos(_TILT), 0.0], [0.0, 0.0, 1.0]]
)


def _write_nifti(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkUInt16), str(path))
    return path


def _inside_agreement(ct_grid_mri: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(ct_grid_mri[mask], reference[mask])[0, 1])


def test_same_grid_pairs_come_back_untouched(phantoms: Path) -> None:
    for first, second in (
        ("nifti/case01/ct.nii.gz", "nifti/case01/mri.nii.gz"), ("dicom/case01/CT", "dicom/case01/MRI")
    ):
        ct, mri = read_scan(phantoms / first, "CT"), read_scan(phantoms / second, "MR")
        aligned, alignment = align_to_ct(ct, mri)
        assert aligned is mri and alignment.method == "same-grid" and alignment.overlap == 1.0


def test_phantom_mri_on_another_grid_is_resampled_onto_the_ct(phantoms: Path, tmp_path: Path) -> None:
    ct = read_scan(phantoms / "nifti" / "case01" / "ct.nii.gz", "CT")
    truth = read_scan(phantoms / "nifti" / "case01" / "mri.nii.gz", "MR")
    # other spacing (1.1 mm, 2.5 mm slices), an oblique sagittal orientation, a smaller shifted field of view
    moved = other_grid(to_sitk(truth), (1.1, 1.1, 2.5), (150, 40, 70), OBLIQUE, (10.0, -5.0, 0.0))
    path = _write_nifti(moved, tmp_path / "case" / "mri.nii.gz")
    pair = Pair("case", phantoms / "nifti" / "case01" / "ct.nii.gz", path, "nifti")
    first, second = load_pair(pair)
    alignment = first.metadata["alignment"]
    assert alignment.method == "world" and 0.2 < alignment.overlap < 0.95
    assert second.pixels.shape == ct.pixels.shape and second.spacing == ct.spacing
    np.testing.assert_array_equal(second.affine, ct.affine)
    inside = to_sitk(ct)  # CT voxels inside the MRI's box
    mask = np.isfinite(sitk.GetArrayFromImage(sitk.Resample(moved * 0 + 1, inside, sitk.Transform(),
                                                               sitk.sitkNearestNeighbor, float("nan"))))
    assert abs(mask.mean() - alignment.overlap) < 0.02
    assert _inside_agreement(second.pixels, truth.pixels, mask) > 0.9


def test_cropped_dicom_mri_series_lands_exactly_on_the_ct(phantoms: Path, tmp_path: Path) -> None:
    """An MR series with another field of view (crop + shifted ImagePositionPatient) fills the CT grid exactly."""
    folder = tmp_path / "case" / "MRI"
    folder.mkdir(parents=True)
    for path in sorted((phantoms / "dicom" / "case01" / "MRI").glob("*.dcm"))[2:]:  # 2 slices fewer
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[10:100, 20:120]
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 20 * 1.8,
                                   float(ds.ImagePositionPatient[1]) + 10 * 1.8, ds.ImagePositionPatient[2]]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(folder / path.name)
    ct_folder = phantoms / "dicom" / "case01" / "CT"
    first, second = load_pair(Pair("case", ct_folder, folder, "dicom-series"))
    truth = read_scan(phantoms / "dicom" / "case01" / "MRI", "MR")
    alignment = first.metadata["alignment"]
    assert alignment.overlap == pytest.approx(10 / 12 * 90 * 100 / 128**2, abs=1e-6)
    np.testing.assert_allclose(second.pixels[2:, 10:100, 20:120], truth.pixels[2:, 10:100, 20:120], atol=1e-3)
    # each CT slice references the MR slice it was taken from (none for the two slices the MR lacks)
    assert [len(refs) for refs in first.metadata["second_slices"]] == [0, 0] + [1] * 10
    assert first.metadata["second_slices"][5][0]["SOPInstanceUID"] == truth.metadata["slices"][5]["SOPInstanceUID"]


def test_nibabel_volume_on_another_grid(tmp_path: Path) -> None:
    source = Path(nibabel_data) / "anatomical.nii"
    ct = read_scan(source, "CT")
    moved = other_grid(to_sitk(ct), (1.5, 1.5, 3.0), (40, 30, 20), OBLIQUE, (2.0, 0.0, 3.0))
    path = _write_nifti(moved, tmp_path / "mri.nii.gz")
    aligned, alignment = align_to_ct(ct, read_scan(path, "MR"))
    assert alignment.method == "world" and 0.1 < alignment.overlap < 1.0
    mask = np.zeros(ct.pixels.shape, bool)
    mask[6:-6, 8:-8, 8:-8] = True
    mask &= aligned.pixels > aligned.pixels.min()
    assert _inside_agreement(aligned.pixels, ct.pixels, mask) > 0.85


def test_pydicom_slices_that_do_not_overlap_are_refused_with_the_fix() -> None:
    ct, mri = read_scan(get_testdata_file("CT_small.dcm")), read_scan(get_testdata_file("MR_small.dcm"))
    with pytest.raises(FuseError, match="do not overlap in patient coordinates.*--register rigid") as error:
        align_to_ct(ct, mri)
    assert "CT_small.dcm" in str(error.value) and "MR_small.dcm" in str(error.value)


def test_pydicom_slice_on_another_in_plane_grid(tmp_path: Path) -> None:
    """A 2-D DICOM pair with geometry: the 'MR' is CT_small at half resolution and shifted; it resamples back."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    half = ds.pixel_array[::2, ::2].copy()
    spacing = [float(v) * 2 for v in ds.PixelSpacing]
    ds.PixelSpacing = spacing
    ds.Rows, ds.Columns = half.shape
    ds.PixelData = half.tobytes()
    ds.Modality = "MR"
    ds.save_as(tmp_path / "mr.dcm")
    ct = read_scan(get_testdata_file("CT_small.dcm"))
    aligned, alignment = align_to_ct(ct, read_scan(tmp_path / "mr.dcm", "MR"))
    assert alignment.method == "world" and alignment.overlap > 0.98
    assert aligned.pixels.shape == ct.pixels.shape
    assert np.corrcoef(aligned.pixels[4:-4, 4:-4].ravel(), ct.pixels[4:-4, 4:-4].ravel())[0, 1] > 0.9


def test_images_without_geometry_keep_the_old_refusal(harvard_test: Path, tmp_path: Path) -> None:
    import cv2

    small = cv2.resize(cv2.imread(str(harvard_test / "MRI" / "11.png"), cv2.IMREAD_GRAYSCALE), (128, 128))
    cv2.imwrite(str(tmp_path / "11.png"), small)
    ct, mri = read_scan(harvard_test / "CT" / "11.png", "CT"), read_scan(tmp_path / "11.png", "MR")
    with pytest.raises(FuseError, match="shapes differ"):
        align_to_ct(ct, mri)
