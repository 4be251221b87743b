"""fuse_runtime.cpu_features: one native-bf16 answer for x86 and Arm flags, shared by the OpenVINO
engine, choose_backend and fuse-train's --precision auto."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuse_runtime import cpu_features
from fuse_runtime.cpu_features import cpu_flags, has_native_bf16, native_bf16
from fuse_runtime.engines import openvino_engine

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ARM_BF16 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes sha2 crc32 sve bf16 i8mm\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(AVX2_ONLY, False), (AMX, True), (ARM_BF16, True), (ARM_PLAIN, False), ("/nonexistent/cpuinfo", False)],
)
def test_x86_and_arm_flags_give_one_answer(cpuinfo: str, native: bool) -> None:
    assert has_native_bf16(cpuinfo) is native
    assert native_bf16(cpuinfo)[0] is native


def test_flags_come_from_flags_and_features_lines(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(ARM_BF16)
    assert {"asimd", "bf16", "sve"} <= cpu_flags(path)
    assert "2100.00" not in cpu_flags(path)
    assert cpu_flags(tmp_path / "missing") is None
    assert "(bf16)" in native_bf16(path)[1]


def test_the_engine_and_the_trainer_ask_the_same_function() -> None:
    from fuse_train import trainer

    assert openvino_engine.native_bf16 is cpu_features.native_bf16
    assert trainer.has_native_bf16 is cpu_features.has_native_bf16


@pytest.mark.parametrize(
    ("cpuinfo", "native", "words"),
    [
        ("flags\t\t: fpu avx2 avx512f avx512_vnni\n", True, "(avx512_vnni)"),
        ("flags\t\t: fpu avx2 avx_vnni amx_int8\n", True, "(amx_int8, avx_vnni)"),
        ("flags\t\t: fpu sse2 avx avx2 fma\n", False, "no int8 dot products"),
    ],
)
def test_int8_dot_products_are_read_from_the_same_flags(cpuinfo: str, native: bool, words: str) -> None:
    found, why = cpu_features.native_int8(cpuinfo)
    assert found == native and words in why
