"""fuse_export.tensorrt_build against a stand-in ``tensorrt`` module, on the CPU.

The stand-in records what the build asks of TensorRT, so the build's decisions (TF32 off, keyed
timing cache, a None timing cache, a builder that cannot start, one logger, one deserialisation per
parity run on a real stream, no BuilderFlag.FP16 on TensorRT 11) are checked without a GPU. That the
names used exist in the real TensorRT 10 and 11 bindings is test_tensorrt_api.py's job.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fuse_runtime.errors import FuseError

SIZE = 8


class Flag(enum.IntEnum):
    TF32 = 0
    FP16 = 1


class FlagNoFP16(enum.IntEnum):
    TF32 = 0


class FakeTensorRT(types.ModuleType):
    """Just enough of TensorRT's Python API; ``calls`` records what happened."""

    def __init__(self, version: str = "10.16.1.11", fp16_flag: bool = True, builder_error: Exception | None = None,
                 timing_cache_none: bool = False) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        self.BuilderFlag = Flag if fp16_flag else FlagNoFP16
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.DataType = types.SimpleNamespace(HALF="half", FLOAT="float")
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                fake.calls.append(("Logger", level))

        self.Logger = Logger

        class Config:
            def __init__(self) -> None:
                self.flags: set = {Flag.TF32}  # TensorRT's default: TF32 on
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def set_flag(self, flag):
                self.flags.add(flag)

            def clear_flag(self, flag):
                self.flags.discard(flag)

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", profile.shapes))

            def create_timing_cache(self, blob):
                fake.calls.append(("create_timing_cache", bytes(blob)))
                return None if timing_cache_none else ("cache", bytes(blob))

            def set_timing_cache(self, cache, ignore_mismatch):
                assert ignore_mismatch is False
                self.cache = cache
                return True

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"timings-" + fake.__version__.encode())

        class Profile:
            def __init__(self) -> None:
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (low, opt, high)

        class Builder:
            def __init__(self, logger) -> None:
                if builder_error is not None:
                    raise builder_error
                fake.calls.append(("Builder", logger))

            def create_network(self, flags):
                fake.calls.append(("network_flags", flags))
                return object()

            def create_builder_config(self):
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", frozenset(config.flags)))
                return b"PLAN"

        self.Builder = Builder

        class Parser:
            num_errors = 0

            def __init__(self, network, logger) -> None:
                fake.calls.append(("OnnxParser", logger))

            def parse_from_file(self, path):
                return True

        self.OnnxParser = Parser

        class Context:
            def __init__(self) -> None:
                self.shapes = {}

            def set_input_shape(self, name, shape):
                self.shapes[name] = shape
                return True

            def set_tensor_address(self, name, pointer):
                return True

            def get_tensor_shape(self, name):
                return (self.shapes["ct"][0], 3, SIZE, SIZE)

            def execute_async_v3(self, stream_handle):
                fake.calls.append(("execute", stream_handle))
                return True

        class Engine:
            def create_execution_context(self):
                return Context()

            def get_tensor_profile_shape(self, name, index):
                return [(1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), (4, 3, SIZE, SIZE)]

            def get_tensor_dtype(self, name):
                return "float"

        class Runtime:
            def __init__(self, logger) -> None:
                fake.calls.append(("Runtime", logger))

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", bytes(data)))
                return Engine() if data == b"PLAN" else None

        self.Runtime = Runtime

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)


class FakeStream:
    cuda_stream = 0xBEEF

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


def _load(monkeypatch: pytest.MonkeyPatch, fake: FakeTensorRT):
    """Import fuse_export.tensorrt_build (and the shared logger) against ``fake``, on the CPU."""
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.delitem(sys.modules, "fuse_export.tensorrt_build", raising=False)
    module = importlib.import_module("fuse_export.tensorrt_build")
    monkeypatch.setattr(
        module, "gpu_info", lambda device=0: {"name": "Fake H100", "compute_capability": "9.0", "device_index": device}
    )
    monkeypatch.setattr(module, "_torch_device", lambda index: torch.device("cpu"))
    monkeypatch.setattr(module, "_new_stream", lambda device: FakeStream())
    monkeypatch.setattr(module, "_current_stream", lambda device: FakeStream())
    monkeypatch.setattr(
        module, "versions_text", lambda trt, cuda, device=0: f"driver 999.1, CUDA runtime {cuda}, TensorRT {trt}"
    )
    monkeypatch.setattr(module.torch.version, "cuda", "12.8")
    return module


def _build(module, tmp_path: Path, **kwargs):
    (tmp_path / "model.fp16.onnx").write_bytes(b"onnx")
    return module.build_engine(
        tmp_path / "model.fp16.onnx", tmp_path / "model.plan", SIZE, (1, 2, 4), 1.0,
        tmp_path / "cache" / "timing.cache",
        **kwargs,
    )


def test_tf32_is_off_unless_asked_for(monkeypatch, tmp_path):
    fake = FakeTensorRT()
    module = _load(monkeypatch, fake)
    build = _build(module, tmp_path)
    assert [c[1] for c in fake.calls if c[0] == "build"] == [frozenset()] and build.tf32 is False
    _build(module, tmp_path, tf32=True)
    assert [c[1] for c in fake.calls if c[0] == "build"][-1] == frozenset({Flag.TF32})


def test_timing_cache_is_keyed_by_tensorrt_version_and_gpu(monkeypatch, tmp_path):
    fake = FakeTensorRT("10.16.1.11")
    module = _load(monkeypatch, fake)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "timing.cache").write_bytes(b"old unkeyed cache of some other TensorRT")
    other = tmp_path / "cache" / "timing-trt11.4.0.106-sm9.0.cache"
    other.write_bytes(b"timings of TensorRT 11")
    first = _build(module, tmp_path)
    mine = tmp_path / "cache" / "timing-trt10.16.1.11-sm9.0.cache"
    assert first.timing_cache == str(mine) and not first.timing_cache_reused
    assert mine.read_bytes() == b"timings-10.16.1.11"
    read = [c[1] for c in fake.calls if c[0] == "create_timing_cache"]
    assert read == [b""], "no cache of another TensorRT or GPU may be read"
    second = _build(module, tmp_path)
    assert second.timing_cache_reused and fake.calls[-1] != ("create_timing_cache", b"timings of TensorRT 11")
    assert other.read_bytes() == b"timings of TensorRT 11"


def test_a_timing_cache_tensorrt_cannot_create_does_not_break_the_build(monkeypatch, tmp_path):
    fake = FakeTensorRT(timing_cache_none=True)
    module = _load(monkeypatch, fake)
    build = _build(module, tmp_path)
    assert (tmp_path / "model.plan").read_bytes() == b"PLAN"
    assert build.timing_cache == "" and not build.timing_cache_reused
    assert list(tmp_path.rglob("*.cache")) == []


def test_a_builder_that_cannot_start_is_a_fuse_error_with_versions_and_fix(monkeypatch, tmp_path):
    error = TypeError("pybind11::init(): factory function returned nullptr")
    module = _load(monkeypatch, FakeTensorRT(builder_error=error))
    with pytest.raises(FuseError) as caught:
        _build(module, tmp_path)
    message = str(caught.value)
    assert "builder cannot start" in message and "driver 999.1" in message and "CUDA runtime 12.8" in message
    assert "TensorRT 10.16.1.11" in message and "gpu-cu12" in message and "model.fp16.onnx" in message


def test_tensorrt_11_builds_strongly_typed_without_builder_flag_fp16(monkeypatch, tmp_path):
    fake = FakeTensorRT("11.4.0.106", fp16_flag=False)
    module = _load(monkeypatch, fake)
    build = _build(module, tmp_path)
    assert build.typing == "strongly-typed" and ("network_flags", 1 << 1) in fake.calls


def test_one_logger_and_one_deserialisation_per_parity_run_on_a_real_stream(monkeypatch, tmp_path):
    fake = FakeTensorRT()
    module = _load(monkeypatch, fake)
    from fuse_runtime.engines import nvidia

    nvidia.shared_logger.cache_clear()
    _build(module, tmp_path)
    _build(module, tmp_path)
    runner = module.PlanRunner(tmp_path / "model.plan")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 4):
        ct = rng.random((batch, 3, SIZE, SIZE), dtype=np.float32)
        out = runner(ct, ct[:, :1])
        assert out.shape == (batch, 3, SIZE, SIZE)
    assert fake.count("Logger") == 1
    assert fake.count("deserialize") == 1
    assert [c[1] for c in fake.calls if c[0] == "execute"] == [0xBEEF] * 3, "the legacy default stream is 0"
    with pytest.raises(FuseError, match="outside the engine's optimisation profile 1..4"):
        runner(np.zeros((5, 3, SIZE, SIZE), np.float32), np.zeros((5, 1, SIZE, SIZE), np.float32))


def test_a_plan_of_another_gpu_or_tensorrt_is_refused_with_versions(monkeypatch, tmp_path):
    module = _load(monkeypatch, FakeTensorRT())
    (tmp_path / "model.plan").write_bytes(b"plan of another GPU")
    with pytest.raises(FuseError, match="built for another GPU or TensorRT version") as caught:
        module.PlanRunner(tmp_path / "model.plan")
    assert "fuse-export --fp16" in str(caught.value) and "TensorRT 10.16.1.11" in str(caught.value)
