"""Rigid registration (fuse-run --register rigid): a known move and rotation of a phantom MRI is recovered."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.phantoms import PhantomSpec, render_head
from fuse_runtime.register import (
    RegistrationConfig,
    register_rigid,
    rotation_angle_deg,
    transform_from_record,
    transform_path,
    write_transform,
)
from fuse_runtime.resample import resample_onto, to_sitk
from fuse_runtime.scan import Scan

#: A 72×72×30 head, 3.2 mm pixels and 4 mm slices, centred on the origin (LPS).
AFFINE = np.array([[0.0, 0.0, 3.2, -113.6], [0.0, 3.2, 0.0, -113.6], [4.0, 0.0, 0.0, -58.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def head() -> tuple[Scan, Scan]:
    ct, mri = render_head(72, np.linspace(-0.6, 0.6, 30), PhantomSpec(), np.random.default_rng(7))
    spacing = (4.0, 3.2, 3.2)
    return (
        Scan(ct, "CT", Path("ct.nii.gz"), "nifti", True, None, spacing, AFFINE, {}),
        Scan(mri, "MR", Path("mri.nii.gz"), "nifti", False, None, spacing, AFFINE, {}),
    )


def _moved(mri: Scan, known: sitk.Transform) -> Scan:
    """The MRI's anatomy moved by ``known`` in world space, on the same grid (its header unchanged)."""
    image = to_sitk(mri)
    pixels, _ = resample_onto(image, image, known)
    return Scan(pixels, "MR", mri.source, "nifti", False, None, mri.spacing, mri.affine, {})


def test_rigid_registration_recovers_a_known_move_and_rotation(head: tuple[Scan, Scan], tmp_path: Path) -> None:
    ct, mri = head
    known = sitk.Euler3DTransform()
    known.SetRotation(*np.radians([3.0, -2.0, 6.0]))
    known.SetTranslation([5.0, -4.0, 3.0])
    aligned, record = register_rigid(ct, _moved(mri, known))
    found = transform_from_record(record.transform)
    # found maps CT points to moved-MRI points; known maps them back: the composition is the identity
    assert rotation_angle_deg(found) == pytest.approx(rotation_angle_deg(known), abs=1.0)
    matrix = np.asarray(known.GetMatrix()).reshape(3, 3) @ np.asarray(found.GetMatrix()).reshape(3, 3)
    angle = np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1, 1)))
    assert angle < 1.0
    for point in ([0.0, 0.0, 0.0], [60.0, 60.0, 40.0], [-60.0, 40.0, -40.0], [50.0, -70.0, 0.0]):
        assert np.linalg.norm(np.subtract(known.TransformPoint(found.TransformPoint(point)), point)) < 1.0
    assert record.method == "rigid" and record.metric_after < record.metric_before
    assert "Step too small" in record.optimizer_stop
    assert aligned.pixels.shape == ct.pixels.shape
    before = np.corrcoef(_moved(mri, known).pixels.ravel(), mri.pixels.ravel())[0, 1]
    after = np.corrcoef(aligned.pixels.ravel(), mri.pixels.ravel())[0, 1]
    assert after > 0.95 > before
    path = write_transform(transform_path(tmp_path / "case01.nii.gz"), record.transform)
    assert path.name == "case01.tfm"
    np.testing.assert_allclose(sitk.ReadTransform(str(path)).GetParameters(), found.GetParameters(), atol=1e-6)


def test_slices_register_in_2d(harvard_test: Path) -> None:
    ct = read_scan(harvard_test / "CT" / "11.png", "CT")
    mri = read_scan(harvard_test / "MRI" / "11.png", "MR")
    rotation = cv2.getRotationMatrix2D((127.5, 127.5), 4.0, 1.0)
    rotation[:, 2] += (6.0, -4.0)
    moved = cv2.warpAffine(mri.pixels, rotation, (256, 256), flags=cv2.INTER_LINEAR)
    moved_scan = Scan(moved, "MR", mri.source, "image", False, 8, mri.spacing, None, {})
    aligned, record = register_rigid(ct, moved_scan)
    assert record.transform["type"] == "Euler2DTransform"
    assert abs(abs(np.degrees(record.transform["parameters"][0])) - 4.0) < 1.0
    assert record.metric_after < record.metric_before
    inside = np.s_[40:-40, 40:-40]
    assert (
        np.abs(aligned.pixels[inside] - mri.pixels[inside]).mean()
        < np.abs(moved[inside] - mri.pixels[inside]).mean() / 2
    )


def test_registration_that_does_not_converge_is_refused(head: tuple[Scan, Scan]) -> None:
    ct, mri = head
    with pytest.raises(FuseError, match="did not converge.*Maximum number of iterations") as error:
        register_rigid(ct, mri, RegistrationConfig(iterations=2, min_step=1e-9))
    assert "ct.nii.gz" in str(error.value) and "mri.nii.gz" in str(error.value)
