"""Synthetic, registered CT/MRI head phantoms: the embedded default data when ../shared is absent.

``write_phantoms(out_dir)`` writes, deterministically (fixed seed) and in well under a second:

* ``png/CT/phantomNN.png`` + ``png/MRI/phantomNN.png``: 8-bit 256×256 slices (CT windowed with the
  design's 40/400 HU window, so the 8-bit rule ``x/255`` gives what HU windowing gives);
* ``dicom/case01/CT/CT_NNN.dcm`` + ``dicom/case01/MRI/MR_NNN.dcm``: a CT and an MR series on the same
  grid (same FrameOfReferenceUID, ImagePositionPatient/Orientation, PixelSpacing); CT pixels are
  stored as ``HU + 1024`` with RescaleSlope 1 / RescaleIntercept −1024 / RescaleType HU;
* ``nifti/case01/ct.nii.gz`` (int16 HU) + ``mri.nii.gz`` (uint16), with the same RAS affine, which
  is the DICOM series' geometry (voxel ``[i, j, k]`` = column i, row j, slice k).

The anatomy is a stack of ellipsoids in normalised head coordinates: air −1000 HU, scalp, skull
≈ +1000 HU (dark on MRI), grey (38 HU) and white (30 HU) matter with T2-like contrast on MRI, CSF in
two ventricles (bright on MRI), two lesions visible on MRI only and a calcification (400 HU) visible
on CT only. Everything is about 1 MB. Run ``python -m fuse_runtime.phantoms OUT`` to write them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from fuse_runtime.atomic import atomic_path
from fuse_runtime.errors import FuseError
from fuse_runtime.io.dicom import new_dataset


@dataclass(frozen=True)
class Ellipsoid:
    """One structure: centre and semi-axes in normalised ``(x, y, z)`` head coordinates ([-1, 1]).

    ct_hu / mri: its value on CT (Hounsfield units) and on MRI (T2-like, [0,1]); None leaves what
    lies beneath, i.e. the structure is invisible in that modality.
    """

    name: str
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    ct_hu: float | None
    mri: float | None


#: Painted in order, later structures over earlier ones; air (−1000 HU, MRI 0) is the background.
HEAD: tuple[Ellipsoid, ...] = (
    Ellipsoid("scalp", (0.0, 0.0, 0.0), (0.80, 0.94, 1.15), 20.0, 0.35),
    Ellipsoid("skull", (0.0, 0.0, 0.0), (0.75, 0.89, 1.08), 1000.0, 0.03),
    Ellipsoid("grey matter", (0.0, 0.0, 0.0), (0.69, 0.83, 1.00), 38.0, 0.55),
    Ellipsoid("white matter", (0.0, 0.02, 0.0), (0.57, 0.70, 0.88), 30.0, 0.38),
    Ellipsoid("left ventricle", (-0.12, -0.02, 0.05), (0.07, 0.24, 0.35), 8.0, 0.95),
    Ellipsoid("right ventricle", (0.12, -0.02, 0.05), (0.07, 0.24, 0.35), 8.0, 0.95),
    Ellipsoid("lesion", (0.32, 0.30, -0.05), (0.10, 0.10, 0.30), None, 0.85),
    Ellipsoid("small lesion", (-0.35, -0.35, 0.15), (0.07, 0.07, 0.25), None, 0.80),
    Ellipsoid("calcification", (-0.28, 0.38, 0.0), (0.05, 0.05, 0.30), 400.0, None),
)

AIR_HU = -1000.0


@dataclass(frozen=True)
class PhantomSpec:
    """Sizes, geometry and noise of the written phantoms.

    png_size / png_slices: 8-bit PNG slices, pixels and count. volume_size / volume_slices: DICOM and
    NIfTI grid. pixel_spacing_mm, slice_spacing_mm: volume voxel size. z_extent: the slices span
    ``[-z_extent, z_extent]`` of the head's normalised height. blur_px: partial-volume blur (Gaussian
    sigma, pixels at 256 px). ct_noise_hu, mri_noise: Gaussian noise sigma. seed: the noise seed.
    """

    png_size: int = 256
    png_slices: int = 4
    volume_size: int = 128
    volume_slices: int = 12
    pixel_spacing_mm: float = 1.8
    slice_spacing_mm: float = 4.0
    z_extent: float = 0.45
    blur_px: float = 1.0
    ct_noise_hu: float = 5.0
    mri_noise: float = 0.01
    ct_window: tuple[float, float] = (40.0, 400.0)
    mri_stored_max: int = 4000
    seed: int = 20240


def render_head(
    size: int, z_positions: np.ndarray, spec: PhantomSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The phantom on a ``size × size`` grid at normalised heights ``z_positions``.

    Returns ``(ct, mri)``: CT in Hounsfield units and MRI in [0,1], both float32 ``[S,H,W]``, with
    noise. Rows run anterior → posterior, columns right → left (radiological axial view).
    """
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    z, y, x = np.meshgrid(np.asarray(z_positions, np.float64), centres, centres, indexing="ij")
    ct = np.full(x.shape, AIR_HU, np.float32)
    mri = np.zeros(x.shape, np.float32)
    for part in HEAD:
        (cx, cy, cz), (ax, ay, az) = part.centre, part.axes
        inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0
        if part.ct_hu is not None:
            ct[inside] = part.ct_hu
        if part.mri is not None:
            mri[inside] = part.mri
    sigma = spec.blur_px * size / 256
    for volume in (ct, mri):
        for index in range(volume.shape[0]):
            volume[index] = cv2.GaussianBlur(volume[index], (0, 0), sigma)
    ct += rng.normal(0.0, spec.ct_noise_hu, ct.shape).astype(np.float32)
    mri += rng.normal(0.0, spec.mri_noise, mri.shape).astype(np.float32)
    return ct, np.clip(mri, 0.0, 1.0)


def volume_affine(spec: PhantomSpec) -> np.ndarray:
    """4×4 RAS affine of voxel ``(column, row, slice)``; the same grid as the DICOM series (LPS)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ _lps_affine(spec)


def write_phantoms(out_dir: str | Path, spec: PhantomSpec = PhantomSpec()) -> Path:
    """Write the PNG, DICOM-series and NIfTI phantom pairs under ``out_dir``; returns ``out_dir``.

    Every file is written atomically; files of an earlier run are replaced, nothing else is touched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FuseError("exists and is not a folder; give a folder for the phantom scans", out_dir)
    rng = np.random.default_rng(spec.seed)
    _write_pngs(out_dir / "png", spec, rng)
    z = np.linspace(-spec.z_extent, spec.z_extent, spec.volume_slices)
    ct, mri = render_head(spec.volume_size, z, spec, rng)
    ct_stored = np.clip(np.round(ct + 1024.0), 0, 4095).astype(np.uint16)
    mri_stored = np.round(mri * spec.mri_stored_max).astype(np.uint16)
    _write_dicom_pair(out_dir / "dicom" / "case01", ct_stored, mri_stored, spec)
    _write_nifti_pair(out_dir / "nifti" / "case01", ct_stored, mri_stored, spec)
    return out_dir


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def main(out_dir: Path) -> None:
    """Write the synthetic CT/MRI head phantoms to OUT_DIR.

    OUT_DIR/png/{CT,MRI}/*.png (8-bit, 256x256), OUT_DIR/dicom/case01/{CT,MRI}/*.dcm (two series,
    12 slices of 128x128, 1.8 mm pixels, 4 mm slices; CT in HU via RescaleIntercept) and
    OUT_DIR/nifti/case01/{ct,mri}.nii.gz (same grid and affine). Deterministic: the same bytes of
    pixel data every run.
    """
    try:
        path = write_phantoms(out_dir)
    except FuseError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"phantom CT/MRI pairs written to {path}")


# --- writers -------------------------------------------------------------------------------------


def _write_pngs(folder: Path, spec: PhantomSpec, rng: np.random.Generator) -> None:
    z = np.linspace(-spec.z_extent * 0.7, spec.z_extent * 0.7, spec.png_slices)
    ct, mri = render_head(spec.png_size, z, spec, rng)
    centre, width = spec.ct_window
    ct_8bit = np.round(np.clip((ct - (centre - width / 2)) / width, 0.0, 1.0) * 255).astype(np.uint8)
    mri_8bit = np.round(mri * 255).astype(np.uint8)
    for index in range(spec.png_slices):
        name = f"phantom{index + 1:02d}.png"
        for role, images in (("CT", ct_8bit), ("MRI", mri_8bit)):
            target = folder / role / name
            with atomic_path(target) as tmp:
                if not cv2.imwrite(str(tmp), images[index]):
                    raise FuseError("OpenCV could not write the PNG; check the folder is writable", target)


def _lps_affine(spec: PhantomSpec) -> np.ndarray:
    step, size, slices = spec.pixel_spacing_mm, spec.volume_size, spec.volume_slices
    affine = np.diag([step, step, spec.slice_spacing_mm, 1.0])
    affine[:3, 3] = [-(size - 1) / 2 * step, -(size - 1) / 2 * step, -(slices - 1) / 2 * spec.slice_spacing_mm]
    return affine


def _write_dicom_pair(folder: Path, ct: np.ndarray, mri: np.ndarray, spec: PhantomSpec) -> None:
    study = {
        "StudyInstanceUID": _uid("study"),
        "FrameOfReferenceUID": _uid("frame-of-reference"),
    }
    for role, prefix, series_number, stored in (("CT", "CT", 1, ct), ("MRI", "MR", 2, mri)):
        series_uid = _uid(f"series-{prefix}")
        for index in range(stored.shape[0]):
            ds = _dicom_slice(stored[index], prefix, index, spec, study, series_uid, series_number)
            with atomic_path(folder / role / f"{prefix}_{index + 1:03d}.dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)


def _dicom_slice(
    pixels: np.ndarray,
    modality: str,
    index: int,
    spec: PhantomSpec,
    study: dict[str, str],
    series_uid: str,
    series_number: int,
) -> Dataset:
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds = new_dataset(sop_class, _uid(f"instance-{modality}-{index}"))
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.PatientName = "Phantom^Head"
    ds.PatientID = "FUSE-PHANTOM-01"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "fuse synthetic head phantom"
    ds.Modality = modality
    ds.Manufacturer = "fuse"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"phantom {modality}"
    ds.FrameOfReferenceUID = study["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.InstanceNumber = index + 1

    position = _lps_affine(spec) @ np.array([0.0, 0.0, index, 1.0])
    ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(spec.pixel_spacing_mm), _ds(spec.pixel_spacing_mm)]
    ds.SliceThickness = _ds(spec.slice_spacing_mm)
    ds.SpacingBetweenSlices = _ds(spec.slice_spacing_mm)
    ds.SliceLocation = _ds(position[2])

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.WindowCenter, ds.WindowWidth = (_ds(v) for v in spec.ct_window)
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 4000
        ds.EchoTime = 100
        ds.MagneticFieldStrength = 1.5
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _write_nifti_pair(folder: Path, ct_stored: np.ndarray, mri_stored: np.ndarray, spec: PhantomSpec) -> None:
    affine = volume_affine(spec)
    ct_hu = (ct_stored.astype(np.int32) - 1024).astype(np.int16)
    for name, volume in (("ct.nii.gz", ct_hu), ("mri.nii.gz", mri_stored)):
        image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        with atomic_path(folder / name) as tmp:
            nib.save(image, tmp)


def _uid(purpose: str) -> str:
    """A valid DICOM UID that is the same on every run (derived from ``purpose``)."""
    return generate_uid(entropy_srcs=["fuse-phantom", purpose])


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    return f"{float(value):.6g}"


if __name__ == "__main__":
    main()
