"""DICOM series folders written from pydicom's CT_small: sorting, geometry, and each refusal."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.io.dicom_series import read_dicom_series

SLICES = 6
STEP_MM = 2.5
#: Added to slice i's stored values (i × this), so every slice is recognisable after sorting.
SLICE_MARK = 10


@pytest.fixture(scope="module")
def ct_small() -> Dataset:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    return pydicom.dcmread(path)


def _rotation(degrees: float) -> np.ndarray:
    """Rotation about the LPS x axis (a tilted axial plane)."""
    a = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def write_series(
    folder: Path,
    template: Dataset,
    count: int = SLICES,
    step: float = STEP_MM,
    tilt_degrees: float = 0.0,
    edit: Callable[[int, Dataset], None] | None = None,
    seed: int = 0,
) -> list[tuple[Path, Dataset]]:
    """Write ``count`` slices along the normal under shuffled names; returns (file, dataset) in true order.

    InstanceNumber runs opposite to the position, so sorting by it would come out reversed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rotation = _rotation(tilt_degrees)
    row_dir, col_dir = rotation @ [1.0, 0.0, 0.0], rotation @ [0.0, 1.0, 0.0]
    normal = np.cross(row_dir, col_dir)
    origin = np.asarray(template.ImagePositionPatient, dtype=float)
    names = np.random.default_rng(seed).permutation(count)
    series_uid = generate_uid()
    written = []
    for i in range(count):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = count - i
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in origin + i * step * normal]
        ds.PixelData = (template.pixel_array + i * SLICE_MARK).astype(template.pixel_array.dtype).tobytes()
        if edit is not None:
            edit(i, ds)
        path = folder / f"im{names[i]:04d}.dcm"
        ds.save_as(path)
        written.append((path, ds))
    return written


def test_shuffled_series_is_sorted_along_the_normal(tmp_path: Path, ct_small: Dataset) -> None:
    written = write_series(tmp_path / "series", ct_small)
    scan = read_scan(tmp_path / "series")
    hu = apply_modality_lut(ct_small.pixel_array, ct_small).astype(np.float32)
    assert scan.pixels.shape == (SLICES, 128, 128)
    assert scan.pixels.dtype == np.float32
    for i in range(SLICES):
        np.testing.assert_array_equal(scan.pixels[i], hu + i * SLICE_MARK)
    assert [s["SOPInstanceUID"] for s in scan.metadata["slices"]] == [str(ds.SOPInstanceUID) for _, ds in written]
    assert [s["InstanceNumber"] for s in scan.metadata["slices"]] == list(range(SLICES, 0, -1))
    assert scan.metadata["sorted_by"] == "ImagePositionPatient"
    assert (scan.source_format, scan.modality, scan.is_hu) == ("dicom-series", "CT", True)
    row, col = (float(v) for v in ct_small.PixelSpacing)
    assert scan.spacing == pytest.approx((STEP_MM, row, col))
    assert scan.metadata["dicom"]["StudyInstanceUID"] == str(ct_small.StudyInstanceUID)
    assert scan.metadata["dicom"]["SeriesInstanceUID"] == str(written[0][1].SeriesInstanceUID)
    assert "SOPInstanceUID" not in scan.metadata["dicom"]


@pytest.mark.parametrize("tilt_degrees", [0.0, 30.0])
def test_affine_maps_index_to_each_slice_position(tmp_path: Path, ct_small: Dataset, tilt_degrees: float) -> None:
    written = write_series(tmp_path / "series", ct_small, tilt_degrees=tilt_degrees, seed=3)
    scan = read_scan(tmp_path / "series")
    row_dir = np.asarray(written[0][1].ImageOrientationPatient[:3], dtype=float)
    col_dir = np.asarray(written[0][1].ImageOrientationPatient[3:], dtype=float)
    row_mm, col_mm = (float(v) for v in ct_small.PixelSpacing)
    for s, (_, ds) in enumerate(written):
        for r, c in [(0, 0), (5, 17), (127, 64)]:
            # DICOM PS3.3 C.7.6.2.1.1: P = IPP + col_dir · r · row_spacing + row_dir · c · col_spacing
            origin = np.asarray(ds.ImagePositionPatient, dtype=float)
            expected = origin + col_dir * r * row_mm + row_dir * c * col_mm
            np.testing.assert_allclose((scan.affine @ [s, r, c, 1.0])[:3], expected, atol=1e-6)


def test_single_slice_folder_is_a_one_slice_volume(tmp_path: Path, ct_small: Dataset) -> None:
    write_series(tmp_path / "one", ct_small, count=1)
    scan = read_scan(tmp_path / "one")
    assert scan.pixels.shape == (1, 128, 128)
    assert scan.spacing[0] == pytest.approx(float(ct_small.SpacingBetweenSlices))


def test_non_dicom_files_in_the_folder_are_ignored_and_listed(tmp_path: Path, ct_small: Dataset) -> None:
    write_series(tmp_path / "series", ct_small, count=3)
    (tmp_path / "series" / "README.txt").write_text("exported by the scanner\n")
    scan = read_scan(tmp_path / "series")
    assert scan.pixels.shape[0] == 3
    assert scan.metadata["ignored_files"] == ["README.txt"]


def test_non_image_dicom_objects_in_the_folder_are_ignored(tmp_path: Path, ct_small: Dataset) -> None:
    write_series(tmp_path / "series", ct_small, count=3)
    structures = get_testdata_file("rtstruct.dcm", download=False)
    (tmp_path / "series" / "contours.dcm").write_bytes(Path(structures).read_bytes())
    scan = read_scan(tmp_path / "series")
    assert scan.pixels.shape[0] == 3
    assert scan.metadata["ignored_files"] == ["contours.dcm"]


def test_without_positions_slices_are_sorted_by_instance_number(tmp_path: Path, ct_small: Dataset) -> None:
    def drop_position(i: int, ds: Dataset) -> None:
        del ds.ImagePositionPatient

    write_series(tmp_path / "series", ct_small, edit=drop_position)
    scan = read_scan(tmp_path / "series")
    hu = apply_modality_lut(ct_small.pixel_array, ct_small).astype(np.float32)
    # InstanceNumber runs opposite to the (now missing) positions: slice 0 is the last one written.
    np.testing.assert_array_equal(scan.pixels[0], hu + (SLICES - 1) * SLICE_MARK)
    assert [s["InstanceNumber"] for s in scan.metadata["slices"]] == list(range(1, SLICES + 1))
    assert scan.metadata["sorted_by"] == "InstanceNumber"
    assert scan.affine is None


def _missing_slice(folder: Path, template: Dataset) -> str:
    write_series(folder, template)[2][0].unlink()
    return "1 slice(s) missing"


def _mixed_series(folder: Path, template: Dataset) -> str:
    def other_series(i: int, ds: Dataset) -> None:
        if i == 4:
            ds.SeriesInstanceUID = generate_uid()

    write_series(folder, template, edit=other_series)
    return "SeriesInstanceUID differs"


def _mixed_orientation(folder: Path, template: Dataset) -> str:
    def turn(i: int, ds: Dataset) -> None:
        if i == 1:
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]

    write_series(folder, template, edit=turn)
    return "ImageOrientationPatient differs"


def _mixed_size(folder: Path, template: Dataset) -> str:
    def crop(i: int, ds: Dataset) -> None:
        if i == 2:
            ds.PixelData = ds.pixel_array[:64].tobytes()
            ds.Rows = 64

    write_series(folder, template, edit=crop)
    return "Rows×Columns differs"


def _mixed_modality(folder: Path, template: Dataset) -> str:
    def relabel(i: int, ds: Dataset) -> None:
        if i == 0:
            ds.Modality = "MR"

    write_series(folder, template, edit=relabel)
    return "Modality differs"


def _uneven_spacing(folder: Path, template: Dataset) -> str:
    def shift(i: int, ds: Dataset) -> None:
        if i == 3:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 1.1]

    write_series(folder, template, edit=shift)
    return "inconsistent slice spacing"


def _duplicate_position(folder: Path, template: Dataset) -> str:
    def stack(i: int, ds: Dataset) -> None:
        if i == 5:
            ds.ImagePositionPatient = [float(v) for v in template.ImagePositionPatient]

    write_series(folder, template, edit=stack)
    return "same position"


def _truncated_slice(folder: Path, template: Dataset) -> str:
    victim = write_series(folder, template)[1][0]
    victim.write_bytes(victim.read_bytes()[:-500])
    return "truncated"


def _truncated_header(folder: Path, template: Dataset) -> str:
    victim = write_series(folder, template)[4][0]
    victim.write_bytes(victim.read_bytes()[:1000])
    return "no pixel data"


def _instance_number_gap(folder: Path, template: Dataset) -> str:
    def drop_position(i: int, ds: Dataset) -> None:
        del ds.ImagePositionPatient
        if i == 0:
            ds.InstanceNumber = 42

    write_series(folder, template, edit=drop_position)
    return "missing between"


def _no_dicom(folder: Path, template: Dataset) -> str:
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here\n")
    return "no DICOM"


BAD_SERIES = [
    _missing_slice,
    _mixed_series,
    _mixed_orientation,
    _mixed_size,
    _mixed_modality,
    _uneven_spacing,
    _duplicate_position,
    _truncated_slice,
    _truncated_header,
    _instance_number_gap,
]


@pytest.mark.parametrize("make", BAD_SERIES, ids=[f.__name__.strip("_") for f in BAD_SERIES])
def test_bad_series_raise_fuse_error_naming_folder_and_files(tmp_path: Path, ct_small: Dataset, make) -> None:
    folder = tmp_path / "series"
    reason = make(folder, ct_small)
    with pytest.raises(FuseError, match=re.escape(reason)) as caught:
        read_dicom_series(folder)
    message = str(caught.value)
    assert str(folder) in message
    assert any(path.name in message for path in folder.iterdir()), "the message names no offending file"


def test_folder_without_dicom_is_refused(tmp_path: Path, ct_small: Dataset) -> None:
    folder = tmp_path / "empty"
    _no_dicom(folder, ct_small)
    for reader in (read_scan, read_dicom_series):
        with pytest.raises(FuseError, match="no DICOM") as caught:
            reader(folder)
        assert caught.value.path == folder


def test_modality_argument_must_agree_with_the_series(tmp_path: Path, ct_small: Dataset) -> None:
    write_series(tmp_path / "series", ct_small, count=2)
    assert read_scan(tmp_path / "series", modality="ct").modality == "CT"
    with pytest.raises(FuseError, match="says Modality CT but MR"):
        read_scan(tmp_path / "series", modality="MR")
