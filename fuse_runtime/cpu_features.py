"""What the CPU computes natively, read from its /proc/cpuinfo flags: one answer for every caller.

fuse_runtime's OpenVINO engine (bf16 or f32), ``choose_backend`` (OpenVINO or ONNX Runtime) and
fuse-train's ``--precision auto`` (bf16 autocast or fp32) all ask :func:`has_native_bf16`; without
native bf16 the libraries emulate it through conversions, far slower than fp32.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
"""/proc/cpuinfo flags of CPUs that compute bf16 natively: x86 AMX-BF16 and AVX512-BF16 (``flags``
lines) and Arm's BF16 extension (``Features`` lines)."""
NATIVE_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
"""/proc/cpuinfo flags of x86 CPUs with int8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI),
which OpenVINO's int8 kernels use."""


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str] | None:
    """The flags of the CPU described by ``cpuinfo`` (a path, or the file's text itself; tests pass
    other CPUs' flags): the words of its ``flags`` (x86) and ``Features`` (Arm) lines. None when the
    file cannot be read (not Linux)."""
    try:
        text = cpuinfo if isinstance(cpuinfo, str) and "\n" in cpuinfo else Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def native_bf16(cpuinfo: str | Path = CPUINFO) -> tuple[bool, str]:
    """Whether the CPU has native bf16, and why, in words for a notice. A missing or unreadable
    ``cpuinfo`` counts as no native bf16."""
    return _look_for(
        cpuinfo, NATIVE_BF16_FLAGS, "native bf16 (AVX512-BF16/AMX, Arm BF16)", "native bf16",
        "no native bf16 (AVX512-BF16/AMX), nor Arm's BF16",
    )


def native_int8(cpuinfo: str | Path = CPUINFO) -> tuple[bool, str]:
    """Whether the CPU has int8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI), and why, in
    words for a notice. A missing or unreadable ``cpuinfo`` counts as none."""
    return _look_for(
        cpuinfo, NATIVE_INT8_FLAGS, "int8 dot products (AMX-INT8/VNNI)", "native int8 dot products",
        "no int8 dot products (AMX-INT8/VNNI)",
    )


def has_native_bf16(cpuinfo: str | Path = CPUINFO) -> bool:
    """Whether the CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16)."""
    return native_bf16(cpuinfo)[0]


def _look_for(cpuinfo: str | Path, wanted: tuple[str, ...], what: str, has: str, has_not: str) -> tuple[bool, str]:
    """Whether any of ``wanted`` is among the CPU's flags, with the sentence for a notice."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return False, f"cannot read {cpuinfo} to look for {what}"
    found = [flag for flag in wanted if flag in flags]
    if found:
        return True, f"this CPU has {has} ({', '.join(found)})"
    return False, f"this CPU has {has_not}"
