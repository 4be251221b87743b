"""Read NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) as axial slices, and write results back in the source layout.

Orientation of ``Scan.pixels`` ``[S, H, W]`` (whatever the file's voxel order):

* slice index ``s`` runs inferior → superior (slice 0 is the most inferior),
* row index ``r`` runs anterior → posterior (the top row is anterior),
* column index ``c`` runs from the patient's right to left (radiological display: the patient's right
  on the viewer's left),

i.e. the index axes point to nibabel axis codes ``("S", "P", "L")``. The file's voxel axes are
permuted and flipped to the closest such layout (``nibabel.orientations``, as ``as_closest_canonical``
does for RAS+): no resampling, so an oblique volume keeps its obliquity in the affine. A standard axial
DICOM series read by ``dicom_series`` comes out in the same layout.

``Scan.affine`` maps the returned index ``(s, r, c)`` to DICOM patient coordinates (LPS, mm), the
convention of every reader in ``fuse_runtime.io``, so a NIfTI and a DICOM scan of one patient compare
directly. The file's own affine (RAS+, NIfTI convention), its header, voxel shape and orientation stay
in ``metadata`` (``nifti_affine``, ``nifti_header``, ``source_shape``, ``source_ornt``) for
``to_source_layout`` and ``write_like``, which put a result back exactly onto the source grid.

A 2-D file is read as a volume of one slice; a 4-D file only when its 4th dimension is 1 (one volume).
``is_hu`` is True for a CT whose minimum is below ``HU_EVIDENCE_BELOW`` (air in HU is −1000).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError

from fuse_runtime.atomic import atomic_path
from fuse_runtime.errors import FuseError, one_line
from fuse_runtime.io.formats import NIFTI_SUFFIXES
from fuse_runtime.io.modality import UNKNOWN, normalise_modality
from fuse_runtime.scan import Scan

#: Where the index axes of ``Scan.pixels`` ``[S, H, W]`` point (nibabel axis codes).
READER_AXCODES = ("S", "P", "L")

#: A CT NIfTI holds Hounsfield units when its minimum is below this (HU); design notes' rule.
HU_EVIDENCE_BELOW = -500.0

#: RAS+ (NIfTI world) ↔ LPS (DICOM patient) coordinates: negate x and y.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_IMAGE_TYPES = {"Nifti1Image": nib.Nifti1Image, "Nifti2Image": nib.Nifti2Image}
_INTEGERS = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32))
_BITS = {dtype: dtype.itemsize * 8 for dtype in _INTEGERS}
#: NIfTI RGB24 (datatype 128): one record of three uint8 per voxel, as nibabel spells it.
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
_WRITABLE = _INTEGERS + (np.dtype(np.float32), np.dtype(np.float64), RGB24)


def read_nifti(path: str | Path, modality: str | None = None) -> Scan:
    """Read a NIfTI volume: pixels float32 ``[S, H, W]`` in the module's axial layout, affine LPS.

    ``modality`` names the scan (``"CT"``, ``"MR"``...); default ``"OT"``. Raises FuseError naming
    the file when it is not NIfTI, truncated, has more than one volume, or a degenerate affine.
    """
    path = Path(path)
    code = normalise_modality(modality, path) or UNKNOWN
    image = _load(path)
    data = _as_volume(_voxels(image, path), path)
    source_ornt = io_orientation(image.affine)
    if np.isnan(source_ornt).any():
        raise FuseError(
            "the affine (sform/qform) is degenerate, so the voxel axes have no direction: fix the header "
            "(e.g. with fslorient or nibabel) before reading",
            path,
        )
    forward = ornt_transform(source_ornt, axcodes2ornt(READER_AXCODES))
    pixels = np.ascontiguousarray(apply_orientation(data, forward), dtype=np.float32)
    affine = RAS_TO_LPS @ image.affine @ inv_ornt_aff(forward, data.shape)
    slope, inter = image.dataobj.slope, image.dataobj.inter
    unscaled = slope == 1 and inter == 0
    metadata: dict[str, Any] = {
        "nifti_header": image.header.copy(),
        "nifti_affine": image.affine.copy(),
        "nifti_class": type(image).__name__,
        "source_shape": tuple(int(n) for n in image.shape),
        "source_ornt": source_ornt,
        "source_axcodes": "".join(nib.aff2axcodes(image.affine)),
        "orientation": "".join(READER_AXCODES),
        "affine_space": "LPS",
    }
    return Scan(
        pixels=pixels,
        modality=code,
        source=path,
        source_format="nifti",
        is_hu=code == "CT" and pixels.size > 0 and float(pixels.min()) < HU_EVIDENCE_BELOW,
        bit_depth=_BITS.get(image.get_data_dtype()) if unscaled else None,
        spacing=tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
        affine=affine,
        metadata=metadata,
    )


def to_source_layout(scan: Scan, slices: np.ndarray) -> np.ndarray:
    """The exact inverse of the reader's reorientation.

    ``slices``: ``[S, H, W]`` or ``[S, H, W, C]`` in the reader's layout (``scan.pixels``' shape plus
    optional channels). Returns the array in the file's voxel layout: ``source_shape`` (e.g.
    ``[X, Y, Z]``, ``[X, Y]`` for a 2-D file, ``[X, Y, Z, 1]`` for a one-volume 4-D file) followed by
    the channel axis when there is one. Only flips and transposes: values are untouched.
    """
    source_ornt, source_shape = _source_layout(scan)
    slices = np.asarray(slices)
    if slices.ndim not in (3, 4) or slices.shape[:3] != scan.pixels.shape:
        raise FuseError(
            f"data of shape {slices.shape} do not fit this scan: expected {scan.pixels.shape} (slices, rows, "
            "columns) optionally followed by a channel axis",
            scan.source,
        )
    backward = ornt_transform(axcodes2ornt(READER_AXCODES), source_ornt)
    restored = apply_orientation(slices, backward)
    return np.ascontiguousarray(restored.reshape(source_shape + slices.shape[3:]))


def write_like(scan: Scan, data: np.ndarray, path: str | Path) -> Path:
    """Write ``data`` (``[S, H, W]`` or ``[S, H, W, C]``, reader layout) as NIfTI on the source's grid.

    The file keeps the source's NIfTI type, header and both its qform and sform (codes included), so
    the result overlays the source in any viewer; a source whose qform and sform codes are both 0
    gets both set (code 1, scanner) to the affine it was read with, and one whose sform code alone is
    0 gets the qform's. Data keep their dtype (bool → uint8, ``RGB24`` records stay RGB, other types
    NIfTI cannot hold → float32), unscaled; the display range cal_min/cal_max is cleared. Channels
    become the trailing axis (the 4th for a 3-D source). Written atomically: an existing file is
    replaced only once the new one is complete. Returns ``path``.
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise FuseError("a NIfTI result needs a name ending in .nii or .nii.gz: rename the output", path)
    array = to_source_layout(scan, data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype not in _WRITABLE:
        array = array.astype(np.float32)
    header = scan.metadata["nifti_header"].copy()
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(None, None)
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    image_type = _IMAGE_TYPES[scan.metadata.get("nifti_class", "Nifti1Image")]
    # affine=None: the header's own qform and sform are written unchanged.
    image = image_type(array, affine=None, header=header)
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if not sform_code:
        affine = scan.metadata["nifti_affine"]
        image.set_sform(affine, code=qform_code or 1)
        if not qform_code:
            image.set_qform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def _load(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise FuseError("no such file: check the path", path) from None
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error) as error:
        raise FuseError(
            f"not a readable NIfTI file ({one_line(error)}): re-export or re-copy it as .nii / .nii.gz",
            path,
        ) from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise FuseError(
            f"nibabel reads this file as {type(image).__name__}, not a NIfTI volume: convert it to .nii / .nii.gz",
            path,
        )
    return image


def _voxels(image: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> np.ndarray:
    dtype = image.get_data_dtype()
    if dtype.names is not None or dtype.kind == "c":
        raise FuseError(
            f"voxels of type {dtype} (RGB or complex) are not supported: save one gray value per voxel", path
        )
    try:
        return np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise FuseError(
            f"cannot read the voxel data ({one_line(error)}): the file is truncated or corrupt; re-copy it",
            path,
        ) from None


def _as_volume(data: np.ndarray, path: Path) -> np.ndarray:
    """``[X, Y]`` → ``[X, Y, 1]``; ``[X, Y, Z, 1, ...]`` → ``[X, Y, Z]``; more than one volume refused."""
    if data.ndim == 2:
        return data[:, :, None]
    if data.ndim == 3:
        return data
    if data.ndim > 3:
        extra = data.shape[3:]
        if all(n == 1 for n in extra):
            return data.reshape(data.shape[:3])
        raise FuseError(
            f"a {data.ndim}-D NIfTI with shape {data.shape} holds {int(np.prod(extra))} volumes; fuse reads one: "
            "extract the volume you want (e.g. fslroi, or nibabel's image.slicer[..., t]) and read that",
            path,
        )
    raise FuseError(
        f"a {data.ndim}-D NIfTI with shape {data.shape} is not an image: give a 2-D or 3-D volume", path
    )


def _source_layout(scan: Scan) -> tuple[np.ndarray, tuple[int, ...]]:
    try:
        return scan.metadata["source_ornt"], tuple(scan.metadata["source_shape"])
    except KeyError:
        raise FuseError(
            f"this scan was read from {scan.source_format}, not NIfTI: its layout cannot be restored as NIfTI",
            scan.source,
        ) from None
