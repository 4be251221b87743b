"""The one table of export formats: what each writes, what it needs, how it is built and checked.

``FORMATS`` drives fuse-export: argument validation (``resolve_formats``), the build order, the
files an earlier export may have left (``ARTIFACT_NAMES``), and the parity rows.

========  ==========================  ==============================================  ==========================
format    files (in OUT)              needs                                           check
========  ==========================  ==============================================  ==========================
onnx      model.onnx                  (always built, first)                           ONNX checker; ORT FP32 vs PyTorch
fp16      model.fp16.onnx             onnx                                            ONNX checker; ORT FP16 vs PyTorch
int8      model.int8.onnx,            onnx; ``--calibration-data``                    ONNX checker; parity.int8.json
          parity.int8.json                                                            against model.onnx (reported)
plan      model.plan                  fp16; a CUDA GPU and TensorRT (else skipped,    TensorRT FP16 vs PyTorch
                                      fuse-export exits 3)
triton    DIR/<name>/config.pbtxt,    onnx (serves model.plan when built, else        repository model file identical
          preprocessing.json, 1/model model.onnx)                                     to the checked artifact
========  ==========================  ==============================================  ==========================

Every builder writes into the export's staging folder (``ExportContext.stage``); nothing reaches OUT
before every check has passed (``fuse_export.staging``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from fuse_export import fp16 as fp16_convert
from fuse_export import onnx_export
from fuse_export.config import (
    MODEL_FP16_ONNX,
    MODEL_ONNX,
    MODEL_PLAN,
    PARITY_JSON,
    ExportConfig,
)
from fuse_export.int8 import (
    INT8,
    INT8_PARITY_JSON,
    MODEL_INT8_ONNX,
    Int8Config,
    Int8Result,
    check_calibration_dir,
    export_int8,
    manifest_entry,
)
from fuse_export.parity import (
    FP16,
    FP32,
    Comparison,
    Runner,
    Samples,
    compare,
    run_batched,
    sample_metrics,
)
from fuse_runtime.atomic import atomic_path
from fuse_runtime.errors import FuseError
from fuse_runtime.install import GPU_INSTALL
from fuse_runtime.manifest import (
    FORMAT_VERSION,
    INPUT_FIRST,
    INPUT_SECOND,
    META_CHECKPOINT_SHA256,
    META_FORMAT,
    META_IMAGE_SIZE,
    META_MODALITIES,
    META_PRECISION,
    META_PREPROCESS,
    OUTPUT,
)
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import file_sha256
from fuse_train.model import FusionNet
from fuse_train.torch_engine import TorchEngine

Log = Callable[[str], None]


@dataclass
class Artifact:
    """One file an export wrote (into the staging folder; its name is its name in OUT)."""

    name: str
    path: Path
    seconds: float
    precision: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "bytes": self.size, "sha256": file_sha256(self.path), "seconds": round(self.seconds, 2)
        }
        if self.precision is not None:
            entry["precision"] = self.precision
        entry.update(self.details)
        return entry


@dataclass
class ExportContext:
    """What the builders and checks share during one export."""

    model: FusionNet
    preprocess: PreprocessConfig
    checkpoint_sha256: str
    config: ExportConfig
    stage: Path
    samples: Samples
    log: Log
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    graph: onnx.ModelProto | None = None
    engine: Any = None
    int8: Int8Result | None = None
    triton: dict[str, Any] | None = None
    triton_stage: Path | None = None
    _reference: tuple[np.ndarray, list[dict[str, float]]] | None = None

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def add(self, artifact: Artifact, note: str = "") -> Artifact:
        """Record ``artifact`` and log it with its size and the time it took."""
        self.artifacts[artifact.name] = artifact
        log_artifact(self.log, artifact.name, artifact.size, artifact.seconds, note)
        return artifact

    def compare(self, candidate: str, precision: str, runner: Runner) -> Comparison:
        """Run ``runner`` on the samples and compare it with PyTorch FP32 (computed once)."""
        batch = self.config.batch[2]
        if self._reference is None:
            reference = run_batched(TorchEngine(self.model, self.preprocess).infer, self.samples, batch)
            self._reference = reference, sample_metrics(self.samples, reference)
        reference, metrics = self._reference
        output = run_batched(runner, self.samples, batch)
        return compare(candidate, precision, reference, output, self.samples, self.config.tolerances, metrics)


Builder = Callable[[ExportContext], None]
Check = Callable[[ExportContext], list[Comparison]]


@dataclass(frozen=True)
class Format:
    """One row of the table (see the module docstring)."""

    name: str
    files: tuple[str, ...]
    summary: str
    build: Builder
    check: Check
    after: tuple[str, ...] = ()
    needs_gpu: bool = False
    needs_calibration: bool = False


# --- builders ------------------------------------------------------------------------------------


def build_onnx(ctx: ExportContext) -> None:
    """``model.onnx``: export, check, onnxslim when outputs stay identical, metadata, check again."""
    path, size, config = ctx.stage / MODEL_ONNX, ctx.image_size, ctx.config
    started = time.perf_counter()
    with atomic_path(path) as tmp:
        graph = onnx_export.export_onnx(ctx.model, tmp, size, config.opset)
        details: dict[str, Any] = {"opset": config.opset, "exporter": "torch.onnx TorchScript (dynamo=False)"}
        if config.simplify:
            graph, report = onnx_export.simplify_onnx(graph, size)
            details["onnxslim"] = dataclasses.asdict(report)
        onnx_export.set_metadata(graph, serving_metadata(ctx.preprocess, ctx.checkpoint_sha256, FP32))
        onnx.save(graph, str(tmp))
        onnx_export.check_onnx(tmp, graph, size, where=path.name)
    ctx.graph = graph
    slim = details.get("onnxslim")
    slim_text = (
        f"; onnxslim {slim['nodes_before']}→{slim['nodes_after']} nodes, "
        f"{size_text(slim['bytes_before'])}→{size_text(slim['bytes_after'])}, "
        f"{'kept' if slim['kept'] else 'not kept'} ({slim['reason']})"
        if slim
        else ""
    )
    artifact = Artifact(MODEL_ONNX, path, time.perf_counter() - started, FP32, details)
    ctx.add(artifact, f"opset {config.opset}{slim_text}")


def build_fp16(ctx: ExportContext) -> None:
    """``model.fp16.onnx`` from the FP32 graph: FP16 compute, float32 inputs and outputs."""
    path, config = ctx.stage / MODEL_FP16_ONNX, ctx.config
    started = time.perf_counter()
    half = fp16_convert.convert_to_fp16(ctx.graph, config.fp16_keep_fp32_ops, config.fp16_keep_sigmoid_inputs)
    onnx_export.set_metadata(half, serving_metadata(ctx.preprocess, ctx.checkpoint_sha256, FP16))
    with atomic_path(path) as tmp:
        onnx.save(half, str(tmp))
        onnx_export.check_onnx(tmp, half, ctx.image_size, where=path.name)
    kept = fp16_convert.count_fp32_nodes(half)
    details = {"opset": config.opset, "io": "float32", "fp32_nodes": kept}
    kept_text = ", ".join(f"{count} {op}" for op, count in sorted(kept.items())) or "none"
    ctx.add(Artifact(MODEL_FP16_ONNX, path, time.perf_counter() - started, FP16, details),
            f"float32 I/O; kept in FP32: {kept_text}")


def build_int8(ctx: ExportContext) -> None:
    """``model.int8.onnx`` + ``parity.int8.json``: static QDQ quantisation of model.onnx (fuse_export.int8)."""
    config = ctx.config
    started = time.perf_counter()
    result = export_int8(ctx.stage, config.calibration_data, config.int8 or Int8Config(), config.parity_data, ctx.log)
    ctx.int8 = result
    details = {key: value for key, value in manifest_entry(result).items() if key != "precision"}
    ctx.artifacts[MODEL_INT8_ONNX] = Artifact(MODEL_INT8_ONNX, result.path, result.seconds, INT8, details)
    report = Artifact(INT8_PARITY_JSON, ctx.stage / INT8_PARITY_JSON, time.perf_counter() - started - result.seconds)
    ctx.add(report, f"{MODEL_INT8_ONNX} against {MODEL_ONNX} on {len(result.parity.pairs)} pairs")


def build_plan(ctx: ExportContext) -> None:
    """``model.plan``: the FP16 TensorRT engine built from model.fp16.onnx (tensorrt_build)."""
    from fuse_export import tensorrt_build

    config = ctx.config
    started = time.perf_counter()
    engine = tensorrt_build.build_engine(
        ctx.stage / MODEL_FP16_ONNX,
        ctx.stage / MODEL_PLAN,
        ctx.image_size,
        config.batch,
        config.workspace_gb,
        config.resolved_timing_cache(),
    )
    ctx.engine = engine
    details = {
        "tensorrt": engine.tensorrt_version,
        "typing": engine.typing,
        "built_from": MODEL_FP16_ONNX,
        "gpu": engine.gpu,
        "workspace_bytes": engine.workspace_bytes,
        "timing_cache": engine.timing_cache,
        "timing_cache_reused": engine.timing_cache_reused,
        "tf32": engine.tf32,
    }
    ctx.add(
        Artifact(MODEL_PLAN, ctx.stage / MODEL_PLAN, time.perf_counter() - started, FP16, details),
        f"TensorRT {engine.tensorrt_version}, {engine.typing}, {engine.gpu['name']} sm "
        f"{engine.gpu['compute_capability']}, timing cache {'reused' if engine.timing_cache_reused else 'new'}",
    )


def build_triton(ctx: ExportContext) -> None:
    """A Triton model repository serving model.plan when this export built it, else model.onnx."""
    from fuse_export import triton

    if ctx.triton_stage is None:
        raise ValueError("the triton format needs a staging folder for its repository")
    served = ctx.artifacts.get(MODEL_PLAN) or ctx.artifacts[MODEL_ONNX]
    inputs, outputs = io_tensors(ctx.image_size)
    started = time.perf_counter()
    ctx.triton = triton.write_model(
        ctx.triton_stage, ctx.config.triton_name, served.path, ctx.config.batch, inputs, outputs,
        ctx.preprocess, ctx.checkpoint_sha256,
    )
    seconds = time.perf_counter() - started
    ctx.triton["seconds"] = round(seconds, 2)
    log_artifact(ctx.log, f"triton/{ctx.config.triton_name}", ctx.triton["bytes"], seconds,
                 f"{ctx.triton['platform']} serving {served.name}, max batch {ctx.config.batch[2]}")


# --- checks --------------------------------------------------------------------------------------


def check_onnx(ctx: ExportContext) -> list[Comparison]:
    return [ctx.compare("onnxruntime-fp32", FP32, onnx_export.cpu_runner(ctx.artifacts[MODEL_ONNX].path))]


def check_fp16(ctx: ExportContext) -> list[Comparison]:
    return [ctx.compare("onnxruntime-fp16", FP16, onnx_export.cpu_runner(ctx.artifacts[MODEL_FP16_ONNX].path))]


def check_plan(ctx: ExportContext) -> list[Comparison]:
    from fuse_export import tensorrt_build

    with tensorrt_build.PlanRunner(ctx.artifacts[MODEL_PLAN].path) as runner:  # one deserialisation, own stream
        return [ctx.compare("tensorrt-fp16", FP16, runner)]


def check_int8(ctx: ExportContext) -> list[Comparison]:
    """INT8 is measured against model.onnx in parity.int8.json (reported, never gated: see int8.py)."""
    return []


def check_triton(ctx: ExportContext) -> list[Comparison]:
    """The repository's model file must be the checked artifact, byte for byte."""
    served = ctx.artifacts[ctx.triton["serves"]]
    if ctx.triton["model_sha256"] != file_sha256(served.path):
        raise FuseError(
            f"the Triton repository's copy of {served.name} differs from the checked file; re-run fuse-export"
        )
    return []


FORMATS: tuple[Format, ...] = (
    Format("onnx", (MODEL_ONNX,), "FP32 ONNX (always written, first)", build_onnx, check_onnx),
    Format("fp16", (MODEL_FP16_ONNX,), "FP16 ONNX with float32 inputs/outputs", build_fp16, check_fp16, ("onnx",)),
    Format("int8", (MODEL_INT8_ONNX, INT8_PARITY_JSON), "INT8 QDQ ONNX for CPUs, needs --calibration-data",
           build_int8, check_int8, ("onnx",), needs_calibration=True),
    Format("plan", (MODEL_PLAN,), "FP16 TensorRT engine, needs an NVIDIA GPU and TensorRT",
           build_plan, check_plan, ("fp16",), needs_gpu=True),
    Format("triton", (), "Triton model repository (--triton DIR, default OUT/triton)", build_triton, check_triton,
           ("onnx",)),
)
FORMAT_NAMES = tuple(f.name for f in FORMATS)
#: Every file fuse-export may write into OUT (manifest.json is named by fuse_runtime.manifest).
ARTIFACT_NAMES = (*(name for f in FORMATS for name in f.files), PARITY_JSON)


def resolve_formats(config: ExportConfig) -> list[Format]:
    """The rows this export builds, in table order: ``config.formats`` plus the aliases (``fp16``:
    fp16 + plan unless ``onnx_only``; ``triton_dir``: triton), onnx, and what each needs first.

    Raises FuseError for an unknown format, a contradiction, or a missing calibration folder.
    """
    unknown = [name for name in config.formats if name not in FORMAT_NAMES]
    if unknown:
        raise FuseError(f"unknown export format {', '.join(unknown)}; choose from {', '.join(FORMAT_NAMES)}")
    wanted = {"onnx", *config.formats}
    if config.fp16:
        wanted |= {"fp16"} if config.onnx_only else {"fp16", "plan"}
    if config.onnx_only and "plan" in config.formats:
        raise FuseError("--onnx-only never builds an engine, but --format plan asks for one; drop one of them")
    if config.triton_dir is not None:
        wanted.add("triton")
    by_name = {f.name: f for f in FORMATS}
    pending = list(wanted)
    while pending:
        for earlier in by_name[pending.pop()].after:
            if earlier not in wanted:
                wanted.add(earlier)
                pending.append(earlier)
    if "int8" in wanted and config.calibration_data is None:
        raise FuseError(
            "--format int8 / --int8 needs --calibration-data DIR: a folder of registered training CT/MRI pairs "
            "to calibrate the INT8 ranges on (e.g. ../shared/data/harvard/ct-mri-train)"
        )
    if "int8" not in wanted and config.calibration_data is not None:
        raise FuseError(
            "--calibration-data is used only with --int8 (--format int8); add it or drop --calibration-data"
        )
    if "int8" in wanted:
        check_calibration_dir(config.calibration_data, config.parity_data)
    return [f for f in FORMATS if f.name in wanted]


def gpu_missing() -> str | None:
    """Why no TensorRT engine can be built here, or None when a CUDA GPU and TensorRT are present."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible on this machine"
    try:
        from fuse_export import tensorrt_build  # noqa: F401
    except ImportError as error:
        return f"TensorRT is not installed here ({error}; {GPU_INSTALL})"
    return None


def serving_metadata(preprocess: PreprocessConfig, checkpoint_sha256: str, precision: str) -> dict[str, str]:
    """ONNX ``metadata_props``: what the runtime needs to serve the graph without a manifest."""
    return {
        META_FORMAT: str(FORMAT_VERSION),
        META_PREPROCESS: json.dumps(preprocess.to_dict(), sort_keys=True),
        META_IMAGE_SIZE: str(preprocess.image_size),
        META_MODALITIES: f"{INPUT_FIRST},{INPUT_SECOND}",
        META_CHECKPOINT_SHA256: checkpoint_sha256,
        META_PRECISION: precision,
    }


def io_tensors(size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs as the manifest (and the Triton config) describe them."""
    def shape(channels: int) -> list[int | str]:
        return [onnx_export.BATCH_AXIS, channels, size, size]

    inputs = [
        {"name": INPUT_FIRST, "shape": shape(3), "dtype": "float32", "range": [0.0, 1.0]},
        {"name": INPUT_SECOND, "shape": shape(1), "dtype": "float32", "range": [0.0, 1.0]},
    ]
    return inputs, [{"name": OUTPUT, "shape": shape(3), "dtype": "float32", "range": [0.0, 1.0]}]


def log_artifact(log: Log, name: str, size: int, seconds: float, note: str = "") -> None:
    """One line per artifact: name, size, seconds and a note."""
    log(f"  {name:<16} {size_text(size):>9} {seconds:6.1f} s" + (f"  ({note})" if note else ""))


def size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
