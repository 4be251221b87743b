"""``read_scan``: one entry point that picks the reader from what the path is."""

from __future__ import annotations

from pathlib import Path

from fuse_runtime.errors import FuseError
from fuse_runtime.io.dicom import read_dicom_file
from fuse_runtime.io.dicom_series import folder_has_dicom, read_dicom_series
from fuse_runtime.io.formats import file_kind
from fuse_runtime.io.images import read_image
from fuse_runtime.io.nifti import read_nifti
from fuse_runtime.scan import Scan

#: What ``read_scan`` accepts, for error messages and ``--help`` texts.
ACCEPTED_FORMATS = (
    "PNG/TIFF/JPEG images (.png, .tif, .tiff, .jpg, .jpeg; 8 or 16 bits), a DICOM file (.dcm or any file "
    "with the DICM marker), a folder holding one DICOM series, or a NIfTI volume (.nii, .nii.gz)"
)


def read_scan(path: str | Path, modality: str | None = None) -> Scan:
    """Read any supported scan into a Scan with float32 pixels.

    Dispatch: a folder → DICOM series; ``.nii``/``.nii.gz`` → NIfTI; ``.png``/``.tif(f)``/``.jp(e)g``
    → image; ``.dcm``/``.dicom``/``.ima`` or the ``DICM`` marker → DICOM file.
    ``modality`` (``"CT"``, ``"MR"``/``"MRI"``, ``"PT"``, ``"NM"``, ``"VIS"``, ``"IR"``, ``"OT"``)
    names the scan where the file does not; a DICOM file's own Modality must agree with it.
    Raises FuseError naming the path for a missing path, an empty or unreadable file, a folder without
    DICOM, or an unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise FuseError(f"no such file or folder: check the path. fuse reads {ACCEPTED_FORMATS}", path)
    if path.is_dir():
        if not folder_has_dicom(path):
            raise FuseError(
                f"this folder holds no DICOM files (a case folder with CT/ and MRI/ inside is read by the "
                f"pairing step, not here); fuse reads {ACCEPTED_FORMATS}",
                path,
            )
        return read_dicom_series(path, modality)
    if path.stat().st_size == 0:
        raise FuseError(f"the file is empty: re-export or re-copy it. fuse reads {ACCEPTED_FORMATS}", path)
    readers = {"nifti": read_nifti, "image": read_image, "dicom-file": read_dicom_file}
    kind = file_kind(path)
    if kind in readers:
        return readers[kind](path, modality)
    raise FuseError(f"unknown file format {path.suffix or '(no suffix)'!r}: fuse reads {ACCEPTED_FORMATS}", path)
