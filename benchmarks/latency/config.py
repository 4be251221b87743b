"""What a latency run measures (LatencyConfig) and one row of its table (Row)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.latency.backends import BACKENDS

Status = Literal["ok", "skipped", "failed"]


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

