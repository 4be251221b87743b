"""The contract between fuse-export and fuse-run: tensor names, ONNX metadata keys, manifest.json.

fuse-export writes these; the runtime reads preprocessing from them, never from its own defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_runtime.atomic import write_json_atomic
from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig

INPUT_FIRST = "ct"
"""Model input: CT, float32 [N,3,H,W] in [0,1]."""
INPUT_SECOND = "mri"
"""Model input: MRI, float32 [N,1,H,W] in [0,1]."""
OUTPUT = "fused"
"""Model output: float32 [N,3,H,W] in [0,1]."""

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# ONNX metadata_props keys (values are strings).
META_FORMAT = "fuse.format_version"
META_PREPROCESS = "fuse.preprocess"  # JSON of PreprocessConfig.to_dict()
META_IMAGE_SIZE = "fuse.image_size"
META_MODALITIES = "fuse.modalities"  # "ct,mri"
META_CHECKPOINT_SHA256 = "fuse.checkpoint_sha256"
META_PRECISION = "fuse.precision"  # "fp32" | "fp16" | "int8"


@dataclass
class Manifest:
    """What a runtime needs to serve an exported model, and what a person wants to know about it."""

    image_size: int
    preprocess: PreprocessConfig
    precision: str = "fp32"
    modalities: tuple[str, str] = ("ct", "mri")
    batch: dict[str, int] = field(default_factory=lambda: {"min": 1, "opt": 8, "max": 32})
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu: dict[str, Any] | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    source_checkpoint: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    """The resolved export settings (fuse_export's ExportConfig), for reproducing the build."""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "image_size": self.image_size,
            "precision": self.precision,
            "modalities": list(self.modalities),
            "batch": dict(self.batch),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "preprocess": self.preprocess.to_dict(),
            "versions": self.versions,
            "artifacts": self.artifacts,
            "gpu": self.gpu,
            "parity": self.parity,
            "source_checkpoint": self.source_checkpoint,
            "export": self.export,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            image_size=int(data["image_size"]),
            preprocess=PreprocessConfig.from_dict(data["preprocess"]),
            precision=data.get("precision", "fp32"),
            modalities=tuple(data.get("modalities", ("ct", "mri"))),
            batch=dict(data.get("batch", {})),
            inputs=list(data.get("inputs", [])),
            outputs=list(data.get("outputs", [])),
            versions=dict(data.get("versions", {})),
            artifacts=dict(data.get("artifacts", {})),
            gpu=data.get("gpu"),
            parity=dict(data.get("parity", {})),
            source_checkpoint=dict(data.get("source_checkpoint", {})),
            export=dict(data.get("export", {})),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
        )


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest.json, with a FuseError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FuseError("manifest not found; re-run fuse-export to write it beside the model", path) from None
    except (OSError, json.JSONDecodeError) as error:
        raise FuseError(f"cannot read the manifest ({error}); re-run fuse-export", path) from None
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise FuseError(f"manifest is incomplete or invalid ({error}); re-run fuse-export", path) from None


def write_manifest(path: str | Path, manifest: Manifest) -> None:
    write_json_atomic(path, manifest.to_dict())
