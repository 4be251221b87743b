"""The latency report as Markdown: setup, FLOPs, one row per backend, model file and batch, machine."""

from __future__ import annotations

from typing import Any

from benchmarks.latency.backends import BY_NAME
from benchmarks.latency.profile import profile_markdown
from benchmarks.report import machine_markdown, markdown_table

PROTOCOL = (
    "One call = host float32 inputs ct [N,3,S,S] + mri [N,1,S,S] → host float32 fused [N,3,S,S] "
    "(GPU rows include both copies; the clock is read after the result is on the host). After the "
    "warm-up calls, p50/p95/p99 are percentiles (linear interpolation) of the timed calls in ms per "
    "batch; slices/s = batch / mean latency (openvino-cpu-throughput: one call submits one batch per infer "
    "request and waits for all, so slices/s = requests × batch / mean); GFLOP/s = counted FLOPs per slice × "
    "slices/s. RSS: "
    "peak resident memory (VmHWM) of the fresh process that ran the backend, after loading the model "
    "(load) and after the batches so far, run in ascending order (peak). GPU peak: PyTorch's allocator "
    "peak for PyTorch rows, the process's memory per nvidia-smi for the others. fuse-run rows: the CLI "
    "end to end (read → preprocess → infer → restore → write PNG) over every pair, throughput from its "
    "report.json, RSS of the whole CLI process."
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
    lines += [markdown_table(headers, rows), "", PROTOCOL, ""]
    for row in result["rows"]:
        profile = (row.get("details") or {}).get("profile")
        if profile and "error" not in profile:
            lines += profile_markdown(row["label"], profile)
        elif profile:
            lines += [f"Profile of {row['label']}: not recorded ({profile['error']}).", ""]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    lines += ["", "## Machine", "", machine_markdown(result["machine"])]
    return "\n".join(lines)


def _round(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def _note(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    details = row.get("details") or {}
    if BY_NAME[row["backend"]].kind == "fuse-run":
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
