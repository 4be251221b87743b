"""Writers: 8-bit conversion, PNG, NIfTI on the CT's grid, DICOM Secondary Capture, atomic folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_checks import assert_dciodvfy_clean, assert_same_geometry, read_series
from nibabel.testing import data_path as nibabel_data
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage

from fuse_runtime import writers
from fuse_runtime.io import read_scan
from fuse_runtime.phantoms import write_phantoms


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms"))


def _fused(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8 ``[S,H,W,3]`` standing for a fused result."""
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _no_partials(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if writers.PARTIAL_MARKER in p.name]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, 0), (1.0, 255), (0.5, 128), (0.499 / 255, 0), (0.501 / 255, 1), (-0.3, 0), (1.7, 255)],
)
def test_to_display_rounds_and_clips(value: float, expected: int) -> None:
    fused = np.full((1, 3, 2, 2), value, np.float32)
    assert (writers.to_display(fused) == expected).all()


def test_to_display_keeps_rgb_order_and_gray_is_bt601() -> None:
    fused = np.zeros((2, 3, 4, 5), np.float32)
    fused[:, 0] = 1.0  # pure red
    rgb = writers.to_display(fused)
    assert rgb.shape == (2, 4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()
    gray = writers.to_display(fused, gray=True)
    assert gray.shape == (2, 4, 5) and (gray == round(0.299 * 255)).all()


@pytest.mark.parametrize("shape", [(3, 4, 4), (1, 1, 4, 4), (1, 4, 3, 4)])
def test_to_display_refuses_other_shapes(shape) -> None:
    with pytest.raises(ValueError, match=r"\[S,3,H,W\]"):
        writers.to_display(np.zeros(shape, np.float32))


@pytest.mark.parametrize("gray", [False, True])
def test_png_round_trip(tmp_path: Path, gray: bool) -> None:
    image = _fused((1, 20, 30))[0]
    image = image[..., 1] if gray else image
    path = writers.write_png(tmp_path / "sub" / "x.png", image)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    expected = image if gray else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(back, expected)
    _no_partials(tmp_path)


def test_png_slices_become_one_folder(tmp_path: Path) -> None:
    images = _fused((3, 8, 8))
    folder = writers.write_png_slices(tmp_path / "case", images)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["slice_00001.png", "slice_00002.png", "slice_00003.png"]
    back = cv2.cvtColor(cv2.imread(str(folder / names[2])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, images[2])
    _no_partials(tmp_path)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"])
@pytest.mark.parametrize("gray", [False, True])
def test_nifti_keeps_the_source_grid(tmp_path: Path, name: str, gray: bool) -> None:
    ct = read_scan(Path(nibabel_data) / name, modality="CT")
    images = _fused(ct.slices().shape)
    images = images[..., 0] if gray else images
    path = writers.write_nifti(tmp_path / "fused.nii.gz", images, ct)
    source, written = nib.load(ct.source), nib.load(path)
    assert written.shape == source.shape[:3]
    assert written.get_data_dtype().newbyteorder("=") == (np.float32 if gray else writers.RGB24)
    assert int(written.header["datatype"]) == (16 if gray else 128)  # FLOAT32 / RGB24
    np.testing.assert_allclose(written.affine, source.affine)
    np.testing.assert_allclose(written.header.get_zooms()[:3], source.header.get_zooms()[:3])
    assert int(written.header["sform_code"]) == int(source.header["sform_code"]) > 0
    assert type(written) is type(source)
    itk, itk_source = sitk.ReadImage(str(path)), sitk.ReadImage(str(ct.source))
    assert itk.GetNumberOfComponentsPerPixel() == (1 if gray else 3)
    assert_same_geometry(itk, itk_source, atol=1e-4)
    if gray:
        np.testing.assert_allclose(read_scan(path).pixels, images.astype(np.float32) / 255, atol=1e-7)
    else:
        back = sitk.GetArrayFromImage(itk)  # [z, y, x, 3] of the file's voxel order
        np.testing.assert_array_equal(back[..., 0].T.ravel(), np.asarray(written.dataobj)["R"].ravel())


def test_nifti_from_a_dicom_series_lands_on_the_same_grid(tmp_path: Path, phantoms: Path) -> None:
    ct = read_scan(phantoms / "dicom" / "case01" / "CT")
    images = _fused(ct.pixels.shape)
    path = writers.write_nifti(tmp_path / "fused.nii.gz", images, ct)
    reference = nib.load(phantoms / "nifti" / "case01" / "ct.nii.gz")  # the same grid, written as NIfTI
    written = nib.load(path)
    assert written.shape == reference.shape and written.get_data_dtype() == writers.RGB24
    assert int(written.header["sform_code"]) == int(written.header["qform_code"]) == 1
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)
    # voxel (column, row, slice), as the phantom NIfTI stores the same grid
    red = np.asarray(written.dataobj)["R"]
    np.testing.assert_array_equal(red[:, :, 2], images[2, ..., 0].swapaxes(0, 1))
    series = read_series(phantoms / "dicom" / "case01" / "CT")
    assert_same_geometry(sitk.ReadImage(str(path)), series, atol=1e-3)


def test_nifti_of_a_2d_image_uses_its_spacing(tmp_path: Path, harvard_test: Path) -> None:
    ct = read_scan(harvard_test / "CT" / "11.png", modality="CT")
    images = _fused(ct.slices().shape)[..., 0]
    written = nib.load(writers.write_nifti(tmp_path / "x.nii.gz", images, ct))
    assert written.shape == (256, 256, 1) and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(written.dataobj)[:, :, 0], images[0].T / 255.0, atol=1e-7)


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.mark.parametrize("gray", [False, True])
def test_dicom_series_is_a_secondary_capture_of_the_ct(tmp_path: Path, phantoms: Path, gray: bool) -> None:
    ct = read_scan(phantoms / "dicom" / "case01" / "CT")
    images = _fused(ct.pixels.shape)
    images = images[..., 1] if gray else images
    folder = writers.write_dicom_series(tmp_path / "case01", images, ct, "test fusion")
    written = _read_series(folder)
    sources = {ds.SOPInstanceUID: ds for ds in _read_series(phantoms / "dicom" / "case01" / "CT")}
    assert len(written) == ct.num_slices
    assert len({ds.SeriesInstanceUID for ds in written}) == 1
    assert written[0].SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in sources.values()}
    assert len({ds.SOPInstanceUID for ds in written}) == len(written)
    for index, ds in enumerate(written):
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.DerivationDescription == "test fusion - NOT FOR DIAGNOSTIC USE"
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
            assert ds[keyword].value == source[keyword].value
        position, source_position = ([float(v) for v in d.ImagePositionPatient] for d in (ds, source))
        np.testing.assert_allclose(position, source_position, atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in source.PixelSpacing])
        assert ds.PhotometricInterpretation == ("MONOCHROME2" if gray else "RGB")
        assert ds.InstanceNumber == index + 1
        np.testing.assert_array_equal(ds.pixel_array, images[index])
        assert "NOT FOR DIAGNOSTIC USE" in ds.ImageComments and ds.BurnedInAnnotation == "NO"
        assert list(ds.PatientOrientation) == ["L", "P"] and ds.Laterality == ""
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    back = read_scan(folder)  # the fused series stacks like the CT
    assert back.pixels.shape == ct.pixels.shape
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)
    assert_same_geometry(read_series(folder), read_series(phantoms / "dicom" / "case01" / "CT"))
    assert_dciodvfy_clean(folder.glob("*.dcm"))
    _no_partials(tmp_path)


def test_single_dicom_file_copies_the_ct_file(tmp_path: Path) -> None:
    ct = read_scan(get_testdata_file("CT_small.dcm"))
    images = _fused(ct.slices().shape)
    path = writers.write_dicom_series(tmp_path / "x.dcm", images, ct, "d", single_file=True)
    ds, source = pydicom.dcmread(path), pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ds.PatientID == source.PatientID and ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([float(v) for v in source.ImagePositionPatient])
    np.testing.assert_array_equal(ds.pixel_array, images[0])
    assert_dciodvfy_clean([path])


def test_dicom_from_an_image_starts_a_new_study(tmp_path: Path, harvard_test: Path) -> None:
    ct = read_scan(harvard_test / "CT" / "11.png", modality="CT")
    path = writers.write_dicom_series(tmp_path / "11.dcm", _fused((1, 256, 256)), ct, "d", single_file=True)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID and ds.PatientName == "" and ds.Modality == "OT"
    assert_dciodvfy_clean([path])
    with pytest.raises(Exception, match="3 slices but a single DICOM file"):
        writers.write_dicom_series(tmp_path / "y.dcm", _fused((3, 4, 4)), ct, "d", single_file=True)


def test_preview_is_three_panels(tmp_path: Path) -> None:
    ct, mri = np.zeros((10, 12), np.float32), np.ones((10, 12), np.float32)
    fused = _fused((1, 10, 12))[0]
    image = cv2.imread(str(writers.write_preview(tmp_path / "p.png", ct, mri, fused)))
    top = writers.preview_header(12)
    assert image.shape == (top + 10, 36, 3)
    assert (image[top:, :12] == 0).all() and (image[top:, 12:24] == 255).all()
    np.testing.assert_array_equal(cv2.cvtColor(image[top:, 24:], cv2.COLOR_BGR2RGB), fused)


def test_preview_sheet_names_its_panels(tmp_path: Path) -> None:
    gray = np.full((128, 128), 0.5, np.float32)
    fused = np.full((128, 128, 3), 128, np.uint8)
    image = cv2.imread(str(writers.write_preview(tmp_path / "p.png", gray, gray, fused, ("visible", "infrared"))))
    top = writers.preview_header(128)
    assert top >= 12 and image.shape == (top + 128, 384, 3)
    band = image[:top]
    # white text in each panel's part of the band, on the dark band colour elsewhere
    assert all((band[:, i * 128 : (i + 1) * 128] > 200).any() for i in range(3))
    assert (band[:, :, 0] == writers.PREVIEW_BAND_GRAY).mean() > 0.6
    longer = cv2.imread(str(writers.write_preview(tmp_path / "q.png", gray, gray, fused)))
    assert not np.array_equal(longer[:top], band)  # "CT | MRI" is drawn, not "visible | infrared"


def test_atomic_dir_replaces_a_folder_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "series"
    with writers.atomic_dir(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with writers.atomic_dir(target) as staging:
            (staging / "b.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with writers.atomic_dir(target) as staging:
        (staging / "c.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_remove_partials_touches_only_leftovers(tmp_path: Path) -> None:
    run = "fuse-20250101T000000-deadbeef"
    keep = [tmp_path / "11.png", tmp_path / "a" / ".hidden", tmp_path / "a" / "x.partial.png",
            tmp_path / ".thesis.partial.tex", tmp_path / ".11.png.abc.partial.png"]  # not made by a fuse-run
    leftovers = [tmp_path / f".11.png.{run}.abc.partial.png", tmp_path / "a" / f".x.nii.gz.{run}.k.partial.nii.gz"]
    for path in keep + leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    staging = tmp_path / "a" / f".case.{run}.q1.partial-dir"
    (staging / "IM_00001.dcm").parent.mkdir(parents=True)
    (staging / "IM_00001.dcm").write_text("x")
    removed = writers.remove_partials(tmp_path)
    assert sorted(removed) == sorted(leftovers + [staging])
    assert all(path.exists() for path in keep)
    assert not staging.exists() and not any(path.exists() for path in leftovers)


def test_remove_partials_spares_protected_folders(tmp_path: Path) -> None:
    inside = tmp_path / "in" / "CT" / ".x.png.fuse-20250101T000000-deadbeef.k.partial.png"
    inside.parent.mkdir(parents=True)
    inside.write_text("an input")
    assert writers.remove_partials(tmp_path, keep_out=[tmp_path / "in"]) == []
    assert inside.exists()
