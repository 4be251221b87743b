"""The release recipe (configs/release/*.json) is valid and differs from the design only where the README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuse_train.cli import build_config
from fuse_train.config import LossWeights, TrainConfig

RELEASE = Path(__file__).resolve().parents[2] / "configs" / "release"


@pytest.mark.parametrize(("name", "task"), [("visir.json", "vis-ir"), ("ctmri.json", "ct-mri")])
def test_release_configs_build_and_state_their_changes(name: str, task: str) -> None:
    config = build_config(RELEASE / name, {})
    design = TrainConfig()
    assert config.task == task
    assert config.head == "select" and design.head == "design"
    assert config.preprocess.clahe is False and design.preprocess.clahe is True
    assert config.crop_size == 96 and config.imagenet is False
    assert config.epochs * (config.preprocess.image_size // config.crop_size) ** 2 <= 4 * design.epochs
    unchanged = ("batch_size", "weight_decay", "lr_scale_encoder", "lr_scale_fusion", "gradient_clip")
    assert all(getattr(config, field) == getattr(design, field) for field in unchanged)


def test_ctmri_release_changes_only_the_stated_loss_settings() -> None:
    """README "Release model": vector detail target ×1.5 on strong edges at weight 160, structure 2,
    no consistency or gradient term, the VIF, MI and SSIM metric terms; content and medical stay the
    design's, and the Qabf term stays off."""
    loss = build_config(RELEASE / "ctmri.json", {}).loss
    design = LossWeights()
    changed = {k for k, v in vars(loss).items() if v != getattr(design, k)}
    assert changed == {
        "detail", "detail_gain", "detail_gain_edge", "detail_target", "structure", "consistency", "gradient",
        "vif", "mi", "ssim",
    }
    assert loss.detail_target == "vector" and loss.detail_gain > 1.0 and loss.detail > design.detail
    assert loss.detail_gain_edge > 0.0 and min(loss.vif, loss.mi, loss.ssim) > 0.0 and loss.qabf == 0.0
    assert loss.consistency == 0.0 and loss.gradient == 0.0 and loss.structure < design.structure


def test_visir_pretraining_keeps_the_design_loss() -> None:
    assert build_config(RELEASE / "visir.json", {}).loss == LossWeights()


def test_command_line_overrides_the_release_file() -> None:
    config = build_config(
        RELEASE / "ctmri.json", {"epochs": 3, "loss__detail": 5.0, "loss__detail_target": "magnitude"}
    )
    assert config.epochs == 3 and config.loss.detail == 5.0 and config.head == "select"
    assert config.loss.detail_target == "magnitude" and config.loss.detail_gain == 1.5
