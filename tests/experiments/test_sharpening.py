"""experiments.sharpening: pixel max sharpened everywhere or only on strong edges, on real CT/MRI pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from experiments import sharpening as module
from experiments.sharpening import SharpenRule, run_sharpening, sharpen_max
from fuse_runtime import metrics
from fuse_runtime.errors import FuseError


def test_amount_zero_is_pixel_max(sources):
    ct, mri = sources
    assert np.array_equal(sharpen_max(ct, mri, SharpenRule(0.0)), np.maximum(ct, mri))


def test_edge_gate_changes_fewer_pixels_and_raises_spatial_frequency(sources):
    ct, mri = sources
    reference = np.maximum(ct, mri)
    everywhere, gated = (sharpen_max(ct, mri, SharpenRule(1.0, edge)) for edge in (0.0, 300.0))
    assert 0 < np.count_nonzero(gated != reference) < np.count_nonzero(everywhere != reference)
    assert metrics.spatial_frequency(gated) > metrics.spatial_frequency(reference)
    assert metrics.spatial_frequency(everywhere) > metrics.spatial_frequency(gated)
    assert gated.min() >= 0 and gated.max() <= metrics.PEAK and np.array_equal(gated, np.round(gated))


def test_report_scores_every_rule_on_every_pair(pair_name: str, harvard_test: Path, tmp_path: Path):
    data = tmp_path / "data"
    for modality in ("CT", "MRI"):
        (data / modality).mkdir(parents=True)
        for name in (pair_name, "12"):
            shutil.copy(harvard_test / modality / f"{name}.png", data / modality / f"{name}.png")
    result = CliRunner().invoke(module.main, ["--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / module.JSON_NAME).read_text())
    assert report["pairs"] == 2 and set(report["mean"]) == {rule.label for rule in module.DEFAULT_RULES}
    assert all(set(rows) == {pair_name, "12"} for rows in report["per_pair"].values())
    assert report["mean"]["pixel max"]["SF"] < report["mean"]["max + 1·unsharp, everywhere"]["SF"]
    assert "| pixel max |" in (tmp_path / "r" / module.MARKDOWN_NAME).read_text()


def test_folder_without_pairs_is_refused(tmp_path: Path):
    with pytest.raises(FuseError, match="no CT/MRI pairs"):
        run_sharpening(tmp_path)
