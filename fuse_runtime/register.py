"""Rigid CT ← MRI registration on request (``fuse-run --register rigid``), with SimpleITK.

Mattes mutual information (the metric for two modalities), a rigid transform (``Euler3DTransform``
for volumes, ``Euler2DTransform`` for single slices) started from the scans' geometric centres,
regular-step gradient descent over three resolution levels. The fixed image is the CT, the moving
one the MRI, both placed by their headers (``fuse_runtime.resample.to_sitk``); a 2-D image without a
position (PNG) is placed at the origin with its pixel spacing. The transform maps CT points to MRI
points (ITK's convention, what ``sitk.ReadTransform`` gives back from the written ``.tfm``).

Registration is refused (FuseError; the pair fails, a batch goes on) when the optimiser stops on
its iteration limit instead of converging, or when the metric after is not better than before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fuse_runtime.atomic import atomic_path
from fuse_runtime.errors import FuseError, one_line
from fuse_runtime.io.formats import format_suffix
from fuse_runtime.resample import Alignment, contributing_slices, on_ct_grid, resample_onto, to_sitk, world_affine
from fuse_runtime.scan import Scan

TRANSFORM_SUFFIX = ".tfm"


@dataclass(frozen=True)
class RegistrationConfig:
    """Optimiser settings; the defaults recover a few mm and degrees on head CT/MRI.

    histogram_bins: Mattes MI bins. sampling: fraction of voxels sampled per evaluation (fixed seed,
    so a run is repeatable). iterations: per resolution level. shrink / smoothing_mm: the pyramid.
    learning_rate / min_step: regular-step gradient descent, in physical units after scaling.
    """

    histogram_bins: int = 32
    sampling: float = 0.1
    seed: int = 20240
    iterations: int = 300
    learning_rate: float = 1.0
    min_step: float = 1e-4
    shrink: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (4.0, 2.0, 0.0)


def register_rigid(ct: Scan, mri: Scan, config: RegistrationConfig = RegistrationConfig()) -> tuple[Scan, Alignment]:
    """Register the MRI to the CT and resample it onto the CT's grid; the MRI on that grid and the record.

    Raises FuseError naming both files when the optimiser does not converge or the metric gets worse.
    """
    flat = ct.num_slices == 1 and mri.num_slices == 1
    fixed, moving = (_image_2d(ct), _image_2d(mri)) if flat else (to_sitk(ct), to_sitk(mri))
    rigid = sitk.Euler2DTransform() if flat else sitk.Euler3DTransform()
    initial = sitk.CenteredTransformInitializer(fixed, moving, rigid, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = _method(config)
    identity = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity)
    before = _metric(config.histogram_bins, fixed, moving, identity)
    method.SetInitialTransform(initial, inPlace=False)
    try:
        found = method.Execute(fixed, moving)
    except RuntimeError as error:
        raise FuseError(f"{ct.source} + {mri.source}: rigid registration failed ({one_line(error)})") from None
    stop = method.GetOptimizerStopConditionDescription()
    final = _as_rigid(found, flat)
    after = _metric(config.histogram_bins, fixed, moving, final)
    if "Maximum number of iterations" in stop or not after < before:
        raise FuseError(
            f"{ct.source} + {mri.source}: rigid registration did not converge ({stop.strip()}; Mattes MI "
            f"{before:.4f} before, {after:.4f} after): check that both scans show the same anatomy, or "
            "register them with a dedicated tool and fuse without --register"
        )
    pixels, overlap = resample_onto(fixed, moving, final)
    if overlap <= 0.0:
        raise FuseError(f"{ct.source} + {mri.source}: after rigid registration the scans do not overlap")
    record = Alignment(
        method="rigid",
        overlap=overlap,
        metric_before=float(before),
        metric_after=float(after),
        optimizer_stop=stop.strip(),
        transform={
            "type": final.GetName(),
            "parameters": list(final.GetParameters()),
            "fixed_parameters": list(final.GetFixedParameters()),
        },
        source_slices=contributing_slices(fixed, moving, final),
    )
    return on_ct_grid(ct, mri, pixels), record


def transform_from_record(record: dict) -> sitk.Transform:
    """Rebuild the SimpleITK transform stored in ``Alignment.transform``."""
    transform = getattr(sitk, record["type"])()
    transform.SetFixedParameters(record["fixed_parameters"])
    transform.SetParameters(record["parameters"])
    return transform


def write_transform(path: str | Path, record: dict) -> Path:
    """Write the transform as an ITK ``.tfm`` text file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform_from_record(record), str(tmp))
    return path


def transform_path(output: Path) -> Path:
    """Where the transform of a pair whose result is ``output`` goes: beside it, ``<name>.tfm``."""
    name = output.name[: len(output.name) - len(format_suffix(output))]
    return output.with_name(name + TRANSFORM_SUFFIX)


def rotation_angle_deg(transform: sitk.Transform) -> float:
    """The rotation angle (degrees) of a rigid transform's matrix."""
    matrix = np.asarray(transform.GetMatrix(), dtype=float)
    size = int(round(np.sqrt(matrix.size)))
    matrix = matrix.reshape(size, size)
    if size == 2:
        return float(np.degrees(abs(np.arctan2(matrix[1, 0], matrix[0, 0]))))
    return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))


def _method(config: RegistrationConfig) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.sampling, config.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=config.learning_rate,
        minStep=config.min_step,
        numberOfIterations=config.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(config.shrink))
    method.SetSmoothingSigmasPerLevel(list(config.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _metric(bins: int, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes MI of ``moving`` through ``transform`` against ``fixed`` at full resolution, every voxel."""
    probe = sitk.ImageRegistrationMethod()
    probe.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    probe.SetMetricSamplingStrategy(probe.NONE)
    probe.SetInterpolator(sitk.sitkLinear)
    probe.SetInitialTransform(transform, inPlace=False)
    return float(probe.MetricEvaluate(fixed, moving))


def _as_rigid(transform: sitk.Transform, flat: bool) -> sitk.Transform:
    """The optimised composite/initial transform flattened into one Euler transform."""
    rigid = sitk.Euler2DTransform() if flat else sitk.Euler3DTransform()
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(transform.GetNumberOfTransforms() - 1)
    rigid.SetFixedParameters(transform.GetFixedParameters())
    rigid.SetParameters(transform.GetParameters())
    return rigid


def _image_2d(scan: Scan) -> sitk.Image:
    """One slice as a 2-D image: in-plane geometry from the headers when there are any."""
    if world_affine(scan) is not None:
        return to_sitk(scan)[:, :, 0]
    image = sitk.GetImageFromArray(np.ascontiguousarray(scan.slices()[0], dtype=np.float32))
    image.SetSpacing([float(scan.spacing[-1]), float(scan.spacing[-2])])
    return image
