"""Read a folder holding one DICOM series (one file per slice) into a volume Scan.

Conventions:

* Every regular, non-hidden file in the folder (not its subfolders) is considered. Files that are not
  DICOM, and DICOM objects without pixels (DICOMDIR, reports, structure sets), are skipped and listed
  in ``metadata["ignored_files"]``; a file that claims to be DICOM but is truncated or undecodable
  stops the read with a FuseError naming it (a silently dropped slice would be a hole).
* One series only: SeriesInstanceUID, Modality, Rows×Columns, PixelSpacing and
  ImageOrientationPatient must agree; otherwise the FuseError names the files on each side.
* Order: by ImagePositionPatient projected on the slice normal ``n = row_dir × col_dir`` (the cross
  product of the two ImageOrientationPatient vectors), ascending; for an axial series in DICOM's LPS
  patient space that puts the most inferior slice first. When any slice lacks position or
  orientation, by InstanceNumber instead (no affine then).
* Slices must be evenly spaced: a step of about k times the usual one is reported as k−1 missing
  slices, any other irregular step as inconsistent spacing, two slices at one position as duplicates
  (tolerances in ``SeriesTolerance``).
* Result: ``pixels`` float32 ``[S, H, W]`` (each slice rescaled by its own slope/intercept, so CT is
  HU), rows and columns as stored (acquisition plane); ``spacing = (slice, row, col)`` in mm;
  ``affine`` the 4×4 matrix from index ``(slice, row, col)`` to DICOM patient coordinates (LPS, mm):
  columns ``[slice step, col_dir·row_spacing, row_dir·col_spacing, first slice position]``.
* ``metadata["dicom"]``: the identifying and geometry tags shared by the series (from the first
  slice, per-slice tags removed); ``metadata["slices"]``: per slice in order, the file name,
  SOPInstanceUID, ImagePositionPatient and InstanceNumber — enough to write a derived series back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from fuse_runtime.errors import FuseError
from fuse_runtime.io.dicom import (
    GEOMETRY_KEYWORDS,
    IDENTIFYING_KEYWORDS,
    decode_pixels,
    dicom_tags,
    is_hounsfield,
    is_non_image_object,
    load_dataset,
    pixel_spacing,
    require_image,
    resolve_modality,
    slice_step,
    window,
)
from fuse_runtime.io.formats import looks_like_dicom
from fuse_runtime.scan import Scan

#: Tags that differ from slice to slice; kept per slice, not in the shared ``metadata["dicom"]``.
PER_SLICE_KEYWORDS = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation")

#: How many file names an error message lists per group before "and N more".
_NAMES_SHOWN = 4


@dataclass(frozen=True)
class SeriesTolerance:
    """How far a series may stray from a regular grid before it is refused.

    spacing_rtol: allowed deviation of a slice step from the series' median step, as a fraction of
        that step (0.05 = 5 %).
    duplicate_mm: two slices closer than this along the normal (mm) are at the same position.
    orientation: allowed absolute difference between direction cosines of two slices.
    spacing_mm: allowed absolute difference between two slices' PixelSpacing values (mm).
    """

    spacing_rtol: float = 0.05
    duplicate_mm: float = 1e-3
    orientation: float = 1e-3
    spacing_mm: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("spacing_rtol", "duplicate_mm", "orientation", "spacing_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SeriesTolerance.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Slice:
    path: Path
    ds: Dataset


def read_dicom_series(
    folder: str | Path, modality: str | None = None, tolerance: SeriesTolerance = SeriesTolerance()
) -> Scan:
    """Read the DICOM series in ``folder`` as a volume Scan (see the module docstring for the rules).

    Raises FuseError naming the folder and the offending files for a mixed series, missing slices,
    uneven spacing, duplicates, unreadable slices, or a folder without DICOM images.
    """
    folder = Path(folder)
    slices, ignored = _load_slices(folder)
    _check_one_series(slices, folder, tolerance)
    first = slices[0].ds
    code = resolve_modality(first, modality, slices[0].path)
    for item in slices:
        if "PerFrameFunctionalGroupsSequence" in item.ds or int(item.ds.get("NumberOfFrames", 1) or 1) > 1:
            raise FuseError(
                f"the series folder holds a multi-frame file ({item.path.name}): read that file on its own, "
                "or keep one single-frame file per slice in the folder",
                folder,
            )
    row_col, _ = pixel_spacing(first)
    if all(_has_position(item.ds) for item in slices):
        ordered, positions = _sort_by_position(slices, folder, tolerance)
        affine = _affine(ordered, positions, row_col)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        sorted_by = "ImagePositionPatient"
    else:
        ordered = _sort_by_instance_number(slices, folder)
        affine = None
        spacing = (slice_step(first), *row_col)
        sorted_by = "InstanceNumber"
    pixels = np.stack([decode_pixels(item.ds, item.path, code)[0] for item in ordered]).astype(np.float32)
    shared = [k for k in IDENTIFYING_KEYWORDS + GEOMETRY_KEYWORDS if k not in PER_SLICE_KEYWORDS]
    metadata: dict[str, Any] = {
        "dicom": dicom_tags(ordered[0].ds, tuple(shared)),
        "slices": [{"file": item.path.name, **dicom_tags(item.ds, PER_SLICE_KEYWORDS)} for item in ordered],
        "sorted_by": sorted_by,
        "ignored_files": ignored,
        **window(ordered[0].ds),
    }
    return Scan(
        pixels=pixels,
        modality=code,
        source=folder,
        source_format="dicom-series",
        is_hu=all(is_hounsfield(item.ds, code) for item in ordered),
        bit_depth=int(first.BitsStored) if "BitsStored" in first else None,
        spacing=spacing,
        affine=affine,
        metadata=metadata,
    )


def folder_has_dicom(folder: Path) -> bool:
    """True when some regular file directly in ``folder`` looks like DICOM."""
    return any(looks_like_dicom(path) for path in _files(folder))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _load_slices(folder: Path) -> tuple[list[_Slice], list[str]]:
    slices: list[_Slice] = []
    ignored: list[str] = []
    for path in _files(folder):
        if not looks_like_dicom(path):
            ignored.append(path.name)
            continue
        ds = load_dataset(path)
        if is_non_image_object(ds):
            ignored.append(path.name)
            continue
        require_image(ds, path)
        slices.append(_Slice(path, ds))
    if not slices:
        raise FuseError(
            "no DICOM image files in this folder: give a folder holding one DICOM series (one file per "
            "slice), a DICOM file, a NIfTI volume (.nii, .nii.gz) or a PNG/TIFF/JPEG image",
            folder,
        )
    return slices, ignored


def _check_one_series(slices: list[_Slice], folder: Path, tolerance: SeriesTolerance) -> None:
    """FuseError naming the files on each side when the slices do not all belong to one series."""

    def numbers(keyword: str) -> Callable[[Dataset], tuple[float, ...]]:
        return lambda ds: tuple(float(v) for v in (ds.get(keyword) or ()))

    checks: list[tuple[str, Callable[[Dataset], Any], float | None]] = [
        ("SeriesInstanceUID", lambda ds: str(ds.get("SeriesInstanceUID", "") or ""), None),
        ("Modality", lambda ds: str(ds.get("Modality", "") or ""), None),
        ("Rows×Columns", lambda ds: (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))), None),
        ("PixelSpacing", numbers("PixelSpacing"), tolerance.spacing_mm),
        ("ImageOrientationPatient", numbers("ImageOrientationPatient"), tolerance.orientation),
    ]
    for name, key, atol in checks:
        groups: list[tuple[Any, list[str]]] = []
        for item in slices:
            value = key(item.ds)
            for group_value, names in groups:
                if _same(value, group_value, atol):
                    names.append(item.path.name)
                    break
            else:
                groups.append((value, [item.path.name]))
        if len(groups) > 1:
            sides = "; ".join(f"{_show(value)} in {_names(names)}" for value, names in groups)
            raise FuseError(
                f"this folder mixes more than one series: {name} differs ({sides}); put each series in "
                "its own folder",
                folder,
            )


def _same(a: Any, b: Any, atol: float | None) -> bool:
    if atol is None or len(a) != len(b):
        return a == b
    return bool(np.allclose(a, b, rtol=0.0, atol=atol))


def _has_position(ds: Dataset) -> bool:
    return len(ds.get("ImagePositionPatient") or ()) == 3 and len(ds.get("ImageOrientationPatient") or ()) == 6


def _sort_by_position(
    slices: list[_Slice], folder: Path, tolerance: SeriesTolerance
) -> tuple[list[_Slice], np.ndarray]:
    """Order along the slice normal; refuse duplicates, gaps and uneven steps. Returns (slices, IPPs)."""
    orientation = np.asarray(slices[0].ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.asarray([item.ds.ImagePositionPatient for item in slices], dtype=float)
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    distance = positions @ normal
    steps = np.diff(distance)
    for i, step in enumerate(steps):
        if step < tolerance.duplicate_mm:
            raise FuseError(
                f"{slices[i].path.name} and {slices[i + 1].path.name} lie at the same position "
                f"({distance[i]:.3f} mm along the slice normal): remove the duplicate slice or separate "
                "the two series",
                folder,
            )
    if steps.size:
        usual = float(np.median(steps))
        for i, step in enumerate(steps):
            if abs(step - usual) <= tolerance.spacing_rtol * usual:
                continue
            between = f"between {slices[i].path.name} and {slices[i + 1].path.name}"
            multiple = round(step / usual)
            if multiple >= 2 and abs(step - multiple * usual) <= tolerance.spacing_rtol * usual:
                raise FuseError(
                    f"{multiple - 1} slice(s) missing {between}: they are {step:.3f} mm apart where the "
                    f"series steps {usual:.3f} mm; copy the whole series into the folder",
                    folder,
                )
            raise FuseError(
                f"inconsistent slice spacing: {step:.3f} mm {between}, {usual:.3f} mm elsewhere; the "
                "series is not a regular volume (resample it, e.g. to NIfTI with dcm2niix, first)",
                folder,
            )
    return slices, positions


def _sort_by_instance_number(slices: list[_Slice], folder: Path) -> list[_Slice]:
    lacking = [item.path.name for item in slices if item.ds.get("InstanceNumber") in (None, "")]
    if lacking:
        raise FuseError(
            f"cannot order the slices: {_names(lacking)} have neither ImagePositionPatient/"
            "ImageOrientationPatient nor InstanceNumber; re-export the series with its geometry",
            folder,
        )
    slices = sorted(slices, key=lambda item: int(item.ds.InstanceNumber))
    numbers = [int(item.ds.InstanceNumber) for item in slices]
    for i, (low, high) in enumerate(zip(numbers, numbers[1:])):
        between = f"{slices[i].path.name} and {slices[i + 1].path.name}"
        if high == low:
            raise FuseError(f"{between} have the same InstanceNumber {low}: remove the duplicate slice", folder)
        if high != low + 1:
            raise FuseError(
                f"{high - low - 1} slice(s) missing between {between} (InstanceNumber {low} → {high}); copy "
                "the whole series into the folder",
                folder,
            )
    return slices


def _affine(slices: list[_Slice], positions: np.ndarray, row_col: tuple[float, float]) -> np.ndarray:
    """4×4 index ``(slice, row, col)`` → LPS mm."""
    orientation = np.asarray(slices[0].ds.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if len(slices) > 1:
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        step = np.cross(row_dir, col_dir) * slice_step(slices[0].ds)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * row_col[0]
    affine[:3, 2] = row_dir * row_col[1]
    affine[:3, 3] = positions[0]
    return affine


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _show(value: Any) -> str:
    if value in (None, "", ()):
        return "(missing)"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)
