"""Latency, throughput and memory of the fusion model per backend and batch size.

    python -m benchmarks.latency --checkpoint RUN/best.pt --batch 1,4,8 --out R
    python -m benchmarks.latency --onnx OUT/model.onnx --onnx OUT/model.int8.onnx [--engine OUT/model.plan] --out R

writes ``R/latency.json`` (every row with its timings, memory and details, the FLOP count, the
inputs, the machine) and ``R/latency.md`` (one table row per backend, model file and batch size).

Backends, each measured in a fresh process so its peak resident memory is its own:

* ``pytorch-eager``: the checkpoint's FusionNet, FP32 (CUDA when PyTorch sees a GPU, else CPU);
* ``pytorch-autocast``: the same under ``torch.autocast``: fp16 on CUDA, bf16 on the CPU. A CPU
  without native bf16 (AVX512-BF16 / AMX-BF16 / Arm BF16) emulates it, many times slower than FP32,
  so there it runs only batches up to ``emulated_bf16_max_batch``, with at most
  ``emulated_bf16_iters`` timed calls, and is labelled "emulated";
* ``pytorch-compile``: ``torch.compile`` (inductor); the first call compiles and is never timed; a
  failure, or a process that outlives ``compile_timeout_s``, becomes the row's reason;
* ``onnxruntime-cpu`` / ``onnxruntime-cuda``: ``fuse_runtime.engines`` on every ``--onnx`` file
  (one set of rows per file, labelled with its name); with only a checkpoint, ``model.onnx`` is
  exported from it with ``fuse_export.pipeline.run_export``;
* ``openvino-cpu``: the OpenVINO engine (``fuse-ctmri[openvino]``) on every ``--onnx`` file: bf16 where the
  CPU computes it natively (AVX512-BF16/AMX), else f32; an INT8 QDQ file runs OpenVINO's int8 kernels;
* ``tensorrt``: ``fuse_runtime.engines`` on ``--engine model.plan``, GPU only;
* ``fuse-run`` / ``fuse-run-openvino``: the serving CLI end to end (read → preprocess → infer →
  restore → write PNG) over every pair of ``--data``, once per model file and batch size, with its
  default backend or ``--backend openvino``; throughput from its ``report.json``.

A backend that cannot run here (no model for it, no GPU, a library missing) gets one row saying why.

Timing protocol: the inputs are real pairs from ``--data`` preprocessed with the model's own
settings (cycled when a batch is larger than the number of pairs). One call = host float32 arrays
in → host float32 fused array out, so GPU rows include both copies and the clock is read only after
the result is on the host. After ``warmup`` untimed calls, ``iters`` timed calls give p50/p95/p99
(linear interpolation) and the mean; slices/s = batch / mean latency; GFLOP/s = counted FLOPs per
slice (``benchmarks.flops``) × slices/s.

The ONNX Runtime and fuse-run processes never import PyTorch, so their memory is what a
PyTorch-free server uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np
from tqdm import tqdm

from benchmarks.report import command_line, machine_info, machine_markdown, markdown_table, write_json, write_text
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import META_PRECISION
from fuse_runtime.report import REPORT_NAME

JSON_NAME = "latency.json"
MARKDOWN_NAME = "latency.md"

BACKENDS: tuple[str, ...] = (
    "pytorch-eager",
    "pytorch-autocast",
    "pytorch-compile",
    "onnxruntime-cpu",
    "onnxruntime-cuda",
    "openvino-cpu",
    "tensorrt",
    "fuse-run",
    "fuse-run-openvino",
)
"""Every backend, in table order."""
TORCH_BACKENDS = ("pytorch-eager", "pytorch-autocast", "pytorch-compile")
TORCH_PRECISIONS = {"pytorch-eager": "fp32", "pytorch-autocast": "fp16 (cuda) / bf16 (cpu)", "pytorch-compile": "fp32"}
"""What a PyTorch row's precision is before its process says (it decides cuda or cpu)."""
ONNX_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "openvino-cpu")
FUSE_RUN_BACKENDS = {"fuse-run": "auto", "fuse-run-openvino": "openvino"}
"""fuse-run rows and the ``--backend`` each passes. ``fuse-run`` also names ``--provider`` (cpu, or auto on a
GPU), which makes auto pick ONNX Runtime for a .onnx (TensorRT for a .plan), so that row stays ONNX Runtime."""
PLAN_SUFFIXES = (".plan", ".engine")

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of CPUs that compute in bf16 natively (x86 AVX512-BF16 / AMX, Arm BF16)."""
SIMD_FLAGS = ("avx512f", "avx2", "avx", "sse4_2", "asimd")
"""Widest-first SIMD flags, to name what a CPU without native bf16 has instead."""

MIB = 2**20
NVIDIA_SMI_TIMEOUT_S = 10.0

PROTOCOL = (
    "One call = host float32 inputs ct [N,3,S,S] + mri [N,1,S,S] → host float32 fused [N,3,S,S] "
    "(GPU rows include both copies; the clock is read after the result is on the host). After the "
    "warm-up calls, p50/p95/p99 are percentiles (linear interpolation) of the timed calls in ms per "
    "batch; slices/s = batch / mean latency; GFLOP/s = counted FLOPs per slice × slices/s. RSS: "
    "peak resident memory (VmHWM) of the fresh process that ran the backend, after loading the model "
    "(load) and after the batches so far, run in ascending order (peak). GPU peak: PyTorch's allocator "
    "peak for PyTorch rows, the process's memory per nvidia-smi for the others. fuse-run rows: the CLI "
    "end to end (read → preprocess → infer → restore → write PNG) over every pair, throughput from its "
    "report.json, RSS of the whole CLI process."
)

# Runs the fuse-run CLI and, at exit, writes its own peak RSS in KiB (VmHWM) to the file named by its
# first argument. VmHWM, not getrusage: Linux carries the parent's peak into ru_maxrss across exec.
FUSE_RUN_MAIN = """
import atexit, pathlib, sys
peak_file = pathlib.Path(sys.argv.pop(1))
def write_peak():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak_file.write_text(line.split()[1])
atexit.register(write_peak)
sys.argv[0] = "fuse-run"
from fuse_runtime.cli import main
main()
"""
WORKER_MAIN = "import sys; from benchmarks.latency import _worker_main; _worker_main(sys.argv[1])"

Status = Literal["ok", "skipped", "failed"]
Log = Callable[[str], None]


@dataclass(frozen=True)
class LatencyConfig:
    """What to measure and how.

    batches: batch sizes (slices per call), measured in ascending order.
    image_size: model input size in pixels (a multiple of 32); None: the model's own (the ONNX
        file's or plan's, else the checkpoint's training preprocessing, 256 by design).
    warmup: untimed calls per backend and batch before timing (torch.compile always gets one).
    iters: timed calls per backend and batch.
    threads: CPU threads for PyTorch, ONNX Runtime and fuse-run; None: every usable core.
    backends: which of ``BACKENDS`` to run; the others get a "not selected" row.
    emulated_bf16_max_batch, emulated_bf16_iters: largest batch and most timed calls for bf16 autocast
        on a CPU without native bf16 (at 256 px one call there takes tens of seconds).
    compile_timeout_s: wall-clock limit of the torch.compile process (compilation included), s.
    timeout_s: wall-clock limit of every other backend's process (and of each fuse-run), s.
    """

    batches: tuple[int, ...] = (1, 4, 8, 16, 32)
    image_size: int | None = None
    warmup: int = 1
    iters: int = 5
    threads: int | None = None
    backends: tuple[str, ...] = BACKENDS
    emulated_bf16_max_batch: int = 1
    emulated_bf16_iters: int = 1
    compile_timeout_s: float = 900.0
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if not self.batches or any(int(b) != b or b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive integers, got {self.batches}")
        object.__setattr__(self, "batches", tuple(sorted({int(b) for b in self.batches})))
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 32):
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("iters", "emulated_bf16_max_batch", "emulated_bf16_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for name in ("compile_timeout_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 s, got {getattr(self, name)}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise ValueError(f"backends must be some of {', '.join(BACKENDS)}, got {list(self.backends)}")


@dataclass
class Row:
    """One table row: a backend on one model file at one batch size (batch None: not run at all)."""

    backend: str
    label: str
    precision: str
    device: str
    batch: int | None
    status: Status = "ok"
    reason: str | None = None
    model: str | None = None
    warmup: int = 0
    iterations: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    slices_per_s: float | None = None
    gflop_per_s: float | None = None
    setup_rss_mib: float | None = None
    peak_rss_mib: float | None = None
    peak_device_mib: float | None = None
    threads: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bf16Support:
    """Whether this CPU computes bf16 natively, and the words for the report."""

    native: bool
    description: str


@dataclass(frozen=True)
class _Artifact:
    """An exported model file: where, its label in the table, its precision and input size."""

    path: Path
    name: str
    precision: str
    image_size: int
    preprocess: Any


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
    checkpoint = _existing_file(checkpoint, "checkpoint")
    onnx_paths = list(dict.fromkeys(_existing_file(path, "onnx") for path in onnx))
    engine = _existing_file(engine, "engine")
    if checkpoint is None and not onnx_paths and engine is None:
        raise FuseError(
            "nothing to measure: give --checkpoint RUN/best.pt, --onnx OUT/model.onnx or --engine OUT/model.plan"
        )
    if engine is not None and engine.suffix.lower() not in PLAN_SUFFIXES:
        raise FuseError("--engine takes a TensorRT plan (model.plan); pass an ONNX file with --onnx", engine)
    for path in onnx_paths:
        if path.suffix.lower() != ".onnx":
            raise FuseError("--onnx takes an ONNX file (model.onnx); pass a TensorRT plan with --engine", path)
    data = _resolve_data(data)
    threads = config.threads or _usable_cores()
    out = Path(out)

    artifacts = _artifacts(onnx_paths, engine)
    size, preprocess, model, describe = _reference(checkpoint, artifacts, config.image_size)
    log(f"latency: {size}×{size} px, batches {','.join(map(str, config.batches))}, {threads} thread(s), data {data}")
    ct, mri, names = load_inputs(data, preprocess, max(config.batches))
    log(f"latency: {len(names)} real slice(s) from {data} as inputs")
    machine = machine_info(threads=threads)
    bf16 = cpu_bf16_support()

    rows: list[Row] = []
    export: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="fuse-latency-") as scratch:
        scratch = Path(scratch)
        wants_onnx = any(b in config.backends for b in (*ONNX_BACKENDS, *FUSE_RUN_BACKENDS))
        if not onnx_paths and checkpoint is not None and wants_onnx:
            target = Path(export_dir) if export_dir is not None else scratch / "export"
            export = _export_onnx(checkpoint, target, size, data, log)
            export["kept"] = export_dir is not None
            artifacts = [*_artifacts([target / "model.onnx"], None), *artifacts]
        flops = _count_flops(model, artifacts, size)
        del model
        if flops["per_slice"] is not None:
            log(f"latency: {flops['per_slice'] / 1e9:.3f} GFLOP per slice ({flops['method']})")
        inputs = scratch / "inputs.npz"
        np.savez(inputs, ct=ct, mri=mri)
        gpu = bool(machine["gpus"])
        run = _Run(checkpoint, artifacts, data, config, threads, inputs, scratch, gpu, progress, log)
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


def load_inputs(data: str | Path, preprocess: Any, count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read and preprocess up to ``count`` slices from the CT/MRI pairs in ``data``, in name order.

    Returns ``ct`` float32 [P,3,S,S], ``mri`` float32 [P,1,S,S] in [0,1] and the slice names
    (``pair`` or ``pair#slice``), P <= count. Raises FuseError when no pair can be used.
    """
    from fuse_runtime.pairing import find_pairs, load_pair
    from fuse_runtime.preprocess import prepare_pair

    cts, mris, names, problems = [], [], [], []
    for pair in find_pairs(data, task="ct-mri").pairs:
        if len(names) >= count:
            break
        try:
            prepared = prepare_pair(*load_pair(pair), pair.roles, preprocess)
        except FuseError as error:
            problems.append(f"{pair.name}: {error}")
            continue
        slices = prepared.first.shape[0]
        take = min(slices, count - len(names))
        cts.append(prepared.first[:take])
        mris.append(prepared.second[:take])
        names += [pair.name if slices == 1 else f"{pair.name}#{i}" for i in range(take)]
    if not names:
        reasons = "; ".join(problems[:3]) or "no CT/MRI pairs found"
        raise FuseError(f"no usable CT/MRI pair for the latency inputs ({reasons})", data)
    return np.concatenate(cts).astype(np.float32), np.concatenate(mris).astype(np.float32), names


def batch_inputs(ct: np.ndarray, mri: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``batch`` slices taken in order from ``ct``/``mri``, cycling when there are fewer."""
    index = np.arange(batch) % ct.shape[0]
    return np.ascontiguousarray(ct[index]), np.ascontiguousarray(mri[index])


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Per-call times in seconds → p50/p95/p99/mean/min in ms and slices/s (= batch / mean)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timed calls")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    mean = float(ms.mean())
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "slices_per_s": batch * 1e3 / mean,
    }


def cpu_bf16_support(cpuinfo: str | Path = "/proc/cpuinfo") -> Bf16Support:
    """Does this CPU have native bf16 arithmetic (AVX512-BF16, AMX-BF16, Arm BF16)? Read from its flags."""
    flags = _cpu_flags(Path(cpuinfo))
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if native:
        return Bf16Support(True, f"native bf16 ({', '.join(native)})")
    widest = next((flag for flag in SIMD_FLAGS if flag in flags), "none found")
    return Bf16Support(
        False,
        f"emulated: the CPU has no AVX512-BF16/AMX-BF16 (widest SIMD: {widest}), so bf16 runs through "
        "conversions and is much slower than FP32",
    )


def latency_markdown(result: dict[str, Any]) -> str:
    """The Markdown report: setup, FLOPs, one row per backend, model file and batch, protocol, machine."""
    headers = [
        "backend", "precision", "device", "batch", "iters", "p50 ms", "p95 ms", "p99 ms", "slices/s",
        "GFLOP/s", "RSS load MiB", "RSS peak MiB", "GPU peak MiB", "note",
    ]
    rows = [
        [
            row["label"], row["precision"], row["device"], row["batch"], row["iterations"] or None,
            row["p50_ms"], row["p95_ms"], row["p99_ms"], row["slices_per_s"], row["gflop_per_s"],
            _round(row["setup_rss_mib"]), _round(row["peak_rss_mib"]), _round(row["peak_device_mib"]),
            _note(row),
        ]
        for row in result["rows"]
    ]
    size, flops = result["image_size"], result["flops"]
    if flops["per_slice"] is not None:
        cross = flops.get("onnx_per_slice")
        flops_text = (
            f"FLOPs per slice at {size}×{size}: **{flops['per_slice'] / 1e9:.3f} GFLOP** ({flops['method']}"
            + (f"; the ONNX graph counts {cross / 1e9:.3f} GFLOP" if cross is not None else "")
            + f"; {flops['convention']})."
        )
    else:
        flops_text = f"FLOPs per slice: not counted ({flops['reason']})."
    lines = [
        "# Latency and throughput",
        "",
        f"Model: {result['model']['label']}; input {size}×{size} px; {result['threads']} CPU thread(s); "
        f"inputs: {result['inputs']['slices']} real slice(s) from `{result['data']}` preprocessed with "
        "the model's settings (cycled to fill larger batches).",
        "",
        flops_text,
        "",
        f"CPU bf16: {result['bf16']['description']}.",
        "",
    ]
    export = result.get("export")
    if export:
        where = f"kept in `{export['dir']}`" if export["kept"] else "in a temporary folder"
        lines += [
            f"ONNX rows: `model.onnx` exported from the checkpoint for this run with fuse_export "
            f"({export['seconds']:.1f} s, parity {'passed' if export['parity_passed'] else 'FAILED'}), {where}.",
            "",
        ]
    lines += [markdown_table(headers, rows), "", PROTOCOL]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    lines += ["", "## Machine", "", machine_markdown(result["machine"])]
    return "\n".join(lines)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,4,8"`` → ``(1, 4, 8)``; raises FuseError for anything but positive integers."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise FuseError(f"--batch must be positive integers separated by commas such as 1,4,8, got {text!r}")
    return values


def parse_backends(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of backend names → a tuple; raises FuseError for unknown names."""
    if text.strip() == "all":
        return BACKENDS
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise FuseError(
            f"--backends: unknown {', '.join(unknown) or 'empty list'}; choose from all, {', '.join(BACKENDS)}"
        )
    return names


# --- one run: what each backend can do here, and running it ------------------------------------------


@dataclass
class _Run:
    """What one run measures (models, data, settings) and where its scratch files go."""

    checkpoint: Path | None
    artifacts: list[_Artifact]
    data: Path
    config: LatencyConfig
    threads: int
    inputs: Path
    scratch: Path
    gpu: bool
    progress: bool
    log: Log

    def rows_for(self, backend: str) -> list[Row]:
        """Every row of ``backend``: measured, or one row saying why it did not run."""
        if backend not in self.config.backends:
            return [Row(backend, backend, "–", "–", None, "skipped", "not selected (--backends)")]
        reason = self._unavailable(backend)
        if reason is not None:
            self.log(f"latency: {backend}: skipped ({reason})")
            return [Row(backend, backend, "–", "–", None, "skipped", reason)]
        if backend in TORCH_BACKENDS:
            return self._worker_rows(backend, self.checkpoint, None)
        rows = []
        for artifact in self._artifacts_for(backend):
            if backend in FUSE_RUN_BACKENDS:
                rows += [self._fuse_run(backend, artifact, batch) for batch in self.config.batches]
            else:
                rows += self._worker_rows(backend, artifact.path, artifact)
        return rows

    def _artifacts_for(self, backend: str) -> list[_Artifact]:
        plans = [a for a in self.artifacts if a.path.suffix.lower() in PLAN_SUFFIXES]
        onnx = [a for a in self.artifacts if a not in plans]
        if backend == "tensorrt":
            return plans
        if backend == "fuse-run":
            return onnx + (plans if self.gpu and _has_module("tensorrt") else [])
        return onnx

    def _unavailable(self, backend: str) -> str | None:
        """Why ``backend`` cannot run here, or None."""
        if backend in TORCH_BACKENDS:
            return None if self.checkpoint is not None else "needs --checkpoint (a fuse-train .pt)"
        if not self._artifacts_for(backend):
            if backend == "tensorrt":
                return "needs --engine model.plan (built by fuse-export --fp16 on a GPU)"
            return "needs --onnx, or --checkpoint to export one"
        if backend == "onnxruntime-cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "this onnxruntime has no CUDAExecutionProvider (pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13]) on a GPU machine)"
        if backend in ("onnxruntime-cuda", "tensorrt") and not self.gpu:
            return "no NVIDIA GPU visible (nvidia-smi lists none)"
        if backend == "tensorrt" and not _has_module("tensorrt"):
            return "TensorRT is not installed (pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13]))"
        if backend in ("openvino-cpu", "fuse-run-openvino") and not _has_module("openvino"):
            return "OpenVINO is not installed (pip install 'fuse-ctmri[openvino]')"
        return None

    def _worker_rows(self, backend: str, model: Path | None, artifact: _Artifact | None) -> list[Row]:
        """Run one backend on one model in a fresh process; one row per batch (failed ones say why)."""
        label = backend if artifact is None else f"{backend} {artifact.name}"
        tag = label.replace(" ", "_").replace("/", "_")
        results = self.scratch / f"{tag}.jsonl"
        spec = {
            "backend": backend, "model": str(model), "batches": list(self.config.batches),
            "warmup": self.config.warmup, "iters": self.config.iters, "threads": self.threads,
            "emulated_bf16_max_batch": self.config.emulated_bf16_max_batch,
            "emulated_bf16_iters": self.config.emulated_bf16_iters,
            "inputs": str(self.inputs), "results": str(results), "progress": self.progress,
            "file_precision": artifact.precision if artifact is not None else None,
        }
        spec_path = self.scratch / f"{tag}.json"
        spec_path.write_text(json.dumps(spec))
        timeout = self.config.compile_timeout_s if backend == "pytorch-compile" else self.config.timeout_s
        self.log(f"latency: {label}: batches {','.join(map(str, self.config.batches))} in a fresh process")
        code = _run_child([sys.executable, "-c", WORKER_MAIN, str(spec_path)], timeout, output=None)

        records = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
        setup = next((r["setup"] for r in records if "setup" in r), {})
        failure = next((r["failed"] for r in records if "failed" in r), None)
        if code is None:
            option = "--compile-timeout" if backend == "pytorch-compile" else "--timeout"
            failure = f"did not finish within {timeout:g} s (raise {option})"
        elif code != 0 and failure is None:
            failure = f"the process ended with exit code {code} (out of memory?)"
        precision = setup.get("precision") or (artifact.precision if artifact else TORCH_PRECISIONS[backend])
        base = {
            "backend": backend, "label": label, "precision": precision, "device": setup.get("device", "–"),
            "model": artifact.name if artifact else model.name if model else None, "threads": self.threads,
            "setup_rss_mib": setup.get("rss_mib"),
        }
        rows = []
        for record in (r["row"] for r in records if "row" in r):
            details = {**setup.get("details", {}), **record.pop("details", {})}
            rows.append(Row(**base, **record, details=details))
        measured = {row.batch for row in rows}
        reason = failure or "not measured"
        details = setup.get("details", {})
        rows += [
            Row(**base, batch=batch, status="failed", reason=reason, details=details)
            for batch in self.config.batches
            if batch not in measured
        ]
        return sorted(rows, key=lambda row: row.batch)

    def _fuse_run(self, backend: str, artifact: _Artifact, batch: int) -> Row:
        """Run ``fuse-run`` once over the data into a temporary folder; the row comes from its report.json."""
        label = f"{backend} {artifact.name}"
        row = Row(backend, label, artifact.precision, "–", batch, model=artifact.name, threads=self.threads)
        self.log(f"latency: {label}: batch {batch} over {self.data}")
        with tempfile.TemporaryDirectory(prefix="fuse-run-", dir=self.scratch) as tmp:
            out, peak_file, log_path = Path(tmp) / "out", Path(tmp) / "peak_rss_kib", Path(tmp) / "fuse-run.log"
            arguments = [
                "--engine", str(artifact.path), "--in", str(self.data), "--out", str(out),
                "--batch-size", str(batch), "--threads", str(self.threads),
                "--provider", "auto" if self.gpu and backend == "fuse-run" else "cpu",
                "--backend", FUSE_RUN_BACKENDS[backend], "--quiet",
            ]
            started = time.perf_counter()
            command = [sys.executable, "-c", FUSE_RUN_MAIN, str(peak_file), *arguments]
            code = _run_child(command, self.config.timeout_s, log_path)
            wall = time.perf_counter() - started
            if peak_file.is_file():
                row.peak_rss_mib = int(peak_file.read_text()) * 1024 / MIB
            report_path = out / REPORT_NAME
            if code is None:
                row.status = "failed"
                row.reason = f"fuse-run did not finish within {self.config.timeout_s:g} s (raise --timeout)"
                return row
            if not report_path.is_file():
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                row.status, row.reason = "failed", f"fuse-run exited with {code}: {tail[0]}"
                return row
            report = json.loads(report_path.read_text())
        totals = report["totals"]
        if not totals["ok"]:
            row.status = "failed"
            row.reason = f"fuse-run fused no pair ({totals['failures']} failed; see its {REPORT_NAME})"
            return row
        pair_ms = [p["seconds"] * 1e3 for p in report["pairs"] if p["status"] == "ok"]
        row.iterations = 1
        row.slices_per_s = totals["slices_per_second"] or None
        row.device = report.get("provider") or row.device
        if backend == "fuse-run-openvino":
            row.precision = _openvino_precision(artifact.precision, report.get("engine") or "")
        row.details = {
            "pairs": totals["pairs"],
            "ok": totals["ok"],
            "failures": totals["failures"],
            "slices": totals["slices"],
            "wall_seconds": totals["wall_seconds"],
            "pairs_per_second": totals["pairs_per_second"],
            "process_seconds": round(wall, 3),
            "provider": report.get("provider"),
            "engine": report.get("engine"),
            "pair_latency_p50_ms": float(np.percentile(pair_ms, 50)),
            "pair_latency_p95_ms": float(np.percentile(pair_ms, 95)),
            "command": "fuse-run " + " ".join(shlex.quote(part) for part in arguments),
        }
        if totals["failures"]:
            row.reason = f"{totals['failures']} pair(s) failed in fuse-run (see its {REPORT_NAME})"
        return row


def _run_child(command: list[str], timeout_s: float, output: Path | None) -> int | None:
    """Run ``command`` in its own session (stdout+stderr to ``output``, or inherited when None).

    Returns its exit code, or None when it outlived ``timeout_s`` and was killed together with every
    process it started (torch.compile's compile workers)."""
    with open(output, "wb") if output is not None else contextlib.nullcontext() as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# --- inside a backend's process --------------------------------------------------------------------


@dataclass
class _Runner:
    """An opened backend inside its worker process."""

    infer: Callable[[np.ndarray, np.ndarray], np.ndarray]
    device: str
    precision: str
    details: dict[str, Any] = field(default_factory=dict)
    reset_device_peak: Callable[[], None] = lambda: None
    device_peak_mib: Callable[[], float | None] = lambda: None
    close: Callable[[], None] = lambda: None


def _worker_main(spec_path: str) -> None:
    """Entry point of a backend's process: open the backend, time every batch, append one JSON line
    per result to the spec's ``results`` file (``setup``, then ``row`` per batch, or ``failed``)."""
    spec = json.loads(Path(spec_path).read_text())

    def send(record: dict[str, Any]) -> None:
        with open(spec["results"], "a", encoding="utf-8") as results:
            results.write(json.dumps(record) + "\n")

    try:
        runner = _open_backend(spec)
    except Exception as error:  # any failure to start a backend is its rows' reason, not a crash
        traceback.print_exc()
        send({"failed": _reason(error)})
        return
    batches, skipped = spec["batches"], []
    if runner.precision == "bf16 (emulated)":
        limit = spec["emulated_bf16_max_batch"]
        batches, skipped = [b for b in batches if b <= limit], [b for b in batches if b > limit]
        spec["iters"] = min(spec["iters"], spec["emulated_bf16_iters"])
    send({"setup": {"rss_mib": _peak_rss_mib(), "device": runner.device, "precision": runner.precision,
                    "details": runner.details}})
    with np.load(spec["inputs"]) as inputs:
        ct, mri = inputs["ct"], inputs["mri"]
    try:
        for batch in batches:
            try:
                row = _measure(runner, spec, ct, mri, batch)
            except Exception as error:  # one batch failing (e.g. out of memory) must not hide the others
                traceback.print_exc()
                row = {"batch": batch, "status": "failed", "reason": _reason(error), "peak_rss_mib": _peak_rss_mib()}
            send({"row": row})
    finally:
        runner.close()
    for batch in skipped:
        reason = (
            f"bf16 is emulated on this CPU: measured only up to batch {spec['emulated_bf16_max_batch']} "
            "(--emulated-bf16-batch)"
        )
        send({"row": {"batch": batch, "status": "skipped", "reason": reason}})


def _measure(runner: _Runner, spec: dict[str, Any], ct: np.ndarray, mri: np.ndarray, batch: int) -> dict[str, Any]:
    """Time ``warmup + iters`` calls on a batch of ``batch`` slices; the row's fields as a dict."""
    ct, mri = batch_inputs(ct, mri, batch)
    warmup = max(spec["warmup"], 1) if spec["backend"] == "pytorch-compile" else spec["warmup"]
    runner.reset_device_peak()
    seconds, first_call_s = [], None
    calls = tqdm(range(warmup + spec["iters"]), desc=f"{spec['backend']} batch {batch}", unit="call",
                 disable=not spec["progress"], leave=False)
    for call in calls:
        start = time.perf_counter()
        fused = runner.infer(ct, mri)
        elapsed = time.perf_counter() - start
        if call == 0:
            first_call_s = elapsed
            _check_output(fused, batch, ct.shape[-1])
        if call >= warmup:
            seconds.append(elapsed)
    return {
        "batch": batch,
        "warmup": warmup,
        "iterations": len(seconds),
        **latency_stats(seconds, batch),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_device_mib": runner.device_peak_mib(),
        "details": {"first_call_s": first_call_s},
    }


def _open_backend(spec: dict[str, Any]) -> _Runner:
    if spec["backend"] in TORCH_BACKENDS:
        return _open_torch(spec)
    from fuse_runtime.engines import open_engine

    if spec["backend"] == "openvino-cpu":
        engine = open_engine(spec["model"], backend="openvino", threads=spec["threads"])
        details = {"engine": engine.description, "notices": list(engine.notices)}
        precision = _openvino_precision(spec["file_precision"], engine.description)
        return _Runner(engine.infer, "cpu", precision, details, close=engine.close)
    provider = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "tensorrt": "auto"}[spec["backend"]]
    engine = open_engine(spec["model"], provider=provider, threads=spec["threads"])
    wanted = "tensorrt" if spec["backend"] == "tensorrt" else provider
    if engine.provider != wanted:
        engine.close()
        raise FuseError(f"{wanted} could not be used: {'; '.join(engine.notices) or engine.provider}", spec["model"])
    details = {"engine": engine.description, "notices": list(engine.notices)}
    on_gpu = engine.provider != "cpu"
    return _Runner(
        engine.infer,
        _gpu_name() if on_gpu else "cpu",
        _onnx_precision(engine),
        details,
        device_peak_mib=(lambda: _process_gpu_mib(os.getpid())) if on_gpu else (lambda: None),
        close=engine.close,
    )


def _open_torch(spec: dict[str, Any]) -> _Runner:
    import torch

    from fuse_train.checkpoint import load_model

    torch.set_num_threads(spec["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _, info = load_model(spec["model"], map_location="cpu")
    model = model.eval().to(device)
    forward: Callable[..., Any] = model
    details: dict[str, Any] = {"torch": torch.__version__, "checkpoint_epoch": info.get("epoch")}
    precision, autocast_dtype = "fp32", None
    if spec["backend"] == "pytorch-compile":
        forward = torch.compile(model)
        details["compile"] = "torch.compile(model), inductor, default mode; the first (untimed) call compiles"
    if spec["backend"] == "pytorch-autocast":
        if device.type == "cuda":
            precision, autocast_dtype = "fp16", torch.float16
        else:
            native = cpu_bf16_support().native
            precision, autocast_dtype = f"bf16 ({'native' if native else 'emulated'})", torch.bfloat16
        details["autocast"] = f"torch.autocast({device.type!r}, dtype={autocast_dtype})"

    def infer(ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            fused = forward(torch.from_numpy(ct).to(device), torch.from_numpy(mri).to(device))
            return fused.float().cpu().numpy()  # .cpu() waits for the GPU

    if device.type == "cuda":
        return _Runner(
            infer, torch.cuda.get_device_name(device), precision, details,
            reset_device_peak=lambda: torch.cuda.reset_peak_memory_stats(device),
            device_peak_mib=lambda: torch.cuda.max_memory_allocated(device) / MIB,
        )
    return _Runner(infer, "cpu", precision, details)


def _check_output(fused: np.ndarray, batch: int, size: int) -> None:
    expected = (batch, 3, size, size)
    if tuple(fused.shape) != expected:
        raise ValueError(f"the backend returned shape {tuple(fused.shape)}, expected {expected}")
    if not np.isfinite(fused).all():
        raise ValueError("the backend returned NaN or infinite values")


# --- models, FLOPs, export ---------------------------------------------------------------------------


def _artifacts(onnx: Sequence[Path], engine: Path | None) -> list[_Artifact]:
    """Describe every exported model file; refuse files whose image sizes differ."""
    paths = [*onnx, *([engine] if engine is not None else [])]
    names = [path.name for path in paths]
    artifacts = []
    for path in paths:
        name = path.name if names.count(path.name) == 1 else str(path)
        if path.suffix.lower() in PLAN_SUFFIXES:
            from fuse_runtime.engines.base import find_manifest

            manifest = find_manifest(path)
            if manifest is None:
                raise FuseError("a TensorRT plan needs the manifest.json fuse-export writes beside it", path)
            artifacts.append(_Artifact(path, name, manifest.precision, manifest.image_size, manifest.preprocess))
        else:
            from fuse_runtime.engines import open_engine

            with open_engine(path, provider="cpu", threads=1) as opened:
                artifacts.append(_Artifact(path, name, _onnx_precision(opened), opened.image_size, opened.preprocess))
    sizes = {a.image_size for a in artifacts}
    if len(sizes) > 1:
        listed = ", ".join(f"{a.name} {a.image_size} px" for a in artifacts)
        raise FuseError(
            f"the model files take different image sizes ({listed}); measure files exported at one size together"
        )
    return artifacts


def _reference(
    checkpoint: Path | None, artifacts: list[_Artifact], image_size: int | None
) -> tuple[int, Any, Any, dict[str, Any]]:
    """Image size and preprocessing of the run (the first model file's, else the checkpoint's), the
    checkpoint's eager model (None without one) and a description of the models given."""
    describe: dict[str, Any] = {"checkpoint": str(checkpoint) if checkpoint else None}
    preprocess, model = (artifacts[0].preprocess if artifacts else None), None
    if checkpoint is not None:
        from fuse_train.checkpoint import load_model

        model, train_config, info = load_model(checkpoint, map_location="cpu")
        describe.update(task=info.get("task"), epoch=info.get("epoch"), val_loss=info.get("val_loss"))
        preprocess = preprocess or train_config.preprocess
    artifact_size = artifacts[0].image_size if artifacts else None
    size = image_size or artifact_size or preprocess.image_size
    if artifact_size is not None and size != artifact_size:
        raise FuseError(
            f"the exported model takes {artifact_size}×{artifact_size} px but --image-size is {size}; "
            f"drop --image-size or export the model at {size} (fuse-export --image-size {size})",
            artifacts[0].path,
        )
    parts = [f"`{checkpoint}` (epoch {describe.get('epoch')})"] if checkpoint is not None else []
    parts += [f"`{a.path}`" for a in artifacts]
    describe.update(files=[str(a.path) for a in artifacts], label=" + ".join(parts))
    return size, dataclasses.replace(preprocess, image_size=size), model, describe


def _count_flops(model: Any, artifacts: list[_Artifact], size: int) -> dict[str, Any]:
    """FLOPs per slice, counted on the eager model when there is one, else on the first ONNX graph
    (``--onnx``, or the ``model.onnx`` beside ``--engine``); the ONNX count is kept as a cross-check.
    ``per_slice`` is None (and ``reason`` says why) when there is nothing to count on."""
    from benchmarks import flops as flop_counter

    counted = flop_counter.count_torch_flops(model, size) if model is not None else None
    result = counted.to_dict() if counted is not None else {"per_slice": None, "convention": flop_counter.CONVENTION}
    graphs = [a.path for a in artifacts if a.path.suffix.lower() == ".onnx"]
    graphs += [a.path.parent / "model.onnx" for a in artifacts if a.path.suffix.lower() in PLAN_SUFFIXES]
    graph = next((path for path in graphs if path.is_file()), None)
    reason = "no --checkpoint and no model.onnx to count on (a TensorRT plan hides its layers)"
    if graph is not None:
        try:
            on_graph = flop_counter.count_onnx_flops(graph)
        except ValueError as error:
            on_graph, reason = None, str(error)
        if on_graph is not None and on_graph.image_size == size:
            if counted is None:
                result = on_graph.to_dict()
            else:
                result["onnx_per_slice"] = on_graph.per_slice
    if result["per_slice"] is None:
        result["reason"] = reason
    return result


def _export_onnx(checkpoint: Path, target: Path, size: int, data: Path, log: Log) -> dict[str, Any]:
    """Export ``checkpoint`` to ``target/model.onnx`` (+ manifest.json) with fuse-export's own function."""
    from fuse_export.config import ExportConfig
    from fuse_export.pipeline import run_export

    log(f"latency: exporting {checkpoint} to ONNX for the ONNX Runtime and fuse-run rows")
    started = time.perf_counter()
    result = run_export(checkpoint, target, ExportConfig(image_size=size, parity_data=data, parity_pairs=1), log=log)
    return {
        "dir": str(target),
        "seconds": time.perf_counter() - started,
        "parity_passed": result.parity_passed,
    }


# --- small helpers -----------------------------------------------------------------------------------


def _openvino_precision(file_precision: str, description: str) -> str:
    """What an OpenVINO row computes in: the file's precision, and bf16 where OpenVINO ran in bf16
    (its engine description says ``(cpu, bf16)``): ``bf16`` for an FP32 file, ``int8 + bf16`` for INT8."""
    if "(cpu, bf16)" not in description:
        return file_precision
    return "bf16" if file_precision == "fp32" else f"{file_precision} + bf16"


def _onnx_precision(engine: Any) -> str:
    """``fuse.precision`` from an ONNX Runtime engine's model metadata (fp32 when absent, as in manifests)."""
    return engine.session.get_modelmeta().custom_metadata_map.get(META_PRECISION, "fp32")


def _existing_file(path: str | Path | None, kind: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        hints = {
            "checkpoint": "give the .pt file a fuse-train run wrote (RUN/best.pt)",
            "onnx": "give an .onnx file fuse-export wrote (model.onnx)",
            "engine": "give the model.plan fuse-export --fp16 wrote",
        }
        raise FuseError(f"{kind} not found; {hints[kind]}", path)
    return path


def _resolve_data(data: str | Path | None) -> Path:
    if data is None:
        from fuse_export.parity import default_parity_dir

        found = default_parity_dir()
        if found is None:
            raise FuseError("no --data given and ../shared/data/harvard/ct-mri-test is missing; pass --data DIR")
        return found
    data = Path(data)
    if not data.is_dir():
        raise FuseError("data folder not found; pass --data DIR with CT/ and MRI/ pairs", data)
    return data


def _gpu_name() -> str:
    gpus = machine_info(libraries=())["gpus"]
    return gpus[0]["name"] if gpus else "cuda"


def _process_gpu_mib(pid: int) -> float | None:
    """GPU memory this process holds, per ``nvidia-smi`` (None when it cannot tell)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        result = subprocess.run(
            [executable, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return float(parts[1])
    return None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


def _peak_rss_mib() -> float | None:
    """Peak resident memory (``VmHWM``) of this process in MiB; None where /proc has no such line."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    return None


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _reason(error: BaseException) -> str:
    """One line for a table: the exception type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _round(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def _note(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    details = row.get("details") or {}
    if row["backend"] in FUSE_RUN_BACKENDS:
        text = (
            f"{details['ok']} pair(s), {details['slices']} slice(s) in {details['wall_seconds']:.2f} s = "
            f"{details['pairs_per_second']:.2f} pairs/s; per-pair read→write p50 "
            f"{details['pair_latency_p50_ms']:.0f} ms"
        )
        return text + (f"; {row['reason']}" if row.get("reason") else "")
    first = details.get("first_call_s")
    if first is None:
        return ""
    if row["backend"] == "pytorch-compile":
        return f"compile + first call {first:.1f} s"
    return f"first call {first * 1e3:.0f} ms"


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="fuse-train checkpoint (RUN/best.pt) for the PyTorch rows; without --onnx it is also "
                   "exported to model.onnx (see --export-dir) for the ONNX Runtime and fuse-run rows.")
@click.option("--onnx", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Exported .onnx file (model.onnx, model.int8.onnx...) for the ONNX Runtime and fuse-run rows. "
                   "Repeat it to compare files: each gets its own rows, labelled with its file name.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT model.plan (with its manifest.json) for the TensorRT and fuse-run rows; GPU only.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of CT/MRI pairs: the inputs of every row and what fuse-run fuses "
                   "[default: ../shared/data/harvard/ct-mri-test beside the repository, or under $FUSE_SHARED_DATA].")
@click.option("--batch", "batch_text", default="1,4,8,16,32", show_default=True,
              help="Batch sizes (slices per call), comma-separated.")
@click.option("--image-size", type=int, default=None,
              help="Model input size in pixels, a multiple of 32 [default: the model's own, 256 by design]. "
                   "Must match --onnx/--engine when given.")
@click.option("--warmup", type=click.IntRange(min=0), default=LatencyConfig.warmup, show_default=True,
              help="Untimed calls per backend and batch size before timing (torch.compile always gets one).")
@click.option("--iters", type=click.IntRange(min=1), default=LatencyConfig.iters, show_default=True,
              help="Timed calls per backend and batch size (p50/p95/p99 are over these).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for PyTorch, ONNX Runtime and fuse-run [default: every usable core].")
@click.option("--backends", "backends_text", default="all", show_default=True,
              help=f"Backends to run, comma-separated: all or some of {', '.join(BACKENDS)}. "
                   "The others are listed as not selected.")
@click.option("--emulated-bf16-batch", type=click.IntRange(min=1), default=LatencyConfig.emulated_bf16_max_batch,
              show_default=True,
              help="Largest batch for bf16 autocast on a CPU without native bf16 (emulated, many times slower).")
@click.option("--emulated-bf16-iters", type=click.IntRange(min=1), default=LatencyConfig.emulated_bf16_iters,
              show_default=True, help="Most timed calls for bf16 autocast on a CPU without native bf16.")
@click.option("--compile-timeout", type=click.FloatRange(min=0, min_open=True), default=LatencyConfig.compile_timeout_s,
              show_default=True, help="Seconds the torch.compile process may take in all, compilation included.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=LatencyConfig.timeout_s,
              show_default=True, help="Seconds every other backend's process (and each fuse-run) may take.")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the model.onnx exported from --checkpoint in this folder (which must hold no earlier "
                   "export) [default: a temporary folder].")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for latency.json and latency.md (created; those two files replaced).")
@click.option("--quiet", is_flag=True, help="No progress bars (the one-line progress messages stay on stderr).")
def main(
    checkpoint: Path | None,
    onnx: tuple[Path, ...],
    engine: Path | None,
    data: Path | None,
    batch_text: str,
    image_size: int | None,
    warmup: int,
    iters: int,
    threads: int | None,
    backends_text: str,
    emulated_bf16_batch: int,
    emulated_bf16_iters: int,
    compile_timeout: float,
    timeout: float,
    export_dir: Path | None,
    out: Path,
    quiet: bool,
) -> None:
    """Measure latency (p50/p95/p99 ms per batch), throughput (slices/s, GFLOP/s) and peak memory of
    the fusion model per backend, model file and batch size; write OUT/latency.json and OUT/latency.md."""
    command = command_line("benchmarks.latency")
    try:
        try:
            config = LatencyConfig(
                batches=parse_batches(batch_text), image_size=image_size, warmup=warmup, iters=iters,
                threads=threads, backends=parse_backends(backends_text),
                emulated_bf16_max_batch=emulated_bf16_batch, emulated_bf16_iters=emulated_bf16_iters,
                compile_timeout_s=compile_timeout, timeout_s=timeout,
            )
        except (ValueError, FuseError) as error:
            raise click.UsageError(str(error)) from None
        run_latency(out, checkpoint, onnx, engine, data, config, export_dir, progress=not quiet, command=command)
    except FuseError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"wrote {out / JSON_NAME} and {out / MARKDOWN_NAME}")


if __name__ == "__main__":
    main()
