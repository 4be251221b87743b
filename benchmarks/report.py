"""Shared helpers for benchmark reports: strict JSON, Markdown tables and a description of the machine.

Every benchmark writes ``R/<name>.json`` (machine-readable, strict JSON: NaN and ±inf become
``null``) and ``R/<name>.md`` (tables for people), both atomically through ``fuse_runtime.atomic``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fuse_runtime.atomic import atomic_path

DEFAULT_LIBRARIES = (
    "numpy",
    "scipy",
    "scikit-image",
    "opencv-python-headless",
    "PyWavelets",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "torch",
    "torchvision",
    "tensorrt",
)
"""Distributions whose versions a report lists (those not installed are left out)."""

MISSING = "–"
"""What a Markdown cell shows for a value that does not exist (None, NaN)."""

NVIDIA_SMI_TIMEOUT_S = 10.0


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses and mappings to dicts, paths to strings, numpy
    scalars and arrays to Python numbers and lists, NaN and ±inf to ``None`` (strict JSON)."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def command_line(module: str) -> str:
    """How this benchmark was invoked, as a shell command to paste: ``python -m MODULE`` and its arguments."""
    return f"python -m {module} " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` (through :func:`to_jsonable`) as indented strict JSON, atomically."""
    path = Path(path)
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (a Markdown report) atomically, ending it with one newline."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return path


def write_report(out: str | Path, stem: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Record how and where ``result`` was made (``command``, ``machine``), then write ``OUT/STEM.json``
    and the Markdown table ``OUT/STEM.md``; the stem is the benchmark's module name."""
    out = Path(out)
    result["command"] = command_line(f"benchmarks.{stem}")
    result["machine"] = machine_info()
    return write_json(out / f"{stem}.json", result), write_text(out / f"{stem}.md", markdown)


def format_value(value: Any, digits: int = 2) -> str:
    """A table cell: floats with ``digits`` decimals, ints as they are, None/NaN as ``–``."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others (numbers) right-aligned."""
    rows = [list(row) for row in rows]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(headers)} headers")
    lines = [
        "| " + " | ".join(format_value(h) for h in headers) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(format_value(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(libraries: Sequence[str] = DEFAULT_LIBRARIES, threads: int | None = None) -> dict[str, Any]:
    """What a reader needs to compare timings: CPU, cores, memory, GPUs, OS, Python, library versions.

    ``threads`` is the number of threads the benchmark itself used, recorded as given.
    Reads ``/proc`` and ``nvidia-smi`` where present; imports none of the libraries.
    """
    return {
        "cpu": _cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": library_versions(libraries),
    }


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the given distributions; the ones not installed are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_markdown(info: Mapping[str, Any]) -> str:
    """A short bullet list of :func:`machine_info` for the end of a Markdown report."""
    gpus = ", ".join(f"{g['name']} ({g['memory_mib']} MiB, driver {g['driver']})" for g in info.get("gpus") or [])
    libraries = ", ".join(f"{name} {version}" for name, version in (info.get("libraries") or {}).items())
    lines = [
        f"- CPU: {info.get('cpu')} — {info.get('cpu_cores_usable')} usable of {info.get('cpu_cores_logical')} "
        f"logical cores" + (f", {info['threads']} threads used" if info.get("threads") else ""),
        f"- memory: {format_value(info.get('memory_gib'), 1)} GiB",
        f"- GPU: {gpus or 'none'}",
        f"- OS: {info.get('os')}, Python {info.get('python')}",
        f"- libraries: {libraries or MISSING}",
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, OSError, ValueError):
        return None


def _gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs as ``nvidia-smi`` lists them (empty without a driver)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        result = subprocess.run(
            [executable, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in result.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            memory = int(float(parts[1])) if parts[1].replace(".", "", 1).isdigit() else None
            gpus.append({"name": parts[0], "memory_mib": memory, "driver": parts[2]})
    return gpus
