"""ExportConfig and Tolerances: the defaults of the issue, and a table of bad values that must raise."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuse_export.config import ExportConfig, Tolerances, check_image_size


def test_defaults():
    config = ExportConfig()
    assert (config.opset, config.batch, config.image_size, config.workspace_gb) == (17, (1, 8, 32), None, 4.0)
    assert not config.builds_engine and ExportConfig(fp16=True).builds_engine
    assert not ExportConfig(fp16=True, onnx_only=True).builds_engine
    assert Tolerances() == Tolerances(1e-4, 2e-3, 2e-2, 40.0)


def test_timing_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ExportConfig().resolved_timing_cache() == tmp_path / "fuse" / "tensorrt-timing.cache"
    assert ExportConfig(timing_cache=Path("x.cache")).resolved_timing_cache() == Path("x.cache")


def test_to_dict_is_json_ready():
    data = ExportConfig(image_size=64, parity_data=Path("/d")).to_dict()
    assert data["batch"] == [1, 8, 32] and data["parity_data"] == "/d" and data["tolerances"]["fp32_max_abs"] == 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 48}, "multiple of 32"),
        ({"image_size": 16}, "multiple of 32"),
        ({"opset": 16}, "opset"),
        ({"opset": 21}, "opset"),
        ({"batch": (0, 1, 2)}, "batch"),
        ({"batch": (4, 2, 8)}, "batch"),
        ({"workspace_gb": -1.0}, "workspace_gb"),
        ({"parity_pairs": 0}, "parity_pairs"),
    ],
)
def test_bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExportConfig(**kwargs)


@pytest.mark.parametrize("name", ["fp32_max_abs", "fp16_mean_abs", "fp16_max_abs", "fp16_psnr_db"])
def test_non_positive_tolerances_raise(name):
    with pytest.raises(ValueError, match=name):
        Tolerances(**{name: 0.0})


@pytest.mark.parametrize(("size", "ok"), [(32, True), (64, True), (256, True), (96, True), (0, False), (250, False)])
def test_check_image_size(size, ok):
    if ok:
        assert check_image_size(size) == size
    else:
        with pytest.raises(ValueError, match="multiple of 32"):
            check_image_size(size)
