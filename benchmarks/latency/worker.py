"""Inside a backend's fresh process: open it, time every batch, append JSON lines to the results file."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.latency.backends import BY_NAME
from benchmarks.latency.machine import (
    MIB,
    cpu_bf16_support,
    gpu_name,
    peak_rss_mib,
    process_gpu_mib,
)
from benchmarks.latency.models import onnx_precision, openvino_precision
from fuse_runtime.errors import FuseError, first_line

WORKER_MAIN = "import sys; from benchmarks.latency.worker import worker_main; worker_main(sys.argv[1])"
"""The command line (``python -c``) of a backend's process; its argument is the spec file."""


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
    requests: int = 1
    """Batches one timed call runs side by side (a throughput engine's infer requests)."""


def worker_main(spec_path: str) -> None:
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
    send({"setup": {"rss_mib": peak_rss_mib(), "device": runner.device, "precision": runner.precision,
                    "details": runner.details}})
    with np.load(spec["inputs"]) as inputs:
        ct, mri = inputs["ct"], inputs["mri"]
    try:
        for batch in batches:
            try:
                row = _measure(runner, spec, ct, mri, batch)
                if BY_NAME[spec["backend"]].profile and batch == batches[-1]:
                    row["details"]["profile"] = _profile(spec, ct, mri, batch)
            except Exception as error:  # one batch failing (e.g. out of memory) must not hide the others
                traceback.print_exc()
                row = {"batch": batch, "status": "failed", "reason": _reason(error), "peak_rss_mib": peak_rss_mib()}
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
        **latency_stats(seconds, batch * runner.requests),
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": runner.device_peak_mib(),
        "details": {"first_call_s": first_call_s},
    }


def _profile(spec: dict[str, Any], ct: np.ndarray, mri: np.ndarray, batch: int) -> dict[str, Any]:
    """The OpenVINO profile of one batch, or why there is none (a profile never fails the row)."""
    from benchmarks.latency.profile import profile_openvino

    try:
        return profile_openvino(spec["model"], spec["threads"], *batch_inputs(ct, mri, batch))
    except Exception as error:  # the timing stands without it
        return {"error": _reason(error)}


def _open_backend(spec: dict[str, Any]) -> _Runner:
    backend = BY_NAME[spec["backend"]]
    if backend.kind == "torch":
        return _open_torch(spec)
    from fuse_runtime.engines import open_engine

    engine = open_engine(
        spec["model"], provider=backend.provider or "auto", threads=spec["threads"], backend=backend.engine_backend,
        streams=1 if backend.streams is None else backend.streams,
    )
    details = {"engine": engine.description, "notices": list(engine.notices)}
    if backend.engine_backend == "openvino":
        precision = openvino_precision(spec["file_precision"], engine.description)
        requests = engine.in_flight

        def side_by_side(ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
            started = [engine.submit(ct, mri) for _ in range(requests)]
            results = [pending.result() for pending in started]
            return results[0]

        infer = engine.infer if requests == 1 else side_by_side
        details["requests"] = requests
        return _Runner(infer, "cpu", precision, details, close=engine.close, requests=requests)
    wanted = "tensorrt" if backend.engine_backend == "tensorrt" else backend.provider
    if engine.provider != wanted:
        engine.close()
        raise FuseError(f"{wanted} could not be used: {'; '.join(engine.notices) or engine.provider}", spec["model"])
    on_gpu = engine.provider != "cpu"
    return _Runner(
        engine.infer,
        gpu_name() if on_gpu else "cpu",
        onnx_precision(engine),
        details,
        device_peak_mib=(lambda: process_gpu_mib(os.getpid())) if on_gpu else (lambda: None),
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


def _reason(error: BaseException) -> str:
    """One line for a table: the exception type and the first line of its message."""
    return first_line(error, with_type=True)
