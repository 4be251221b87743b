"""The training loop: epochs of AMP steps, validation, early stopping, checkpoints and history.

``run_training(config, options)`` does a whole run (fresh, initialised from another run, or
resumed) alone or under torchrun. Per epoch ``e`` (0-based): encoders frozen while
``e < freeze_encoder_epochs``; every step is forward under autocast → the loss in float32 →
``scaler.scale(loss).backward()`` → ``scaler.unscale_`` → clip the gradient norm → ``scaler.step``;
then validation at the full model size, ``scheduler.step()``, the history record and checkpoints.

Run directory (rank 0 writes, everything atomically): ``config.json`` (the resolved TrainConfig),
``best.pt`` (whenever the validation loss improves), ``epoch_NNN.pt`` every ``checkpoint_every``
epochs, ``last.pt`` (with the resume state), ``history.json``/``.csv``/``.png``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from fuse_runtime.atomic import write_json_atomic
from fuse_runtime.cpu_features import has_native_bf16
from fuse_runtime.errors import FuseError
from fuse_train import distributed
from fuse_train.checkpoint import init_from_checkpoint, read_checkpoint, save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.data import FusionDataset, TrainingData, load_training_data
from fuse_train.distributed import DistContext
from fuse_train.history import save_history
from fuse_train.losses import COMPONENTS, FusionLoss
from fuse_train.model import FusionNet
from fuse_train.schedule import (
    apply_freezing,
    build_optimizer,
    build_scheduler,
    group_lrs,
    set_schedule_epochs,
)

CONFIG_NAME = "config.json"
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"

Echo = Callable[[str], None]


@dataclass
class RunOptions:
    """What a run reads and writes, as opposed to the recipe (``TrainConfig``).

    data: the paired-data folder. out: the run directory (must not exist yet unless ``resume``).
    init: a checkpoint to initialise from (e.g. the vis-ir run's ``best.pt``). resume: continue the
    run in ``out`` from its ``last.pt``. device: ``auto``, ``cpu`` or ``cuda``. progress: show a
    tqdm bar per epoch (rank 0 only).
    """

    data: Path
    out: Path
    init: Path | None = None
    resume: bool = False
    device: str = "auto"
    progress: bool = True


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation loss (``patience`` ≤ 0: never)."""

    patience: int
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, val_loss: float, epoch: int) -> bool:
        """Record epoch ``epoch`` (1-based); True when it is a new best."""
        if val_loss < self.best:
            self.best, self.best_epoch, self.bad_epochs = float(val_loss), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


@dataclass
class TrainResult:
    """What a finished run leaves behind (the model as it is after the last epoch)."""

    model: FusionNet
    config: TrainConfig
    history: list[dict[str, Any]]
    best_val_loss: float
    best_epoch: int
    stopped_early: bool
    run_dir: Path
    data: TrainingData | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: off) and whether a GradScaler is needed (fp16 only)."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto``: fp16 + GradScaler on CUDA; on the CPU bf16 autocast where the CPU has native bf16
    (AVX512-BF16/AMX, Arm BF16: :func:`fuse_runtime.cpu_features.has_native_bf16`), else fp32.
    ``fp32``: no autocast. ``bf16``/``fp16``: as asked.

    Why not bf16 on every CPU: without native support oneDNN emulates it, and a training step at
    64 px measured ~12× slower than fp32 on an AVX2-only CPU.
    """
    if requested == "auto":
        if device.type == "cuda":
            requested = "fp16"
        else:
            requested = "bf16" if has_native_bf16() else "fp32"
    if requested == "fp32":
        return Precision(None, False)
    if requested == "bf16":
        return Precision(torch.bfloat16, False)
    if requested == "fp16":
        if device.type != "cuda":
            raise FuseError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
        return Precision(torch.float16, True)
    raise FuseError(f"unknown precision {requested!r}; use auto, fp32, bf16 or fp16")


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.amp.autocast`` for ``precision`` (a no-op context when it is fp32)."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device.type, dtype=precision.dtype)


def check_new_run_dir(out: Path) -> None:
    """Refuse an existing, non-empty run directory, and one that cannot be made or written (a file on
    the way, a read-only place): FuseError naming it, before any data is read. Creates nothing."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FuseError(
            "the run directory already exists; pass --resume to continue that run, or choose a new --out",
            out,
        )
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if not existing.is_dir():
        raise FuseError(
            f"the run directory cannot be created: {existing} is a file, not a folder; choose another --out", out
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-test"):
            pass
    except OSError as error:
        raise FuseError(
            f"the run directory cannot be created or written in {existing} ({error.strerror}); choose another "
            "--out or fix its permissions",
            out,
        ) from None


def train_step(
    model: nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    loss_fn: FusionLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    gradient_clip: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on a batch (``first`` [N,3,H,W], ``second`` [N,1,H,W] in [0,1])."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(first.device, precision):
        fused = model(first, second)
    total, parts = loss_fn(fused, first, second)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, gradient_clip)
    scaler.step(optimizer)
    scaler.update()
    return total.detach(), parts


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: FusionLoss, device: torch.device, precision: Precision
) -> dict[str, float]:
    """Sums over ``loader`` of the total loss and each component, times batch size, and ``count``."""
    model.eval()
    sums = _zero_sums(loss_fn.components)
    for first, second in loader:
        first, second = first.to(device, non_blocking=True), second.to(device, non_blocking=True)
        with autocast(device, precision):
            fused = model(first, second)
        total, parts = loss_fn(fused, first, second)
        _accumulate(sums, total, parts, first.shape[0])
    return sums


def run_training(config: TrainConfig, options: RunOptions, echo: Echo = print) -> TrainResult:
    """Train (or resume) a fusion model; see the module docstring. Works alone or under torchrun."""
    ctx = distributed.setup(options.device)
    try:
        return _run(config, options, ctx, echo if ctx.is_main else _silent)
    finally:
        distributed.teardown(ctx)


def _run(config: TrainConfig, options: RunOptions, ctx: DistContext, echo: Echo) -> TrainResult:
    out = Path(options.out)
    resume_state = read_checkpoint(out / LAST_NAME) if options.resume else None
    if not options.resume:
        check_new_run_dir(out)
        if options.init is not None and not Path(options.init).is_file():
            raise FuseError("checkpoint to initialise from not found; give a run's best.pt (--init)", options.init)
    distributed.barrier(ctx)
    precision = resolve_precision(config.precision, ctx.device)
    torch.manual_seed(config.seed)

    data = load_training_data(options.data, config)
    for problem in data.problems:
        echo(f"skipped: {problem}")
    echo(data.describe_split())

    model = FusionNet(modalities=config.modalities, imagenet=config.imagenet, head=config.head)
    if options.init is not None and resume_state is None:
        echo(init_from_checkpoint(model, options.init, config.modalities).summary())
    model.to(ctx.device)

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scaler)
    stopper = EarlyStopping(config.early_stopping_patience)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume_state is not None:
        start_epoch = _restore(resume_state, model, optimizer, scheduler, scaler, stopper, history, config)
        echo(f"resuming {out} after epoch {start_epoch} (best validation loss {stopper.best:.4f})")

    run_info = {
        "data": str(Path(options.data).resolve()),
        "init": None if options.init is None else str(options.init),
        "train_groups": data.train_groups,
        "val_groups": data.val_groups,
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "precision": precision.name,
    }
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_NAME, config.to_dict())

    train_set, sampler, train_loader, val_loader = _loaders(data, config, ctx)
    cpu_note = " — this CPU has no native bf16" if config.precision == "auto" and precision.dtype is None else ""
    echo(
        f"training {config.task} on {ctx.device.type} ×{ctx.world_size} ({precision.name}{cpu_note}): "
        f"{len(data.train)} training and {len(data.val)} validation images, "
        f"crop {config.crop_size} px, validation at {config.preprocess.image_size} px"
    )

    loss_fn = FusionLoss(config.loss)
    ddp_model: nn.Module = model
    frozen_state: bool | None = None
    stopped_early = stopper.should_stop
    for epoch in range(start_epoch, config.epochs):
        if stopper.should_stop:
            break
        started = time.perf_counter()
        frozen = apply_freezing(model, epoch, config)
        if frozen != frozen_state:
            ddp_model, frozen_state = distributed.wrap(model, ctx), frozen
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        lrs = group_lrs(optimizer)

        train_sums, train_seconds = _train_epoch(
            ddp_model, train_loader, loss_fn, optimizer, scaler, precision, config, ctx, epoch, options
        )
        # One model on every rank, then validate without the DDP wrapper: the ranks' validation
        # shards may differ by a batch, and DDP's forward is a collective.
        distributed.broadcast_buffers(model, ctx)
        val_sums = evaluate(model, val_loader, loss_fn, ctx.device, precision)
        train_sums = distributed.sum_over_ranks(train_sums, ctx)
        val_sums = distributed.sum_over_ranks(val_sums, ctx)
        scheduler.step()

        record = _record(epoch + 1, frozen, lrs, train_sums, val_sums)
        record["seconds"] = time.perf_counter() - started
        record["images_per_s"] = train_sums["count"] / max(train_seconds, 1e-9)
        if not (math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])):
            raise FuseError(
                f"training diverged in epoch {epoch + 1} (loss is NaN or Inf); lower --lr or use --precision fp32",
                out,
            )
        history.append(record)
        improved = stopper.update(record["val_loss"], epoch + 1)
        if ctx.is_main:
            _save_epoch(out, model, config, record, improved, run_info, optimizer, scheduler, scaler, stopper, history)
        echo(_summary_line(record, config.epochs, improved))
        stopped_early = stopper.should_stop
    if start_epoch >= config.epochs:
        echo(f"nothing to do: the run already finished its {config.epochs} epochs; pass --epochs N to extend it")
    if stopped_early:
        echo(f"early stopping: no lower validation loss for {stopper.bad_epochs} epochs")
    if history:
        echo(f"best validation loss {stopper.best:.4f} at epoch {stopper.best_epoch}; run in {out}")
    distributed.barrier(ctx)
    return TrainResult(
        model=model,
        config=config,
        history=history,
        best_val_loss=stopper.best,
        best_epoch=stopper.best_epoch,
        stopped_early=stopped_early,
        run_dir=out,
        data=data,
    )


def _loaders(
    data: TrainingData, config: TrainConfig, ctx: DistContext
) -> tuple[FusionDataset, DistributedSampler, DataLoader, DataLoader]:
    """Training loader over a DistributedSampler (shuffled per epoch from the seed; every rank gets
    the same number of batches) and this rank's share of the validation images (no padding)."""
    train_set = FusionDataset(data.train, config, train=True)
    val_set = FusionDataset(data.val, config, train=False)
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed)
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers, pin_memory=pin
    )
    val_shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = DataLoader(val_shard, batch_size=config.batch_size, num_workers=config.num_workers, pin_memory=pin)
    return train_set, sampler, train_loader, val_loader


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: FusionLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    config: TrainConfig,
    ctx: DistContext,
    epoch: int,
    options: RunOptions,
) -> tuple[dict[str, float], float]:
    sums = _zero_sums(loss_fn.components)
    started = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=not (options.progress and ctx.is_main),
    )
    for first, second in bar:
        first, second = first.to(ctx.device, non_blocking=True), second.to(ctx.device, non_blocking=True)
        total, parts = train_step(model, first, second, loss_fn, optimizer, scaler, precision, config.gradient_clip)
        _accumulate(sums, total, parts, first.shape[0])
        bar.set_postfix(loss=f"{sums['loss'] / max(sums['count'], 1):.4f}")
    return sums, time.perf_counter() - started


def _zero_sums(components: tuple[str, ...]) -> dict[str, float]:
    return {"loss": 0.0, "count": 0.0, **{name: 0.0 for name in components}}


def _accumulate(sums: dict[str, float], total: torch.Tensor, parts: dict[str, torch.Tensor], n: int) -> None:
    sums["loss"] += float(total) * n
    sums["count"] += n
    for name, value in parts.items():
        sums[name] += float(value) * n


def _record(
    epoch: int, frozen: bool, lrs: dict[str, float], train: dict[str, float], val: dict[str, float]
) -> dict[str, Any]:
    """One history row (plain Python numbers); means over all images of all ranks."""
    record: dict[str, Any] = {"epoch": epoch, "encoders_frozen": frozen}
    for prefix, sums in (("train", train), ("val", val)):
        count = max(sums["count"], 1.0)
        record[f"{prefix}_loss"] = sums["loss"] / count
        for name in COMPONENTS:
            if name in sums:
                record[f"{prefix}_{name}"] = sums[name] / count
    for name, lr in lrs.items():
        record[f"lr_{name}"] = lr
    return record


def _summary_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train {record['train_loss']:.4f}  "
        f"val {record['val_loss']:.4f}{' *' if improved else '  '}  lr {record['lr_decoder']:.2e}"
        f"{'  (encoders frozen)' if record['encoders_frozen'] else ''}  "
        f"{record['seconds']:.1f} s/epoch  {record['images_per_s']:.1f} images/s"
    )


def _save_epoch(
    out: Path,
    model: FusionNet,
    config: TrainConfig,
    record: dict[str, Any],
    improved: bool,
    run_info: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    stopper: EarlyStopping,
    history: list[dict[str, Any]],
) -> None:
    epoch, val_loss = record["epoch"], record["val_loss"]
    common = {"epoch": epoch, "val_loss": val_loss, "imagenet_loaded": model.imagenet_loaded, "run": run_info}
    if improved:
        save_checkpoint(out / BEST_NAME, model, config, **common)
    if epoch % config.checkpoint_every == 0:
        save_checkpoint(out / f"epoch_{epoch:03d}.pt", model, config, **common)
    training = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "early_stopping": stopper.state_dict(),
        "history": history,
        "rng": _rng_state(),
    }
    save_checkpoint(out / LAST_NAME, model, config, training=training, **common)
    save_history(history, out)


def _restore(
    payload: dict[str, Any],
    model: FusionNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    stopper: EarlyStopping,
    history: list[dict[str, Any]],
    config: TrainConfig,
) -> int:
    """Load last.pt's resume state into the fresh objects; returns the number of finished epochs."""
    training = payload.get("training")
    if training is None:
        raise FuseError("this checkpoint has no resume state; resume from a run directory's last.pt")
    model.load_state_dict(payload["model"])
    # The optimizer's state tensors must live with the parameters: load after model.to(device).
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    set_schedule_epochs(scheduler, config.epochs)
    if training["scaler"]:
        scaler.load_state_dict(training["scaler"])
    stopper.load_state_dict(training["early_stopping"])
    history.extend(training["history"])
    _set_rng_state(training["rng"])
    return int(payload["epoch"])


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _silent(_: str) -> None:
    """Echo for ranks other than 0."""

