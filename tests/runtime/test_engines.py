"""Engines: open_engine, the ONNX Runtime engine on the CPU, input checks, TensorRT (GPU only)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from engine_models import reference_fusion, write_max_fusion_onnx

from fuse_runtime.engines import UNBOUNDED_BATCH, choose_backend, open_engine
from fuse_runtime.engines.onnxruntime_engine import PROVIDERS
from fuse_runtime.engines.tensorrt_engine import _capability, _release
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from fuse_runtime.preprocess import PreprocessConfig

SIZE = 64
#: Deliberately not the defaults, so a test can tell the model's settings from the runtime's.
MODEL_PREPROCESS = PreprocessConfig(ct_window_center=50.0, ct_window_width=350.0, clahe=False, image_size=SIZE)


def _inputs(batch: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gray = rng.random((batch, 1, size, size), dtype=np.float32)
    return np.repeat(gray, 3, axis=1), rng.random((batch, 1, size, size), dtype=np.float32)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, MODEL_PREPROCESS)


def test_onnx_engine_runs_the_graph_and_reads_its_settings(model: Path) -> None:
    with open_engine(model, provider="cpu", threads=1) as engine:
        ct, mri = _inputs(5)
        fused = engine.infer(ct, mri)
        assert fused.dtype == np.float32 and fused.shape == (5, 3, SIZE, SIZE)
        np.testing.assert_allclose(fused, reference_fusion(ct, mri), atol=1e-6)
        assert engine.preprocess == MODEL_PREPROCESS
        assert engine.image_size == SIZE
        assert engine.batch_range == (1, UNBOUNDED_BATCH)
        assert engine.modalities == ("ct", "mri")
        assert engine.provider == "cpu"
        assert "model.onnx" in engine.description and "cpu" in engine.description


def test_manifest_beside_the_model_is_used(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, MODEL_PREPROCESS, metadata=False, manifest=True)
    engine = open_engine(model, provider="cpu")
    assert engine.preprocess == MODEL_PREPROCESS
    assert read_manifest(tmp_path / MANIFEST_NAME).preprocess == engine.preprocess


def test_model_without_settings_is_refused(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, metadata=False)
    with pytest.raises(FuseError, match="no preprocessing settings") as caught:
        open_engine(model, backend="onnxruntime")
    assert caught.value.path == model


def test_manifest_of_another_model_is_refused(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, MODEL_PREPROCESS)
    write_manifest(tmp_path / MANIFEST_NAME, Manifest(image_size=SIZE, preprocess=PreprocessConfig(image_size=SIZE)))
    with pytest.raises(FuseError, match="disagree"):
        open_engine(model, backend="onnxruntime")


def test_graph_size_disagreeing_with_settings_is_refused(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, graph_size=96)
    with pytest.raises(FuseError, match="image sizes disagree"):
        open_engine(model, backend="onnxruntime")


def test_fixed_batch_graph_reports_its_range(tmp_path: Path) -> None:
    engine = open_engine(write_max_fusion_onnx(tmp_path / "model.onnx", SIZE, batch=4), provider="cpu")
    assert engine.batch_range == (4, 4)
    with pytest.raises(FuseError, match=r"outside the engine's range 4\.\.4"):
        engine.infer(*_inputs(3))


@pytest.mark.parametrize(
    ("ct_shape", "mri_shape", "message"),
    [
        ((2, 3, 96, 96), (2, 1, 96, 96), "takes 64x64 images"),
        ((2, 3, SIZE, SIZE), (2, 1, 32, SIZE), "takes 64x64 images"),
        ((2, 1, SIZE, SIZE), (2, 1, SIZE, SIZE), r"'ct' must be \[N,3,H,W\]"),
        ((2, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), r"'mri' must be \[N,1,H,W\]"),
        ((3, SIZE, SIZE), (1, SIZE, SIZE), r"'ct' must be \[N,3,H,W\]"),
        ((2, 3, SIZE, SIZE), (3, 1, SIZE, SIZE), "batch sizes differ"),
        ((0, 3, SIZE, SIZE), (0, 1, SIZE, SIZE), "outside the engine's range"),
    ],
)
def test_bad_inputs_are_refused_naming_the_engine(model: Path, ct_shape, mri_shape, message: str) -> None:
    engine = open_engine(model, provider="cpu")
    with pytest.raises(FuseError, match=message) as caught:
        engine.infer(np.zeros(ct_shape, np.float32), np.zeros(mri_shape, np.float32))
    assert caught.value.path == model


def test_closed_engine_refuses_to_run(model: Path) -> None:
    engine = open_engine(model, provider="cpu")
    engine.close()
    with pytest.raises(FuseError, match="closed"):
        engine.infer(*_inputs(1))


def test_float64_inputs_are_converted(model: Path) -> None:
    engine = open_engine(model, provider="cpu")
    ct, mri = _inputs(2)
    fused = engine.infer(ct.astype(np.float64), mri.astype(np.float64))
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, reference_fusion(ct, mri), atol=1e-6)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_missing_provider_falls_back_with_a_notice(model: Path, provider: str) -> None:
    engine = open_engine(model, provider=provider)
    if PROVIDERS[provider] in ort.get_available_providers():
        assert engine.provider == provider
    else:
        assert engine.provider == "cpu"
        assert any(f"provider {provider} is not available" in n and "running on cpu" in n for n in engine.notices)


def test_auto_provider_picks_what_is_available(model: Path) -> None:
    engine = open_engine(model, backend="onnxruntime")
    expected = "cuda" if PROVIDERS["cuda"] in ort.get_available_providers() else "cpu"
    assert engine.provider == expected and engine.notices == []


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_ORT_CUDA = PROVIDERS["cuda"] in ort.get_available_providers()


@pytest.mark.parametrize(
    ("provider", "cpuinfo", "expected", "words"),
    [
        ("auto", AVX2_ONLY, "onnxruntime", None),
        ("cpu", AMX, "onnxruntime", None),
        ("cuda", AMX, "onnxruntime", None),
        ("auto", AMX, "openvino" if HAS_OPENVINO and not HAS_ORT_CUDA else "onnxruntime",
         None if HAS_ORT_CUDA else "backend auto: OpenVINO" if HAS_OPENVINO else "pip install 'fuse-ctmri[openvino]'"),
    ],
)
def test_auto_backend_follows_the_cpu_and_the_provider(provider: str, cpuinfo: str, expected: str, words) -> None:
    """OpenVINO only where the CPU has native bf16, no ONNX Runtime provider is named and ONNX Runtime
    has no CUDA; ONNX Runtime everywhere else, silently unless bf16 was there to be had."""
    backend, why = choose_backend(provider, cpuinfo=cpuinfo)
    assert backend == expected
    if words is None:
        assert why is None
    else:
        assert words in why and "amx_bf16" in why


VNNI_ONLY = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"


@pytest.mark.parametrize(("cpuinfo", "int8", "openvino"), [(VNNI_ONLY, True, True), (VNNI_ONLY, False, False),
                                                            (AVX2_ONLY, True, False)])
def test_auto_runs_the_int8_model_on_openvino_where_the_cpu_has_int8_dot_products(cpuinfo, int8, openvino) -> None:
    """A VNNI CPU without bf16 runs model.int8.onnx on OpenVINO's int8 kernels, model.onnx on ONNX Runtime."""
    backend, why = choose_backend("auto", cpuinfo=cpuinfo, int8=int8)
    if HAS_ORT_CUDA or not HAS_OPENVINO:
        assert backend == "onnxruntime"
    else:
        assert backend == ("openvino" if openvino else "onnxruntime")
        assert (why is not None and "avx512_vnni" in why) == openvino


def test_auto_falls_back_to_onnxruntime_when_openvino_cannot_open_the_model(model: Path, monkeypatch) -> None:
    import fuse_runtime.engines as engines
    from fuse_runtime.engines import openvino_engine

    def refuse(self, path, **_):
        raise FuseError("OpenVINO cannot read the model (unsupported operation Foo)", path)

    monkeypatch.setattr(
        engines, "choose_backend", lambda provider, **_: ("openvino", "backend auto: OpenVINO, because")
    )
    monkeypatch.setattr(openvino_engine.OpenVinoEngine, "__init__", refuse)
    with open_engine(model, threads=1) as engine:
        assert type(engine).__name__ == "OnnxRuntimeEngine"
        assert "OpenVINO could not open the model" in engine.notices[0]
        assert "unsupported operation Foo" in engine.notices[0]
    with pytest.raises(FuseError, match="unsupported operation Foo"):
        open_engine(model, backend="openvino")


def test_auto_backend_on_this_machine_is_what_choose_backend_says(model: Path) -> None:
    backend, why = choose_backend()
    with open_engine(model, threads=1) as engine:
        assert type(engine).__name__ == {"openvino": "OpenVinoEngine", "onnxruntime": "OnnxRuntimeEngine"}[backend]
        if why is not None:
            assert engine.notices[0] == why


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda d: d / "missing.onnx", {}, "engine file not found"),
        (lambda d: _write(d / "model.pt", b"weights"), {}, "unknown engine type '.pt'"),
        (lambda d: _write(d / "model.onnx", b"not an onnx graph"), {"provider": "cpu"},
         "ONNX Runtime cannot load the model"),
        (lambda d: _write(d / "model.onnx", b""), {"provider": "cpu"}, "ONNX Runtime cannot load the model"),
        # auto: whatever it tries first (OpenVINO on an AMX CPU), the answer is ONNX Runtime's message
        (lambda d: _write(d / "model.onnx", b"still not a graph"), {}, "ONNX Runtime cannot load the model"),
        (lambda d: _write(d / "model.plan", b"\x00" * 64), {"provider": "cpu"}, "runs only on TensorRT"),
        (lambda d: _write(d / "model.plan", b"\x00" * 64), {}, "TensorRT|manifest"),
        (lambda d: write_max_fusion_onnx(d / "m.onnx"), {"provider": "gpu"}, "unknown provider 'gpu'"),
        (lambda d: write_max_fusion_onnx(d / "m.onnx"), {"threads": 0}, "threads must be >= 1"),
    ],
)
def test_bad_engines_raise(tmp_path: Path, make, kwargs: dict, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(FuseError, match=message) as caught:
        open_engine(path, **kwargs)
    assert str(path) in str(caught.value)


def test_wrong_tensor_names_are_refused(tmp_path: Path) -> None:
    import onnx

    model = write_max_fusion_onnx(tmp_path / "model.onnx", SIZE)
    graph = onnx.load(str(model))
    graph.graph.input[1].name = "t2"
    for node in graph.graph.node:
        node.input[:] = ["t2" if name == "mri" else name for name in node.input]
    onnx.save(graph, str(model))
    with pytest.raises(FuseError, match="must take input 'mri'"):
        open_engine(model, backend="onnxruntime")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8.9", (8, 9)), ("9.0", (9, 0)), ([12, 0], (12, 0)), ("sm_89", (8, 9)), ("120", (12, 0)), (None, None)],
)
def test_compute_capability_parsing(value, expected) -> None:
    assert _capability(value) == expected


def test_tensorrt_release_ignores_the_build_number() -> None:
    assert _release("10.3.0.26") == _release("10.3.0") == ("10", "3", "0")
    assert _release("10.3.0") != _release("10.4.0")


# --- TensorRT: only where TensorRT and a CUDA GPU are present ----------------------------------------


@pytest.fixture(scope="module")
def tensorrt_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip(
            "TensorRT is not installed (pip install 'fuse-ctmri[gpu-cu12]' (CUDA 13 driver: [gpu-cu13]) on a "
            "machine with an NVIDIA GPU)"
        )
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is visible, and TensorRT plans run only on one")
    from fuse_export import tensorrt_build

    folder = tmp_path_factory.mktemp("plan")
    onnx_path = write_max_fusion_onnx(folder / "model.onnx", SIZE, MODEL_PREPROCESS)
    built = tensorrt_build.build_engine(onnx_path, folder / "model.plan", SIZE, (1, 4, 8), 1.0, folder / "timing.cache")
    manifest = Manifest(
        image_size=SIZE,
        preprocess=MODEL_PREPROCESS,
        precision="fp32",
        batch={"min": 1, "opt": 4, "max": 8},
        versions={"tensorrt": built.tensorrt_version},
        gpu=built.gpu,
    )
    write_manifest(folder / MANIFEST_NAME, manifest)
    return folder / "model.plan"


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_matches_the_graph(tensorrt_plan: Path) -> None:
    with open_engine(tensorrt_plan) as engine:
        assert engine.provider == "tensorrt" and engine.batch_range == (1, 8)
        assert engine.preprocess == MODEL_PREPROCESS
        for batch in (1, 3, 8, 2):  # buffers are reused across shapes
            ct, mri = _inputs(batch, seed=batch)
            np.testing.assert_allclose(engine.infer(ct, mri), reference_fusion(ct, mri), atol=1e-3)
        with pytest.raises(FuseError, match="outside the engine's range"):
            engine.infer(*_inputs(9))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["gpu"].update(compute_capability="1.0"), "compute capability 1.0"),
        (lambda m: m["versions"].update(tensorrt="7.0.0"), "TensorRT 7.0.0"),
    ],
)
def test_tensorrt_engine_for_another_machine_is_refused(tensorrt_plan: Path, change, message: str) -> None:
    manifest_path = tensorrt_plan.parent / MANIFEST_NAME
    original = manifest_path.read_text()
    data = json.loads(original)
    change(data)
    manifest_path.write_text(json.dumps(data))
    try:
        with pytest.raises(FuseError, match=message) as caught:
            open_engine(tensorrt_plan)
        assert "fuse-export --fp16" in str(caught.value)
    finally:
        manifest_path.write_text(original)
