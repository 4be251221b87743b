"""TensorRT FP16 engines built from the exported FP16 ONNX, run on the GPU and compared to PyTorch.

Real builds and runs at 64 px with a batch profile of 1..4; they skip with the reason on machines
without a CUDA GPU or without TensorRT (``pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13])``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fuse_export.config import MODEL_FP16_ONNX, Tolerances
from fuse_export.fp16 import convert_to_fp16
from fuse_export.onnx_export import export_onnx
from fuse_runtime.errors import FuseError

SIZE = 64
BATCH = (1, 2, 4)
TOL = Tolerances()


def _missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed; pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13])"
    return None


pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def tensorrt_build():
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    from fuse_export import tensorrt_build

    return tensorrt_build


@pytest.fixture(scope="module")
def engine(tensorrt_build, torch_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    graph = export_onnx(torch_model, folder / "model.onnx", SIZE, 17)
    onnx.save(convert_to_fp16(graph), str(folder / MODEL_FP16_ONNX))
    cache = folder / "timing.cache"
    first = tensorrt_build.build_engine(folder / MODEL_FP16_ONNX, folder / "model.plan", SIZE, BATCH, 2.0, cache)
    return folder, first, cache


def test_engine_is_strongly_typed_and_records_the_gpu(engine):
    folder, build, cache = engine
    assert (folder / "model.plan").stat().st_size > 1_000_000
    assert build.typing == "strongly-typed"
    assert build.gpu["name"] == torch.cuda.get_device_name(0)
    assert build.gpu["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))
    used = Path(build.timing_cache)
    assert used.is_file() and used.stat().st_size > 0 and not build.timing_cache_reused
    assert used.name == f"timing-trt{build.tensorrt_version}-sm{build.gpu['compute_capability']}.cache"
    assert build.tf32 is False


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_engine_matches_pytorch_within_fp16_tolerance(
    engine, tensorrt_build, torch_model, samples_64, reference, batch
):
    folder, _, _ = engine
    ct, mri = samples_64.ct[:batch], samples_64.mri[:batch]
    fused = tensorrt_build.run_engine(folder / "model.plan", ct, mri)
    expected = reference(torch_model, ct, mri)
    diff = np.abs(fused.astype(np.float64) - expected)
    assert fused.shape == (batch, 3, SIZE, SIZE) and fused.dtype == np.float32
    assert diff.max() <= TOL.fp16_max_abs
    assert diff.mean() <= TOL.fp16_mean_abs
    assert 10 * np.log10(1.0 / np.mean(diff**2)) >= TOL.fp16_psnr_db


def test_second_build_reuses_the_timing_cache(engine, tensorrt_build):
    folder, _, cache = engine
    again = tensorrt_build.build_engine(folder / MODEL_FP16_ONNX, folder / "again.plan", SIZE, BATCH, 2.0, cache)
    assert again.timing_cache_reused


def test_batch_outside_the_profile_is_refused(engine, tensorrt_build, samples_64):
    folder, _, _ = engine
    ct = np.repeat(samples_64.ct[:1], 5, axis=0)
    mri = np.repeat(samples_64.mri[:1], 5, axis=0)
    with pytest.raises(FuseError, match="outside the engine's optimisation profile 1..4"):
        tensorrt_build.run_engine(folder / "model.plan", ct, mri)
