"""Export settings: one dataclass, defaults from the issue (opset 17, batch 1/8/32, FP16 tolerances)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fuse_export.int8 import Int8Config

MIN_OPSET = 17
"""Oldest ONNX opset fuse exports to (the issue asks for 17 or newer)."""
MAX_OPSET = 20
"""Newest opset the TorchScript-based exporter of the pinned torch 2.14 writes."""

MODEL_ONNX = "model.onnx"
MODEL_FP16_ONNX = "model.fp16.onnx"
MODEL_PLAN = "model.plan"
PARITY_JSON = "parity.json"
TRITON_FOLDER = "triton"
"""Where the Triton model repository goes inside OUT when no ``triton_dir`` is given."""


@dataclass(frozen=True)
class Tolerances:
    """How close an exported model must stay to PyTorch FP32 on the parity pairs.

    Outputs are in [0,1]; PSNR is computed with a peak of 1.0, in dB.
    fp32_max_abs: ONNX Runtime on ``model.onnx`` (the same arithmetic, reordered).
    fp16_*: ``model.fp16.onnx`` under ONNX Runtime and the TensorRT FP16 engine.
    """

    fp32_max_abs: float = 1e-4
    fp16_mean_abs: float = 2e-3
    fp16_max_abs: float = 2e-2
    fp16_psnr_db: float = 40.0

    def __post_init__(self) -> None:
        for name in ("fp32_max_abs", "fp16_mean_abs", "fp16_max_abs", "fp16_psnr_db"):
            if getattr(self, name) <= 0:
                raise ValueError(f"tolerance {name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ExportConfig:
    """What ``fuse-export`` builds and how.

    image_size: model input height and width in pixels, a multiple of 32; None takes the size the
        checkpoint was trained for (its ``TrainConfig.preprocess.image_size``, design: 256).
    opset: ONNX opset, MIN_OPSET (17) to MAX_OPSET (20).
    batch: (min, opt, max) batch sizes: the dynamic batch axis' TensorRT optimisation profile.
    formats: formats to build besides ``onnx`` (always first), names from
        ``fuse_export.formats.FORMATS``: ``fp16``, ``int8``, ``plan``, ``triton``; each pulls in
        the formats it is built from (``plan`` needs ``fp16``).
    fp16: alias kept for ``fuse-export --fp16``: the fp16 and plan formats.
    onnx_only: alias kept for ``--onnx-only``: never build the plan (with ``fp16``: fp16 only).
    calibration_data: training pairs that calibrate the ``int8`` format (required by it).
    int8: how ``int8`` calibrates and reports (None: ``Int8Config()``'s defaults).
    triton_dir: the Triton model repository folder (implies the ``triton`` format); None with
        ``triton`` in ``formats``: ``OUT/triton``.
    triton_name: the model's name (its folder) in the Triton repository.
    simplify: run onnxslim and keep its graph only when its outputs are identical.
    workspace_gb: TensorRT builder memory-pool (workspace) limit in GiB.
    timing_cache: TensorRT timing-cache file, read before and written after every build so later
        builds on the same GPU reuse the kernel timings. None: ``$XDG_CACHE_HOME/fuse/`` (or
        ``~/.cache/fuse/``) ``tensorrt-timing.cache``.
    parity_data: folder of registered CT/MRI pairs for the parity check; None: a handful of the
        Harvard test pairs under ../shared/data when present, else synthetic phantoms.
    parity_pairs: how many pairs the parity check uses (the first ones by name).
    fp16_keep_fp32_ops: ONNX op types kept in FP32 inside the FP16 graph (normalisation layers).
    fp16_keep_sigmoid_inputs: keep every Sigmoid and the node computing its pre-activation in FP32
        (the attention gates and the output activation).
    overwrite: replace existing artifacts in OUT instead of refusing.
    tolerances: parity limits.
    """

    image_size: int | None = None
    opset: int = MIN_OPSET
    batch: tuple[int, int, int] = (1, 8, 32)
    formats: tuple[str, ...] = ()
    fp16: bool = False
    onnx_only: bool = False
    calibration_data: Path | None = None
    int8: Int8Config | None = None
    triton_dir: Path | None = None
    triton_name: str = "fuse_ct_mri"
    simplify: bool = True
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    parity_data: Path | None = None
    parity_pairs: int = 4
    fp16_keep_fp32_ops: tuple[str, ...] = ("BatchNormalization",)
    fp16_keep_sigmoid_inputs: bool = True
    overwrite: bool = False
    tolerances: Tolerances = field(default_factory=Tolerances)

    def __post_init__(self) -> None:
        if self.image_size is not None:
            check_image_size(self.image_size)
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(
                f"opset must be {MIN_OPSET} or newer (up to {MAX_OPSET}, the exporter's newest), got {self.opset}"
            )
        low, opt, high = self.batch
        if len(self.batch) != 3 or not 1 <= low <= opt <= high:
            raise ValueError(f"batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {self.batch}")
        if self.workspace_gb <= 0:
            raise ValueError(f"workspace_gb must be > 0 GiB, got {self.workspace_gb}")
        if self.parity_pairs < 1:
            raise ValueError(f"parity_pairs must be >= 1, got {self.parity_pairs}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.triton_name) or self.triton_name in (".", ".."):
            raise ValueError(f"triton_name must be letters, digits, '_', '-' or '.', got {self.triton_name!r}")

    @property
    def builds_engine(self) -> bool:
        """True when this export is asked for a TensorRT engine (``plan``, or ``--fp16`` without ``--onnx-only``)."""
        return not self.onnx_only and (self.fp16 or "plan" in self.formats)

    def resolved_triton_dir(self, out_dir: Path) -> Path:
        """The Triton model repository folder (see ``triton_dir``)."""
        return Path(self.triton_dir) if self.triton_dir is not None else Path(out_dir) / TRITON_FOLDER

    def resolved_timing_cache(self) -> Path:
        """The timing-cache file to use (see ``timing_cache``)."""
        if self.timing_cache is not None:
            return Path(self.timing_cache)
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "fuse" / "tensorrt-timing.cache"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch"] = list(self.batch)
        data["formats"] = list(self.formats)
        data["fp16_keep_fp32_ops"] = list(self.fp16_keep_fp32_ops)
        for key in ("timing_cache", "parity_data", "calibration_data", "triton_dir"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


def check_image_size(size: int) -> int:
    """Return ``size`` when it is a positive multiple of 32 (the encoder's total stride), else raise."""
    if size < 32 or size % 32:
        raise ValueError(
            f"image size must be a positive multiple of 32 (the network downsamples 32x), got {size}; "
            f"use e.g. {max(32, round(size / 32) * 32)}"
        )
    return size
