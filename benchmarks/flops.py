"""Counted FLOPs of a fusion model per slice: from the eager PyTorch model or from an ONNX graph.

Convention (the one ``torch.utils.flop_counter`` uses and the papers quote): 2 FLOPs per
multiply–add of convolutions (plain and transposed) and matrix products. Elementwise ops,
BatchNorm, pooling, resizing and activations are not counted; for this network they are well
under 1 % of the work. Both counters follow the same convention, so their totals agree on the same
model (a test checks it), and neither depends on the weights, only on the graph and the image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TORCH_METHOD = "torch.utils.flop_counter.FlopCounterMode on the eager model (meta device, batch 1)"
ONNX_METHOD = "Conv/ConvTranspose/MatMul/Gemm nodes of the ONNX graph with inferred shapes (batch 1)"
CONVENTION = (
    "2 FLOPs per multiply–add of convolutions (incl. transposed) and matrix products; elementwise ops, "
    "BatchNorm, pooling, resize and activations not counted"
)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass on one slice (``ct`` [1,3,S,S] + ``mri`` [1,1,S,S]).

    per_slice: total FLOPs; by_operator: the same split by operator (``aten.convolution``, ``Conv``...);
    image_size: S in pixels; method: how it was counted.
    """

    per_slice: int
    image_size: int
    method: str
    by_operator: dict[str, int] = field(default_factory=dict)

    @property
    def gflop(self) -> float:
        return self.per_slice / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_slice": self.per_slice,
            "gflop_per_slice": self.gflop,
            "image_size": self.image_size,
            "method": self.method,
            "convention": CONVENTION,
            "by_operator": dict(self.by_operator),
        }


def count_torch_flops(model: Any, image_size: int) -> FlopCount:
    """Count the FLOPs of ``model(ct [1,3,S,S], mri [1,1,S,S])`` with ``FlopCounterMode``.

    ``model`` is a ``torch.nn.Module`` taking the two fuse inputs. It runs in eval mode with its
    parameters and buffers swapped for ``meta`` tensors (``torch.func.functional_call``): shapes
    only, no arithmetic, so counting takes well under a second at any size. The model's weights,
    device and train/eval mode are left as they were.
    """
    import torch
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    _check_size(image_size)
    state = {name: tensor.to("meta") for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    ct = torch.zeros(1, 3, image_size, image_size, device="meta")
    mri = torch.zeros(1, 1, image_size, image_size, device="meta")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, state, (ct, mri))
    finally:
        model.train(was_training)
    by_operator = {str(op): int(count) for op, count in counter.get_flop_counts()["Global"].items()}
    return FlopCount(int(counter.get_total_flops()), image_size, TORCH_METHOD, by_operator)


def count_onnx_flops(model: str | Path | Any) -> FlopCount:
    """Count the FLOPs of an ONNX graph (a path or a loaded ``onnx.ModelProto``) per slice.

    Shapes come from ONNX shape inference; the symbolic batch axis is taken as 1 and the spatial
    size must be static (fuse exports fix it). Raises ValueError when a counted node's shapes
    cannot be inferred.
    """
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    shapes = {v.name: _static_dims(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    image_size = _onnx_image_size(graph)
    by_operator: dict[str, int] = {}
    for node in graph.node:
        counter = _ONNX_COUNTERS.get(node.op_type)
        if counter is None:
            continue
        try:
            flops = counter(node, shapes)
        except (KeyError, TypeError, IndexError) as error:
            name = node.name or node.op_type
            raise ValueError(f"cannot count FLOPs of ONNX node {name}: shapes unknown ({error})") from None
        by_operator[node.op_type] = by_operator.get(node.op_type, 0) + flops
    return FlopCount(sum(by_operator.values()), image_size, ONNX_METHOD, by_operator)


def _check_size(image_size: int) -> None:
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")


def _static_dims(value: Any) -> list[int]:
    """Dimensions of a value; symbolic ones (the batch axis) count as 1."""
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else 1 for d in dims]


def _onnx_image_size(graph: Any) -> int:
    dims = _static_dims(graph.input[0])
    return int(dims[-1]) if len(dims) == 4 else 0


def _attribute(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _conv_flops(node: Any, shapes: dict[str, list[int]]) -> int:
    """2 · N · C_out · H_out · W_out · (C_in / groups) · kH · kW; the weight is [C_out, C_in/g, kH, kW]."""
    weight = shapes[node.input[1]]
    output = shapes[node.output[0]]
    return 2 * _product(output) * _product(weight[1:])


def _conv_transpose_flops(node: Any, shapes: dict[str, list[int]]) -> int:
    """2 · N · C_in · H_in · W_in · (C_out / groups) · kH · kW; the weight is [C_in, C_out/g, kH, kW]."""
    weight = shapes[node.input[1]]
    data = shapes[node.input[0]]
    return 2 * _product(data) * _product(weight[1:])


def _matmul_flops(node: Any, shapes: dict[str, list[int]]) -> int:
    """2 · (rows of A, with batch) · K · (columns of B)."""
    a, b = shapes[node.input[0]], shapes[node.input[1]]
    return 2 * _product(a) * b[-1]


def _gemm_flops(node: Any, shapes: dict[str, list[int]]) -> int:
    """2 · M · K · N for ``Y = A' · B'`` (transposes as the node's attributes say)."""
    a, b = shapes[node.input[0]], shapes[node.input[1]]
    m, k = (a[1], a[0]) if _attribute(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attribute(node, "transB", 0) else b[1]
    return 2 * m * k * n


_ONNX_COUNTERS = {
    "Conv": _conv_flops,
    "ConvTranspose": _conv_transpose_flops,
    "MatMul": _matmul_flops,
    "Gemm": _gemm_flops,
}


def _product(values: list[int]) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result
