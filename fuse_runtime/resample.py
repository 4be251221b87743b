"""Put the MRI on the CT's grid by world coordinates (SimpleITK does the maths).

A CT and an MRI from two scanners rarely share a pixel grid, but their headers place both in DICOM
patient coordinates (LPS, mm): the affines of a DICOM series or a NIfTI volume, or a single DICOM
file's ImagePositionPatient / ImageOrientationPatient / PixelSpacing. When the two grids differ and
overlap in that space, ``align_to_ct`` resamples the MRI onto the CT's grid (linear interpolation,
voxels outside the MRI filled with its minimum) and reports the overlap: the fraction of CT voxel
centres that fall inside the MRI's extent (each voxel counting as a box of its own size).

``to_sitk`` / ``world_affine`` convert a ``Scan`` to a SimpleITK image with its geometry: index
``(col, row, slice)`` of ITK is ``(slice, row, col)`` of ``Scan.pixels``, both in LPS millimetres.
A pair already on one grid is returned untouched (the same objects), so its result does not change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import check_registered
from fuse_runtime.scan import Scan

#: How close two affines (mm) and spacings (relative) must be for two scans to share a grid.
AFFINE_TOL_MM = 1e-2
SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class Alignment:
    """How the MRI was put on the CT's grid, for the report.

    method: ``"same-grid"`` (nothing done), ``"world"`` (resampled by the headers' coordinates) or
        ``"rigid"`` (registered, then resampled).
    overlap: fraction of CT voxels inside the MRI's extent after alignment, in [0, 1].
    metric_before / metric_after: Mattes mutual information (SimpleITK's sign: lower is better)
        before and after registration; None without registration.
    transform: the rigid transform (ITK convention: maps CT points to MRI points) as
        ``{"type", "parameters", "fixed_parameters"}``; None without registration.
    """

    method: str
    overlap: float
    metric_before: float | None = None
    metric_after: float | None = None
    optimizer_stop: str | None = None
    transform: dict[str, Any] | None = None
    source_slices: list[list[int]] | None = None

    def to_report(self) -> dict[str, Any]:
        """Plain JSON for report.json (the transform's parameters are in the .tfm file instead)."""
        data = dataclasses.asdict(self)
        data.pop("transform")
        data.pop("source_slices")
        data["overlap"] = round(self.overlap, 6)
        return {key: value for key, value in data.items() if value is not None}


def same_grid(first: Scan, second: Scan) -> bool:
    """True when the two scans have the same shape, spacing and (where both have one) affine."""
    try:
        check_registered(first, second, spacing_tol=SPACING_RTOL, affine_tol=AFFINE_TOL_MM)
    except FuseError:
        return False
    return True


def world_affine(scan: Scan) -> np.ndarray | None:
    """4×4 index ``(slice, row, col)`` → LPS mm; built from a single DICOM file's plane tags when needed.

    None when the scan carries no position in patient space (PNG/TIFF/JPEG, a DICOM file without
    ImagePositionPatient / ImageOrientationPatient, a classic multi-frame file).
    """
    if scan.affine is not None:
        return np.asarray(scan.affine, dtype=float)
    tags = scan.metadata.get("dicom") or {}
    if scan.source_format != "dicom" or scan.num_slices != 1:
        return None
    if len(tags.get("ImagePositionPatient") or ()) != 3 or len(tags.get("ImageOrientationPatient") or ()) != 6:
        return None
    orientation = np.asarray(tags["ImageOrientationPatient"], dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_spacing, col_spacing = (float(v) for v in scan.spacing[-2:])
    thickness = float(tags.get("SliceThickness") or 0.0) or 1.0
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row_dir, col_dir) * thickness
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = row_dir * col_spacing
    affine[:3, 3] = np.asarray(tags["ImagePositionPatient"], dtype=float)
    return affine


def to_sitk(scan: Scan, affine: np.ndarray | None = None) -> sitk.Image:
    """The scan as a float32 3-D SimpleITK image placed by ``affine`` (default ``world_affine``)."""
    affine = world_affine(scan) if affine is None else affine
    if affine is None:
        raise FuseError(
            "this scan has no position in patient coordinates (no affine, no ImagePositionPatient/"
            "ImageOrientationPatient): put both scans on one grid first, or use --register rigid",
            scan.source,
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(scan.slices(), dtype=np.float32))
    columns = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (columns / spacing).ravel()])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    return image


def resample_onto(
    reference: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None
) -> tuple[np.ndarray, float]:
    """Resample ``moving`` onto ``reference``'s grid (linear); its ``[S,H,W]`` array and the overlap.

    ``transform`` maps reference points to moving points (identity: world coordinates as they are).
    Voxels outside ``moving`` get its minimum; the overlap is the fraction of reference voxels inside.
    """
    transform = transform or sitk.Transform(reference.GetDimension(), sitk.sitkIdentity)
    outside = float("nan")
    resampled = sitk.Resample(moving, reference, transform, sitk.sitkLinear, outside, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(resampled)
    inside = np.isfinite(array)
    overlap = float(inside.mean()) if array.size else 0.0
    background = float(np.nanmin(sitk.GetArrayViewFromImage(moving))) if overlap else 0.0
    array[~inside] = background
    return array, overlap


def align_to_ct(ct: Scan, mri: Scan, register: str | None = None) -> tuple[Scan, Alignment]:
    """The MRI on the CT's grid and how it got there.

    ``register=None``: a pair on one grid is returned as it is; otherwise the MRI is resampled by
    world coordinates. ``register="rigid"``: rigid registration first (``fuse_runtime.register``).
    Raises FuseError naming both files when the scans do not overlap, when either lacks a position in
    patient coordinates (and the grids differ), or when registration does not converge.
    """
    if register not in (None, "rigid"):
        raise ValueError(f"register must be None or 'rigid', got {register!r}")
    if register is None and same_grid(ct, mri):
        return mri, Alignment(method="same-grid", overlap=1.0, source_slices=[[s] for s in range(ct.num_slices)])
    if register == "rigid":
        from fuse_runtime.register import register_rigid

        return register_rigid(ct, mri)
    pair = f"{ct.source} + {mri.source}"
    if world_affine(ct) is None or world_affine(mri) is None:
        check_registered(ct, mri)  # the old refusal, with its reason (shape, spacing)
        raise FuseError(f"{pair}: the scans lie on different grids; use --register rigid")
    reference, moving = to_sitk(ct), to_sitk(mri)
    pixels, overlap = resample_onto(reference, moving)
    if overlap <= 0.0:
        raise FuseError(
            f"{pair}: the CT and the MRI do not overlap in patient coordinates (their headers place them "
            "in different parts of space, e.g. different frames of reference); register them with "
            "--register rigid, or fix the MRI's position/orientation header"
        )
    sources = contributing_slices(reference, moving)
    return on_ct_grid(ct, mri, pixels), Alignment(method="world", overlap=overlap, source_slices=sources)


def on_ct_grid(ct: Scan, mri: Scan, pixels: np.ndarray) -> Scan:
    """A copy of ``mri`` holding ``pixels`` (``[S,H,W]`` on the CT's grid) with the CT's geometry."""
    pixels = pixels.reshape(ct.pixels.shape).astype(np.float32, copy=False)
    metadata = {**mri.metadata, "resampled_from": {"spacing": list(mri.spacing), "shape": list(mri.pixels.shape)}}
    return dataclasses.replace(mri, pixels=pixels, spacing=ct.spacing, affine=ct.affine, metadata=metadata)


def contributing_slices(
    reference: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None
) -> list[list[int]]:
    """For each slice of ``reference``, the slices of ``moving`` that its plane passes through.

    The slice's four corners go through ``transform`` (identity by default) into ``moving``'s
    continuous index; the slices whose thickness (±0.5) that span touches are listed, in order.
    A 2-D pair gives ``[[0]]``.
    """
    if reference.GetDimension() == 2:
        return [[0]]
    transform = transform or sitk.Transform(3, sitk.sitkIdentity)
    nx, ny, nz = reference.GetSize()
    depth = moving.GetSize()[2]
    sources = []
    for k in range(nz):
        corners = [(i, j, float(k)) for i in (0.0, nx - 1.0) for j in (0.0, ny - 1.0)]
        depths = [
            moving.TransformPhysicalPointToContinuousIndex(
                transform.TransformPoint(reference.TransformContinuousIndexToPhysicalPoint(corner))
            )[2]
            for corner in corners
        ]
        low, high = max(0, int(np.ceil(min(depths) - 0.5))), min(depth - 1, int(np.floor(max(depths) + 0.5)))
        sources.append(list(range(low, high + 1)))
    return sources
