"""The optimisation schedule: AdamW with three parameter groups, warm-up + cosine LR, encoder freezing.

Design (model-design.md, "Learning Rate Schedule"): encoders 0.1×, fusion blocks 0.5×, decoder and
medical attention 1× the base learning rate; AdamW with weight decay 1e-4; a LambdaLR stepped once
per epoch whose factor is ``(e+1)/w`` for the ``w`` warm-up epochs and
``0.5 (1 + cos(π (e−w) / (E−w)))`` afterwards (``e`` counts epochs from 0, ``E`` is the epoch
count); the encoders are frozen for the first ``freeze_encoder_epochs`` epochs.

Every parameter is given to the optimizer from the start, frozen or not: AdamW skips a parameter
whose gradient is ``None``, so frozen weights neither move nor decay, and they start training the
moment they are unfrozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fuse_train.config import TrainConfig
from fuse_train.model import PARAMETER_GROUPS, parameter_group, set_encoders_frozen


@dataclass
class WarmupCosine:
    """LR factor of epoch ``epoch`` (0-based): linear warm-up, then cosine decay to 0 at ``epochs``.

    A small callable object rather than a closure so that ``LambdaLR.state_dict()`` stores its
    fields (plain ints) and a resumed run restores them.
    """

    warmup_epochs: int
    epochs: int

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        span = max(1, self.epochs - self.warmup_epochs)
        progress = min(1.0, (epoch - self.warmup_epochs) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def group_lr_scales(config: TrainConfig) -> dict[str, float]:
    """Each group's multiple of the base learning rate."""
    return {
        "encoder": config.lr_scale_encoder,
        "fusion": config.lr_scale_fusion,
        "decoder": config.lr_scale_decoder,
    }


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over all of ``model``'s parameters in the groups ``PARAMETER_GROUPS`` (each group has a ``name``)."""
    params: dict[str, list[nn.Parameter]] = {name: [] for name in PARAMETER_GROUPS}
    for name, param in model.named_parameters():
        params[parameter_group(name)].append(param)
    scales = group_lr_scales(config)
    groups = [
        {"name": name, "params": params[name], "lr": config.lr * scales[name]}
        for name in PARAMETER_GROUPS
        if params[name]
    ]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with ``WarmupCosine``; call ``step()`` once at the end of every epoch."""
    factor = WarmupCosine(config.warmup_epochs, config.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=[factor] * len(optimizer.param_groups))


def set_schedule_epochs(scheduler: torch.optim.lr_scheduler.LambdaLR, epochs: int) -> None:
    """Stretch a (restored) schedule to ``epochs`` in total, e.g. when a resumed run is extended."""
    for factor in scheduler.lr_lambdas:
        if isinstance(factor, WarmupCosine):
            factor.epochs = epochs


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each named group."""
    return {group.get("name", str(index)): float(group["lr"]) for index, group in enumerate(optimizer.param_groups)}


def encoders_frozen(epoch: int, config: TrainConfig) -> bool:
    """True while epoch ``epoch`` (0-based) is one of the first ``freeze_encoder_epochs``."""
    return epoch < config.freeze_encoder_epochs


def apply_freezing(model: nn.Module, epoch: int, config: TrainConfig) -> bool:
    """Put ``model`` in training mode with the encoders frozen or not for ``epoch``; returns frozen.

    Frozen encoders keep their BatchNorm in eval mode, so their running statistics do not drift
    either (the original notebook let them drift; we decided they stay put while frozen).
    """
    frozen = encoders_frozen(epoch, config)
    model.train()
    set_encoders_frozen(model, frozen)
    return frozen
