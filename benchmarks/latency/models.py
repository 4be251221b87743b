"""The models and inputs of a run: model files, reference size and preprocessing, FLOPs, the export."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency.backends import PLAN_SUFFIXES
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import META_PRECISION

Log = Callable[[str], None]


@dataclass(frozen=True)
class Artifact:
    """An exported model file: where, its label in the table, its precision and input size."""

    path: Path
    name: str
    precision: str
    image_size: int
    preprocess: Any


def load_inputs(data: str | Path, preprocess: Any, count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read and preprocess up to ``count`` slices from the CT/MRI pairs in ``data``, in name order.

    Returns ``ct`` float32 [P,3,S,S], ``mri`` float32 [P,1,S,S] in [0,1] and the slice names
    (``pair`` or ``pair#slice``), P <= count. Raises FuseError when no pair can be used.
    """
    from fuse_runtime.pairing import find_pairs, load_pair
    from fuse_runtime.preprocess import prepare_pair

    cts, mris, names, problems = [], [], [], []
    for pair in find_pairs(data, task="ct-mri").pairs:
        if len(names) >= count:
            break
        try:
            prepared = prepare_pair(*load_pair(pair), pair.roles, preprocess)
        except FuseError as error:
            problems.append(f"{pair.name}: {error}")
            continue
        slices = prepared.first.shape[0]
        take = min(slices, count - len(names))
        cts.append(prepared.first[:take])
        mris.append(prepared.second[:take])
        names += [pair.name if slices == 1 else f"{pair.name}#{i}" for i in range(take)]
    if not names:
        reasons = "; ".join(problems[:3]) or "no CT/MRI pairs found"
        raise FuseError(f"no usable CT/MRI pair for the latency inputs ({reasons})", data)
    return np.concatenate(cts).astype(np.float32), np.concatenate(mris).astype(np.float32), names


def artifacts_of(onnx: Sequence[Path], engine: Path | None) -> list[Artifact]:
    """Describe every exported model file; refuse files whose image sizes differ."""
    paths = [*onnx, *([engine] if engine is not None else [])]
    names = [path.name for path in paths]
    artifacts = []
    for path in paths:
        name = path.name if names.count(path.name) == 1 else str(path)
        if path.suffix.lower() in PLAN_SUFFIXES:
            from fuse_runtime.engines.base import find_manifest

            manifest = find_manifest(path)
            if manifest is None:
                raise FuseError("a TensorRT plan needs the manifest.json fuse-export writes beside it", path)
            artifacts.append(Artifact(path, name, manifest.precision, manifest.image_size, manifest.preprocess))
        else:
            from fuse_runtime.engines import open_engine

            with open_engine(path, provider="cpu", threads=1) as opened:
                artifacts.append(Artifact(path, name, onnx_precision(opened), opened.image_size, opened.preprocess))
    sizes = {a.image_size for a in artifacts}
    if len(sizes) > 1:
        listed = ", ".join(f"{a.name} {a.image_size} px" for a in artifacts)
        raise FuseError(
            f"the model files take different image sizes ({listed}); measure files exported at one size together"
        )
    return artifacts


def reference(
    checkpoint: Path | None, artifacts: list[Artifact], image_size: int | None
) -> tuple[int, Any, Any, dict[str, Any]]:
    """Image size and preprocessing of the run (the first model file's, else the checkpoint's), the
    checkpoint's eager model (None without one) and a description of the models given."""
    describe: dict[str, Any] = {"checkpoint": str(checkpoint) if checkpoint else None}
    preprocess, model = (artifacts[0].preprocess if artifacts else None), None
    if checkpoint is not None:
        from fuse_train.checkpoint import load_model

        model, train_config, info = load_model(checkpoint, map_location="cpu")
        describe.update(task=info.get("task"), epoch=info.get("epoch"), val_loss=info.get("val_loss"))
        preprocess = preprocess or train_config.preprocess
    artifact_size = artifacts[0].image_size if artifacts else None
    size = image_size or artifact_size or preprocess.image_size
    if artifact_size is not None and size != artifact_size:
        raise FuseError(
            f"the exported model takes {artifact_size}×{artifact_size} px but --image-size is {size}; "
            f"drop --image-size or export the model at {size} (fuse-export --image-size {size})",
            artifacts[0].path,
        )
    parts = [f"`{checkpoint}` (epoch {describe.get('epoch')})"] if checkpoint is not None else []
    parts += [f"`{a.path}`" for a in artifacts]
    describe.update(files=[str(a.path) for a in artifacts], label=" + ".join(parts))
    return size, dataclasses.replace(preprocess, image_size=size), model, describe


def count_flops(model: Any, artifacts: list[Artifact], size: int) -> dict[str, Any]:
    """FLOPs per slice, counted on the eager model when there is one, else on the first ONNX graph
    (``--onnx``, or the ``model.onnx`` beside ``--engine``); the ONNX count is kept as a cross-check.
    ``per_slice`` is None (and ``reason`` says why) when there is nothing to count on."""
    from benchmarks import flops as flop_counter

    counted = flop_counter.count_torch_flops(model, size) if model is not None else None
    result = counted.to_dict() if counted is not None else {"per_slice": None, "convention": flop_counter.CONVENTION}
    graphs = [a.path for a in artifacts if a.path.suffix.lower() == ".onnx"]
    graphs += [a.path.parent / "model.onnx" for a in artifacts if a.path.suffix.lower() in PLAN_SUFFIXES]
    graph = next((path for path in graphs if path.is_file()), None)
    reason = "no --checkpoint and no model.onnx to count on (a TensorRT plan hides its layers)"
    if graph is not None:
        try:
            on_graph = flop_counter.count_onnx_flops(graph)
        except ValueError as error:
            on_graph, reason = None, str(error)
        if on_graph is not None and on_graph.image_size == size:
            if counted is None:
                result = on_graph.to_dict()
            else:
                result["onnx_per_slice"] = on_graph.per_slice
    if result["per_slice"] is None:
        result["reason"] = reason
    return result


def export_onnx(checkpoint: Path, target: Path, size: int, data: Path, log: Log) -> dict[str, Any]:
    """Export ``checkpoint`` to ``target/model.onnx`` (+ manifest.json) with fuse-export's own function."""
    from fuse_export.config import ExportConfig
    from fuse_export.pipeline import run_export

    log(f"latency: exporting {checkpoint} to ONNX for the ONNX Runtime and fuse-run rows")
    started = time.perf_counter()
    result = run_export(checkpoint, target, ExportConfig(image_size=size, parity_data=data, parity_pairs=1), log=log)
    return {
        "dir": str(target),
        "seconds": time.perf_counter() - started,
        "parity_passed": result.parity_passed,
    }


def openvino_precision(file_precision: str, description: str) -> str:
    """What an OpenVINO row computes in: the file's precision, and bf16 where OpenVINO ran in bf16
    (its engine description says ``(cpu, bf16)``): ``bf16`` for an FP32 file, ``int8 + bf16`` for INT8."""
    if "(cpu, bf16)" not in description:
        return file_precision
    return "bf16" if file_precision == "fp32" else f"{file_precision} + bf16"


def onnx_precision(engine: Any) -> str:
    """``fuse.precision`` from an ONNX Runtime engine's model metadata (fp32 when absent, as in manifests)."""
    return engine.session.get_modelmeta().custom_metadata_map.get(META_PRECISION, "fp32")


def existing_file(path: str | Path | None, kind: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        hints = {
            "checkpoint": "give the .pt file a fuse-train run wrote (RUN/best.pt)",
            "onnx": "give an .onnx file fuse-export wrote (model.onnx)",
            "engine": "give the model.plan fuse-export --fp16 wrote",
        }
        raise FuseError(f"{kind} not found; {hints[kind]}", path)
    return path


def resolve_data(data: str | Path | None) -> Path:
    if data is None:
        from fuse_export.parity import default_parity_dir

        found = default_parity_dir()
        if found is None:
            raise FuseError("no --data given and ../shared/data/harvard/ct-mri-test is missing; pass --data DIR")
        return found
    data = Path(data)
    if not data.is_dir():
        raise FuseError("data folder not found; pass --data DIR with CT/ and MRI/ pairs", data)
    return data
