"""NIfTI volumes: defined axial orientation, exact inverse to the file layout, write-back on the source grid."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.io.nifti import RAS_TO_LPS, read_nifti, to_source_layout, write_like

BUNDLED = Path(data_path)


def _non_canonical_affine() -> np.ndarray:
    """Voxel axes (i, j, k) → (anterior→posterior, superior→inferior, left→right), slightly oblique."""
    permute_flip = np.array([[0, 0, 1.2], [-0.9, 0, 0], [0, -2.5, 0]])
    angle = np.deg2rad(7.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ permute_flip
    affine[:3, 3] = [-40.0, 25.0, 60.0]
    return affine


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def oblique_volume(tmp_path: Path) -> Path:
    data = np.random.default_rng(5).normal(size=(11, 9, 7)).astype(np.float32)
    return _write(tmp_path / "oblique.nii.gz", data, _non_canonical_affine())


def _source_cases(tmp_path: Path) -> dict[str, Path]:
    return {
        "anatomical.nii": BUNDLED / "anatomical.nii",
        "standard.nii.gz": BUNDLED / "standard.nii.gz",
        "reoriented_anat_moved.nii": BUNDLED / "reoriented_anat_moved.nii",
        "written-oblique.nii.gz": _write(
            tmp_path / "oblique.nii.gz",
            np.random.default_rng(5).normal(size=(11, 9, 7)).astype(np.float32),
            _non_canonical_affine(),
        ),
    }


CASES = ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii", "written-oblique.nii.gz"]


@pytest.mark.parametrize("case", CASES)
def test_to_source_layout_is_the_exact_inverse(tmp_path: Path, case: str) -> None:
    path = _source_cases(tmp_path)[case]
    original = nib.load(path).get_fdata(dtype=np.float32)
    scan = read_scan(path)
    assert scan.pixels.dtype == np.float32 and scan.pixels.ndim == 3
    restored = to_source_layout(scan, scan.pixels)
    assert restored.shape == original.shape
    np.testing.assert_array_equal(restored, original)
    stacked = to_source_layout(scan, np.stack([scan.pixels, -scan.pixels], axis=-1))
    np.testing.assert_array_equal(stacked[..., 1], -original)


@pytest.mark.parametrize("case", CASES)
def test_index_axes_point_superior_posterior_left(tmp_path: Path, case: str) -> None:
    """slice 0 inferior, rows anterior→posterior, columns right→left, and voxels stay where they were."""
    path = _source_cases(tmp_path)[case]
    image = nib.load(path)
    original = image.get_fdata(dtype=np.float32)
    scan = read_nifti(path)
    ras_affine = RAS_TO_LPS @ scan.affine  # diag(-1,-1,1,1) is its own inverse
    assert nib.aff2axcodes(ras_affine) == ("S", "P", "L")
    assert scan.spacing == pytest.approx(tuple(np.linalg.norm(scan.affine[:3, :3], axis=0)))
    rng = np.random.default_rng(1)
    for _ in range(20):
        index = np.array([rng.integers(n) for n in scan.pixels.shape])
        world = ras_affine @ [*index, 1.0]
        source_index = np.rint(np.linalg.solve(image.affine, world)[:3]).astype(int)
        assert scan.pixels[tuple(index)] == original[tuple(source_index)]


def test_oblique_written_volume_keeps_its_obliquity(oblique_volume: Path) -> None:
    scan = read_scan(oblique_volume, modality="MR")
    assert scan.metadata["source_axcodes"] == "PIR"
    assert scan.pixels.shape == (9, 11, 7)
    assert scan.spacing == pytest.approx((2.5, 0.9, 1.2))
    np.testing.assert_array_equal(scan.metadata["nifti_affine"], nib.load(oblique_volume).affine)
    assert scan.modality == "MR" and scan.source_format == "nifti"


def test_write_like_preserves_affine_header_and_values(tmp_path: Path, oblique_volume: Path) -> None:
    source = nib.load(oblique_volume)
    scan = read_scan(oblique_volume)
    fused = np.clip(scan.pixels / 4 + 0.5, 0, 1).astype(np.float32)
    out = write_like(scan, fused, tmp_path / "out" / "fused.nii.gz")
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
    assert int(written.header["qform_code"]) == int(source.header["qform_code"])
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    assert written.header.get_zooms() == source.header.get_zooms()
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), to_source_layout(scan, fused))
    again = read_scan(out)
    np.testing.assert_array_equal(again.pixels, fused)
    np.testing.assert_allclose(again.affine, scan.affine)
    assert [p.name for p in out.parent.iterdir()] == ["fused.nii.gz"]  # no temporary left behind


def test_write_like_with_colour_channels_and_integer_source(tmp_path: Path) -> None:
    source_path = BUNDLED / "standard.nii.gz"
    scan = read_scan(source_path)
    rgb = np.stack([scan.pixels, scan.pixels * 2, scan.pixels * 3], axis=-1).astype(np.float32)
    out = write_like(scan, rgb, tmp_path / "rgb.nii")
    written = nib.load(out)
    original = nib.load(source_path).get_fdata()
    assert written.shape == (*original.shape, 3)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.get_fdata()[..., 2], original * 3)
    np.testing.assert_array_equal(written.affine, nib.load(source_path).affine)


def test_two_dimensional_nifti_is_one_slice_and_round_trips(tmp_path: Path) -> None:
    data = np.arange(12 * 10, dtype=np.int16).reshape(12, 10)
    path = _write(tmp_path / "slice.nii", data, np.diag([0.8, 0.8, 3.0, 1.0]))
    scan = read_scan(path)
    assert scan.pixels.shape == (1, 10, 12)
    assert scan.bit_depth == 16
    # RAS voxel axes: rows run anterior→posterior (j reversed), columns right→left (i reversed).
    np.testing.assert_array_equal(scan.pixels[0], data.T[::-1, ::-1])
    np.testing.assert_array_equal(to_source_layout(scan, scan.pixels), data)
    out = nib.load(write_like(scan, scan.pixels, tmp_path / "out.nii"))
    assert out.shape == (12, 10)
    np.testing.assert_array_equal(out.get_fdata(), data)


def test_four_dimensional_nifti_with_one_volume_round_trips(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(6, 5, 4, 1)).astype(np.float32)
    path = _write(tmp_path / "one_volume.nii.gz", data, np.diag([-1.0, 1.0, 2.0, 1.0]))
    scan = read_scan(path)
    assert scan.pixels.shape == (4, 5, 6)
    restored = to_source_layout(scan, scan.pixels)
    assert restored.shape == (6, 5, 4, 1)
    np.testing.assert_array_equal(restored, data)


@pytest.mark.parametrize(
    ("minimum", "modality", "is_hu"),
    [
        (-1024.0, "CT", True),
        (-1024.0, None, False),
        (-1024.0, "MR", False),
        (0.0, "CT", False),
        (-400.0, "CT", False),
    ],
)
def test_ct_is_hu_only_when_values_span_hounsfield_units(
    tmp_path: Path, minimum: float, modality: str | None, is_hu: bool
) -> None:
    data = np.linspace(minimum, 1500.0, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    scan = read_scan(_write(tmp_path / "ct.nii.gz", data, np.eye(4)), modality=modality)
    assert scan.is_hu is is_hu


def _truncated_gz(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    good = _write(tmp_path / "good.nii.gz", data, np.eye(4))
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[:4000])
    return bad


def _not_nifti(tmp_path: Path) -> Path:
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 40))
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: BUNDLED / "example4d.nii.gz", "holds 2 volumes"),
        (lambda tmp: BUNDLED / "functional.nii", "holds 20 volumes"),
        (_truncated_gz, "truncated|not a readable NIfTI"),
        (_not_nifti, "not a readable NIfTI"),
    ],
    ids=["example4d", "functional-4d", "truncated-gz", "not-nifti"],
)
def test_bad_nifti_files_raise_fuse_error_naming_the_file(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(FuseError, match=reason) as caught:
        read_scan(path)
    assert path.name in str(caught.value)


def test_bad_write_like_arguments_raise(tmp_path: Path, oblique_volume: Path) -> None:
    scan = read_scan(oblique_volume)
    with pytest.raises(FuseError, match=r"\.nii or \.nii\.gz"):
        write_like(scan, scan.pixels, tmp_path / "fused.png")
    with pytest.raises(FuseError, match="do not fit this scan"):
        write_like(scan, scan.pixels[:, :-1], tmp_path / "fused.nii.gz")
    with pytest.raises(FuseError, match="do not fit this scan"):
        to_source_layout(scan, scan.pixels[0])
    assert not (tmp_path / "fused.nii.gz").exists()


def test_write_like_refuses_a_scan_that_was_not_nifti(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    dicom = read_scan(get_testdata_file("CT_small.dcm", download=False))
    with pytest.raises(FuseError, match="not NIfTI"):
        write_like(dicom, dicom.pixels[None], tmp_path / "x.nii.gz")
