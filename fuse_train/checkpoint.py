"""Checkpoints: plain dicts of tensors and plain Python data, written atomically.

Layout (``format_version`` 1)::

    {"format_version": 1, "model": state_dict, "task": "ct-mri", "modalities": ["ct", "mri"],
     "config": TrainConfig.to_dict(), "epoch": 12, "val_loss": 8.1, "imagenet_loaded": False,
     "run": {...}, "training": {...}}          # "training" only in last.pt (resume state)

Everything loads with ``torch.load(weights_only=True)``: no pickled classes, no numpy objects.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fuse_runtime.atomic import atomic_path
from fuse_runtime.errors import FuseError, first_line
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "task", "modalities", "config")


@dataclass(frozen=True)
class InitReport:
    """What ``init_from_checkpoint`` did, counted in state-dict tensors."""

    loaded: int
    skipped: int
    new: int
    source_task: str

    def summary(self) -> str:
        return (
            f"initialised from a {self.source_task} checkpoint: {self.loaded} tensors loaded, "
            f"{self.skipped} skipped (absent here or of another shape), {self.new} newly initialised"
        )


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: TrainConfig,
    *,
    epoch: int,
    val_loss: float | None,
    imagenet_loaded: bool = False,
    run: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and the training facts to ``path`` (atomically); returns the path.

    ``epoch`` is the number of finished epochs (1-based); ``training`` holds the resume state.
    """
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": state,
        "task": config.task,
        "modalities": list(config.modalities),
        "config": config.to_dict(),
        "epoch": int(epoch),
        "val_loss": None if val_loss is None else float(val_loss),
        "imagenet_loaded": bool(imagenet_loaded),
        "run": dict(run or {}),
    }
    if training is not None:
        payload["training"] = training
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint dict with ``weights_only=True``; FuseError naming the file if bad."""
    path = Path(path)
    if not path.is_file():
        raise FuseError("checkpoint not found; give the .pt file a fuse-train run wrote (e.g. RUN/best.pt)", path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError):
        raise FuseError(
            f"{_why_unreadable(path)}; give a .pt file written by fuse-train (e.g. RUN/best.pt)", path
        ) from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise FuseError(
            "not a fuse checkpoint (it lacks "
            f"{[k for k in REQUIRED_KEYS if k not in payload] if isinstance(payload, dict) else 'a dict'}); "
            "give a .pt file written by fuse-train",
            path,
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise FuseError(
            f"checkpoint format_version {payload['format_version']} is not supported (this fuse reads "
            f"{FORMAT_VERSION}); re-train or use the matching fuse version",
            path,
        )
    return payload


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[FusionNet, TrainConfig, dict[str, Any]]:
    """Rebuild the trained ``FusionNet`` (eval mode) from a checkpoint.

    Returns ``(model, config, info)``; ``info`` holds ``task``, ``modalities``, ``epoch``,
    ``val_loss``, ``imagenet_loaded``, ``run``, ``path`` and the file's ``sha256``. A vis-ir
    checkpoint gives ``info["task"] == "vis-ir"``. Never downloads anything.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    try:
        config = TrainConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise FuseError(f"the checkpoint's training config is invalid ({error})", path) from error
    modalities = tuple(payload["modalities"])
    model = FusionNet(modalities=modalities, imagenet=False, head=config.head)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as error:
        raise FuseError(
            f"the checkpoint's weights do not fit this FusionNet ({first_line(error, with_type=True)}); "
            "it was written by an incompatible model version",
            path,
        ) from error
    model.to(map_location).eval()
    info = {key: value for key, value in payload.items() if key not in ("model", "config", "training")}
    info["modalities"] = modalities
    info["path"] = str(path)
    info["sha256"] = file_sha256(path)
    return model, config, info


def init_from_checkpoint(model: nn.Module, path: str | Path, modalities: tuple[str, str]) -> InitReport:
    """Initialise ``model`` (built for ``modalities``) from another run's checkpoint, non-strict.

    Tensor names are mapped modality by modality (design: ``vis_``→``ct_``, ``ir_``→``mri_``); a
    tensor is loaded only when its mapped name exists in ``model`` with the same shape.
    """
    payload = read_checkpoint(path)
    source = tuple(payload["modalities"])
    rename = dict(zip(source, modalities))
    target = model.state_dict()
    mapped = {_rename_key(key, rename): value for key, value in payload["model"].items()}
    usable = {key: value for key, value in mapped.items() if key in target and target[key].shape == value.shape}
    model.load_state_dict(usable, strict=False)
    return InitReport(
        loaded=len(usable),
        skipped=len(mapped) - len(usable),
        new=len(target) - len(usable),
        source_task=str(payload["task"]),
    )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rename_key(key: str, rename: dict[str, str]) -> str:
    """Map every dotted component ``<old>_...`` to ``<new>_...`` (e.g. ``vis_encoder.conv1.weight``)."""
    parts = []
    for part in key.split("."):
        for old, new in rename.items():
            if part.startswith(f"{old}_"):
                part = f"{new}_{part[len(old) + 1:]}"
                break
        parts.append(part)
    return ".".join(parts)


def _why_unreadable(path: Path) -> str:
    """Our own words for a file ``torch.load(weights_only=True)`` rejects (torch's message is not shown:
    it ends by suggesting to turn that safety check off, which fuse never does)."""
    if not zipfile.is_zipfile(path):
        return "not a PyTorch checkpoint (not a zip archive: random bytes, another format, or a truncated copy)"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return "a damaged PyTorch file (its zip archive cannot be read: copy it again)"
    if not any(name.endswith("data.pkl") for name in names):
        return "a zip archive but not a PyTorch checkpoint"
    return (
        "a PyTorch file holding Python objects other than tensors and plain data, which fuse refuses to load "
        "because loading them could run code; it was not written by fuse-train"
    )

