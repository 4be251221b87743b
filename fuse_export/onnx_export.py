"""PyTorch FusionNet → ``model.onnx``: export, validate, simplify, stamp the serving metadata.

Exporter path: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), chosen
deliberately over the dynamo exporter because, for this plain convolutional network,

* it writes the requested opset (17 by default) directly; the dynamo exporter builds opset 18+
  graphs and reaches 17 only through ONNX's version converter;
* its ``dynamic_axes`` keeps the batch axis symbolic through every reshape in the graph (the
  channel attention's pool → linear path), which the tests check at batch 1, 3 and 8;
* it needs no extra package (the dynamo path requires onnxscript) and exports in seconds.

It is deprecated upstream since PyTorch 2.9 but present and working in the pinned torch 2.14.1;
``train`` pins that torch, so a removal cannot arrive unnoticed. Its deprecation warning is
silenced here, where the choice is documented, and nowhere else.

Shapes: inputs ``ct`` float32 [N,3,S,S] and ``mri`` float32 [N,1,S,S] in [0,1]; output ``fused``
float32 [N,3,S,S] in [0,1]; N is symbolic (``batch``), S is fixed at export time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fuse_runtime.errors import FuseError, first_line
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, OUTPUT

BATCH_AXIS = "batch"
"""Name of the symbolic batch dimension in every exported graph."""

#: Inputs and output with their channel counts, in graph order.
SIGNATURE: tuple[tuple[str, int], ...] = ((INPUT_FIRST, 3), (INPUT_SECOND, 1), (OUTPUT, 3))

EXAMPLE_BATCH = 2
"""Batch of the example inputs traced at export: not 1, so no batch-1 special case gets baked in."""


@dataclass(frozen=True)
class SimplifyReport:
    """What onnxslim did: sizes in bytes before and after, and whether its graph was kept."""

    bytes_before: int
    bytes_after: int
    nodes_before: int
    nodes_after: int
    kept: bool
    reason: str


def export_onnx(model: torch.nn.Module, path: str | Path, image_size: int, opset: int) -> onnx.ModelProto:
    """Export ``model`` (eval mode, CPU) to ``path`` and return the loaded graph (not yet checked).

    The file at ``path`` is written directly: call this with a temporary path (``atomic_path``).
    """
    path = Path(path)
    model = model.eval().cpu()
    ct, mri = example_inputs(image_size, EXAMPLE_BATCH)
    dynamic = {name: {0: BATCH_AXIS} for name, _ in SIGNATURE}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed.*", category=DeprecationWarning)
        # FusionNet's input checks read shapes as Python values; they hold for every batch size.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="fuse_train.model")
        try:
            torch.onnx.export(
                model,
                (torch.from_numpy(ct), torch.from_numpy(mri)),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_FIRST, INPUT_SECOND],
                output_names=[OUTPUT],
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as error:
            raise FuseError(
                f"PyTorch could not export the model at opset {opset} ({first_line(error)}); try --opset 17"
            ) from error
    return onnx.load(str(path))


def check_onnx(path: str | Path, model: onnx.ModelProto, image_size: int, where: str | Path | None = None) -> None:
    """Validate the saved graph at ``path`` (``model`` is the same graph, in memory).

    ``onnx.checker.check_model(full_check=True)`` on the file runs the checker and strict shape
    and type inference; then the fuse signature: ``ct`` [batch,3,S,S], ``mri`` [batch,1,S,S] →
    ``fused`` [batch,3,S,S] with a symbolic batch. Raises FuseError naming ``where`` (default ``path``).
    """
    where = where if where is not None else path
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise FuseError(f"the exported ONNX graph is invalid: {error}", where) from None
    found = {v.name: _dims(v) for v in [*model.graph.input, *model.graph.output]}
    for name, channels in SIGNATURE:
        expected = [BATCH_AXIS, channels, image_size, image_size]
        if found.get(name) != expected:
            raise FuseError(f"ONNX tensor {name!r} has shape {found.get(name)}, expected {expected}", where)


def simplify_onnx(model: onnx.ModelProto, image_size: int) -> tuple[onnx.ModelProto, SimplifyReport]:
    """Run onnxslim; keep its graph only when it has fewer nodes and ONNX Runtime gives
    bit-identical outputs.

    "Smaller" counts nodes (onnxslim drops Identity/Constant nodes and folds BatchNorm into the
    transposed convolutions); the file may grow by a few hundred kB because onnxslim gives each
    consumer of a shared weight (the attention modules both modalities share) its own folded copy,
    so both sizes are reported. The output check runs both graphs on the CPU on a fixed random
    batch of 3 (an odd size, away from the export example's). Returns the graph to keep and a report.
    """
    import onnxslim

    before = model.SerializeToString()
    try:
        slim = onnxslim.slim(onnx.load_from_string(before))
    except Exception as error:  # onnxslim raises assorted exceptions on graphs it cannot handle
        nodes = len(model.graph.node)
        return model, SimplifyReport(len(before), len(before), nodes, nodes, False, f"onnxslim failed: {error}")
    after = slim.SerializeToString()
    report = dict(
        bytes_before=len(before),
        bytes_after=len(after),
        nodes_before=len(model.graph.node),
        nodes_after=len(slim.graph.node),
    )
    if len(slim.graph.node) >= len(model.graph.node):
        return model, SimplifyReport(**report, kept=False, reason="no fewer nodes")
    ct, mri = example_inputs(image_size, 3)
    reference = run_onnx(before, ct, mri)
    candidate = run_onnx(after, ct, mri)
    if not np.array_equal(reference, candidate):
        worst = float(np.abs(reference - candidate).max())
        return model, SimplifyReport(**report, kept=False, reason=f"outputs changed (max abs {worst:.3g})")
    return slim, SimplifyReport(**report, kept=True, reason="outputs identical")


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace ``model.metadata_props`` entries with ``metadata`` (keys kept in the given order)."""
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))


def run_onnx(model: bytes | str | Path, ct: np.ndarray, mri: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run an ONNX graph on the CPU with ONNX Runtime (all graph optimisations on).

    ``ct`` float32 [N,3,S,S], ``mri`` float32 [N,1,S,S] → ``fused`` float32 [N,3,S,S].
    """
    return cpu_runner(model, threads)(ct, mri)


def cpu_runner(model: bytes | str | Path, threads: int | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """One CPU session for ``model``, as a function ``(ct [N,3,S,S], mri [N,1,S,S]) → fused [N,3,S,S]``
    (float32): the ONNX Runtime runner every parity check of fuse_export uses."""
    session = cpu_session(model, threads)

    def run(ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        (fused,) = session.run([OUTPUT], {INPUT_FIRST: ct, INPUT_SECOND: mri})
        return np.asarray(fused, dtype=np.float32)

    return run


def cpu_session(model: bytes | str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``ORT_ENABLE_ALL``, as the runtime serves models."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def example_inputs(image_size: int, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random inputs: ``ct`` [batch,3,S,S] (gray repeated, as preprocessing makes it)
    and ``mri`` [batch,1,S,S], float32 in [0,1]."""
    rng = np.random.default_rng(seed)
    gray = rng.random((batch, 1, image_size, image_size), dtype=np.float32)
    mri = rng.random((batch, 1, image_size, image_size), dtype=np.float32)
    return np.repeat(gray, 3, axis=1), mri


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]
