"""The optimisation schedule: parameter groups, the LR of each group per epoch, encoder freezing."""

from __future__ import annotations

import math

import pytest
import torch

from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.config import TrainConfig
from fuse_train.data import FusionDataset, load_training_data
from fuse_train.losses import FusionLoss
from fuse_train.model import PARAMETER_GROUPS, FusionNet
from fuse_train.schedule import (
    WarmupCosine,
    apply_freezing,
    build_optimizer,
    build_scheduler,
    group_lrs,
    set_schedule_epochs,
)
from fuse_train.trainer import Precision, train_step

SIZE = 64
FP32 = Precision(None, False)


def design_lr(base: float, scale: float, epoch: int, warmup: int, epochs: int) -> float:
    """model-design.md: (e+1)/w during warm-up, then 0.5 (1 + cos(π (e − w) / (E − w)))."""
    if epoch < warmup:
        return base * scale * (epoch + 1) / warmup
    return base * scale * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


@pytest.fixture(scope="module")
def model() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet(imagenet=False)


@pytest.fixture(scope="module")
def batch(harvard_train) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real Harvard pairs (two patients) at 64 px."""
    config = TrainConfig(max_pairs=2, crop_size=SIZE, preprocess=PreprocessConfig(image_size=SIZE))
    data = load_training_data(harvard_train, config)
    items = [FusionDataset(data.train + data.val, config, train=False)[i] for i in range(2)]
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def test_every_parameter_is_in_the_group_its_name_says(model):
    optimizer = build_optimizer(model, TrainConfig())
    by_group = {group["name"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    expected = {name: set() for name in PARAMETER_GROUPS}
    for name, param in model.named_parameters():
        if name.startswith(("ct_encoder.", "mri_encoder.")):
            expected["encoder"].add(id(param))
        elif name.startswith("fusion"):
            expected["fusion"].add(id(param))
        else:  # decoder1-4, final head, medical attention
            expected["decoder"].add(id(param))
    assert by_group == expected
    assert all(expected.values())
    assert optimizer.defaults["weight_decay"] == pytest.approx(1e-4)
    assert all(group["weight_decay"] == pytest.approx(1e-4) for group in optimizer.param_groups)


CONFIGS = {
    "design": TrainConfig(),
    "short": TrainConfig(lr=1e-3, epochs=10, warmup_epochs=2, lr_scale_encoder=0.2),
}


@pytest.mark.parametrize(
    "config_name, epoch",
    [("design", e) for e in (0, 1, 2, 3, 4, 5, 10, 16, 29)] + [("short", e) for e in (0, 1, 2, 5, 9)],
)
def test_group_lr_at_epoch_follows_the_design_formula(model, config_name, epoch):
    config = CONFIGS[config_name]
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    for _ in range(epoch):  # stepped once at the end of every epoch
        optimizer.step()
        scheduler.step()
    scales = {"encoder": config.lr_scale_encoder, "fusion": config.lr_scale_fusion, "decoder": config.lr_scale_decoder}
    lrs = group_lrs(optimizer)
    for group in PARAMETER_GROUPS:
        expected = design_lr(config.lr, scales[group], epoch, config.warmup_epochs, config.epochs)
        assert lrs[group] == pytest.approx(expected, rel=1e-9, abs=1e-15), group


def test_design_lr_values_at_landmark_epochs():
    factor = WarmupCosine(warmup_epochs=3, epochs=30)
    assert [factor(e) for e in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factor(3) == pytest.approx(1.0)
    assert factor(16) == pytest.approx(0.5 * (1 + math.cos(math.pi * 13 / 27)))
    assert factor(30) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_state_round_trip_keeps_and_can_extend_the_schedule(model):
    config = TrainConfig(epochs=10)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    restored_optimizer = build_optimizer(model, TrainConfig(epochs=99))
    restored_optimizer.load_state_dict(optimizer.state_dict())
    restored = build_scheduler(restored_optimizer, TrainConfig(epochs=99))
    restored.load_state_dict(state)
    assert restored.lr_lambdas[0].epochs == 10  # the saved schedule, not the new object's
    set_schedule_epochs(restored, 20)
    restored_optimizer.step()
    restored.step()
    assert group_lrs(restored_optimizer)["decoder"] == pytest.approx(design_lr(1e-5, 1.0, 5, 3, 20))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("epoch, frozen", [(0, True), (4, True), (5, False), (12, False)])
def test_encoders_are_frozen_for_the_first_freeze_epochs(model, epoch, frozen):
    assert apply_freezing(model, epoch, TrainConfig()) is frozen
    encoder_params = [p for name, p in model.named_parameters() if "_encoder." in name]
    assert all(p.requires_grad is not frozen for p in encoder_params)
    assert all(m.training is not frozen for name, m in model.named_modules() if name.endswith("_encoder"))
    assert model.decoder1.training and model.fusion1.training


def test_gradients_reach_exactly_the_trainable_groups_and_frozen_weights_hold(batch):
    """One step in a frozen epoch, then one after unfreezing, on the same model and optimizer."""
    torch.manual_seed(1)
    model = FusionNet(imagenet=False)
    config = TrainConfig(lr=1e-3)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss = FusionLoss(config.loss)
    for epoch in (config.freeze_encoder_epochs - 1, config.freeze_encoder_epochs):
        frozen = apply_freezing(model, epoch, config)
        before = _snapshot(model)
        train_step(model, *batch, loss, optimizer, scaler, FP32, config.gradient_clip)
        _check_step(optimizer, before, model.state_dict(), frozen)


def _check_step(optimizer, before, after, frozen: bool) -> None:
    for group in optimizer.param_groups:
        grads = [p.grad for p in group["params"]]
        if group["name"] == "encoder" and frozen:
            assert all(g is None for g in grads), "a frozen encoder received gradients"
        else:
            assert all(g is not None for g in grads), f"{group['name']}: some parameters got no gradient"
            assert sum(float(g.abs().sum()) for g in grads) > 0, group["name"]
    for prefix in ("ct_encoder.", "mri_encoder."):
        moved = [k for k in after if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        if frozen:  # weights and BatchNorm running statistics hold still
            assert moved == [], f"frozen {prefix} changed: {moved[:3]}"
        else:
            assert any(k.endswith("conv1.weight") for k in moved)
            assert any(k.endswith("running_mean") for k in moved)
    others = [k for k in after if not k.startswith(("ct_encoder.", "mri_encoder.")) and k.endswith("weight")]
    assert all(not torch.equal(before[k], after[k]) for k in others)
