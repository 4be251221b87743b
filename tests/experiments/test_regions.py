"""experiments.regions: the model's output inside and outside saturated CT bone, on real CT/MRI pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.quality import read_gray8
from experiments import regions as module
from experiments.regions import RegionRule, bone_mask, compose
from experiments.sharpening import sharpen_max
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError


def test_bone_mask_is_saturated_ct_grown_by_one_pixel(sources):
    ct, _ = sources
    mask = bone_mask(ct)
    saturated = ct >= module.SATURATED_CT
    assert saturated.any() and (mask >= saturated).all()
    assert mask.sum() > saturated.sum()
    rim = mask & ~saturated
    padded = np.pad(saturated, 1)
    touches = np.zeros_like(saturated)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            touches |= padded[1 + dy : 1 + dy + ct.shape[0], 1 + dx : 1 + dx + ct.shape[1]]
    assert (touches[rim]).all() and not (mask & ~touches).any()


def test_each_part_fills_only_its_region(sources):
    ct, mri = sources
    fused = np.zeros_like(ct)
    mask = bone_mask(ct)
    inside = compose(ct, mri, fused, RegionRule("model", "max"))
    assert (inside[mask] == 0).all() and (inside[~mask] == np.maximum(ct, mri)[~mask]).all()
    outside = compose(ct, mri, fused, RegionRule("max", "model"))
    assert (outside[~mask] == 0).all() and (outside[mask] == np.maximum(ct, mri)[mask]).all()
    half = compose(ct, mri, fused, RegionRule("half model", "sharpened max"))
    assert (half[mask] == np.round(np.maximum(ct, mri) / 2)[mask]).all()
    assert (half[~mask] == sharpen_max(ct, mri, module.SHARPENING)[~mask]).all()
    assert not np.array_equal(sharpen_max(ct, mri, module.SHARPENING), np.maximum(ct, mri))


def test_labels_name_both_regions():
    assert RegionRule("model", "model").label == "model"
    assert RegionRule("model", "max").label == "model in bone, max elsewhere"


def test_bad_inputs_are_refused(sources):
    ct, mri = sources
    with pytest.raises(FuseError, match="one shape"):
        compose(ct, mri, ct[:-1], RegionRule("model", "max"))
    with pytest.raises(FuseError, match="unknown part 'mean'"):
        compose(ct, mri, ct, RegionRule("mean", "max"))


def test_cli_scores_every_rule_for_a_checkpoint(pair_name: str, diagnostic_inputs: tuple[Path, Path], tmp_path: Path):
    data, checkpoint = diagnostic_inputs
    out = tmp_path / "R"
    result = CliRunner().invoke(module.main, ["--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / module.JSON_NAME).read_text())
    assert set(report["mean"]) == {rule.label for rule in module.DEFAULT_RULES}
    ct, mri = read_gray8(data / "CT" / f"{pair_name}.png"), read_gray8(data / "MRI" / f"{pair_name}.png")
    expected = metrics.evaluate(ct, mri, np.maximum(ct, mri))["MI"]
    assert report["per_pair"]["max"][pair_name]["MI"] == pytest.approx(expected)
    assert report["per_pair"]["model"][pair_name]["MI"] != pytest.approx(expected)
    assert "model in bone, max elsewhere" in (out / module.MARKDOWN_NAME).read_text()


def test_cli_without_a_model_is_refused(harvard_test: Path, tmp_path: Path):
    result = CliRunner().invoke(module.main, ["--data", str(harvard_test), "--out", str(tmp_path / "R")])
    assert result.exit_code == 1 and "exactly one" in result.output
    assert not (tmp_path / "R").exists()
