"""OpenVINO engine: same output as ONNX Runtime FP32 on real pairs, dynamic batch, the precision it
chose and why, --backend refusals, and fuse-run --backend openvino end to end (64 px, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from engine_models import build_scan_tree, read_output, reference_fusion, write_max_fusion_onnx

from fuse_export.config import ExportConfig
from fuse_export.parity import Samples, load_samples
from fuse_export.pipeline import run_export
from fuse_runtime.cli import main
from fuse_runtime.engines import choose_backend, open_engine
from fuse_runtime.engines.openvino_engine import OpenVinoEngine, native_bf16
from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import find_pairs, load_pair
from fuse_runtime.preprocess import PreprocessConfig, prepare_pair
from fuse_train.checkpoint import save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

SIZE = 64
FP32_TOLERANCE = 1e-4
BF16_MEAN_LEVELS = 2.0
"""Largest mean |OpenVINO bf16 − ONNX Runtime fp32| per written file, in 8-bit levels."""
BF16_MAX_LEVELS = 32
"""Largest single-pixel difference in 8-bit levels under bf16 (an eighth of the range)."""
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, harvard_train: Path, harvard_test: Path) -> Path:
    """fuse-export's model.onnx (+ manifest.json) of a random FusionNet whose BatchNorm statistics
    come from real training pairs, so its output varies like a trained model's (not a constant)."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = FusionNet(imagenet=False)
    pairs = find_pairs(harvard_train).pairs[::20]
    prepared = [prepare_pair(*load_pair(p), p.roles, PreprocessConfig(image_size=SIZE)) for p in pairs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None
        with torch.no_grad():
            model.train()(torch.from_numpy(np.concatenate([p.first for p in prepared])),
                          torch.from_numpy(np.concatenate([p.second for p in prepared])))
        config = TrainConfig(preprocess=PreprocessConfig(image_size=SIZE), crop_size=SIZE)
        save_checkpoint(folder / "model.pt", model.eval(), config, epoch=1, val_loss=None)
        export = ExportConfig(image_size=SIZE, simplify=False, parity_pairs=1, parity_data=harvard_test)
        run_export(folder / "model.pt", folder / "out", export, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return folder / "out" / "model.onnx"


@pytest.fixture(scope="module")
def samples(harvard_test: Path) -> Samples:
    return load_samples(harvard_test, PreprocessConfig(image_size=SIZE), 6)


@pytest.mark.parametrize("batch", [1, 3])
def test_output_equals_onnxruntime_fp32_on_real_pairs(exported: Path, samples: Samples, batch: int) -> None:
    with (
        OpenVinoEngine(exported, threads=1, precision="f32") as ov,
        open_engine(exported, provider="cpu", threads=1) as ort,
    ):
        assert ov.batch_range[0] == 1 and ov.batch_range[1] >= 8
        assert ov.preprocess == ort.preprocess and ov.image_size == SIZE
        for start in range(0, len(samples.names), batch):
            ct, mri = samples.ct[start : start + batch], samples.mri[start : start + batch]
            fused, expected = ov.infer(ct, mri), ort.infer(ct, mri)
            assert fused.shape == (len(ct), 3, SIZE, SIZE) and fused.dtype == np.float32
            np.testing.assert_allclose(fused, expected, rtol=0, atol=FP32_TOLERANCE)
        assert float(fused.std()) > 1e-3, "the test model's output should not be constant"


def test_auto_precision_and_notice_follow_this_cpu(exported: Path) -> None:
    native, reason = native_bf16()
    with open_engine(exported, backend="openvino", threads=1) as engine:
        offered = "bf16" if native and engine.precision == "bf16" else "f32"
        assert engine.precision == offered
        assert engine.notices[0].startswith(f"OpenVINO CPU, {engine.precision}: ")
        assert engine.provider == "cpu" and engine.backend == "openvino"
        assert f"(cpu, {engine.precision})" in engine.description and "OpenVINO" in engine.description
        if not native:
            assert engine.notices == [f"OpenVINO CPU, f32: {reason}"]


@pytest.mark.parametrize(
    ("cpuinfo", "native", "words"),
    [
        (AVX2_ONLY, False, "no native bf16 (AVX512-BF16/AMX)"),
        (AMX, True, "amx_bf16, avx512_bf16"),
        ("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n", True, "(avx512_bf16)"),
        ("/nonexistent/cpuinfo", False, "cannot read"),
    ],
)
def test_native_bf16_reads_the_cpu_flags(cpuinfo: str, native: bool, words: str) -> None:
    found, reason = native_bf16(cpuinfo)
    assert found is native and words in reason


@pytest.mark.parametrize(
    ("cpuinfo", "requested", "notice_words"),
    [
        (AVX2_ONLY, "auto", "f32: this CPU has no native bf16"),
        (AVX2_ONLY, "bf16", "f32: bf16 requested but this CPU has no native bf16"),
        (AMX, "f32", "f32: f32 requested"),
    ],
)
def test_bf16_only_where_native(exported: Path, cpuinfo: str, requested: str, notice_words: str) -> None:
    with OpenVinoEngine(exported, threads=1, precision=requested, cpuinfo=cpuinfo) as engine:  # type: ignore[arg-type]
        assert engine.precision == "f32"
        assert len(engine.notices) == 1 and engine.notices[0].startswith(f"OpenVINO CPU, {notice_words}")


def test_cpu_flags_without_openvino_bf16_stay_f32(exported: Path) -> None:
    """AMX flags on a CPU where OpenVINO offers no BF16 (this machine): f32, and the notice says why."""
    import openvino

    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        expected = "bf16"
    else:
        expected = "f32"
    with OpenVinoEngine(exported, threads=1, cpuinfo=AMX) as engine:
        assert engine.precision == expected
        if expected == "f32":
            assert "does not offer bf16" in engine.notices[0]


@pytest.mark.parametrize(("batch", "count"), [("N", 1), ("N", 3), (2, 2)])
def test_dynamic_and_fixed_batch_on_a_known_graph(tmp_path: Path, batch: int | str, count: int) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", image_size=32, batch=batch)
    rng = np.random.default_rng(0)
    ct = rng.random((count, 3, 32, 32), dtype=np.float32)
    mri = rng.random((count, 1, 32, 32), dtype=np.float32)
    with open_engine(model, backend="openvino", threads=1) as engine:
        assert engine.batch_range == ((1, 2**31 - 1) if batch == "N" else (2, 2))
        np.testing.assert_allclose(engine.infer(ct, mri), reference_fusion(ct, mri), rtol=0, atol=1e-6)
        if batch == 2:
            with pytest.raises(FuseError, match="outside the engine's range 2..2"):
                engine.infer(ct[:1], mri[:1])


def test_closed_engine_refuses_to_run(tmp_path: Path) -> None:
    engine = open_engine(write_max_fusion_onnx(tmp_path / "model.onnx", image_size=32), backend="openvino")
    engine.close()
    with pytest.raises(FuseError, match="closed"):
        engine.infer(np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 1, 32, 32), np.float32))


def _plan(tmp_path: Path) -> Path:
    path = tmp_path / "model.plan"
    path.write_bytes(b"not a plan")
    return path


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (_plan, {"backend": "openvino"}, "runs only on TensorRT, not --backend openvino"),
        (_plan, {"backend": "onnxruntime"}, "runs only on TensorRT, not --backend onnxruntime"),
        (lambda p: write_max_fusion_onnx(p / "model.onnx"), {"backend": "tensorrt"}, "pass model.plan"),
        (lambda p: write_max_fusion_onnx(p / "model.onnx"), {"backend": "openvino", "provider": "cuda"}, "CPU only"),
        (lambda p: write_max_fusion_onnx(p / "model.onnx"), {"backend": "pytorch"}, "unknown backend 'pytorch'"),
        (lambda p: write_max_fusion_onnx(p / "model.onnx", metadata=False), {"backend": "openvino"},
         "no preprocessing"),
        (lambda p: write_max_fusion_onnx(p / "model.onnx", graph_size=32), {"backend": "openvino"}, "sizes disagree"),
        (lambda p: p / "missing.onnx", {"backend": "openvino"}, "engine file not found"),
    ],
)
def test_backend_refusals(tmp_path: Path, make, kwargs: dict, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(FuseError, match=message) as caught:
        open_engine(path, **kwargs)
    assert caught.value.path == path


def test_unreadable_model_is_a_fuse_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(FuseError, match="OpenVINO cannot read the model"):
        open_engine(path, backend="openvino")


def test_missing_openvino_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(FuseError, match=r"pip install 'fuse-ctmri\[openvino\]'"):
        open_engine(write_max_fusion_onnx(tmp_path / "model.onnx"), backend="openvino")


def test_fuse_run_backend_openvino_matches_onnxruntime(exported: Path, tmp_path: Path, harvard_test: Path) -> None:
    scans = build_scan_tree(tmp_path / "scans", harvard_test, harvard_pairs=1)
    outputs = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / backend
        result = CliRunner().invoke(
            main,
            ["--engine", str(exported), "--in", str(scans), "--out", str(out), "--backend", backend,
             "--threads", "1", "--batch-size", "3", "--quiet"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.stderr
        outputs[backend] = json.loads((out / "report.json").read_text())
    assert "OpenVINO" in result.stderr and "note: OpenVINO CPU, " in result.stderr
    reference, candidate = outputs["onnxruntime"], outputs["openvino"]
    assert "OpenVINO" in candidate["engine"] and "ONNX Runtime" in reference["engine"]
    pairs = {pair.name: pair for pair in find_pairs(scans).pairs}
    by_name = {entry["name"]: entry for entry in candidate["pairs"]}
    assert sorted(by_name) == sorted(e["name"] for e in reference["pairs"]) == sorted(pairs)
    with open_engine(exported, backend="openvino") as engine:
        bf16 = engine.precision == "bf16"
    for entry in reference["pairs"]:
        pair = pairs[entry["name"]]
        fmt = {"image": "png", "dicom-series": "dicom", "nifti": "nifti"}[pair.kind]
        ct, _ = load_pair(pair)
        (ours,) = by_name[entry["name"]]["outputs"]
        expected = read_output(Path(entry["outputs"][0]), fmt, ct).astype(int)
        written = read_output(Path(ours), fmt, ct).astype(int)
        relative = Path(entry["outputs"][0]).relative_to(tmp_path / "onnxruntime")
        assert Path(ours).relative_to(tmp_path / "openvino") == relative
        assert written.shape == expected.shape
        difference = np.abs(written - expected)
        if bf16:
            # Rounding spread, not a wrong pixel: measured on this random-weight model on an AMX CPU,
            # mean 1.1-1.3 and max 7-13 levels per file; a swapped input, channel or slice is far off.
            assert difference.mean() <= BF16_MEAN_LEVELS and difference.max() <= BF16_MAX_LEVELS, entry["name"]
        else:
            assert difference.max() <= 1, entry["name"]


def test_fuse_run_refuses_backend_with_ray(exported: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "--engine", str(exported), "--in", str(tmp_path), "--out", str(tmp_path / "o"),
            "--backend", "openvino", "--ray",
        ],
    )
    assert result.exit_code == 2 and "--backend openvino is not available with --ray" in result.stderr


def test_fuse_run_says_which_backend_auto_chose_and_why(exported: Path, tmp_path: Path, harvard_test: Path) -> None:
    scans = build_scan_tree(tmp_path / "scans", harvard_test, harvard_pairs=1)
    result = CliRunner().invoke(
        main, ["--engine", str(exported), "--in", str(scans), "--out", str(tmp_path / "o"), "--threads", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    backend, why = choose_backend()
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["engine"].startswith({"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[backend])
    if why is not None:
        assert f"note: {why}" in result.stderr


def test_openvino_backend_loads_no_torch(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx")
    code = f"""
import sys, numpy as np
from fuse_runtime.engines import open_engine
with open_engine({str(model)!r}, backend="openvino", threads=1) as engine:
    engine.infer(np.zeros((2, 3, 64, 64), np.float32), np.zeros((2, 1, 64, 64), np.float32))
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'fuse_train', 'fuse_export')))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("streams", [0, 2])
def test_throughput_streams_run_requests_side_by_side_with_the_latency_output(tmp_path: Path, streams: int) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", image_size=32)
    rng = np.random.default_rng(0)
    batches = [(rng.random((2, 3, 32, 32), dtype=np.float32), rng.random((2, 1, 32, 32), dtype=np.float32))
               for _ in range(4)]
    with open_engine(model, backend="openvino", threads=2) as latency:
        assert latency.in_flight == 1 and latency.description.endswith("latency")
    with open_engine(model, backend="openvino", threads=2, streams=streams) as engine:
        assert engine.in_flight >= engine.streams >= 1 and "throughput" in engine.description
        if streams == 2:
            assert engine.streams == 2 and engine.in_flight >= 2
        pending = [engine.submit(ct, mri) for ct, mri in batches[: engine.in_flight]]
        for (ct, mri), started in zip(batches, pending):
            np.testing.assert_allclose(started.result(), reference_fusion(ct, mri), rtol=0, atol=1e-6)
        np.testing.assert_allclose(engine.infer(*batches[-1]), reference_fusion(*batches[-1]), rtol=0, atol=1e-6)
        with pytest.raises(FuseError, match="streams"):
            OpenVinoEngine(model, streams=-1)
