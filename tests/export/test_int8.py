"""fuse-export --int8: a valid QDQ model with the gates, stems and output head in float, close to FP32 on real
pairs, carrying the fuse metadata, with its parity report and manifest entry; refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result

from fuse_export.config import MODEL_ONNX
from fuse_export.int8 import (
    INT8_PARITY_JSON,
    MODEL_INT8_ONNX,
    Int8Config,
    check_calibration_dir,
    export_int8,
    float_nodes,
    load_calibration,
)
from fuse_export.onnx_export import cpu_session
from fuse_export.parity import Samples
from fuse_runtime import metrics
from fuse_runtime.engines import open_engine
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, META_PRECISION, OUTPUT, read_manifest
from fuse_runtime.preprocess import PreprocessConfig

SIZE = 64
CALIBRATION_PAIRS = 6
#: A loose bound that a working INT8 model meets and a broken one (wrong scales, a gate quantised
#: to a constant) does not: the random test model's output varies by ~0.1 across pixels.
MEAN_ABS_LIMIT = 0.02
PSNR_LIMIT_DB = 30.0


@dataclass
class Export:
    """One ``fuse-export --int8`` run: its folder and the CLI result."""

    out: Path
    result: Result


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory, ct_mri_checkpoint: Path, harvard_train: Path,
                harvard_test: Path, cli: Callable[[list[str]], Result]) -> Export:
    out = tmp_path_factory.mktemp("int8") / "out"
    args = ["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE),
            "--parity-data", str(harvard_test), "--batch", "1,2,4", "--int8",
            "--calibration-data", str(harvard_train), "--calibration-pairs", str(CALIBRATION_PAIRS)]
    return Export(out, cli(args))


@pytest.fixture(scope="module")
def graphs(int8_export: Export) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    return onnx.load(str(int8_export.out / MODEL_ONNX)), onnx.load(str(int8_export.out / MODEL_INT8_ONNX))


def test_cli_writes_int8_model_report_and_table(int8_export: Export) -> None:
    result = int8_export.result
    assert result.exit_code == 0, result.output
    for name in (MODEL_ONNX, MODEL_INT8_ONNX, INT8_PARITY_JSON, "manifest.json"):
        assert (int8_export.out / name).is_file(), name
    assert not list(int8_export.out.glob(".*partial*"))
    assert f"{MODEL_INT8_ONNX}" in result.stdout and "percentile calibration on 6 pairs" in result.stdout
    assert "INT8 parity: model.int8.onnx against model.onnx" in result.stdout
    for name in metrics.METRIC_NAMES:
        assert f"\n{name} " in result.stdout


def test_int8_model_passes_checker_and_is_qdq(
    graphs: tuple[onnx.ModelProto, onnx.ModelProto], int8_export: Export
) -> None:
    _, int8 = graphs
    onnx.checker.check_model(str(int8_export.out / MODEL_INT8_ONNX), full_check=True)
    ops = [node.op_type for node in int8.graph.node]
    assert ops.count("QuantizeLinear") >= 50 and ops.count("DequantizeLinear") >= 100
    initializers = {t.name: t for t in int8.graph.initializer}
    zero_point_types = {}
    for node in int8.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[2] in initializers:
            source = node.input[0]
            kind = "weight" if source in initializers else "activation"
            zero_point_types.setdefault(kind, set()).add(initializers[node.input[2]].data_type)
    assert zero_point_types["activation"] == {onnx.TensorProto.UINT8}
    assert zero_point_types["weight"] == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}  # weights, biases
    # per-channel weights: a convolution's weight scale holds one value per output channel
    conv = next(n for n in int8.graph.node if n.op_type == "Conv" and n.name.startswith("/ct_encoder/layer1"))
    weight_dq = next(n for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
    scale = onnx.numpy_helper.to_array(initializers[weight_dq.input[1]])
    assert scale.shape == (64,)


def test_gates_and_stems_stay_float(graphs: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    fp32, int8 = graphs
    kept = float_nodes(fp32)
    gates, stems = set(kept["gates"]), set(kept["stems"])
    by_name = {node.name: node for node in fp32.graph.node}
    assert {n.name for n in fp32.graph.node if n.op_type in ("Sigmoid", "Mul")} <= gates
    assert sorted(by_name[name].input[0] for name in stems) == [INPUT_FIRST, INPUT_SECOND]
    pre_activations = [by_name[n] for n in gates if by_name[n].op_type in ("Conv", "MatMul")]
    assert len(pre_activations) == 8 + 8 + 2  # spatial 7x7 convs, channel-attention linears, output + medical
    float_weights = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    produced_by = {out: node for node in int8.graph.node for out in node.output}
    quantized = {node.name: node for node in int8.graph.node}
    fp32_weights = {t.name for t in fp32.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    checked = 0
    for name in gates | stems:
        node = quantized[name]
        assert node.op_type == by_name[name].op_type
        for tensor in node.input[1:]:
            if tensor in fp32_weights:
                assert tensor in float_weights and tensor not in produced_by, (name, tensor)
                checked += 1
    assert checked >= len(pre_activations) + len(stems)
    # everything else that carries weights is quantised: its weight comes from a DequantizeLinear
    floats = {name for names in kept.values() for name in names}
    others = [n for n in int8.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name not in floats]
    assert others and all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_output_head_stays_float(graphs: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    """Issue 22: every node of the output head (``/final/...``) runs in float, its weights are float
    initialisers and no QDQ pair sits between two of its nodes; the decoder before it stays INT8."""
    fp32, int8 = graphs
    kept = float_nodes(fp32)
    head = {n.name for n in fp32.graph.node if n.name.startswith("/final/")}
    assert head and {n.op_type for n in fp32.graph.node if n.name in head} >= {"Resize", "Conv"}
    assert head <= set(kept["head"]) | set(kept["gates"]) and not set(kept["head"]) & set(kept["gates"])
    assert "head" not in float_nodes(fp32, keep_head=False)
    initializers = {t.name: t for t in int8.graph.initializer}
    produced_by = {out: node for node in int8.graph.node for out in node.output}
    convs = [n for n in int8.graph.node if n.name in head and n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        assert initializers[conv.input[1]].data_type == onnx.TensorProto.FLOAT, conv.name
        assert all(produced_by.get(name) is None or produced_by[name].op_type != "DequantizeLinear"
                   for name in conv.input), conv.name
    consumers: dict[str, list[str]] = {}
    for node in int8.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    by_name = {node.name: node for node in int8.graph.node}
    for quant in (n for n in int8.graph.node if n.op_type == "QuantizeLinear"):
        source = produced_by.get(quant.input[0])
        if source is not None and source.name in head:  # rounds a head tensor only for a quantised reader
            users = [u for d in consumers[quant.output[0]] for u in consumers.get(by_name[d].output[0], [])]
            assert any(user not in head for user in users), quant.name
    decoder = [n for n in int8.graph.node if n.name.startswith("/decoder1/") and n.op_type in ("Conv", "ConvTranspose")]
    assert decoder and all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in decoder)


def test_int8_output_close_to_fp32_and_report_is_honest(int8_export: Export, samples_64: Samples) -> None:
    report = json.loads((int8_export.out / INT8_PARITY_JSON).read_text())
    assert len(report["pairs"]) == 21 and report["image_size"] == SIZE
    assert 0 < report["mean_abs"] <= MEAN_ABS_LIMIT
    assert report["psnr_db"] is not None and report["psnr_db"] >= PSNR_LIMIT_DB
    assert set(report["metrics"]) == set(metrics.METRIC_NAMES)
    for name, row in report["metrics"].items():
        assert row["max_diff"] >= row["mean_diff"] >= 0
        assert report["metrics_within_goal"][name] == (row["max_diff"] <= 0.01)
    # recompute on other pairs (eight test pairs, batch 3): the same order of difference
    fp32 = cpu_session(int8_export.out / MODEL_ONNX)
    int8 = cpu_session(int8_export.out / MODEL_INT8_ONNX)
    outputs = []
    for session in (fp32, int8):
        batches = [
            session.run([OUTPUT], {INPUT_FIRST: samples_64.ct[i : i + 3], INPUT_SECOND: samples_64.mri[i : i + 3]})[0]
            for i in range(0, len(samples_64.names), 3)
        ]
        outputs.append(np.concatenate(batches))
    difference = np.abs(outputs[0] - outputs[1])
    assert float(outputs[0].std()) > 0.02, "the FP32 output must vary for the comparison to mean anything"
    assert 0 < float(difference.mean()) <= MEAN_ABS_LIMIT
    assert float(difference.max()) <= report["max_abs"] * 2


def test_metadata_and_manifest_carry_through(
    graphs: tuple[onnx.ModelProto, onnx.ModelProto], int8_export: Export
) -> None:
    fp32, int8 = graphs
    before = {p.key: p.value for p in fp32.metadata_props}
    after = {p.key: p.value for p in int8.metadata_props}
    assert after.pop(META_PRECISION) == "int8" and before.pop(META_PRECISION) == "fp32"
    assert {k: v for k, v in after.items() if k.startswith("fuse.")} == before
    manifest = read_manifest(int8_export.out / "manifest.json")
    entry = manifest.artifacts[MODEL_INT8_ONNX]
    assert entry["precision"] == "int8" and entry["bytes"] == (int8_export.out / MODEL_INT8_ONNX).stat().st_size
    assert entry["calibration"]["method"] == "percentile" and len(entry["calibration"]["pairs"]) == CALIBRATION_PAIRS
    kept = float_nodes(fp32)
    assert entry["float_nodes"] == {"gates": len(kept["gates"]), "stems": 2, "head": len(kept["head"])}
    assert manifest.parity["int8"]["report"] == INT8_PARITY_JSON
    with open_engine(int8_export.out / MODEL_INT8_ONNX, provider="cpu", threads=1) as engine:
        assert engine.preprocess == manifest.preprocess and engine.image_size == SIZE


def test_openvino_runs_the_int8_model(int8_export: Export, samples_64: Samples) -> None:
    with open_engine(int8_export.out / MODEL_INT8_ONNX, backend="openvino", threads=1) as ov, \
            open_engine(int8_export.out / MODEL_ONNX, provider="cpu", threads=1) as fp32:
        fused = ov.infer(samples_64.ct[:3], samples_64.mri[:3])
        reference = fp32.infer(samples_64.ct[:3], samples_64.mri[:3])
    assert 0 < float(np.abs(fused - reference).mean()) <= MEAN_ABS_LIMIT


def test_calibration_reads_training_pairs_with_the_model_preprocessing(harvard_train: Path) -> None:
    config = PreprocessConfig(image_size=32)
    names, ct, mri = load_calibration(harvard_train, config, 5)
    assert len(names) == 5 and len(set(names)) == 5
    assert ct.shape == (5, 3, 32, 32) and mri.shape == (5, 1, 32, 32) and ct.dtype == np.float32
    assert 0.0 <= float(ct.min()) and float(ct.max()) <= 1.0 and float(ct.std()) > 0.05
    np.testing.assert_array_equal(ct[:, 0], ct[:, 2])  # gray repeated, as serving feeds the CT


def _unpaired(tmp_path: Path) -> Path:
    (tmp_path / "CT").mkdir()
    (tmp_path / "CT" / "1.png").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, test: tmp / "missing", "calibration folder not found"),
        (lambda tmp, test: test, "this is the evaluation folder"),
        (lambda tmp, test: test.parent, "this is the evaluation folder"),
        (lambda tmp, test: test / "CT", "this is the evaluation folder"),
        (lambda tmp, test: tmp, "no usable CT/MRI pair to calibrate"),
        (lambda tmp, test: _unpaired(tmp), "no usable CT/MRI pair to calibrate"),
    ],
)
def test_bad_calibration_folder_is_refused_by_name(tmp_path: Path, harvard_test: Path, make, message: str) -> None:
    folder = make(tmp_path, harvard_test)
    with pytest.raises(FuseError, match=message) as caught:
        check_calibration_dir(folder, harvard_test)
        load_calibration(folder, PreprocessConfig(image_size=32), 4)
    assert caught.value.path == folder


def test_export_int8_needs_model_onnx(tmp_path: Path, harvard_train: Path) -> None:
    with pytest.raises(FuseError, match="no model.onnx to quantise") as caught:
        export_int8(tmp_path, harvard_train)
    assert caught.value.path == tmp_path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 needs --calibration-data DIR"),
        (["--calibration-data", "{train}"], "--calibration-data is used only with --int8"),
        (["--int8", "--calibration-data", "{test}"], "this is the evaluation folder"),
        (["--int8", "--calibration-data", "{missing}"], "calibration folder not found"),
        (["--int8", "--calibration-data", "{train}", "--calibration-pairs", "0"],
         "Invalid value for '--calibration-pairs'"),
        (["--int8", "--calibration-data", "{train}", "--calibration-method", "kl"],
         "Invalid value for '--calibration-method'"),
    ],
)
def test_cli_int8_refusals_exit_2_before_touching_out(
    tmp_path: Path, ct_mri_checkpoint: Path, harvard_train: Path, harvard_test: Path,
    cli: Callable[[list[str]], Result], extra: list[str], message: str,
) -> None:
    names = {"train": harvard_train, "test": harvard_test, "missing": tmp_path / "nowhere"}
    out = tmp_path / "out"
    args = ["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), "--image-size", str(SIZE),
            "--parity-data", str(harvard_test)] + [a.format(**names) for a in extra]
    result = cli(args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calibration_method": "kl"}, "calibration method"),
        ({"calibration_pairs": 0}, "calibration pairs"),
        ({"percentile": 40.0}, "percentile"),
        ({"percentile": 100.5}, "percentile"),
        ({"parity_pairs": 0}, "parity pairs"),
        ({"batch": 0}, "batch"),
        ({"metric_goal": 0.0}, "metric goal"),
    ],
)
def test_int8_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Int8Config(**kwargs)


def test_no_qdq_pair_only_rounds_a_tensor_between_float_nodes(graphs: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    """The float output convolution and channel-attention linears read their ReLU's float output, not
    an 8-bit round trip; every remaining QDQ pair feeds at least one quantised node."""
    fp32, int8 = graphs
    kept = float_nodes(fp32)
    floats = {name for names in kept.values() for name in names}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in int8.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    produced_by = {out: node for node in int8.graph.node for out in node.output}
    for quant in (n for n in int8.graph.node if n.op_type == "QuantizeLinear"):
        users = [u for d in consumers.get(quant.output[0], []) for u in consumers.get(d.output[0], [])]
        assert any(user.name not in floats for user in users), quant.name
    output_conv = [
        n for n in int8.graph.node if n.name in floats and n.name.startswith("/final") and n.op_type == "Conv"
    ][-1]
    assert produced_by[output_conv.input[0]].op_type == "Relu"


def test_fold_float_qdq_rewires_consumers_to_the_float_tensor() -> None:
    from onnx import TensorProto, helper

    from fuse_export.int8 import fold_float_qdq

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.UINT8, [], [0])
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"], name="sig"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"], name="q"),
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"], name="dq"),
        helper.make_node("Mul", ["ad", "x"], ["y"], name="mul"),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q2"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq2"),
        helper.make_node("Relu", ["xd"], ["r"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("y", "r")], [scale, zero],
    )
    model = helper.make_model(graph)
    assert fold_float_qdq(model, {"sig", "mul"}) == ["q"]
    names = [node.name for node in model.graph.node]
    assert names == ["sig", "q_relu", "mul", "q2", "dq2", "relu"]  # the pair feeding the quantised Relu stays
    assert list(model.graph.node[1].input) == ["a"]  # zero point 0: the pair may stand for a dropped ReLU
    assert list(model.graph.node[2].input) == ["aq_relu", "x"]
    assert {t.name for t in model.graph.initializer} == {"s", "z"}  # still read by the pair that stays
    onnx.checker.check_model(model)


def test_fold_float_qdq_with_a_nonzero_zero_point_needs_no_relu_and_drops_its_constants() -> None:
    from onnx import TensorProto, helper

    from fuse_export.int8 import fold_float_qdq

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.UINT8, [], [3])  # a clamp below zero: no ReLU was dropped
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"], name="sig"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"], name="q"),
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"], name="dq"),
        helper.make_node("Mul", ["ad", "x"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [scale, zero],
    )
    model = helper.make_model(graph)
    assert fold_float_qdq(model, {"sig", "mul"}) == ["q"]
    assert [node.name for node in model.graph.node] == ["sig", "mul"] and not model.graph.initializer
    assert list(model.graph.node[1].input) == ["a", "x"]
    onnx.checker.check_model(model)
