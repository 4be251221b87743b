"""What an NVIDIA machine has: driver, GPU, and the one TensorRT logger a process shares.

Every TensorRT failure names the driver, CUDA and TensorRT versions (``versions_text``) and the fix
(``TENSORRT_FIX``), because nearly every "the builder cannot start" on a fresh machine is a TensorRT
or CUDA build newer than the driver supports. No import of tensorrt or CUDA here.
"""

from __future__ import annotations

import subprocess
from functools import cache
from typing import Any

from fuse_runtime.install import GPU_INSTALL

TENSORRT_FIX = (
    "check that nvidia-smi works and that the TensorRT/CUDA wheels match the driver's CUDA major "
    f"(the CUDA version nvidia-smi prints): {GPU_INSTALL}"
)


def nvidia_smi(query: str, device: int = 0) -> str | None:
    """One ``nvidia-smi --query-gpu`` field of GPU ``device``; None when nvidia-smi cannot answer."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device}", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def gpu_label(device: int = 0) -> str:
    """``<name>-sm<compute capability>`` of GPU ``device`` (``gpu<N>`` when nvidia-smi cannot say)."""
    answer = nvidia_smi("name,compute_cap", device)
    if not answer:
        return f"gpu{device}"
    name, _, capability = answer.partition(",")
    return f"{name.strip()}-sm{capability.strip()}"


def versions_text(tensorrt: str | None, cuda_runtime: str | None, device: int = 0) -> str:
    """``driver 550.54.15, CUDA runtime 12.4, TensorRT 10.16.1.11`` (``unknown`` where not found)."""
    driver = nvidia_smi("driver_version", device)
    return (
        f"driver {driver or 'unknown (nvidia-smi did not answer)'}, CUDA runtime {cuda_runtime or 'unknown'}, "
        f"TensorRT {tensorrt or 'not installed'}"
    )


@cache
def shared_logger(trt: Any) -> Any:
    """The process's one ``trt.Logger`` (TensorRT keeps the first logger it sees for the process)."""
    return trt.Logger(trt.Logger.WARNING)
