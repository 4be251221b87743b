"""Where an OpenVINO engine's time goes: its per-layer timings summed by operation and kernel.

OpenVINO names each executed layer's operation (``Convolution``, ``Reorder``, ``Interpolate``...) and
the kernel that ran it (``brgconv_avx512_amx_I8``: AMX int8; ``..._bf16``; ``ref_...``: the slow
reference code). Summing by both shows what dominates, which convolutions stayed in float, and how
much goes to layout changes (``Reorder``) and to quantise/dequantise chains left unfused (``FakeQuantize``
/ ``Subtract`` / ``Multiply`` in f32 around float layers).
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

TOP = 10
"""Groups listed in a summary; the rest are summed into one line."""


def summarise(layers: list[dict[str, Any]], batch: int, top: int = TOP) -> dict[str, Any]:
    """Per-layer records (``type``, ``exec_type``, ``ms``) of one batch → ms per slice in all, the
    ``top`` (operation, kernel) groups with their ms per slice and share, and the share of reorders,
    of int8 kernels and of reference (unoptimised) kernels."""
    if batch < 1 or not layers:
        raise ValueError("a profile needs at least one layer and a batch of at least 1")
    total = sum(layer["ms"] for layer in layers)
    groups: collections.Counter[tuple[str, str]] = collections.Counter()
    for layer in layers:
        groups[(layer["type"], layer["exec_type"])] += layer["ms"]

    def share(test: Any) -> float:
        return sum(ms for key, ms in groups.items() if test(*key)) / total if total else 0.0

    listed = groups.most_common(top)
    rest = total - sum(ms for _, ms in listed)
    return {
        "batch": batch,
        "layers": len(layers),
        "ms_per_slice": total / batch,
        "groups": [
            {"type": kind, "kernel": kernel, "ms_per_slice": ms / batch, "share": ms / total if total else 0.0}
            for (kind, kernel), ms in listed
        ] + (
            [{"type": "other", "kernel": "–", "ms_per_slice": rest / batch, "share": rest / total}] if rest > 0 else []
        ),
        "reorder_share": share(lambda kind, _: kind == "Reorder"),
        "int8_share": share(lambda _, kernel: "i8" in kernel.lower() or "u8" in kernel.lower()),
        "reference_share": share(lambda _, kernel: kernel.startswith("ref")),
    }


def profile_openvino(model: str, threads: int, ct: np.ndarray, mri: np.ndarray, runs: int = 2) -> dict[str, Any]:
    """Profile ``model`` with OpenVINO in latency mode on one batch (the last of ``runs`` calls, the
    first ones warm it up); the summary of :func:`summarise`."""
    from fuse_runtime.engines.openvino_engine import OpenVinoEngine

    with OpenVinoEngine(model, threads=threads, perf_count=True) as engine:
        layers: list[dict[str, Any]] = []
        for _ in range(max(1, runs)):
            layers = engine.profile(ct, mri)
    return {**summarise(layers, len(ct)), "engine": engine.description}


def profile_markdown(label: str, profile: dict[str, Any]) -> list[str]:
    """A profile as Markdown lines: a heading, the shares, one list item per group (no table: the
    report's only table is the one with a row per measurement)."""
    lines = [
        f"### Profile: {label}, batch {profile['batch']}",
        "",
        f"{profile['ms_per_slice']:.1f} ms per slice in OpenVINO's layers ({profile['layers']} layers); "
        f"int8 kernels {100 * profile['int8_share']:.0f} %, reorders {100 * profile['reorder_share']:.0f} %, "
        f"reference kernels {100 * profile['reference_share']:.0f} %. `{profile['engine']}`",
        "",
    ]
    lines += [
        f"- {g['type']} `{g['kernel']}`: {g['ms_per_slice']:.2f} ms per slice ({100 * g['share']:.1f} %)"
        for g in profile["groups"]
    ]
    return [*lines, ""]
