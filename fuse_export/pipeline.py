"""The whole export: checkpoint → model.onnx (+ model.fp16.onnx, + model.plan) → parity → manifest.

``run_export`` does the work in this order, each file written atomically into OUT and reported with
its size and the time it took:

1. refuse early (FuseError), before OUT is touched: missing checkpoint or parity folder, a vis-ir
   checkpoint; then OUT not writable, or artifacts already in OUT without ``overwrite``;
2. ``model.onnx``: export, check, onnxslim when outputs stay identical, metadata, check again;
3. ``model.fp16.onnx`` (``fp16``): FP16 graph with float32 I/O, checked;
4. ``model.plan`` (``fp16`` without ``onnx_only``): only where a CUDA GPU and TensorRT are present;
   otherwise the reason is returned and the caller decides (fuse-export exits 3);
5. parity of every artifact against PyTorch FP32 → ``parity.json``;
6. ``manifest.json`` with shapes, batch profile, preprocessing, versions, hashes and parity.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from fuse_export import fp16 as fp16_convert
from fuse_export import onnx_export
from fuse_export.config import (
    ARTIFACT_NAMES,
    MODEL_FP16_ONNX,
    MODEL_ONNX,
    MODEL_PLAN,
    PARITY_JSON,
    ExportConfig,
)
from fuse_export.parity import (
    FP16,
    FP32,
    Comparison,
    Samples,
    compare,
    format_table,
    load_samples,
    run_batched,
    sample_metrics,
)
from fuse_runtime.atomic import atomic_path, write_json_atomic
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import (
    FORMAT_VERSION,
    INPUT_FIRST,
    INPUT_SECOND,
    MANIFEST_NAME,
    META_CHECKPOINT_SHA256,
    META_FORMAT,
    META_IMAGE_SIZE,
    META_MODALITIES,
    META_PRECISION,
    META_PREPROCESS,
    OUTPUT,
    Manifest,
    write_manifest,
)
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import file_sha256, load_model
from fuse_train.model import FusionNet

Log = Callable[[str], None]
EXPORT_TASK = "ct-mri"


@dataclass
class Artifact:
    """One file written into OUT."""

    name: str
    path: Path
    seconds: float
    precision: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"bytes": self.size, "sha256": file_sha256(self.path), "seconds": round(self.seconds, 2)}
        if self.precision is not None:
            entry["precision"] = self.precision
        entry.update(self.details)
        return entry


@dataclass
class ExportResult:
    """What ``run_export`` produced; ``engine_skipped`` says why no engine was built when one was asked."""

    out_dir: Path
    artifacts: dict[str, Artifact]
    comparisons: list[Comparison]
    manifest: Manifest
    table: str
    engine_skipped: str | None = None

    @property
    def parity_passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[str]:
        return [failure for c in self.comparisons for failure in c.failures]


def run_export(checkpoint: str | Path, out_dir: str | Path, config: ExportConfig, log: Log = print) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir`` as configured; see the module docstring for the steps.

    Raises FuseError for problems the user can fix. Parity outside tolerance and a skipped engine
    build are not exceptions: they are in the result (``parity_passed``, ``engine_skipped``).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise FuseError("checkpoint not found; give the .pt file a fuse-train run wrote (e.g. RUN/best.pt)", checkpoint)
    if config.parity_data is not None and not Path(config.parity_data).is_dir():
        raise FuseError("parity data folder not found; give a folder of CT/MRI pairs to --parity-data", config.parity_data)
    model, preprocess, info = load_ct_mri_model(checkpoint, config.image_size)
    prepare_out_dir(out_dir, config.overwrite)
    size = preprocess.image_size
    log(f"fuse-export: {checkpoint} ({info['task']}, epoch {info.get('epoch')}) → {out_dir} at {size}×{size} px")

    artifacts: dict[str, Artifact] = {}
    graph = export_fp32(model, out_dir / MODEL_ONNX, preprocess, info["sha256"], config, artifacts, log)
    if config.fp16:
        export_fp16(graph, out_dir / MODEL_FP16_ONNX, preprocess, info["sha256"], config, artifacts, log)
    engine_skipped, engine = None, None
    if config.builds_engine:
        engine_skipped, engine = build_plan(out_dir, size, config, artifacts, log)

    samples = load_samples(config.parity_data, preprocess, config.parity_pairs)
    comparisons = check_parity(model, samples, out_dir, artifacts, config, log)
    table = format_table(comparisons, samples, size)
    started = time.perf_counter()
    parity = parity_record(comparisons, samples, size, config)
    write_json_atomic(out_dir / PARITY_JSON, parity)
    artifacts[PARITY_JSON] = Artifact(PARITY_JSON, out_dir / PARITY_JSON, time.perf_counter() - started)

    if config.overwrite:
        remove_stale(out_dir, artifacts, log)
    manifest = build_manifest(preprocess, config, artifacts, parity, info, engine)
    write_manifest(out_dir / MANIFEST_NAME, manifest)
    log(f"  {MANIFEST_NAME:<16} {_size_text((out_dir / MANIFEST_NAME).stat().st_size):>9}")
    return ExportResult(out_dir, artifacts, comparisons, manifest, table, engine_skipped)


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create OUT, make sure it is writable and holds no earlier export unless ``overwrite``
    (then the earlier manifest.json is removed at once: it no longer describes what OUT holds)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise FuseError(f"cannot write into the output folder ({reason}); choose a writable --out", out_dir) from None
    existing = [name for name in (*ARTIFACT_NAMES, MANIFEST_NAME) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FuseError(
            f"already holds {', '.join(existing)} from an earlier export; pass --overwrite to replace "
            "them or choose another --out",
            out_dir,
        )
    # The old manifest describes files about to be replaced; never leave it beside the new ones.
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


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


def export_fp32(
    model: FusionNet,
    path: Path,
    preprocess: PreprocessConfig,
    checkpoint_sha256: str,
    config: ExportConfig,
    artifacts: dict[str, Artifact],
    log: Log,
) -> onnx.ModelProto:
    """Write ``model.onnx``; returns the graph as saved (simplified when that was kept)."""
    size = preprocess.image_size
    started = time.perf_counter()
    with atomic_path(path) as tmp:
        graph = onnx_export.export_onnx(model, tmp, size, config.opset)
        details: dict[str, Any] = {"opset": config.opset, "exporter": "torch.onnx TorchScript (dynamo=False)"}
        if config.simplify:
            graph, report = onnx_export.simplify_onnx(graph, size)
            details["onnxslim"] = dataclasses.asdict(report)
        onnx_export.set_metadata(graph, serving_metadata(preprocess, checkpoint_sha256, FP32))
        onnx.save(graph, str(tmp))
        onnx_export.check_onnx(tmp, graph, size, where=path)
    artifact = Artifact(MODEL_ONNX, path, time.perf_counter() - started, FP32, details)
    artifacts[MODEL_ONNX] = artifact
    slim = details.get("onnxslim")
    slim_text = (
        f"; onnxslim {slim['nodes_before']}→{slim['nodes_after']} nodes, "
        f"{_size_text(slim['bytes_before'])}→{_size_text(slim['bytes_after'])}, "
        f"{'kept' if slim['kept'] else 'not kept'} ({slim['reason']})"
        if slim
        else ""
    )
    log(f"  {MODEL_ONNX:<16} {_size_text(artifact.size):>9} {artifact.seconds:6.1f} s  (opset {config.opset}{slim_text})")
    return graph


def export_fp16(
    graph: onnx.ModelProto,
    path: Path,
    preprocess: PreprocessConfig,
    checkpoint_sha256: str,
    config: ExportConfig,
    artifacts: dict[str, Artifact],
    log: Log,
) -> None:
    """Write ``model.fp16.onnx`` from the FP32 graph."""
    started = time.perf_counter()
    half = fp16_convert.convert_to_fp16(graph, config.fp16_keep_fp32_ops, config.fp16_keep_sigmoid_inputs)
    onnx_export.set_metadata(half, serving_metadata(preprocess, checkpoint_sha256, FP16))
    with atomic_path(path) as tmp:
        onnx.save(half, str(tmp))
        onnx_export.check_onnx(tmp, half, preprocess.image_size, where=path)
    kept = fp16_convert.count_fp32_nodes(half)
    details = {"opset": config.opset, "io": "float32", "fp32_nodes": kept}
    artifact = Artifact(MODEL_FP16_ONNX, path, time.perf_counter() - started, FP16, details)
    artifacts[MODEL_FP16_ONNX] = artifact
    kept_text = ", ".join(f"{count} {op}" for op, count in sorted(kept.items())) or "none"
    log(
        f"  {MODEL_FP16_ONNX:<16} {_size_text(artifact.size):>9} {artifact.seconds:6.1f} s  "
        f"(float32 I/O; kept in FP32: {kept_text})"
    )


def build_plan(
    out_dir: Path, size: int, config: ExportConfig, artifacts: dict[str, Artifact], log: Log
) -> tuple[str | None, Any]:
    """Build ``model.plan`` when a CUDA GPU and TensorRT are here; else return why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible on this machine", None
    try:
        from fuse_export import tensorrt_build
    except ImportError as error:
        return f"TensorRT is not installed here ({error}; pip install 'fuse[gpu]')", None
    started = time.perf_counter()
    engine = tensorrt_build.build_engine(
        out_dir / MODEL_FP16_ONNX,
        out_dir / MODEL_PLAN,
        size,
        config.batch,
        config.workspace_gb,
        config.resolved_timing_cache(),
    )
    details = {
        "tensorrt": engine.tensorrt_version,
        "typing": engine.typing,
        "built_from": MODEL_FP16_ONNX,
        "gpu": engine.gpu,
        "workspace_bytes": engine.workspace_bytes,
        "timing_cache": engine.timing_cache,
        "timing_cache_reused": engine.timing_cache_reused,
    }
    artifact = Artifact(MODEL_PLAN, out_dir / MODEL_PLAN, time.perf_counter() - started, FP16, details)
    artifacts[MODEL_PLAN] = artifact
    log(
        f"  {MODEL_PLAN:<16} {_size_text(artifact.size):>9} {artifact.seconds:6.1f} s  "
        f"(TensorRT {engine.tensorrt_version}, {engine.typing}, {engine.gpu['name']} sm {engine.gpu['compute_capability']}, "
        f"timing cache {'reused' if engine.timing_cache_reused else 'new'})"
    )
    return None, engine


def check_parity(
    model: FusionNet,
    samples: Samples,
    out_dir: Path,
    artifacts: dict[str, Artifact],
    config: ExportConfig,
    log: Log,
) -> list[Comparison]:
    """Run PyTorch FP32 and every written artifact on the samples and compare."""
    batch = config.batch[2]
    with torch.no_grad():
        reference = run_batched(
            lambda ct, mri: model(torch.from_numpy(ct), torch.from_numpy(mri)).numpy(), samples, batch
        )
    reference_metrics = sample_metrics(samples, reference)
    candidates: list[tuple[str, str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = [
        ("onnxruntime-fp32", FP32, _ort_runner(out_dir / MODEL_ONNX))
    ]
    if MODEL_FP16_ONNX in artifacts:
        candidates.append(("onnxruntime-fp16", FP16, _ort_runner(out_dir / MODEL_FP16_ONNX)))
    if MODEL_PLAN in artifacts:
        from fuse_export import tensorrt_build

        plan = out_dir / MODEL_PLAN
        candidates.append(("tensorrt-fp16", FP16, lambda ct, mri: tensorrt_build.run_engine(plan, ct, mri)))
    comparisons = []
    for name, precision, runner in tqdm(candidates, desc="parity", unit="model", leave=False):
        output = run_batched(runner, samples, batch)
        comparisons.append(compare(name, precision, reference, output, samples, config.tolerances, reference_metrics))
    return comparisons


def serving_metadata(preprocess: PreprocessConfig, checkpoint_sha256: str, precision: str) -> dict[str, str]:
    """ONNX ``metadata_props``: what the runtime needs to serve the graph without a manifest."""
    return {
        META_FORMAT: str(FORMAT_VERSION),
        META_PREPROCESS: json.dumps(preprocess.to_dict(), sort_keys=True),
        META_IMAGE_SIZE: str(preprocess.image_size),
        META_MODALITIES: ",".join((INPUT_FIRST, INPUT_SECOND)),
        META_CHECKPOINT_SHA256: checkpoint_sha256,
        META_PRECISION: precision,
    }


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
    artifacts: dict[str, Artifact],
    parity: dict[str, Any],
    info: dict[str, Any],
    engine: Any,
) -> Manifest:
    size = preprocess.image_size
    low, opt, high = config.batch
    return Manifest(
        image_size=size,
        preprocess=preprocess,
        precision=FP16 if MODEL_PLAN in artifacts else FP32,
        modalities=(INPUT_FIRST, INPUT_SECOND),
        batch={"min": low, "opt": opt, "max": high},
        inputs=[
            {"name": INPUT_FIRST, "shape": _shape(3, size), "dtype": "float32", "range": [0.0, 1.0]},
            {"name": INPUT_SECOND, "shape": _shape(1, size), "dtype": "float32", "range": [0.0, 1.0]},
        ],
        outputs=[{"name": OUTPUT, "shape": _shape(3, size), "dtype": "float32", "range": [0.0, 1.0]}],
        versions=versions(engine),
        artifacts={name: artifact.describe() for name, artifact in artifacts.items()},
        gpu=engine.gpu if engine is not None else None,
        parity={
            "passed": parity["passed"],
            "pairs": len(parity["pairs"]),
            "source": parity["source"],
            "tolerances": parity["tolerances"],
            "results": {
                name: {key: result[key] for key in ("max_abs", "mean_abs", "psnr_db", "metric_diff", "passed")}
                for name, result in parity["results"].items()
            },
        },
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


def remove_stale(out_dir: Path, artifacts: dict[str, Artifact], log: Log) -> None:
    """With ``overwrite``: delete artifacts of an earlier export that this one did not rewrite."""
    for name in ARTIFACT_NAMES:
        path = out_dir / name
        if name not in artifacts and path.exists():
            path.unlink()
            log(f"  removed {name} left by an earlier export (it no longer matches {MODEL_ONNX})")


def _shape(channels: int, size: int) -> list[int | str]:
    return [onnx_export.BATCH_AXIS, channels, size, size]


def _ort_runner(path: Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    session = onnx_export.cpu_session(path)
    return lambda ct, mri: np.asarray(session.run([OUTPUT], {INPUT_FIRST: ct, INPUT_SECOND: mri})[0], np.float32)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
