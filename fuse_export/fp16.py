"""``model.onnx`` → ``model.fp16.onnx``: FP16 weights and compute, float32 inputs and outputs.

The converter is ONNX Runtime's own (``onnxruntime.transformers.float16``, maintained with ONNX
Runtime, already a base dependency): it casts every float tensor and initializer to FP16 except
around the nodes it is told to keep, inserting Cast nodes at the boundaries. With
``keep_io_types=True`` the graph still takes and returns float32, so every runtime feeds it the same
arrays as ``model.onnx``.

Kept in FP32, because parity asks for it (see ExportConfig):

* normalisation layers (``BatchNormalization``; the exporter folds most of them into the preceding
  convolutions, the rest follow transposed convolutions);
* every ``Sigmoid`` and the node computing its pre-activation: the attention gates (channel
  attention's second linear layer, spatial attention's 7×7 convolution), the output layer and the
  medical attention. A gate multiplies whole feature maps, so an FP16 rounding of its logit is
  repeated over every pixel it scales; these nodes are a tiny share of the compute.

The same graph is what TensorRT builds as a strongly typed network (precision comes from the graph)
and what ONNX Runtime's CUDA provider runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnxruntime.transformers import float16


def convert_to_fp16(
    model: onnx.ModelProto,
    keep_fp32_ops: Iterable[str] = ("BatchNormalization",),
    keep_sigmoid_inputs: bool = True,
) -> onnx.ModelProto:
    """Return an FP16 copy of ``model`` with float32 I/O and the listed nodes kept in FP32."""
    source = onnx.ModelProto()
    source.CopyFrom(model)
    blocked_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    blocked_nodes = sorted(sigmoid_gate_nodes(source)) if keep_sigmoid_inputs else []
    converted = float16.convert_float_to_float16(
        source,
        keep_io_types=True,
        op_block_list=blocked_ops,
        node_block_list=blocked_nodes,
    )
    remove_cast_round_trips(converted.graph)
    sort_topologically(converted.graph)
    return converted


def remove_cast_round_trips(graph: onnx.GraphProto) -> int:
    """Drop ``Cast(→fp16)`` followed by ``Cast(→fp32)``: consumers read the original FP32 tensor.

    The converter wraps every kept node in its own casts, so between two adjacent kept nodes (a
    gate's pre-activation and its Sigmoid) the value would be rounded to FP16 and back, exactly
    the rounding keeping them was meant to avoid. Returns how many round trips were removed.
    """
    producer = {output: node for node in graph.node for output in node.output}
    graph_outputs = {value.name for value in graph.output}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if not _is_cast(node, onnx.TensorProto.FLOAT) or node.output[0] in graph_outputs:
            continue
        upstream = producer.get(node.input[0])
        if upstream is not None and _is_cast(upstream, onnx.TensorProto.FLOAT16) and _source_is_fp32(graph, upstream):
            rename[node.output[0]] = upstream.input[0]
            dropped.add(id(node))
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    used = {name for node in graph.node if id(node) not in dropped for name in node.input} | graph_outputs
    dropped |= {
        id(node) for node in graph.node if _is_cast(node, onnx.TensorProto.FLOAT16) and node.output[0] not in used
    }
    kept = [node for node in graph.node if id(node) not in dropped]
    removed = len(graph.node) - len(kept)
    live = {name for node in kept for name in (*node.input, *node.output)}
    stale = [value for value in graph.value_info if value.name not in live]
    for value in stale:
        graph.value_info.remove(value)
    copies = [onnx.NodeProto() for _ in kept]
    for copy, node in zip(copies, kept):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return removed


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node follows the producers of its inputs.

    The converter appends its Cast nodes at the end, which ONNX Runtime tolerates but the ONNX
    checker (and the standard) do not. Nodes keep their relative order wherever possible.
    """
    available = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            names = ", ".join(node.name for node in pending[:3])
            raise ValueError(f"the FP16 graph has a cycle or a missing input around: {names}")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def sigmoid_gate_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of every Sigmoid node and of the node producing its input (the pre-activation)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    names: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Sigmoid":
            continue
        names.add(node.name)
        source = producer.get(node.input[0])
        if source is not None:
            names.add(source.name)
    return names


def count_fp32_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """How many compute nodes of each op type still run in FP32 (Cast nodes excluded).

    A node counts as FP32 when its output is a float32 tensor in the graph's value info (which the
    converter keeps up to date); used for the export report.
    """
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Cast" and types.get(node.output[0]) == onnx.TensorProto.FLOAT:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)


def _source_is_fp32(graph: onnx.GraphProto, cast: onnx.NodeProto) -> bool:
    """Whether the tensor a Cast reads is float32 (so skipping the round trip loses nothing)."""
    name = cast.input[0]
    for value in (*graph.value_info, *graph.input, *graph.output):
        if value.name == name:
            return value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    return any(t.name == name and t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
