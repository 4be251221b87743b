"""experiments.departure: where a fused image departs from pixel max, on real CT/MRI pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.quality import read_gray8
from experiments import departure as module
from experiments.departure import departure
from fuse_runtime.errors import FuseError


def test_pixel_max_does_not_depart(sources):
    ct, mri = sources
    result = departure(ct, mri, np.maximum(ct, mri))
    assert result["background nonzero"] == 0.0
    assert result["foreground bias"] == 0.0 and result["foreground abs"] == 0.0
    assert result["saturated CT bias"] == 0.0
    assert result["MRI edges in saturated CT"] > 0.0


def test_each_region_is_measured_on_its_own(sources):
    ct, mri = sources
    reference = np.maximum(ct, mri)
    lit_background = np.where(reference == 0, 1.0, reference)
    assert departure(ct, mri, lit_background)["background nonzero"] == 1.0
    assert departure(ct, mri, lit_background)["foreground abs"] == 0.0
    darker_bone = np.where(ct >= 255, 215.0, reference)
    result = departure(ct, mri, darker_bone)
    assert result["saturated CT bias"] == -40.0
    assert -40.0 < result["foreground bias"] < 0.0 and result["background nonzero"] == 0.0


def test_mismatched_shapes_are_refused(sources):
    ct, mri = sources
    with pytest.raises(FuseError, match="one shape"):
        departure(ct, mri, ct[:-1])


def test_cli_writes_json_and_markdown_for_a_checkpoint(
    pair_name: str, diagnostic_inputs: tuple[Path, Path], tmp_path: Path
):
    data, checkpoint = diagnostic_inputs
    out = tmp_path / "R"
    result = CliRunner().invoke(module.main, ["--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / module.JSON_NAME).read_text())
    assert sorted(report["pairs"]) == sorted([pair_name, "17"]) and set(report["mean"]) == set(module.FIELDS)
    ct, mri = read_gray8(data / "CT" / f"{pair_name}.png"), read_gray8(data / "MRI" / f"{pair_name}.png")
    expected = departure(ct, mri, np.maximum(ct, mri))["MRI edges in saturated CT"]
    assert report["pairs"][pair_name]["MRI edges in saturated CT"] == pytest.approx(expected)
    assert "background nonzero" in (out / module.MARKDOWN_NAME).read_text()


def test_cli_without_a_model_is_refused(harvard_test: Path, tmp_path: Path):

    result = CliRunner().invoke(module.main, ["--data", str(harvard_test), "--out", str(tmp_path / "R")])
    assert result.exit_code == 1 and "exactly one" in result.output
    assert not (tmp_path / "R").exists()
