"""The typed object every reader returns, whatever the file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

SourceFormat = Literal["image", "dicom", "dicom-series", "nifti"]


@dataclass
class Scan:
    """One scan as float32 pixels plus what is needed to interpret it and write results back.

    pixels:   float32, ``[H, W]`` for a 2-D image or ``[S, H, W]`` for a volume (S slices, each an
              axial image in the orientation documented by the reader that made it).
    modality: ``"CT"``, ``"MR"``, ``"VIS"``, ``"IR"`` or ``"OT"`` (unknown), upper case.
    is_hu:    True when pixels are Hounsfield units (DICOM CT after RescaleSlope/Intercept, or a CT
              NIfTI whose values span the HU range); the CT window is applied only then.
    bit_depth: bits per sample of the stored integers (8 for ordinary PNG/JPEG, 16, ...), None for
              float data.
    spacing:  pixel spacing in millimetres, ``(row, col)`` for 2-D or ``(slice, row, col)`` for
              volumes; ``(1.0, 1.0)`` when the file has none.
    affine:   4x4 voxel-index -> world (mm) matrix of ``pixels``' own index order, or None (2-D images).
    source:   the file (or the series folder) that was read.
    metadata: format-specific extras: window centre/width, identifying DICOM tags, the NIfTI header
              and the original array layout needed to write a result back exactly.
    """

    pixels: np.ndarray
    modality: str
    source: Path
    source_format: SourceFormat
    is_hu: bool = False
    bit_depth: int | None = None
    spacing: tuple[float, ...] = (1.0, 1.0)
    affine: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def num_slices(self) -> int:
        return self.pixels.shape[0] if self.is_volume else 1

    def slices(self) -> np.ndarray:
        """Pixels as ``[S, H, W]`` (a 2-D image becomes one slice)."""
        return self.pixels if self.is_volume else self.pixels[None]
