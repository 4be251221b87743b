"""DDP helpers so the same training script runs alone or under ``torchrun --nproc_per_node N``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; when ``WORLD_SIZE`` > 1 we join the
process group (NCCL on CUDA, gloo on CPU). Only rank 0 writes files and prints; metrics are summed
over all ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fuse_runtime.errors import FuseError


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present else CPU; ``cuda`` without a GPU is a FuseError."""
    if requested not in ("auto", "cpu", "cuda"):
        raise FuseError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FuseError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(requested_device: str = "auto") -> DistContext:
    """Join the torchrun process group when there is one; returns this process's context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around ``model`` when distributed, else ``model`` itself.

    DDP only synchronises the parameters that require gradients when it is built, so wrap again
    whenever the frozen set changes (see ``trainer``).
    """
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sum_over_ranks(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each value over all processes (identity when not distributed)."""
    if not ctx.distributed:
        return dict(values)
    keys = sorted(values)
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(keys, packed.cpu().tolist()))


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all hold one model."""
    if not ctx.distributed:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op when alone)."""
    if ctx.distributed:
        dist.barrier()
