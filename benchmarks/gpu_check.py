"""The two Python halves of ``scripts/gpu_check.sh``: what the machine has, and the report.

``python -m benchmarks.gpu_check env OUT/env.json`` records the environment with only what is
installed (nothing is downloaded): Python, GPU, driver and CUDA as nvidia-smi and PyTorch see them,
cuDNN, TensorRT, cuda-python, ONNX Runtime and its providers, OpenVINO; a missing piece is recorded
as missing with the way to add it.

``python -m benchmarks.gpu_check report OUT`` reads ``OUT/steps.jsonl`` (one line per step the shell
script ran: name, status ok / failed / skipped, seconds, reason, log), ``OUT/env.json``, the export's
``parity.json`` and the latency benchmark's ``latency.json`` where present, and writes
``OUT/gpu_check.json`` and ``OUT/gpu_check.md``: environment, every step with its status and
reason, the parity rows and the TensorRT and CUDA latency rows.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from fuse_runtime.atomic import atomic_path
from fuse_runtime.install import GPU_INSTALL

STEPS_NAME = "steps.jsonl"
ENV_NAME = "env.json"
REPORT_STEM = "gpu_check"
#: Where the shell script puts the export and the latency results, relative to OUT.
PARITY_PATH = Path("export") / "parity.json"
LATENCY_PATH = Path("latency") / "latency.json"
#: Latency backends the report shows (the GPU rows) and the batch sizes asked for.
LATENCY_BACKENDS = ("tensorrt", "onnxruntime-cuda")
LATENCY_BATCHES = (1, 8, 32)
STATUSES = ("ok", "failed", "skipped")


def environment() -> dict[str, Any]:
    """What this machine has for the GPU path; each absent piece as ``"missing: ..."``."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    smi = _run(
        ["nvidia-smi", "--query-gpu=index,name,driver_version,compute_cap,memory.total", "--format=csv,noheader"]
    )
    env["gpus"] = (
        [line.strip() for line in smi.splitlines()] if smi else "missing: nvidia-smi did not answer (no NVIDIA driver?)"
    )
    header = _run(["nvidia-smi"])
    cuda_line = next((line for line in (header or "").splitlines() if "CUDA Version" in line), "")
    env["driver_cuda"] = cuda_line.split("CUDA Version:")[-1].strip(" |") if cuda_line else "missing"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda or "missing: this PyTorch is a CPU build"
        env["cuda_available"] = bool(torch.cuda.is_available())
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        if torch.cuda.is_available():
            env["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            env["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    except ImportError:
        env["torch"] = "missing: pip install -c constraints.txt -e '.[train]'"
    env["tensorrt"] = _module_version("tensorrt", f"missing: {GPU_INSTALL}")
    env["cuda_python"] = _distribution_version("cuda-python", f"missing: {GPU_INSTALL}")
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
        flavours = [d for d in ("onnxruntime", "onnxruntime-gpu") if _distribution_version(d, "") != ""]
        env["onnxruntime_distributions"] = flavours
    except ImportError:
        env["onnxruntime"] = f"missing: {GPU_INSTALL}"
    env["openvino"] = _module_version("openvino", "missing (optional)")
    return env


def write_report(out: Path) -> tuple[Path, Path]:
    """Collect the steps and results under ``out`` into ``gpu_check.json`` and ``gpu_check.md``."""
    steps = read_steps(out / STEPS_NAME)
    env = _read_json(out / ENV_NAME) or {"missing": f"{ENV_NAME} was not written"}
    parity = _read_json(out / PARITY_PATH)
    latency = _read_json(out / LATENCY_PATH)
    counts = {status: sum(1 for s in steps if s["status"] == status) for status in STATUSES}
    report = {
        "environment": env,
        "counts": counts,
        "steps": steps,
        "parity": parity_rows(parity),
        "latency": latency_rows(latency),
    }
    json_path, md_path = out / f"{REPORT_STEM}.json", out / f"{REPORT_STEM}.md"
    _write_atomic(json_path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    _write_atomic(md_path, markdown(report))
    return json_path, md_path


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The steps the shell script recorded, in order; a malformed line is kept as a failed step."""
    if not path.is_file():
        return []
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)
        except json.JSONDecodeError:
            step = {"name": f"line {number}", "status": "failed", "reason": f"unreadable step record: {line[:80]}"}
        if step.get("status") not in STATUSES:
            step = {**step, "status": "failed", "reason": f"unknown status {step.get('status')!r}"}
        steps.append(step)
    return steps


def parity_rows(parity: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per exported artifact compared with PyTorch FP32 (the TensorRT row among them)."""
    if not parity:
        return []
    return [
        {
            "candidate": name,
            "max_abs": result.get("max_abs"),
            "mean_abs": result.get("mean_abs"),
            "psnr_db": result.get("psnr_db"),
            "limits": result.get("limits"),
            "passed": result.get("passed"),
        }
        for name, result in parity.get("results", {}).items()
    ]


def latency_rows(latency: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The TensorRT and ONNX Runtime CUDA rows at batch 1/8/32 (skipped rows keep their reason)."""
    if not latency:
        return []
    keep = ("backend", "label", "batch", "status", "reason", "p50_ms", "slices_per_s", "peak_device_mib")
    return [
        {key: row.get(key) for key in keep}
        for row in latency.get("rows", [])
        if row.get("backend") in LATENCY_BACKENDS and row.get("batch") in (*LATENCY_BATCHES, None)
    ]


def markdown(report: dict[str, Any]) -> str:
    counts = report["counts"]
    lines = [
        "# GPU check",
        "",
        f"{counts['ok']} steps ok, {counts['failed']} failed, {counts['skipped']} skipped.",
        "",
        "## Environment",
        "",
        "| what | value |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | {_cell(value)} |" for key, value in report["environment"].items()]
    lines += [
        "", "## Steps", "",
        "| step | status | seconds | reason (failed, skipped) or last output line (ok) | log |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for step in report["steps"]:
        seconds = step.get("seconds")
        lines.append(
            f"| {step.get('name', '?')} | {step['status']} | {'' if seconds is None else f'{seconds:.1f}'} | "
            f"{_cell(step.get('reason') or '')} | {step.get('log') or ''} |"
        )
    lines += ["", "## TensorRT / ONNX Runtime parity against PyTorch FP32", ""]
    if report["parity"]:
        lines += ["| candidate | max abs | mean abs | PSNR dB | passed |", "| --- | ---: | ---: | ---: | --- |"]
        for row in report["parity"]:
            lines.append(
                f"| {row['candidate']} | {_num(row['max_abs'], '.2e')} | {_num(row['mean_abs'], '.2e')} | "
                f"{_num(row['psnr_db'], '.1f')} | {row['passed']} |"
            )
    else:
        lines.append(f"no {PARITY_PATH} (the export step did not run or failed)")
    lines += ["", "## Latency: TensorRT and ONNX Runtime CUDA", ""]
    if report["latency"]:
        lines += [
            "| backend | batch | status | p50 ms | slices/s | reason |",
            "| --- | ---: | --- | ---: | ---: | --- |",
        ]
        for row in report["latency"]:
            lines.append(
                f"| {row['label'] or row['backend']} | {row['batch'] if row['batch'] is not None else '-'} | "
                f"{row['status']} | {_num(row['p50_ms'], '.2f')} | {_num(row['slices_per_s'], '.0f')} | "
                f"{_cell(row['reason'] or '')} |"
            )
    else:
        lines.append(f"no {LATENCY_PATH} (the latency step did not run or failed)")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _run(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _module_version(module: str, missing: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as error:  # a GPU library may fail to load for reasons beyond ImportError
        return f"{missing} ({type(error).__name__}: {error})" if not isinstance(error, ImportError) else missing


def _distribution_version(name: str, missing: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return missing


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "env":
        _write_atomic(Path(args[1]), json.dumps(environment(), indent=2) + "\n")
        return 0
    if len(args) == 2 and args[0] == "report":
        json_path, md_path = write_report(Path(args[1]))
        print(f"wrote {json_path} and {md_path}")
        return 0
    print("usage: python -m benchmarks.gpu_check env OUT/env.json | report OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
