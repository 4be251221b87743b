"""Read one DICOM file (pydicom) into a Scan, and the helpers the series reader shares.

Pixel values:

* The Modality LUT is applied (``pydicom.pixels.apply_modality_lut``: RescaleSlope/RescaleIntercept,
  or a Modality LUT Sequence), so a CT comes out in Hounsfield units and ``is_hu`` is True when the
  modality is CT, a rescale is present and RescaleType (if any) is ``HU``.
* MONOCHROME1 images (low values bright) that are not HU are inverted within their own range so that
  bright is high everywhere; ``metadata["inverted_monochrome1"]`` records it.
* Colour images (RGB, YBR after pydicom's conversion, PALETTE COLOR through its LUT) become their
  ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` in float32.
* Compressed transfer syntaxes decode through pydicom's optional plugins (pylibjpeg, gdcm, pyjpegls,
  pillow); when none installed can decode, the FuseError names the packages to install.

Geometry: ``spacing`` is ``(row, col)`` from PixelSpacing (DICOM order: distance between rows, then
between columns), falling back to ImagerPixelSpacing and then ``(1.0, 1.0)``;
``metadata["pixel_spacing_from"]`` says which. ``affine`` is None for a single file; its
orientation, position and slice thickness stay in ``metadata["dicom"]`` by DICOM keyword, with the
identifying tags needed to write a derived result back (``IDENTIFYING_KEYWORDS``).

A classic multi-frame file gives ``[F, H, W]`` pixels with spacing ``(slice, row, col)`` and no
affine; enhanced multi-frame objects (per-frame functional groups) are refused with a way out.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from fuse_runtime.errors import FuseError
from fuse_runtime.io.modality import UNKNOWN, normalise_modality
from fuse_runtime.scan import Scan

#: Patient, study and frame-of-reference tags: what a derived series (the fused result) shares with
#: its source, so that it is filed into the same study and registered to the same frame.
STUDY_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "BodyPartExamined",
    "PatientPosition",
)

#: Tags that identify patient, study, series and instance: kept so a derived result can be written
#: back into the same study.
IDENTIFYING_KEYWORDS = STUDY_KEYWORDS + (
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Manufacturer",
    "InstitutionName",
)

#: Tags that place and display the pixels.
GEOMETRY_KEYWORDS = (
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SliceLocation",
    "NumberOfFrames",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)

def read_dicom_file(path: str | Path, modality: str | None = None) -> Scan:
    """Read one DICOM file: pixels float32 ``[H, W]`` (``[F, H, W]`` for multi-frame), HU for CT.

    ``modality`` may be omitted (the file's Modality is used); when given it must agree with the
    file's Modality unless the file says ``OT`` or nothing.
    Raises FuseError naming the file for non-DICOM, truncated or undecodable files.
    """
    path = Path(path)
    ds = load_dataset(path)
    require_image(ds, path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        raise FuseError(
            "enhanced multi-frame DICOM (per-frame functional groups) is not supported: convert it to "
            "a classic one-file-per-slice series or to NIfTI (e.g. with dcm2niix) and read that",
            path,
        )
    code = resolve_modality(ds, modality, path)
    pixels, notes = decode_pixels(ds, path, code)
    is_hu = is_hounsfield(ds, code)
    row_col, spacing_from = pixel_spacing(ds)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    spacing = (slice_step(ds), *row_col) if frames > 1 else row_col
    metadata: dict[str, Any] = {
        "dicom": dicom_tags(ds, IDENTIFYING_KEYWORDS + GEOMETRY_KEYWORDS),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else None,
        "pixel_spacing_from": spacing_from,
        **window(ds),
        **notes,
    }
    return Scan(
        pixels=pixels,
        modality=code,
        source=path,
        source_format="dicom",
        is_hu=is_hu,
        bit_depth=int(ds.BitsStored) if "BitsStored" in ds else None,
        spacing=spacing,
        affine=None,
        metadata=metadata,
    )


def new_dataset(sop_class: str, sop_uid: str) -> Dataset:
    """A new dataset for one instance of ``sop_class``: its file meta (explicit VR little endian) and
    SOP class and instance UIDs set, everything else for the caller."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def load_dataset(path: Path) -> Dataset:
    """Parse a DICOM file (pixels not decoded yet); FuseError naming the file when it is not DICOM.

    Files without the 128-byte preamble and file meta header (older ACR-NEMA style exports) are
    read too, when they hold a SOP Class UID or pixel data; their transfer syntax is the encoding
    pydicom detected.
    """
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        ds = _read_without_preamble(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FuseError(
            f"cannot parse the DICOM file ({error}): the file is truncated or corrupt; re-copy it", path
        ) from None
    if ds is None:
        raise FuseError(
            "not a DICOM file (no 'DICM' marker, no DICOM tags): give a DICOM file, a DICOM series "
            "folder, a NIfTI volume (.nii, .nii.gz) or a PNG/TIFF/JPEG image",
            path,
        )
    return ds


def _read_without_preamble(path: Path) -> Dataset | None:
    try:
        ds = pydicom.dcmread(path, force=True)
        if "SOPClassUID" not in ds and "PixelData" not in ds:
            return None
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
        return ds
    except Exception:  # noqa: BLE001 - forced parsing of a non-DICOM file fails in arbitrary ways
        return None


def require_image(ds: Dataset, path: Path) -> None:
    """FuseError when the DICOM object holds no image (a DICOMDIR, a report, a structure set...)."""
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    kind = getattr(sop_class, "name", None)
    if kind is None or "Image" in kind:
        raise FuseError(
            f"this DICOM file has no pixel data ({kind or 'unknown SOP class'}): the copy is truncated; re-copy it",
            path,
        )
    raise FuseError(f"this DICOM file holds no image (it is {kind}): give an image file or series", path)


def is_non_image_object(ds: Dataset) -> bool:
    """True for DICOM objects that never hold pixels (DICOMDIR, reports, structure sets, plans...).

    A file of an image SOP class without pixel data is not one of them: it is a truncated image.
    """
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        return True
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return False
    kind = getattr(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID"), "name", None)
    return kind is not None and "Image" not in kind


def resolve_modality(ds: Dataset, requested: str | None, path: Path) -> str:
    """The Scan modality: the caller's, checked against the file's Modality tag."""
    requested = normalise_modality(requested, path)
    stored = str(ds.get("Modality", "") or "").strip().upper() or None
    if requested is None:
        return stored or UNKNOWN
    if stored not in (None, UNKNOWN, requested):
        raise FuseError(
            f"the file says Modality {stored} but {requested} was asked for: check that the right file "
            "is in the right folder, or leave the modality out to use the file's",
            path,
        )
    return requested


def decode_pixels(ds: Dataset, path: Path, modality: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode and rescale: float32 ``[H, W]`` or ``[F, H, W]``, plus notes for the metadata."""
    stored = _pixel_array(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    notes: dict[str, Any] = {}
    if photometric == "PALETTE COLOR":
        return _luma(apply_color_lut(stored, ds)), {"colour": "palette-bt601-luma"}
    if samples > 1:
        return _luma(stored), {"colour": "bt601-luma"}
    pixels = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    if photometric == "MONOCHROME1" and not is_hounsfield(ds, modality):
        pixels = pixels.max() + pixels.min() - pixels
        notes["inverted_monochrome1"] = True
    return pixels, notes


def is_hounsfield(ds: Dataset, modality: str) -> bool:
    """CT with a rescale (or Modality LUT) whose RescaleType, if given, is HU."""
    if modality != "CT":
        return False
    has_rescale = ("RescaleSlope" in ds and "RescaleIntercept" in ds) or bool(ds.get("ModalityLUTSequence"))
    rescale_type = str(ds.get("RescaleType", "HU") or "HU").strip().upper()
    return has_rescale and rescale_type == "HU"


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float], str]:
    """``(row, col)`` spacing in mm and the tag it came from (``default`` when none: 1 mm)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return (float(value[0]), float(value[1])), keyword
    return (1.0, 1.0), "default"


def slice_step(ds: Dataset) -> float:
    """Nominal distance between slices in mm: SpacingBetweenSlices, else SliceThickness, else 1."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value is not None and value != "" and float(value) > 0:
            return float(value)
    return 1.0


def window(ds: Dataset) -> dict[str, float | None]:
    """The file's first display window (centre/width, in output units), or None when absent."""
    return {
        "window_center": _first_float(ds.get("WindowCenter")),
        "window_width": _first_float(ds.get("WindowWidth")),
    }


def dicom_tags(ds: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    """The given top-level tags present in ``ds`` as plain JSON-able Python values."""
    return {keyword: _plain(ds[keyword].value) for keyword in keywords if keyword in ds}


def _pixel_array(ds: Dataset, path: Path) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        decoder = get_decoder(syntax)
        if not decoder.is_available:
            raise FuseError(
                f"the pixel data use the transfer syntax '{syntax.name}' and no decoder for it is installed: "
                f"install one of: {_install_hint(decoder.missing_dependencies)}",
                path,
            )
    try:
        return ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, TypeError, OSError) as error:
        reason = " ".join(str(error).split())
        if syntax is not None and syntax.is_compressed:
            missing = get_decoder(syntax).missing_dependencies
            extra = f"; another decoder may handle it: install one of: {_install_hint(missing)}" if missing else ""
            raise FuseError(
                f"the installed decoders cannot decode the '{syntax.name}' pixel data ({reason}){extra}", path
            ) from None
        raise FuseError(
            f"cannot decode the pixel data ({reason}): the file is truncated or corrupt; re-copy it", path
        ) from None


def _install_hint(missing: list[str]) -> str:
    """pydicom's ``"gdcm - requires gdcm>=3.0.10"`` lines as ``"gdcm>=3.0.10 (pip install python-gdcm)"``."""
    hints = []
    for line in missing:
        plugin, _, needs = line.partition(" - requires ")
        needs = needs or plugin
        if plugin.strip() == "gdcm":
            needs += " (pip install python-gdcm)"
        hints.append(needs.strip())
    return "; ".join(hints)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB ``[H, W, 3]`` or ``[F, H, W, 3]`` as float32 ``[H, W]`` / ``[F, H, W]``."""
    frames = np.asarray(rgb, dtype=np.float32).reshape(-1, *rgb.shape[-3:])
    gray = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames])
    return gray if rgb.ndim == 4 else gray[0]


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0]) if len(value) else None
    return float(value)


def _plain(value: Any) -> Any:
    """pydicom element values (PersonName, DSfloat, IS, UID, MultiValue) as str/float/int/list."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float | Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return str(value)
