"""Training configuration: one dataclass per concern, defaults from the design document."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from fuse_runtime.preprocess import PreprocessConfig

Task = Literal["ct-mri", "vis-ir"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Head = Literal["design", "blend", "select"]
DetailTarget = Literal["magnitude", "vector"]

#: Loss options tried while tuning the release recipe and rejected (docs/release-recipe.md: S13 and
#: P1–P4), with the value at which they did nothing; older runs' config.json still names them.
REMOVED_OPTIONS: dict[str, float] = {"detail_saturation": 1.0, "content_saturation": 1.0}

#: Modality names per task: the first takes the 3-channel input, the second the 1-channel input.
TASK_MODALITIES: dict[str, tuple[str, str]] = {"ct-mri": ("ct", "mri"), "vis-ir": ("vis", "ir")}


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss components (design: 15, 8, 5, 3, 2, 10, and 0 for the four metric terms)."""

    content: float = 15.0
    structure: float = 8.0
    detail: float = 5.0
    consistency: float = 3.0
    gradient: float = 2.0
    medical: float = 10.0
    qabf: float = 0.0
    """Weight of 1 − Qabf (differentiable Xydeas–Petrović edge preservation); not in the design."""
    vif: float = 0.0
    """Weight of 1 − ½ΣVIF (differentiable pixel-domain VIF to each source); not in the design."""
    mi: float = 0.0
    """Weight of 1 − ΣMI / ΣH (mutual information with each source, soft-binned, over what the
    sources hold); not in the design."""
    ssim: float = 0.0
    """Weight of 1 − ½ΣSSIM with the evaluation's SSIM (7×7 window, data range 2); not in the design,
    whose structure term is an 11×11 SSIM with data range 1."""
    medical_threshold: float = 0.5
    """Pixels brighter than this (in [0,1]) form the medical loss masks."""
    detail_gain: float = 1.0
    """The detail loss's target is this × the larger source gradient (design: 1, match the sources);
    above 1 it asks for edges sharper than either source's."""
    detail_gain_edge: float = 0.0
    """The gain applies only where the target's Sobel strength (plain 3×3 kernel, [0,1] units) is above
    this; weaker gradients keep gain 1. 0 (the default) applies it everywhere. Sharpening only strong
    edges raises spatial frequency, which the strongest steps dominate, while flat and textured tissue
    keeps the sources' exact values (mutual information and VIF fall far less)."""
    detail_target: DetailTarget = "magnitude"
    """What the detail loss matches: "magnitude" (the design's: Sobel strength only) or "vector" (the
    Sobel x/y vector of the stronger source, so edge orientation counts too)."""

    def __post_init__(self) -> None:
        if self.detail_target not in get_args(DetailTarget):
            raise ValueError(
                f"detail_target must be one of {', '.join(get_args(DetailTarget))}, got {self.detail_target!r}"
            )
        for f in fields(self):
            if f.name != "detail_target" and getattr(self, f.name) < 0:
                raise ValueError(f"loss weight {f.name} must be >= 0, got {getattr(self, f.name)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossWeights:
        """From a run's ``config.json`` ``loss`` section; the options since removed (see
        :data:`REMOVED_OPTIONS`) are dropped where they hold their neutral value and refused otherwise,
        so checkpoints written before their removal still load."""
        values = dict(data)
        for name, neutral in REMOVED_OPTIONS.items():
            if name in values and values.pop(name) != neutral:
                raise ValueError(
                    f"loss.{name} was a rejected experiment and has been removed "
                    "(docs/release-recipe.md); this run cannot be reproduced by this version"
                )
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (design defaults: batch 4, lr 1e-5, 30 epochs, patience 10, ...)."""

    task: Task = "ct-mri"
    batch_size: int = 4
    lr: float = 1e-5
    epochs: int = 30
    early_stopping_patience: int = 10
    freeze_encoder_epochs: int = 5
    warmup_epochs: int = 3
    weight_decay: float = 1e-4
    lr_scale_encoder: float = 0.1
    lr_scale_fusion: float = 0.5
    lr_scale_decoder: float = 1.0
    gradient_clip: float = 1.0
    precision: Precision = "auto"
    seed: int = 42
    crop_size: int = 256
    """Training crop in pixels (a multiple of 32); validation always uses the full model size."""
    val_fraction: float = 0.2
    """Fraction of patients held out for validation (split by patient, never by slice)."""
    hflip_p: float = 0.3
    rotate_degrees: float = 5.0
    intensity_jitter: float = 0.05
    checkpoint_every: int = 5
    imagenet: bool = True
    num_workers: int = 0
    max_pairs: int | None = None
    """Use at most this many pairs, taken round-robin over patients (None: all); for smoke runs."""
    head: Head = "design"
    """Output head of FusionNet: "design" (the design's), "blend" (sees the sources at full size) or
    "select" (blend, starting from a soft per-pixel maximum of the sources)."""
    min_foreground: float = 0.01
    """Volume slices with less than this fraction of pixels above 5% intensity in both images are skipped."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        positive = ("batch_size", "lr", "epochs", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.task not in TASK_MODALITIES:
            raise ValueError(f"task must be one of {sorted(TASK_MODALITIES)}, got {self.task!r}")
        if self.crop_size < 32 or self.crop_size % 32:
            raise ValueError(f"crop_size must be a positive multiple of 32, got {self.crop_size}")
        if self.crop_size > self.preprocess.image_size:
            raise ValueError(
                f"crop_size ({self.crop_size}) must not exceed the model size preprocess.image_size "
                f"({self.preprocess.image_size})"
            )
        if self.max_pairs is not None and self.max_pairs < 2:
            raise ValueError(f"max_pairs must be >= 2 (or None for all), got {self.max_pairs}")
        if not 0.0 <= self.min_foreground < 1.0:
            raise ValueError(f"min_foreground must be in [0, 1), got {self.min_foreground}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.head not in get_args(Head):
            raise ValueError(f"head must be one of {', '.join(get_args(Head))}, got {self.head!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")

    @property
    def modalities(self) -> tuple[str, str]:
        return TASK_MODALITIES[self.task]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        values = dict(data)
        if "preprocess" in values and isinstance(values["preprocess"], dict):
            values["preprocess"] = PreprocessConfig.from_dict(values["preprocess"])
        if "loss" in values and isinstance(values["loss"], dict):
            values["loss"] = LossWeights.from_dict(values["loss"])
        return cls(**values)
