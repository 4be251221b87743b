"""The whole export: checkpoint → the formats of ``fuse_export.formats.FORMATS`` → parity → manifest.

``run_export`` does the work in this order:

1. refuse early (FuseError), before OUT is touched: missing checkpoint or parity folder, a vis-ir
   checkpoint, an unknown format or one whose requirements are missing (int8 without calibration
   pairs); then OUT not writable, or artifacts already in OUT without ``overwrite``; then the parity
   pairs are read (a folder without a usable pair stops here);
2. each format of the table, in order: its builder writes its files into a staging folder inside
   OUT (each reported with its size and the time it took), then its check runs (ONNX checker,
   parity against PyTorch FP32). ``plan`` without a CUDA GPU and TensorRT is skipped with the
   reason (fuse-export exits 3);
3. ``parity.json``, then ``manifest.json`` written once from the table's results;
4. publish: only when every check passed are the files renamed into OUT (and the Triton repository
   into its folder). Any failure, parity outside tolerance included, leaves OUT as it was.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fuse_export.config import MODEL_PLAN, PARITY_JSON, ExportConfig
from fuse_export.formats import (
    ARTIFACT_NAMES,
    Artifact,
    ExportContext,
    Format,
    Log,
    gpu_missing,
    io_tensors,
    log_artifact,
    resolve_formats,
)
from fuse_export.int8 import INT8, Int8Result, parity_summary
from fuse_export.parity import (
    FP16,
    FP32,
    Comparison,
    Samples,
    format_table,
    load_samples,
)
from fuse_export.staging import Staging
from fuse_runtime.atomic import write_json_atomic
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import (
    INPUT_FIRST,
    INPUT_SECOND,
    MANIFEST_NAME,
    Manifest,
    write_manifest,
)
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import load_model
from fuse_train.model import FusionNet

EXPORT_TASK = "ct-mri"


@dataclass
class ExportResult:
    """What ``run_export`` produced. ``engine_skipped`` says why no engine was built when one was
    asked; ``published`` is False when a check failed and OUT was left as it was."""

    out_dir: Path
    artifacts: dict[str, Artifact]
    comparisons: list[Comparison]
    manifest: Manifest
    table: str
    engine_skipped: str | None = None
    formats: tuple[str, ...] = ()
    int8: Int8Result | None = None
    triton: dict[str, Any] | None = None
    published: bool = True

    @property
    def parity_passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[str]:
        return [failure for c in self.comparisons for failure in c.failures]


def run_export(checkpoint: str | Path, out_dir: str | Path, config: ExportConfig, log: Log = print) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir`` as configured; see the module docstring for the steps.

    Raises FuseError for problems the user can fix (nothing is published then). Parity outside
    tolerance and a skipped engine build are not exceptions: they are in the result
    (``parity_passed`` and ``published``, ``engine_skipped``).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise FuseError("checkpoint not found; give the .pt file a fuse-train run wrote (e.g. RUN/best.pt)", checkpoint)
    if config.parity_data is not None and not Path(config.parity_data).is_dir():
        raise FuseError(
            "parity data folder not found; give a folder of CT/MRI pairs to --parity-data", config.parity_data
        )
    formats = resolve_formats(config)
    model, preprocess, info = load_ct_mri_model(checkpoint, config.image_size)
    staging = Staging.open(out_dir, config.overwrite, ARTIFACT_NAMES)
    try:
        triton_stage = None
        if any(f.name == "triton" for f in formats):
            destination = config.resolved_triton_dir(out_dir) / config.triton_name
            triton_stage = staging.stage_folder(destination, "--triton folder")
        result = _export(staging, triton_stage, formats, model, preprocess, info, config, log)
        if result.parity_passed:
            staging.publish(list(result.artifacts), ARTIFACT_NAMES, log)
            for artifact in result.artifacts.values():
                artifact.path = out_dir / artifact.name
        else:
            staging.discard()
            result.published = False
        return result
    except BaseException:
        staging.discard()
        raise


def _export(
    staging: Staging,
    triton_stage: Path | None,
    formats: list[Format],
    model: FusionNet,
    preprocess: PreprocessConfig,
    info: dict[str, Any],
    config: ExportConfig,
    log: Log,
) -> ExportResult:
    size = preprocess.image_size
    names = ", ".join(f.name for f in formats)
    log(f"fuse-export: {info['path']} ({info['task']}, epoch {info.get('epoch')}) → {staging.out_dir} at "
        f"{size}×{size} px: {names}")
    samples = load_samples(config.parity_data, preprocess, config.parity_pairs)
    ctx = ExportContext(model, preprocess, info["sha256"], config, staging.stage, samples, log)
    ctx.triton_stage = triton_stage
    comparisons: list[Comparison] = []
    for fmt in formats:
        if fmt.needs_gpu and (reason := gpu_missing()) is not None:
            ctx.skipped[fmt.name] = reason
            continue
        fmt.build(ctx)
        comparisons += fmt.check(ctx)
    if ctx.triton is not None:
        ctx.triton["repository"] = str(config.resolved_triton_dir(staging.out_dir).resolve())

    table = format_table(comparisons, samples, size)
    started = time.perf_counter()
    parity = parity_record(comparisons, samples, size, config)
    write_json_atomic(staging.stage / PARITY_JSON, parity)
    ctx.add(Artifact(PARITY_JSON, staging.stage / PARITY_JSON, time.perf_counter() - started),
            f"{len(comparisons)} candidates on {len(samples.names)} pairs")
    if ctx.int8 is not None:
        from fuse_export.int8 import format_int8_table

        table += "\n\n" + format_int8_table(ctx.int8.parity)

    started = time.perf_counter()
    manifest = build_manifest(preprocess, config, ctx, parity, info)
    write_manifest(staging.stage / MANIFEST_NAME, manifest)
    log_artifact(log, MANIFEST_NAME, (staging.stage / MANIFEST_NAME).stat().st_size, time.perf_counter() - started)
    return ExportResult(
        staging.out_dir, ctx.artifacts, comparisons, manifest, table, ctx.skipped.get("plan"),
        tuple(f.name for f in formats), ctx.int8, ctx.triton,
    )


def load_ct_mri_model(checkpoint: Path, image_size: int | None) -> tuple[FusionNet, PreprocessConfig, dict[str, Any]]:
    """Load the checkpoint, refuse a vis-ir model, and return the preprocessing at the export size."""
    model, train_config, info = load_model(checkpoint, map_location="cpu")
    if info["task"] != EXPORT_TASK:
        raise FuseError(
            f"this checkpoint was trained for the {info['task']} task ({'/'.join(info['modalities'])} inputs), "
            f"but fuse-export takes a CT–MRI model; fine-tune it on CT/MRI pairs first with "
            f"`fuse-train --task ct-mri --init {checkpoint} ...` and export that run's best.pt",
            checkpoint,
        )
    size = image_size if image_size is not None else train_config.preprocess.image_size
    preprocess = dataclasses.replace(train_config.preprocess, image_size=size)
    return model.eval(), preprocess, info


def parity_record(comparisons: list[Comparison], samples: Samples, size: int, config: ExportConfig) -> dict[str, Any]:
    """The content of ``parity.json``."""
    return {
        "reference": "pytorch-fp32 (cpu)",
        "image_size": size,
        "source": samples.source,
        "pairs": list(samples.names),
        "tolerances": dataclasses.asdict(config.tolerances),
        "passed": all(c.passed for c in comparisons),
        "results": {c.candidate: c.to_dict() for c in comparisons},
    }


def build_manifest(
    preprocess: PreprocessConfig,
    config: ExportConfig,
    ctx: ExportContext,
    parity: dict[str, Any],
    info: dict[str, Any],
) -> Manifest:
    """The manifest, once, from what the table's rows built and checked."""
    low, opt, high = config.batch
    inputs, outputs = io_tensors(preprocess.image_size)
    artifacts = {name: artifact.describe() for name, artifact in ctx.artifacts.items()}
    if ctx.triton is not None:
        artifacts["triton"] = ctx.triton
    summary: dict[str, Any] = {
        "passed": parity["passed"],
        "pairs": len(parity["pairs"]),
        "source": parity["source"],
        "tolerances": parity["tolerances"],
        "results": {
            name: {key: result[key] for key in ("max_abs", "mean_abs", "psnr_db", "metric_diff", "passed")}
            for name, result in parity["results"].items()
        },
    }
    if ctx.int8 is not None:
        summary[INT8] = parity_summary(ctx.int8)
    engine = ctx.engine
    return Manifest(
        image_size=preprocess.image_size,
        preprocess=preprocess,
        precision=FP16 if MODEL_PLAN in ctx.artifacts else FP32,
        modalities=(INPUT_FIRST, INPUT_SECOND),
        batch={"min": low, "opt": opt, "max": high},
        inputs=inputs,
        outputs=outputs,
        versions=versions(engine),
        artifacts=artifacts,
        gpu=engine.gpu if engine is not None else None,
        parity=summary,
        source_checkpoint={
            "path": str(Path(info["path"]).resolve()),
            "sha256": info["sha256"],
            "task": info["task"],
            "epoch": info.get("epoch"),
            "val_loss": info.get("val_loss"),
        },
        export=config.to_dict(),
    )


def versions(engine: Any = None) -> dict[str, str]:
    """Versions of everything that shaped the artifacts."""
    found = {
        "fuse": _package_version("fuse"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxslim": _package_version("onnxslim"),
        "numpy": np.__version__,
    }
    if engine is not None:
        found["tensorrt"] = engine.tensorrt_version
    return found


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
