"""What the machine offers the latency benchmark: native bf16, cores, memory peaks, GPU memory."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import machine_info
from fuse_runtime.cpu_features import cpu_flags, native_bf16

SIMD_FLAGS = ("avx512f", "avx2", "avx", "sse4_2", "asimd")
"""Widest-first SIMD flags, to name what a CPU without native bf16 has instead."""

MIB = 2**20
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Bf16Support:
    """Whether this CPU computes bf16 natively, and the words for the report."""

    native: bool
    description: str



def cpu_bf16_support(cpuinfo: str | Path = "/proc/cpuinfo") -> Bf16Support:
    """Does this CPU have native bf16 arithmetic (AVX512-BF16, AMX-BF16, Arm BF16)? fuse_runtime's one
    answer (``cpu_features``), with the widest SIMD named when the answer is no."""
    native, words = native_bf16(cpuinfo)
    if native:
        return Bf16Support(True, words)
    flags = cpu_flags(cpuinfo) or set()
    widest = next((flag for flag in SIMD_FLAGS if flag in flags), "none found")
    return Bf16Support(
        False,
        f"emulated: the CPU has no AVX512-BF16/AMX-BF16 (widest SIMD: {widest}), so bf16 runs through "
        "conversions and is much slower than FP32",
    )



def gpu_name() -> str:
    gpus = machine_info(libraries=())["gpus"]
    return gpus[0]["name"] if gpus else "cuda"


def process_gpu_mib(pid: int) -> float | None:
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


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None




def peak_rss_mib() -> float | None:
    """Peak resident memory (``VmHWM``) of this process in MiB; None where /proc has no such line."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

