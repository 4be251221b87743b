"""A PyTorch FusionNet as a ``fuse_runtime`` Engine, so the runtime's code paths run it unchanged.

``TorchEngine.from_checkpoint("RUN/best.pt")`` is what the quality benchmark scores for a checkpoint
and what parity takes as the FP32 reference: ``Fuser(TorchEngine(...))``, ``fuse_pair`` and
``pipeline.run`` accept it like an exported model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fuse_runtime.engines.base import UNBOUNDED_BATCH, Engine
from fuse_runtime.preprocess import PreprocessConfig

__all__ = ["TorchEngine"]


class TorchEngine(Engine):
    """Runs ``model`` (eval mode, ``torch.inference_mode``) on the device its parameters are on.

    preprocess: the settings the model was trained with (a checkpoint's ``config.preprocess``).
    autocast: a dtype (``torch.bfloat16``, ``torch.float16``) to run under ``torch.autocast``; None: FP32.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: PreprocessConfig,
        modalities: tuple[str, str] = ("ct", "mri"),
        path: str | Path = "<PyTorch model>",
        batch_range: tuple[int, int] = (1, UNBOUNDED_BATCH),
        autocast: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        self.path = Path(path)
        self.preprocess = preprocess
        self.image_size = preprocess.image_size
        self.batch_range = batch_range
        self.modalities = (modalities[0], modalities[1])
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.provider = self.device.type
        self.autocast = autocast
        self.notices: list[str] = []
        self.info: dict[str, Any] = {}
        """A checkpoint's facts (task, epoch, val_loss, sha256...) when made by ``from_checkpoint``."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TorchEngine:
        """The model of a fuse-train checkpoint with its own preprocessing and modalities."""
        from fuse_train.checkpoint import load_model

        model, config, info = load_model(path, map_location)
        engine = cls(model, config.preprocess, tuple(info["modalities"]), path)
        engine.info = info
        return engine

    @property
    def description(self) -> str:
        precision = "fp32" if self.autocast is None else f"autocast {str(self.autocast).removeprefix('torch.')}"
        return f"PyTorch {self.path.name} on {self.provider} ({precision}), {self.image_size}x{self.image_size} px"

    def _run(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        device = self.device
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None),
        ):
            fused = self.model(torch.from_numpy(ct).to(device), torch.from_numpy(mri).to(device))
            return fused.float().cpu().numpy()
