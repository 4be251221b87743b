"""Which reader a path is for, from its name (and, for DICOM without a suffix, its ``DICM`` marker).

One answer for the pairing step (what a file in a folder is) and for ``read_scan`` (which reader
opens it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["image", "dicom-file", "dicom-series", "nifti"]

#: File name suffixes of each format, lower case.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
"""Files with another name (``IM0001``) are DICOM when they carry the ``DICM`` marker."""

_DICM_OFFSET = 128
_DICM_MARKER = b"DICM"


def format_suffix(path: str | Path) -> str:
    """The known format suffix that ends ``path``'s name, lower case (``.nii.gz`` whole); ``""`` for none."""
    name = Path(path).name.lower()
    return next((suffix for suffix in NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES if name.endswith(suffix)), "")


def has_dicom_marker(path: str | Path) -> bool:
    """True when the file holds ``DICM`` after its 128-byte preamble (False when it cannot be read)."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(_DICM_OFFSET)
            return handle.read(len(_DICM_MARKER)) == _DICM_MARKER
    except OSError:
        return False


def looks_like_dicom(path: str | Path) -> bool:
    """A DICOM suffix, or no known suffix and the ``DICM`` marker (files named ``IM0001``)."""
    suffix = format_suffix(path)
    return suffix in DICOM_SUFFIXES or (not suffix and has_dicom_marker(path))


def file_kind(path: str | Path) -> Kind | None:
    """``image``, ``nifti`` or ``dicom-file`` for a file of that format; None for anything else."""
    suffix = format_suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    return "dicom-file" if looks_like_dicom(path) else None
