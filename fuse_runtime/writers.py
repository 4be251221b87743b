"""Write fused images: 8-bit PNG, NIfTI on the CT's grid, DICOM Secondary Capture series, previews.

Every writer takes the fused result already restored to the CT's geometry and quantised to 8 bits
(``to_display``): ``[S,H,W,3]`` uint8 RGB, or ``[S,H,W]`` uint8 gray (BT.601 luminance), in the
CT's slice order. Every file goes through ``fuse_runtime.atomic.atomic_path``; a result made of
several files (a DICOM series, a volume as PNG slices) is assembled in a hidden staging folder and
renamed into place as a whole, so an interrupted run leaves no partial result under its final name.

Formats:

* PNG: one 8-bit RGB (or gray) file per slice. A volume becomes a folder ``slice_NNNNN.png``.
* NIfTI: on the CT's grid, written with ``fuse_runtime.io.nifti.write_like`` when the CT is NIfTI
  (its voxel layout, header, qform and sform, so it overlays the CT in any viewer), else a NIfTI-1
  file built from the CT's LPS affine (voxel order column, row, slice) with qform and sform codes 1
  (scanner). RGB is one voxel of the NIfTI RGB24 datatype (code 128: nibabel's ``R, G, B`` uint8
  record, a colour vector in SimpleITK/ITK-SNAP/FSLeyes), not a 4th axis; gray is float32 in [0, 1].
* DICOM: a derived Secondary Capture series on the CT's grid (one file per slice, ``IM_NNNNN.dcm``):
  new Series and SOP Instance UIDs, InstanceNumber 1..S in the CT's slice order, patient and study
  tags and FrameOfReferenceUID copied from a DICOM CT (else a new study and frame of reference),
  ImageType ``DERIVED\\SECONDARY``, per slice ImagePositionPatient / ImageOrientationPatient /
  PixelSpacing / SliceThickness from the CT's grid (so viewers and SimpleITK stack it as one volume),
  PatientOrientation from the same directions, an empty Laterality, SourceImageSequence naming the
  CT slice and the MR slices it derives from, ReferencedSeriesSequence naming both source series, and
  "NOT FOR DIAGNOSTIC USE" in ImageComments, SeriesDescription and DerivationDescription. Every file
  passes dicom3tools' ``dciodvfy`` without errors (warnings: the plane attributes are a standard
  extension of the Secondary Capture IOD).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from fuse_runtime.atomic import PARTIAL_MARKER, atomic_path, current_umask, remove_run_partials, temp_prefix
from fuse_runtime.errors import FuseError
from fuse_runtime.io.dicom import STUDY_KEYWORDS, new_dataset
from fuse_runtime.io.nifti import RAS_TO_LPS, RGB24, write_like
from fuse_runtime.metrics import BT601_WEIGHTS
from fuse_runtime.scan import Scan

PNG_SLICE_NAME = "slice_{index:05d}.png"
DICOM_SLICE_NAME = "IM_{index:05d}.dcm"
#: DICOM tags copied from the CT onto the fused series (patient, study, frame of reference).
COPIED_DICOM_TAGS = STUDY_KEYWORDS
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
FUSED_SERIES_DESCRIPTION = f"Fused CT+MRI (fuse) - {NOT_FOR_DIAGNOSTIC_USE}"
FUSED_SERIES_NUMBER = 9001
#: Label band of a preview sheet: 10 % of a panel's width (at least 12 px), text about half its height.
PREVIEW_HEADER_PER_PIXEL = 0.1
PREVIEW_MIN_HEADER = 12
PREVIEW_TEXT_HEIGHT_PER_SCALE = 44.0
PREVIEW_BAND_GRAY = 32


def to_display(fused: np.ndarray, gray: bool = False) -> np.ndarray:
    """Quantise fused ``[S,3,H,W]`` float in [0,1] to 8 bits.

    Returns uint8 ``[S,H,W,3]`` RGB, or ``[S,H,W]`` BT.601 luminance when ``gray``; values are
    ``round(x * 255)`` clipped to [0, 255].
    """
    if fused.ndim != 4 or fused.shape[1] != 3:
        raise ValueError(f"expected fused [S,3,H,W], got {fused.shape}")
    rgb = np.moveaxis(fused, 1, -1).astype(np.float32, copy=False)
    if gray:
        rgb = rgb @ np.asarray(BT601_WEIGHTS, dtype=np.float32)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one 8-bit image: ``[H,W,3]`` RGB or ``[H,W]`` gray uint8."""
    path = Path(path)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"write_png needs uint8 [H,W] or [H,W,3], got {image.dtype} {image.shape}")
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), pixels):
            raise FuseError("OpenCV could not write the PNG; check the disk space and permissions", path)
    return path


def write_png_slices(folder: str | Path, images: np.ndarray) -> Path:
    """Write ``[S,H,W(,3)]`` uint8 as ``folder/slice_NNNNN.png`` (1-based), the folder as a whole."""
    with atomic_dir(folder) as staging:
        for index, image in enumerate(images, start=1):
            write_png(staging / PNG_SLICE_NAME.format(index=index), image)
    return Path(folder)


def to_luminance(fused: np.ndarray) -> np.ndarray:
    """BT.601 luminance of restored fused ``[S,3,H,W]`` float as float32 ``[S,H,W]`` clipped to [0, 1]."""
    gray = np.moveaxis(fused, 1, -1).astype(np.float32, copy=False) @ np.asarray(BT601_WEIGHTS, dtype=np.float32)
    return np.clip(gray, 0.0, 1.0).astype(np.float32, copy=False)


def as_rgb24(images: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` → NIfTI RGB24 records ``[...]`` (no copy of the values' meaning)."""
    return np.ascontiguousarray(images, dtype=np.uint8).view(RGB24)[..., 0]


def write_nifti(path: str | Path, images: np.ndarray, ct: Scan) -> Path:
    """Write fused images (CT's slice layout) as a NIfTI on the CT's grid.

    ``images``: uint8 ``[S,H,W,3]`` RGB → RGB24 voxels; ``[S,H,W]`` gray → float32 in [0, 1]
    (uint8 gray is divided by 255, float gray clipped).
    """
    path = Path(path)
    if images.shape[:3] != ct.slices().shape:
        raise ValueError(f"images {images.shape} do not match the CT's [S,H,W] {ct.slices().shape}")
    if images.ndim == 4:
        voxels = as_rgb24(images)
    elif images.dtype == np.uint8:
        voxels = images.astype(np.float32) / np.float32(255.0)
    else:
        voxels = np.clip(images, 0.0, 1.0).astype(np.float32)
    if ct.source_format == "nifti":
        return write_like(ct, voxels, path)
    affine = _nifti_affine(ct)
    # (slice, row, col) → NIfTI voxel order (col, row, slice).
    data = np.ascontiguousarray(np.swapaxes(voxels, 0, 2))
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def write_dicom_series(
    target: str | Path, images: np.ndarray, ct: Scan, description: str, single_file: bool = False
) -> Path:
    """Write ``[S,H,W(,3)]`` uint8 as a DICOM Secondary Capture series derived from ``ct``.

    ``target`` is a folder receiving ``IM_NNNNN.dcm`` (written as a whole), or with ``single_file``
    the one ``.dcm`` file of a one-slice result. ``description`` becomes the DerivationDescription.
    """
    target = Path(target)
    tags = _ct_tags(ct)
    series_uid = generate_uid()
    study_uid = tags.get("StudyInstanceUID") or generate_uid()
    frame_uid = tags.get("FrameOfReferenceUID") or generate_uid()
    geometry = _plane_geometry(ct)
    slices_meta: list[dict[str, Any]] = ct.metadata.get("slices") or (
        [{"SOPInstanceUID": tags.get("SOPInstanceUID")}] if len(images) == 1 else [{}] * len(images)
    )
    mr_sources: list[list[dict[str, str]]] = ct.metadata.get("second_slices") or []
    series = _referenced_series(tags, ct.metadata.get("second_dicom") or {}, slices_meta, mr_sources)
    now = datetime.now()
    datasets = [
        _secondary_capture(
            image,
            tags,
            index=index,
            series_uid=series_uid,
            study_uid=study_uid,
            frame_uid=frame_uid,
            geometry=geometry[index] if geometry else None,
            source=slices_meta[index] if index < len(slices_meta) else {},
            source_class=tags.get("SOPClassUID"),
            mr_sources=mr_sources[index] if index < len(mr_sources) else [],
            series=series,
            description=description,
            now=now,
        )
        for index, image in enumerate(images)
    ]
    if single_file:
        if len(datasets) != 1:
            raise FuseError(
                f"the result has {len(datasets)} slices but a single DICOM file was asked for; "
                "write it with --format nifti or dicom to a folder",
                target,
            )
        _save_dicom(target, datasets[0])
        return target
    with atomic_dir(target) as staging:
        for index, dataset in enumerate(datasets, start=1):
            _save_dicom(staging / DICOM_SLICE_NAME.format(index=index), dataset)
    return target


def write_preview(
    path: str | Path, ct: np.ndarray, mri: np.ndarray, fused: np.ndarray, labels: tuple[str, str] = ("CT", "MRI")
) -> Path:
    """A labelled CT | MRI | fused sheet as PNG: ``ct``, ``mri`` float [H,W] in [0,1]; ``fused`` uint8
    [H,W,3] or [H,W]. ``labels`` name the two sources (``("visible", "infrared")`` for vis-ir)."""
    gray = [np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) for image in (ct, mri)]
    panels = [np.repeat(image[..., None], 3, axis=2) for image in gray]
    panels.append(fused if fused.ndim == 3 else np.repeat(fused[..., None], 3, axis=2))
    return write_png(path, label_sheet(panels, (*labels, "fused")))


def preview_header(width: int) -> int:
    """Height in pixels of the label band above panels ``width`` pixels wide."""
    return max(PREVIEW_MIN_HEADER, round(PREVIEW_HEADER_PER_PIXEL * width))


def label_sheet(panels: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Equal-size uint8 RGB panels ``[H,W,3]`` side by side under a dark band naming each (OpenCV text)."""
    if len(panels) != len(labels):
        raise ValueError(f"{len(panels)} panels but {len(labels)} labels")
    width = panels[0].shape[1]
    height = preview_header(width)
    band = np.full((height, width * len(panels), 3), PREVIEW_BAND_GRAY, dtype=np.uint8)
    scale = height / PREVIEW_TEXT_HEIGHT_PER_SCALE
    thickness = max(1, round(scale * 1.5))
    for index, label in enumerate(labels):
        (text_width, text_height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        origin = (index * width + max(0, (width - text_width) // 2), (height + text_height) // 2)
        cv2.putText(band, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.concatenate([band, np.concatenate(panels, axis=1)], axis=0)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``path``; on success it replaces ``path`` as a whole.

    The folder gets the permissions of one made with ``mkdir`` (the user's umask), not
    ``mkdtemp``'s 0700. An existing ``path`` is swapped out and removed only after the new folder is
    in place; on failure the staging folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix(path)
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=f"{PARTIAL_MARKER}-dir", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=f"{PARTIAL_MARKER}-old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_partials(root: str | Path, keep_out: Sequence[str | Path] = (), keep_run: str | None = None) -> list[Path]:
    """Delete the temporary files and staging folders that interrupted fuse-runs left under ``root``.

    Only names that ``atomic_path`` and ``atomic_dir`` made inside a fuse-run (they carry its run
    id, see ``fuse_runtime.atomic``) are touched, never those of run ``keep_run``, and nothing
    inside the folders of ``keep_out`` (e.g. an input folder inside the output folder). Returns what
    was removed.
    """
    return remove_run_partials(root, keep_run=keep_run, keep_out=keep_out)


def _save_dicom(path: Path, dataset: Dataset) -> None:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def _ct_tags(ct: Scan) -> dict[str, Any]:
    tags = dict(ct.metadata.get("dicom") or {})
    return tags if ct.source_format in ("dicom", "dicom-series") else {}


def _secondary_capture(
    image: np.ndarray,
    tags: dict[str, Any],
    *,
    index: int,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    geometry: dict[str, list[float]] | None,
    source: dict[str, Any],
    source_class: str | None,
    mr_sources: list[dict[str, str]],
    series: DicomSequence | None,
    description: str,
    now: datetime,
) -> Dataset:
    ds = new_dataset(SecondaryCaptureImageStorage, generate_uid())
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in COPIED_DICOM_TAGS:
        if keyword in tags and tags[keyword] not in (None, ""):
            setattr(ds, keyword, tags[keyword])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{description} - {NOT_FOR_DIAGNOSTIC_USE}"[:1024]
    ds.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}: research fusion of CT and MRI; {description}"[:10240]
    ds.BurnedInAnnotation = "NO"
    ds.Laterality = ""
    ds.SeriesDescription = FUSED_SERIES_DESCRIPTION
    ds.SeriesNumber = FUSED_SERIES_NUMBER
    ds.InstanceNumber = index + 1
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    references = [{"SOPClassUID": source_class, "SOPInstanceUID": source.get("SOPInstanceUID")}, *mr_sources]
    items = [_image_reference(ref) for ref in references if ref.get("SOPClassUID") and ref.get("SOPInstanceUID")]
    if items:
        ds.SourceImageSequence = DicomSequence(items)
    if series is not None:
        ds.ReferencedSeriesSequence = series
    ds.PatientOrientation = _patient_orientation(geometry["orientation"]) if geometry is not None else ""
    if geometry is not None:
        ds.ImagePositionPatient = [round(v, 6) for v in geometry["position"]]
        ds.ImageOrientationPatient = [round(v, 8) for v in geometry["orientation"]]
        ds.PixelSpacing = [round(v, 6) for v in geometry["spacing"]]
        if geometry.get("thickness"):
            ds.SliceThickness = round(geometry["thickness"], 6)
    rows, columns = image.shape[:2]
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if image.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.ascontiguousarray(image).tobytes()
    return ds


def _image_reference(reference: dict[str, str]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = reference["SOPClassUID"]
    item.ReferencedSOPInstanceUID = reference["SOPInstanceUID"]
    return item


def _referenced_series(
    ct_tags: dict[str, Any],
    mr_tags: dict[str, Any],
    ct_slices: list[dict[str, Any]],
    mr_sources: list[list[dict[str, str]]],
) -> DicomSequence | None:
    """ReferencedSeriesSequence: the CT series and the MR series with the instances the result uses."""
    items = []
    ct_refs = [
        {"SOPClassUID": ct_tags.get("SOPClassUID"), "SOPInstanceUID": s.get("SOPInstanceUID")} for s in ct_slices
    ]
    mr_refs = list({ref["SOPInstanceUID"]: ref for refs in mr_sources for ref in refs}.values())
    for tags, refs in ((ct_tags, ct_refs), (mr_tags, mr_refs)):
        refs = [ref for ref in refs if ref.get("SOPClassUID") and ref.get("SOPInstanceUID")]
        if not tags.get("SeriesInstanceUID") or not refs:
            continue
        item = Dataset()
        item.SeriesInstanceUID = tags["SeriesInstanceUID"]
        item.ReferencedInstanceSequence = DicomSequence([_image_reference(ref) for ref in refs])
        items.append(item)
    return DicomSequence(items) if items else None


def _patient_orientation(orientation: Sequence[float]) -> list[str]:
    """PatientOrientation (row direction, column direction) from ImageOrientationPatient, e.g. ``["L", "P"]``.

    Each direction is spelled by its LPS components above 1e-3 in decreasing size (``LP`` for oblique).
    """
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    values = []
    for vector in (orientation[:3], orientation[3:]):
        order = np.argsort(-np.abs(np.asarray(vector, dtype=float)))
        values.append("".join(letters[axis][vector[axis] > 0] for axis in order if abs(vector[axis]) > 1e-3))
    return values


def _plane_geometry(ct: Scan) -> list[dict[str, list[float]]] | None:
    """Per slice: ImagePositionPatient, ImageOrientationPatient, PixelSpacing (LPS mm), or None.

    From the affine when the CT has one (series, NIfTI), else from a single DICOM file's own tags.
    """
    if ct.affine is not None:
        affine = np.asarray(ct.affine, dtype=float)
        rows_axis, cols_axis = affine[:3, 1], affine[:3, 2]
        row_spacing, col_spacing = float(np.linalg.norm(rows_axis)), float(np.linalg.norm(cols_axis))
        # ImageOrientationPatient: direction along a row (columns increase), then down a column.
        orientation = [*(cols_axis / col_spacing), *(rows_axis / row_spacing)]
        thickness = float(np.linalg.norm(affine[:3, 0]))
        return [
            {
                "position": [float(v) for v in (affine @ np.array([s, 0.0, 0.0, 1.0]))[:3]],
                "orientation": [float(v) for v in orientation],
                "spacing": [row_spacing, col_spacing],
                "thickness": thickness,
            }
            for s in range(ct.num_slices)
        ]
    tags = ct.metadata.get("dicom") or {}
    if ct.source_format == "dicom" and ct.num_slices == 1 and "ImagePositionPatient" in tags:
        return [
            {
                "position": [float(v) for v in tags["ImagePositionPatient"]],
                "orientation": [float(v) for v in tags.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])],
                "spacing": [float(v) for v in tags.get("PixelSpacing", ct.spacing)],
                "thickness": float(tags.get("SliceThickness") or 0.0),
            }
        ]
    return None


def _nifti_affine(ct: Scan) -> np.ndarray:
    """RAS affine of NIfTI voxel ``(col, row, slice)`` from the CT's LPS affine of ``(slice, row, col)``."""
    if ct.affine is not None:
        lps = np.asarray(ct.affine, dtype=float)
    else:
        spacing: Sequence[float] = ct.spacing
        row, col = float(spacing[-2]), float(spacing[-1])
        step = float(spacing[0]) if len(spacing) == 3 else 1.0
        lps = np.diag([1.0, 1.0, 1.0, 1.0])
        lps[:3, :3] = [[0.0, 0.0, col], [0.0, row, 0.0], [step, 0.0, 0.0]]
    permute = np.zeros((4, 4))
    permute[0, 2] = permute[1, 1] = permute[2, 0] = permute[3, 3] = 1.0  # (col,row,slice) → (slice,row,col)
    return RAS_TO_LPS @ lps @ permute
