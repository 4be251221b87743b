"""Subprocess control: each backend in a fresh process (its memory its own), fuse-run end to end."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.latency.backends import (
    BY_NAME,
    PLAN_SUFFIXES,
    TORCH_PRECISIONS,
    Backend,
)
from benchmarks.latency.config import LatencyConfig, Row
from benchmarks.latency.machine import MIB, has_module
from benchmarks.latency.models import Artifact, openvino_precision
from benchmarks.latency.worker import WORKER_MAIN
from fuse_runtime.report import REPORT_NAME

Log = Callable[[str], None]
GPU_INSTALL = "pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13])"
INSTALL = {"tensorrt": ("TensorRT", GPU_INSTALL), "openvino": ("OpenVINO", "pip install 'fuse-ctmri[openvino]'")}
"""The name and install command of each optional module a backend needs."""


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


# --- one run: what each backend can do here, and running it ------------------------------------------


@dataclass
class Run:
    """What one run measures (models, data, settings) and where its scratch files go."""

    checkpoint: Path | None
    artifacts: list[Artifact]
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
        reason = self._unavailable(BY_NAME[backend])
        if reason is not None:
            self.log(f"latency: {backend}: skipped ({reason})")
            return [Row(backend, backend, "–", "–", None, "skipped", reason)]
        if BY_NAME[backend].kind == "torch":
            return self._worker_rows(backend, self.checkpoint, None)
        rows = []
        for artifact in self._artifacts_for(BY_NAME[backend]):
            if BY_NAME[backend].kind == "fuse-run":
                rows += [self._fuse_run(backend, artifact, batch) for batch in self.config.batches]
            else:
                rows += self._worker_rows(backend, artifact.path, artifact)
        return rows

    def _artifacts_for(self, backend: Backend) -> list[Artifact]:
        plans = [a for a in self.artifacts if a.path.suffix.lower() in PLAN_SUFFIXES]
        onnx = [a for a in self.artifacts if a not in plans]
        if backend.files == "plan":
            return plans
        if backend.files == "onnx+plan":
            return onnx + (plans if self.gpu and has_module("tensorrt") else [])
        return onnx

    def _unavailable(self, backend: Backend) -> str | None:
        """Why ``backend`` cannot run here, or None."""
        if backend.files == "checkpoint":
            return None if self.checkpoint is not None else "needs --checkpoint (a fuse-train .pt)"
        if not self._artifacts_for(backend):
            if backend.files == "plan":
                return "needs --engine model.plan (built by fuse-export --fp16 on a GPU)"
            return "needs --onnx, or --checkpoint to export one"
        if backend.provider == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return f"this onnxruntime has no CUDAExecutionProvider ({GPU_INSTALL} on a GPU machine)"
        if backend.needs_gpu and not self.gpu:
            return "no NVIDIA GPU visible (nvidia-smi lists none)"
        if backend.needs_module is not None and not has_module(backend.needs_module):
            name, install = INSTALL[backend.needs_module]
            return f"{name} is not installed ({install})"
        return None

    def _worker_rows(self, backend: str, model: Path | None, artifact: Artifact | None) -> list[Row]:
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
        code = run_child([sys.executable, "-c", WORKER_MAIN, str(spec_path)], timeout, output=None)

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

    def _fuse_run(self, backend: str, artifact: Artifact, batch: int) -> Row:
        """Run ``fuse-run`` once over the data into a temporary folder; the row comes from its report.json."""
        label, spec = f"{backend} {artifact.name}", BY_NAME[backend]
        row = Row(backend, label, artifact.precision, "–", batch, model=artifact.name, threads=self.threads)
        self.log(f"latency: {label}: batch {batch} over {self.data}")
        with tempfile.TemporaryDirectory(prefix="fuse-run-", dir=self.scratch) as tmp:
            out, peak_file, log_path = Path(tmp) / "out", Path(tmp) / "peak_rss_kib", Path(tmp) / "fuse-run.log"
            arguments = [
                "--engine", str(artifact.path), "--in", str(self.data), "--out", str(out),
                "--batch-size", str(batch), "--threads", str(self.threads),
                "--provider", spec.provider or ("auto" if self.gpu else "cpu"),
                "--backend", spec.engine_backend, "--quiet",
                *(["--streams", str(spec.streams)] if spec.streams is not None else []),
            ]
            started = time.perf_counter()
            command = [sys.executable, "-c", FUSE_RUN_MAIN, str(peak_file), *arguments]
            code = run_child(command, self.config.timeout_s, log_path)
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
        if spec.engine_backend == "openvino":
            row.precision = openvino_precision(artifact.precision, report.get("engine") or "")
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


def run_child(command: list[str], timeout_s: float, output: Path | None) -> int | None:
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
