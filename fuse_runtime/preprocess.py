"""Preprocessing shared by training and serving: intensity → [0,1], CLAHE, model size and its inverse.

One implementation, so a pixel means the same thing when the model learns and when it serves.

Intensity rules (``normalise_intensity``), applied per scan (a volume is scaled as a whole, so
neighbouring slices stay comparable):

* CT whose pixels are Hounsfield units (``Scan.is_hu``): window ``[c - w/2, c + w/2]`` (design:
  centre 40, width 400 → [-160, 240] HU), clipped, scaled to [0,1].
* any scan stored as 8-bit integers (ordinary PNG/JPEG, already windowed for display): ``x / 255``.
  This keeps the fused output comparable with the 8-bit sources the fusion metrics are computed on.
* MRI (and infrared/visible) with more than 8 bits or float values: robust percentile scaling,
  ``[p_low, p_high]`` percentiles (default 0.5 and 99.5) of the scan mapped to [0,1] and clipped.
* CT that is neither HU nor 8-bit (e.g. a 16-bit PNG export): min–max over the scan.

Geometry (``to_model_size`` / ``restore_geometry``): ``resize`` stretches to ``size × size``;
``letterbox`` (default) scales the longer side to ``size`` keeping the aspect ratio and pads the
rest with zeros. ``restore_geometry`` is the exact inverse: it crops the padding and resizes back to
the original shape; an image already at the model size goes through untouched both ways.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import cv2
import numpy as np

from fuse_runtime.errors import FuseError
from fuse_runtime.scan import Scan

Role = Literal["ct", "mri", "vis", "ir"]
ResizeMode = Literal["letterbox", "resize"]

#: Roles whose model input has 3 channels (gray repeated), as in the design's CT encoder.
THREE_CHANNEL_ROLES = ("ct", "vis")


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters; defaults are the design document's.

    ct_window_center, ct_window_width: HU window for CT in Hounsfield units (design: 40 / 400).
    mri_percentiles: (low, high) percentiles for robust scaling of >8-bit MRI/IR data, in percent.
    clahe: apply CLAHE (OpenCV, on the 8-bit image as in the design) after normalisation.
    clahe_clip_limit, clahe_tile_grid: CLAHE parameters (design: 2.0 and 8×8 tiles).
    image_size: model input height and width in pixels; a multiple of 32 (design: 256).
    resize_mode: ``letterbox`` (keep aspect, zero-pad) or ``resize`` (stretch).
    """

    ct_window_center: float = 40.0
    ct_window_width: float = 400.0
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: tuple[int, int] = (8, 8)
    image_size: int = 256
    resize_mode: ResizeMode = "letterbox"

    def __post_init__(self) -> None:
        for name in ("ct_window_center", "ct_window_width", "clahe_clip_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.ct_window_width <= 0:
            raise ValueError(f"ct_window_width must be > 0 HU, got {self.ct_window_width}")
        if len(self.mri_percentiles) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.mri_percentiles
        ):
            raise ValueError(f"mri_percentiles must be two numbers (low, high), got {self.mri_percentiles!r}")
        low, high = self.mri_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"mri_percentiles must satisfy 0 <= low < high <= 100, got {self.mri_percentiles}")
        if not isinstance(self.clahe, bool):
            raise ValueError(f"clahe must be True or False, got {self.clahe!r}")
        if self.clahe_clip_limit <= 0:
            raise ValueError(f"clahe_clip_limit must be > 0, got {self.clahe_clip_limit}")
        grid = self.clahe_tile_grid
        if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid):
            raise ValueError(f"clahe_tile_grid must be two positive ints, got {grid!r}")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (pixels), got {size!r}")
        if self.resize_mode not in ("letterbox", "resize"):
            raise ValueError(f"resize_mode must be 'letterbox' or 'resize', got {self.resize_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mri_percentiles"] = list(self.mri_percentiles)
        data["clahe_tile_grid"] = list(self.clahe_tile_grid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing settings: {sorted(unknown)}")
        values = dict(data)
        for key in ("mri_percentiles", "clahe_tile_grid"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list of two numbers, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Restore:
    """What ``restore_geometry`` needs to undo ``to_model_size`` exactly."""

    original_hw: tuple[int, int]
    scaled_hw: tuple[int, int]
    offset: tuple[int, int]
    size: int


@dataclass
class PreparedPair:
    """Model inputs for one pair: ``first`` [S,3,H,W] and ``second`` [S,1,H,W], float32 in [0,1]."""

    first: np.ndarray
    second: np.ndarray
    restore: Restore


def check_finite(pixels: np.ndarray, source: object) -> None:
    """Refuse NaN or Inf pixels, naming the file."""
    if not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise FuseError(
            f"{bad} pixel(s) are NaN or Inf; fix or mask them in the source before fusing", source
        )


def normalise_intensity(scan: Scan, role: Role, config: PreprocessConfig) -> np.ndarray:
    """Map a scan's pixels to float32 [0,1] by the rules in the module docstring.

    Returns ``[S,H,W]`` (a 2-D scan gives S = 1). Raises FuseError naming the file for an empty,
    non-gray, NaN/Inf or constant scan.
    """
    if scan.pixels.size == 0:
        raise FuseError("the image is empty (no pixels)", scan.source)
    if scan.pixels.ndim not in (2, 3):
        raise FuseError(
            f"expected a gray image [H,W] or volume [S,H,W], got pixel shape {scan.pixels.shape}; "
            "convert colour images to gray first",
            scan.source,
        )
    pixels = scan.slices().astype(np.float32, copy=False)
    check_finite(pixels, scan.source)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        raise FuseError(f"the image is constant (every pixel is {low:g}); nothing to fuse", scan.source)
    if role == "ct" and scan.is_hu:
        half = config.ct_window_width / 2.0
        low, high = config.ct_window_center - half, config.ct_window_center + half
    elif scan.bit_depth == 8:
        low, high = 0.0, 255.0
    elif role != "ct":
        low, high = (float(v) for v in np.percentile(pixels, config.mri_percentiles))
        if high <= low:
            low, high = float(pixels.min()), float(pixels.max())
    out = (pixels - low) / (high - low)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def apply_clahe(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """CLAHE on each ``[H,W]`` slice of ``[S,H,W]`` float [0,1] data, via 8-bit as in the design."""
    clahe = cv2.createCLAHE(clipLimit=config.clahe_clip_limit, tileGridSize=tuple(config.clahe_tile_grid))
    out = np.empty_like(images, dtype=np.float32)
    for index, image in enumerate(images):
        as_uint8 = np.round(image * 255.0).astype(np.uint8)
        out[index] = clahe.apply(as_uint8).astype(np.float32) / 255.0
    return out


def normalise_scan(scan: Scan, role: Role, config: PreprocessConfig) -> np.ndarray:
    """Intensity normalisation then (if configured) CLAHE: ``[S,H,W]`` float32 in [0,1], native size."""
    images = normalise_intensity(scan, role, config)
    return apply_clahe(images, config) if config.clahe else images


def to_model_size(images: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, Restore]:
    """Resize or letterbox ``[S,H,W]`` images to ``[S,size,size]``; returns them and the inverse."""
    if images.ndim != 3:
        raise ValueError(f"expected [S,H,W] images, got shape {images.shape}")
    height, width = images.shape[1:]
    size = config.image_size
    if config.resize_mode == "resize" or height == width:
        scaled = (size, size)
    else:
        scale = size / max(height, width)
        scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
    top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
    restore = Restore((height, width), scaled, (top, left), size)
    out = np.zeros((images.shape[0], size, size), dtype=np.float32)
    for index, image in enumerate(images):
        out[index, top : top + scaled[0], left : left + scaled[1]] = _resize(image, scaled)
    return out, restore


def restore_geometry(fused: np.ndarray, restore: Restore) -> np.ndarray:
    """Undo ``to_model_size``: ``[S,C,size,size]`` → ``[S,C,H,W]`` at the original geometry."""
    if fused.ndim != 4 or fused.shape[-2:] != (restore.size, restore.size):
        raise ValueError(f"expected [S,C,{restore.size},{restore.size}], got {fused.shape}")
    top, left = restore.offset
    crop = fused[:, :, top : top + restore.scaled_hw[0], left : left + restore.scaled_hw[1]]
    out = np.empty(fused.shape[:2] + tuple(restore.original_hw), dtype=np.float32)
    for s in range(crop.shape[0]):
        for c in range(crop.shape[1]):
            out[s, c] = _resize(crop[s, c], restore.original_hw)
    return out


def prepare_pair(first: Scan, second: Scan, roles: tuple[Role, Role], config: PreprocessConfig) -> PreparedPair:
    """Preprocess a registered pair to model inputs.

    ``first`` (CT or visible) becomes ``[S,3,size,size]`` (gray repeated to 3 channels, as in the
    design); ``second`` (MRI or infrared) becomes ``[S,1,size,size]``; both float32 in [0,1].
    """
    check_registered(first, second)
    a, restore = to_model_size(normalise_scan(first, roles[0], config), config)
    b, _ = to_model_size(normalise_scan(second, roles[1], config), config)
    return PreparedPair(np.repeat(a[:, None], 3, axis=1), b[:, None], restore)


def check_registered(first: Scan, second: Scan, spacing_tol: float = 1e-3, affine_tol: float = 1e-2) -> None:
    """Refuse a pair whose geometry differs: shape, spacing or affine beyond a tolerance.

    Spacing tolerance is relative; affine tolerance is absolute, in millimetres. The FuseError names
    both files.
    """
    pair = f"{first.source} and {second.source}"
    if first.pixels.shape != second.pixels.shape:
        raise FuseError(
            f"{pair} are not registered: shapes differ ({first.pixels.shape} vs {second.pixels.shape}); "
            "resample one scan onto the other's grid first"
        )
    a, b = np.asarray(first.spacing, float), np.asarray(second.spacing, float)
    if a.shape == b.shape and not np.allclose(a, b, rtol=spacing_tol, atol=0):
        raise FuseError(
            f"{pair} are not registered: pixel spacing differs ({tuple(a)} vs {tuple(b)} mm); "
            "resample one scan onto the other's grid first"
        )
    if first.affine is not None and second.affine is not None:
        if not np.allclose(first.affine, second.affine, atol=affine_tol, rtol=0):
            raise FuseError(
                f"{pair} are not registered: the scans' affines (position/orientation) differ by more "
                f"than {affine_tol} mm; register them (e.g. with ANTs or elastix) before fusing"
            )


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape == tuple(hw):
        return image.astype(np.float32, copy=True)
    # INTER_AREA averages when shrinking (no aliasing) but degrades to nearest-neighbour when enlarging.
    shrinking = hw[0] <= image.shape[0] and hw[1] <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32), (hw[1], hw[0]), interpolation=interpolation)
