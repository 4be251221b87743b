"""``model.onnx`` → ``model.int8.onnx``: static INT8 quantisation for CPUs, calibrated on real
training pairs, with its own parity report (``parity.int8.json``) against the FP32 model.

The quantiser is ONNX Runtime's (``onnxruntime.quantization.quantize_static``), in QDQ format (every
quantised tensor is a QuantizeLinear/DequantizeLinear pair, so ONNX Runtime and OpenVINO both read
the same file and fuse the pairs into their own integer kernels).

Choices, and the measurements behind them (a 2-epoch fuse-train CT–MRI model at 256 px, the 21
Harvard test pairs, output in [0,1]; figures are INT8 minus the FP32 ONNX model):

* weights int8, symmetric, per output channel; activations uint8, asymmetric (U8S8). ONNX Runtime's
  x86 integer GEMM/convolution kernels (MLAS) multiply unsigned activations by signed weights
  (AVX2 ``VPMADDUBSW``, AVX-512/AVX-VNNI ``VPDPBUSD``), so U8S8 runs natively where S8S8 activations
  are shifted to uint8 first; and nearly every activation here follows a ReLU (>= 0), where an
  asymmetric uint8 range uses all 256 levels. AVX2 without VNNI can saturate ``VPMADDUBSW``'s
  16-bit pair sums; ``reduce_range`` (7-bit weights) avoids that, but measured here it changed
  nothing (output mean |diff| 0.0093 with it, 0.0094 without), so weights keep all 8 bits.
* calibration: ``percentile`` (99.999th) by default. Measured with the same exclusions on 16
  training pairs: MinMax mean |diff| 0.0068, largest metric diff SD 0.106; Percentile 0.0064, SD
  0.059, and better on 8 of the 11 fusion metrics. Entropy (ONNX Runtime 1.32) returned exactly the
  MinMax ranges for all 309 tensors of this network, so it is no separate option in practice.
  Percentile keeps histograms, so it is slower (62 s against 36 s for 16 pairs at 256 px).
* calibration data: pairs from a training folder, read by ``fuse_runtime.pairing`` and preprocessed
  by ``prepare_pair`` with the preprocessing stored in the model's own ONNX metadata, exactly as
  ``fuse-run`` will feed it (the middle slice of a volume). The evaluation folder is refused when it
  is recognisably the same folder as the parity data (same path, or one inside the other); beyond
  that, keeping the Harvard test pairs out is the caller's responsibility.
* ``quant_pre_process`` (ONNX Runtime's shape inference and graph optimisation before
  quantisation) is not run: on fuse-export's graph (already simplified, shapes inferred) the
  quantised model came out with bit-identical outputs with and without it.

Kept in float (``nodes_to_exclude``), see ``float_nodes``:

* gates: every ``Sigmoid``, the node computing its pre-activation, and every ``Mul`` it scales
  (reached through Unsqueeze/Reshape). That is both attention modules of each fusion block (channel
  attention: second linear layer, sigmoid, channel multiply; spatial attention: 7×7 convolution,
  sigmoid, multiply), the output layer (its 1×1 convolution and final sigmoid) and the medical
  attention (its 1×1 convolution, sigmoid and the multiply that makes the output). A gate scales
  whole feature maps, so its quantisation error is repeated over every pixel it multiplies; these
  nodes are under 1 % of the compute.
* float links (``fold_float_qdq``, after quantisation): a QuantizeLinear/DequantizeLinear pair on a
  tensor read only by float nodes (the ReLU before the float output convolution, before each
  channel-attention's second linear and before the medical attention's convolution: 10 pairs) is
  removed, a ReLU standing in for the clamp at zero: it only rounded that tensor to 8 bits and cost
  OpenVINO a quantise, a dequantise and a reorder, the first at full resolution.
* stems: the first convolution reading each input (the 7×7 stride-2 ResNet stems). Measured: with
  the gates alone in float the output mean |diff| was 0.0100 (largest metric diff SF 0.87); keeping
  the stems in float too brought it to 0.0067 (SF 0.24), more than keeping the whole decoder and
  all fusion blocks in float did (0.0086), for about 2 % of the compute.
* head: every node of the output head (the ``final`` module, ONNX names ``/final/...``; issue 22).
  The release model's ``select`` BlendHead works at full resolution and adds a fixed
  ``50·(first − second)`` prior to its blend logit, so 8-bit rounding of the sources' difference and
  of its 3×3/1×1 convolutions shows directly in the output. Decided on the 35 validation pairs of the
  training folder (patients 320, 330; ``scripts/validation_folder.py``), release model g7 at 256 px,
  16 percentile-calibration pairs, INT8 mean minus FP32 mean: with gates and stems only the output
  mean |diff| was 0.0108 and 9 of 11 metrics missed 0.01 (SF +0.93, AG +0.47, SSIM −0.197, MI
  −0.117, SCD −0.089, PSNR −0.064, VIF −0.051, Qabf −0.051, EN +0.026); with the head in float too,
  0.00075 and every metric within 0.01 (SD +0.074 and SF −0.012 judged relative, within 0.01·value:
  0.89 and 0.32; AG −0.0014, PSNR −0.0078, SCD +0.0043, the rest ≤ 0.0006), so the decoder's last
  upsampling stage stays quantised. About 1 GFLOP of the 26.6 per 256 px slice (the two
  full-resolution 3×3 convolutions).

Shapes: the quantised model keeps fuse's signature, ``ct`` float32 [N,3,S,S] and ``mri``
[N,1,S,S] in [0,1] → ``fused`` float32 [N,3,S,S] in [0,1], N dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from fuse_export import onnx_export
from fuse_export.config import MODEL_ONNX
from fuse_export.parity import Samples, run_batched, sample_metrics
from fuse_export.samples import default_parity_dir, load_samples
from fuse_runtime import metrics
from fuse_runtime.atomic import atomic_path, write_json_atomic
from fuse_runtime.engines.base import preprocess_from_metadata
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, META_PRECISION
from fuse_runtime.preprocess import PreprocessConfig

MODEL_INT8_ONNX = "model.int8.onnx"
INT8_PARITY_JSON = "parity.int8.json"
INT8 = "int8"

#: fuse's names → ONNX Runtime calibration methods.
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "percentile": CalibrationMethod.Percentile,
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
}
#: Ops that only reshape a gate on its way to the multiply it feeds.
_GATE_PASSTHROUGH = ("Unsqueeze", "Reshape", "Flatten", "Expand")
#: ONNX node-name prefix of the output head (FusionNet's ``final`` module, as torch.onnx names it).
HEAD_PREFIX = "/final/"
_CALIBRATION_HINT = "; give --calibration-data a folder of registered training CT/MRI pairs"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Int8Config:
    """How ``model.int8.onnx`` is calibrated and checked (defaults: see the module docstring).

    calibration_method: ``percentile``, ``minmax`` or ``entropy``.
    calibration_pairs: how many training pairs calibrate (spread evenly over the folder by name).
    percentile: the percentile of ``|activation|`` histograms kept by ``percentile`` calibration.
    keep_stems_float: keep the first convolution of each input in float.
    keep_head_float: keep every node of the output head (``/final/...``) in float.
    reduce_range: 7-bit weights (avoids AVX2 ``VPMADDUBSW`` saturation; measured unnecessary).
    parity_pairs: how many pairs of the parity folder the report covers (21: all Harvard test pairs).
    batch: slices per ONNX Runtime call while checking parity.
    metric_goal: the largest fusion-metric difference to FP32 the report calls acceptable (issue 8's
        goal); reported, never an error.
    """

    calibration_method: str = "percentile"
    calibration_pairs: int = 16
    percentile: float = 99.999
    keep_stems_float: bool = True
    keep_head_float: bool = True
    reduce_range: bool = False
    parity_pairs: int = 21
    batch: int = 8
    metric_goal: float = 0.01

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calibration_method!r}"
            )
        if self.calibration_pairs < 1:
            raise ValueError(f"calibration pairs must be >= 1, got {self.calibration_pairs}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.parity_pairs < 1 or self.batch < 1:
            raise ValueError(f"parity pairs and batch must be >= 1, got {self.parity_pairs} and {self.batch}")
        if self.metric_goal <= 0:
            raise ValueError(f"metric goal must be > 0, got {self.metric_goal}")


@dataclass
class Int8Parity:
    """``model.int8.onnx`` against ``model.onnx`` (both under ONNX Runtime on the CPU).

    Output figures are over all pairs and pixels (``max_abs`` with where it is) plus the worst
    pair's mean |diff| and PSNR (peak 1.0, dB). ``metrics`` holds, per fusion metric, the FP32 and
    INT8 means over the pairs and the mean and largest per-pair |difference|.
    """

    source: str
    pairs: list[str]
    image_size: int
    max_abs: float
    max_abs_at: dict[str, Any]
    mean_abs: float
    worst_pair_mean_abs: float
    worst_pair: str
    psnr_db: float | None
    metrics: dict[str, dict[str, float]]
    metric_goal: float

    @property
    def metrics_within_goal(self) -> dict[str, bool]:
        return {name: row["max_diff"] <= self.metric_goal for name, row in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": f"{MODEL_ONNX} (onnxruntime cpu, fp32)",
            "candidate": f"{MODEL_INT8_ONNX} (onnxruntime cpu, int8)",
            **asdict(self),
            "metrics_within_goal": self.metrics_within_goal,
        }


@dataclass
class Int8Result:
    """What ``export_int8`` wrote: the model, how it was made, and its parity."""

    path: Path
    seconds: float
    config: Int8Config
    calibration_source: str
    calibration_pairs: list[str]
    float_nodes: dict[str, list[str]]
    parity: Int8Parity
    table: str
    details: dict[str, Any] = field(default_factory=dict)


def export_int8(
    out_dir: str | Path,
    calibration_dir: str | Path,
    config: Int8Config = Int8Config(),
    parity_dir: str | Path | None = None,
    log: Log = print,
) -> Int8Result:
    """Quantise ``OUT/model.onnx`` into ``OUT/model.int8.onnx`` and write ``OUT/parity.int8.json``
    (fuse-export's ``int8`` format calls this inside its staging folder; the manifest entry comes
    from ``manifest_entry`` and ``parity_summary``).

    parity_dir: registered pairs for the parity report; None: the Harvard test pairs (else phantoms).
    Raises FuseError when model.onnx is missing or carries no preprocessing metadata, or when the
    calibration folder is missing, holds no usable pair, or is the parity folder.
    """
    out_dir = Path(out_dir)
    fp32_path, int8_path = out_dir / MODEL_ONNX, out_dir / MODEL_INT8_ONNX
    if not fp32_path.is_file():
        raise FuseError(f"no {MODEL_ONNX} to quantise; run fuse-export without --int8 first", out_dir)
    check_calibration_dir(calibration_dir, parity_dir)
    preprocess = model_preprocess(fp32_path)

    started = time.perf_counter()
    names, ct, mri = load_calibration(Path(calibration_dir), preprocess, config.calibration_pairs)
    kept, folded = quantize(fp32_path, int8_path, ct, mri, config)
    seconds = time.perf_counter() - started
    kept_text = ", ".join(f"{reason} {len(nodes)} nodes" for reason, nodes in kept.items())
    log(
        f"  {MODEL_INT8_ONNX:<16} {int8_path.stat().st_size / 1e6:7.1f} MB {seconds:6.1f} s  "
        f"(QDQ u8 activations / s8 per-channel weights, {config.calibration_method} calibration on "
        f"{len(names)} pairs of {calibration_dir}; kept in float: {kept_text}; {len(folded)} QDQ pairs between "
        "float nodes folded)"
    )

    samples = load_samples(Path(parity_dir) if parity_dir is not None else None, preprocess, config.parity_pairs)
    parity = compare_int8(fp32_path, int8_path, samples, config)
    write_json_atomic(out_dir / INT8_PARITY_JSON, parity.to_dict())
    table = format_int8_table(parity)
    result = Int8Result(
        int8_path, seconds, config, str(calibration_dir), names, kept, parity, table,
        details={"bytes": int8_path.stat().st_size, "float_links": folded},
    )
    return result


def check_calibration_dir(calibration_dir: str | Path, parity_dir: str | Path | None) -> None:
    """Refuse a missing calibration folder, or one that is (or holds, or lies in) the evaluation
    folder: calibrating on the pairs the report measures would hide the INT8 error."""
    calibration = Path(calibration_dir)
    if not calibration.is_dir():
        raise FuseError(
            "calibration folder not found; give --calibration-data a folder of training CT/MRI pairs "
            "(e.g. ../shared/data/harvard/ct-mri-train)",
            calibration,
        )
    evaluation = Path(parity_dir) if parity_dir is not None else default_parity_dir()
    if evaluation is None:
        return
    here, there = calibration.resolve(), evaluation.resolve()
    if here == there or here in there.parents or there in here.parents:
        raise FuseError(
            f"this is the evaluation folder {evaluation} (or contains it): calibrating on the pairs the "
            "parity report measures would hide the INT8 error; calibrate on training pairs instead "
            "(e.g. ../shared/data/harvard/ct-mri-train)",
            calibration,
        )


def model_preprocess(path: Path) -> PreprocessConfig:
    """The PreprocessConfig stored in an exported ONNX file's metadata (``fuse.preprocess``)."""
    model = onnx.load(str(path), load_external_data=False)
    preprocess, _ = preprocess_from_metadata(path, {p.key: p.value for p in model.metadata_props})
    return preprocess


def load_calibration(
    directory: Path, preprocess: PreprocessConfig, count: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Up to ``count`` pairs of ``directory`` (evenly spread by name), preprocessed as serving does
    (``fuse_export.samples.load_samples``: a volume contributes its middle slice, unreadable pairs
    are skipped). Returns the names, ``ct`` float32 [N,3,S,S] and ``mri`` [N,1,S,S] in [0,1];
    FuseError when no pair can be used."""
    samples = load_samples(directory, preprocess, count, purpose="to calibrate INT8 with", hint=_CALIBRATION_HINT)
    return samples.names, samples.ct, samples.mri


def float_nodes(model: onnx.ModelProto, keep_stems: bool = True, keep_head: bool = True) -> dict[str, list[str]]:
    """Names of the nodes kept in float, by reason (see the module docstring): ``gates`` (every Sigmoid,
    its pre-activation and the Mul nodes it scales), ``stems`` (the first Conv reading each graph
    input) and ``head`` (every node of the output head, the ``final`` module, whose ONNX names start
    with ``/final/``, less those already in ``gates``). Measured on the training folder's validation
    patients with the release ``select`` head: gates and stems alone left 9 of 11 fusion metrics
    beyond 0.01 of FP32 (SF +0.93, SSIM −0.20, MI −0.12); with the head in float all were within it."""
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    gates: set[str] = set()
    for node in graph.node:
        if node.op_type != "Sigmoid":
            continue
        gates.add(node.name)
        if node.input[0] in producer:
            gates.add(producer[node.input[0]].name)
        pending = list(consumers.get(node.output[0], []))
        while pending:
            consumer = pending.pop()
            if consumer.op_type in _GATE_PASSTHROUGH:
                gates.add(consumer.name)
                pending.extend(consumers.get(consumer.output[0], []))
            elif consumer.op_type == "Mul":
                gates.add(consumer.name)
    groups = {"gates": sorted(gates)}
    if keep_stems:
        inputs = {value.name for value in graph.input}
        groups["stems"] = sorted(n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs)
    if keep_head:
        groups["head"] = sorted(n.name for n in graph.node if n.name.startswith(HEAD_PREFIX) and n.name not in gates)
    return groups


def quantize(
    fp32_path: Path, int8_path: Path, ct: np.ndarray, mri: np.ndarray, config: Int8Config
) -> tuple[dict[str, list[str]], list[str]]:
    """Quantise ``fp32_path`` calibrated on ``ct`` [N,3,S,S] / ``mri`` [N,1,S,S]; write ``int8_path``
    atomically with the fuse metadata copied and ``fuse.precision=int8``. Returns the float nodes and
    the QDQ pairs folded between them (``fold_float_qdq``)."""
    model = onnx.load(str(fp32_path))
    kept = float_nodes(model, config.keep_stems_float, config.keep_head_float)
    excluded = sorted({name for names in kept.values() for name in names})
    size = int(ct.shape[-1])
    with atomic_path(int8_path) as tmp, _quiet_quantizer():
        quantize_static(
            str(fp32_path),
            str(tmp),
            _PairReader(ct, mri),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=config.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CALIBRATION_METHODS[config.calibration_method],
            extra_options={"CalibPercentile": config.percentile},
        )
        quantized = onnx.load(str(tmp))
        folded = fold_float_qdq(quantized, set(excluded))
        metadata = {p.key: p.value for p in model.metadata_props}
        onnx_export.set_metadata(quantized, {**metadata, META_PRECISION: INT8})
        onnx.save(quantized, str(tmp))
        onnx_export.check_onnx(tmp, quantized, size, where=int8_path)
    return kept, folded


def fold_float_qdq(model: onnx.ModelProto, float_names: set[str]) -> list[str]:
    """Remove every QuantizeLinear → DequantizeLinear pair whose results feed only nodes kept in float
    (``float_names``): such a pair only rounds the tensor to 8 bits, costs a quantise, a dequantise and
    a layout change in OpenVINO, and moves the output away from FP32. Their consumers read the float
    tensor instead, through a ``Relu`` where the pair's zero point is 0: the quantiser drops a ReLU
    whose clamp at zero the uint8 range already does, so the pair may be that ReLU. Returns the names
    of the QuantizeLinear nodes removed (edits ``model`` in place)."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    rename: dict[str, str] = {}
    removed: set[str] = set()
    relus: dict[str, onnx.NodeProto] = {}
    constants: set[str] = set()
    folded: list[str] = []
    for quant in graph.node:
        if quant.op_type != "QuantizeLinear" or quant.output[0] in outputs:
            continue
        dequants = consumers.get(quant.output[0], [])
        if not dequants or any(d.op_type != "DequantizeLinear" or d.output[0] in outputs for d in dequants):
            continue
        users = [user for d in dequants for user in consumers.get(d.output[0], [])]
        if not users or any(user.name not in float_names for user in users):
            continue
        zero = initializers.get(quant.input[2]) if len(quant.input) > 2 else None
        if zero is None:
            continue  # a zero point that is not a constant: leave the pair alone
        source = quant.input[0]
        if zero.data_type == onnx.TensorProto.UINT8 and not onnx.numpy_helper.to_array(zero).any():
            relu = onnx.helper.make_node("Relu", [source], [f"{quant.output[0]}_relu"], name=f"{quant.name}_relu")
            relus[quant.name] = relu
            source = relu.output[0]
        rename.update({d.output[0]: source for d in dequants})
        removed |= {quant.name, *(d.name for d in dequants)}
        constants |= {*quant.input[1:], *(name for d in dequants for name in d.input[1:])}
        folded.append(quant.name)
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in relus:
            kept.append(relus[node.name])
        if node.name not in removed:
            kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = rename.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name in constants - used]
    for tensor in unused:  # the folded pairs' scales and zero points
        graph.initializer.remove(tensor)
    return sorted(folded)


def compare_int8(fp32_path: Path, int8_path: Path, samples: Samples, config: Int8Config) -> Int8Parity:
    """Run both models on ``samples`` and measure how far INT8 is from FP32 (see Int8Parity)."""
    reference = run_batched(onnx_export.cpu_runner(fp32_path), samples, config.batch)
    output = run_batched(onnx_export.cpu_runner(int8_path), samples, config.batch)
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    n, channel, row, col = (int(v) for v in np.unravel_index(int(np.argmax(diff)), diff.shape))
    per_pair = diff.reshape(len(diff), -1)
    worst = int(np.argmax(per_pair.mean(axis=1)))
    worst_mse = float((per_pair**2).mean(axis=1).max())
    before, after = sample_metrics(samples, reference), sample_metrics(samples, output)
    table = {}
    for name in metrics.METRIC_NAMES:
        fp32 = np.array([m[name] for m in before], dtype=np.float64)
        int8 = np.array([m[name] for m in after], dtype=np.float64)
        gaps = np.abs(int8 - fp32)
        table[name] = {
            "fp32": float(fp32.mean()),
            "int8": float(int8.mean()),
            "mean_diff": float(gaps.mean()),
            "max_diff": float(gaps.max()),
        }
    return Int8Parity(
        source=samples.source,
        pairs=list(samples.names),
        image_size=int(samples.ct.shape[-1]),
        max_abs=float(diff.max()),
        max_abs_at={"pair": samples.names[n], "channel": channel, "row": row, "col": col},
        mean_abs=float(diff.mean()),
        worst_pair_mean_abs=float(per_pair[worst].mean()),
        worst_pair=samples.names[worst],
        psnr_db=None if worst_mse <= 0 else 10.0 * math.log10(1.0 / worst_mse),
        metrics=table,
        metric_goal=config.metric_goal,
    )


def format_int8_table(parity: Int8Parity) -> str:
    """The parity report as plain text: output differences, then one row per fusion metric."""
    where = parity.max_abs_at
    psnr = "inf" if parity.psnr_db is None else f"{parity.psnr_db:.1f} dB"
    lines = [
        f"INT8 parity: {MODEL_INT8_ONNX} against {MODEL_ONNX} (ONNX Runtime CPU) on {len(parity.pairs)} pairs "
        f"at {parity.image_size} px ({parity.source})",
        f"output 'fused': max abs {parity.max_abs:.3g} (pair {where['pair']}, channel {where['channel']}, "
        f"row {where['row']}, column {where['col']}); mean abs {parity.mean_abs:.3g}; worst pair "
        f"{parity.worst_pair}: mean abs {parity.worst_pair_mean_abs:.3g}, PSNR {psnr}",
        f"{'metric':<7} {'fp32':>10} {'int8':>10} {'mean |diff|':>12} {'max |diff|':>11}  "
        f"within {parity.metric_goal:g}",
    ]
    lines.append("-" * len(lines[-1]))
    within = parity.metrics_within_goal
    for name, row in parity.metrics.items():
        lines.append(
            f"{name:<7} {row['fp32']:>10.4f} {row['int8']:>10.4f} {row['mean_diff']:>12.4f} "
            f"{row['max_diff']:>11.4f}  {'yes' if within[name] else 'no'}"
        )
    return "\n".join(lines)


def manifest_entry(result: Int8Result) -> dict[str, Any]:
    """What the manifest says about ``model.int8.onnx`` besides its size, hash and time: precision,
    format, calibration and the float nodes (fuse-export writes the manifest once, from this)."""
    return {
        "precision": INT8,
        "format": "QDQ, uint8 activations (asymmetric), int8 per-channel symmetric weights",
        "calibration": {
            "method": result.config.calibration_method,
            "percentile": result.config.percentile if result.config.calibration_method == "percentile" else None,
            "source": result.calibration_source,
            "pairs": result.calibration_pairs,
        },
        "float_nodes": {reason: len(names) for reason, names in result.float_nodes.items()},
        "float_links": len(result.details.get("float_links", [])),
    }


def parity_summary(result: Int8Result) -> dict[str, Any]:
    """The manifest's ``parity.int8`` block: the INT8 model against model.onnx, in short."""
    parity = result.parity
    return {
        "reference": MODEL_ONNX,
        "pairs": len(parity.pairs),
        "source": parity.source,
        "max_abs": parity.max_abs,
        "mean_abs": parity.mean_abs,
        "psnr_db": parity.psnr_db,
        "metric_max_diff": {name: row["max_diff"] for name, row in parity.metrics.items()},
        "metric_goal": parity.metric_goal,
        "report": INT8_PARITY_JSON,
    }


class _PairReader(CalibrationDataReader):
    """Feeds the calibration pairs one at a time (batch 1), as ONNX Runtime's calibrator asks."""

    def __init__(self, ct: np.ndarray, mri: np.ndarray) -> None:
        self._batches = iter(range(len(ct)))
        self._ct, self._mri = ct, mri

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._batches, None)
        if index is None:
            return None
        return {INPUT_FIRST: self._ct[index : index + 1], INPUT_SECOND: self._mri[index : index + 1]}


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantiser's progress prints and its advice to run quant_pre_process (measured
    unnecessary for fuse-export's graphs; see the module docstring)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
