"""One latency run: models and inputs, every backend's rows, latency.json and latency.md."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency.backends import (
    BACKENDS,
    BY_NAME,
    PLAN_SUFFIXES,
)
from benchmarks.latency.config import LatencyConfig, Row
from benchmarks.latency.control import Log, Run
from benchmarks.latency.machine import cpu_bf16_support, usable_cores
from benchmarks.latency.markdown import PROTOCOL, latency_markdown
from benchmarks.latency.models import (
    artifacts_of,
    count_flops,
    existing_file,
    export_onnx,
    load_inputs,
    reference,
    resolve_data,
)
from benchmarks.report import machine_info, write_json, write_text
from fuse_runtime.errors import FuseError

JSON_NAME = "latency.json"
MARKDOWN_NAME = "latency.md"


def run_latency(
    out: str | Path,
    checkpoint: str | Path | None = None,
    onnx: Sequence[str | Path] = (),
    engine: str | Path | None = None,
    data: str | Path | None = None,
    config: LatencyConfig = LatencyConfig(),
    export_dir: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure every selected backend at every batch size; write ``out/latency.json`` and ``.md``.

    checkpoint: fuse-train ``.pt`` for the PyTorch rows. onnx: ``.onnx`` files (``model.onnx``,
    ``model.int8.onnx``...), each measured on its own. engine: a TensorRT ``model.plan``. At least one
    is needed; all must take the same image size. Given a checkpoint and no ONNX file, ``model.onnx`` is
    exported into ``export_dir`` (default: a temporary folder, deleted afterwards; an existing export
    there is refused, never replaced). data: folder of CT/MRI pairs (default
    ../shared/data/harvard/ct-mri-test). Returns the JSON data. Raises FuseError for missing or
    inconsistent models and data before anything is written to ``out``.
    """
    log = log or _stderr_log
    checkpoint = existing_file(checkpoint, "checkpoint")
    onnx_paths = list(dict.fromkeys(existing_file(path, "onnx") for path in onnx))
    engine = existing_file(engine, "engine")
    if checkpoint is None and not onnx_paths and engine is None:
        raise FuseError(
            "nothing to measure: give --checkpoint RUN/best.pt, --onnx OUT/model.onnx or --engine OUT/model.plan"
        )
    if engine is not None and engine.suffix.lower() not in PLAN_SUFFIXES:
        raise FuseError("--engine takes a TensorRT plan (model.plan); pass an ONNX file with --onnx", engine)
    for path in onnx_paths:
        if path.suffix.lower() != ".onnx":
            raise FuseError("--onnx takes an ONNX file (model.onnx); pass a TensorRT plan with --engine", path)
    data = resolve_data(data)
    threads = config.threads or usable_cores()
    out = Path(out)

    artifacts = artifacts_of(onnx_paths, engine)
    size, preprocess, model, describe = reference(checkpoint, artifacts, config.image_size)
    log(f"latency: {size}×{size} px, batches {','.join(map(str, config.batches))}, {threads} thread(s), data {data}")
    ct, mri, names = load_inputs(data, preprocess, max(config.batches))
    log(f"latency: {len(names)} real slice(s) from {data} as inputs")
    machine = machine_info(threads=threads)
    bf16 = cpu_bf16_support()

    rows: list[Row] = []
    export: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="fuse-latency-") as scratch:
        scratch = Path(scratch)
        wants_onnx = any(BY_NAME[b].files in ("onnx", "onnx+plan") for b in config.backends)
        if not onnx_paths and checkpoint is not None and wants_onnx:
            target = Path(export_dir) if export_dir is not None else scratch / "export"
            export = export_onnx(checkpoint, target, size, data, log)
            export["kept"] = export_dir is not None
            artifacts = [*artifacts_of([target / "model.onnx"], None), *artifacts]
        flops = count_flops(model, artifacts, size)
        del model
        if flops["per_slice"] is not None:
            log(f"latency: {flops['per_slice'] / 1e9:.3f} GFLOP per slice ({flops['method']})")
        inputs = scratch / "inputs.npz"
        np.savez(inputs, ct=ct, mri=mri)
        gpu = bool(machine["gpus"])
        run = Run(checkpoint, artifacts, data, config, threads, inputs, scratch, gpu, progress, log)
        for backend in BACKENDS:
            rows += run.rows_for(backend)
    if flops["per_slice"] is not None:
        for row in rows:
            if row.slices_per_s is not None:
                row.gflop_per_s = flops["per_slice"] * row.slices_per_s / 1e9

    result = {
        "image_size": size,
        "batches": list(config.batches),
        "config": dataclasses.asdict(config),
        "threads": threads,
        "model": describe,
        "onnx": [str(a.path) for a in artifacts if a.path.suffix.lower() == ".onnx"],
        "export": export,
        "data": str(data),
        "inputs": {"slices": len(names), "names": names, "preprocess": preprocess.to_dict()},
        "flops": flops,
        "bf16": dataclasses.asdict(bf16),
        "protocol": PROTOCOL,
        "rows": [dataclasses.asdict(row) for row in rows],
        "command": command,
        "machine": machine,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / JSON_NAME, result)
    write_text(out / MARKDOWN_NAME, latency_markdown(result))
    return result


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
