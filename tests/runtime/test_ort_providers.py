"""ONNX Runtime on GPUs: the providers and options a session gets, --device, a missing ONNX Runtime.

The provider construction is a pure function, so it is checked here on the CPU; the sessions
themselves run on a GPU in scripts/gpu_check.sh.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from engine_models import write_max_fusion_onnx

from fuse_runtime import cli
from fuse_runtime.engines import open_engine
from fuse_runtime.engines.onnxruntime_engine import (
    PROVIDERS,
    TRT_CACHE_DIR,
    session_providers,
)
from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig

ALL = [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
BATCH = {"min": 2, "opt": 8, "max": 16}
SIZE = 64


def test_tensorrt_gets_fp16_caches_and_the_manifest_profile_then_cuda_then_cpu(tmp_path: Path) -> None:
    model = tmp_path / "export" / "model.onnx"
    providers = session_providers("tensorrt", ALL, model, BATCH, 256, 3, "NVIDIA H200-sm9.0", "10.16.1.11")
    assert [name for name, _ in providers] == ALL
    trt, cuda, cpu = (options for _, options in providers)
    cache = str(tmp_path / "export" / TRT_CACHE_DIR / "trt10.16.1.11-NVIDIA_H200_sm9.0")
    assert trt == {
        "device_id": 3,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": "ct:2x3x256x256,mri:2x1x256x256",
        "trt_profile_opt_shapes": "ct:8x3x256x256,mri:8x1x256x256",
        "trt_profile_max_shapes": "ct:16x3x256x256,mri:16x1x256x256",
    }
    assert cuda == {"device_id": 3} and cpu == {}


def test_caches_of_another_tensorrt_or_gpu_live_apart(tmp_path: Path) -> None:
    paths = {
        session_providers(
            "tensorrt", ALL, tmp_path / "m.onnx", BATCH, 64, 0, gpu, version
        )[0][1]["trt_engine_cache_path"]
        for gpu, version in (("H100-sm9.0", "10.16.1.11"), ("H100-sm9.0", "11.4.0.106"), ("L4-sm8.9", "10.16.1.11"))
    }
    assert len(paths) == 3


def test_cuda_and_cpu_chains_and_missing_providers(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    assert session_providers("cuda", ALL, model, BATCH, 64, 1) == [
        (PROVIDERS["cuda"], {"device_id": 1}), (PROVIDERS["cpu"], {})
    ]
    assert session_providers("cpu", ALL, model, BATCH, 64, 1) == [(PROVIDERS["cpu"], {})]
    without_cuda = session_providers("tensorrt", [PROVIDERS["tensorrt"], PROVIDERS["cpu"]], model, BATCH, 64)
    assert [name for name, _ in without_cuda] == [PROVIDERS["tensorrt"], PROVIDERS["cpu"]]


def test_no_manifest_leaves_the_profile_to_tensorrt(tmp_path: Path) -> None:
    options = session_providers("tensorrt", ALL, tmp_path / "m.onnx", BATCH, None, 0, "g", "10")[0][1]
    assert not any(key.startswith("trt_profile") for key in options) and options["trt_fp16_enable"] is True


def test_cpu_session_names_its_providers_and_refuses_a_negative_device(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, PreprocessConfig(image_size=SIZE))
    with open_engine(model, provider="cpu", device=0) as engine:
        assert "providers cpu" in engine.description
    with pytest.raises(FuseError, match="device must be"):
        open_engine(model, provider="cpu", device=-1)


def test_fuse_run_passes_device_to_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_open_engine(path, **kwargs):
        seen.update(kwargs)
        raise FuseError("stop here", path)

    monkeypatch.setattr(cli, "open_engine", fake_open_engine)
    (tmp_path / "in").mkdir()
    (tmp_path / "model.onnx").write_bytes(b"")
    args = ["--engine", str(tmp_path / "model.onnx"), "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli.main, [*args, "--device", "2"])
    assert result.exit_code == 2 and seen["device"] == 2
    CliRunner().invoke(cli.main, args)
    assert seen["device"] == 0
    assert CliRunner().invoke(cli.main, [*args, "--device", "-1"]).exit_code == 2


def test_without_onnxruntime_the_error_says_which_flavour_to_add(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, PreprocessConfig(image_size=SIZE))
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from fuse_runtime.engines import open_engine\n"
        "from fuse_runtime.errors import FuseError\n"
        f"try:\n    open_engine({str(model)!r}, backend='onnxruntime')\n"
        "except FuseError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ONNX Runtime is not installed" in out
    assert "fuse-ctmri[cpu]" in out and "fuse-ctmri[gpu-cu12]" in out and "model.onnx" in out


def test_fuse_export_without_onnxruntime_says_which_flavour_to_add() -> None:
    code = "import sys; sys.modules['onnxruntime'] = None\nimport fuse_export\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "fuse-export needs ONNX Runtime" in result.stderr
    assert "fuse-ctmri[cpu]" in result.stderr
