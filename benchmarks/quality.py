"""Fusion quality on registered 2-D pairs: the classical baselines and, when given, the fuse model.

    python -m benchmarks.quality --data ../shared/data/harvard/ct-mri-test --out R
    python -m benchmarks.quality --data DIR --engine OUT/model.onnx --out R
    python -m benchmarks.quality --data DIR --checkpoint RUN/best.pt --out R

writes ``R/quality.json`` (every metric per method per pair, the means, the skipped pairs and the
machine), ``R/quality.md`` (one row per method: mean of every metric over the pairs and their number,
plus the best published figures for reference) and ``R/grid.png`` (sources | each method, a few pairs).

Protocol of the image-fusion literature's tables: sources are read as 8-bit gray (OpenCV
``IMREAD_GRAYSCALE``), a fused image is quantised to 8 bits (``round(f * 255)``, clipped) and an RGB
one scored on its BT.601 luminance; see ``fuse_runtime.metrics``. The baselines fuse the 8-bit
sources scaled to [0, 1]; the model gets its own preprocessing (from the checkpoint's config or the
engine's manifest/ONNX metadata) through ``fuse_runtime.preprocess.prepare_pair`` and its output is
restored to the source geometry before scoring.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from tqdm import tqdm

from benchmarks.report import command_line, machine_info, machine_markdown, markdown_table, write_json, write_text
from fuse_runtime import baselines, metrics
from fuse_runtime.api import fuse_pair
from fuse_runtime.atomic import atomic_path
from fuse_runtime.engines import BACKEND_CHOICES, PROVIDER_CHOICES
from fuse_runtime.engines.base import Engine
from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import TASKS, Pair, PairProblem, find_pairs, load_pair

JSON_NAME = "quality.json"
MARKDOWN_NAME = "quality.md"
GRID_NAME = "grid.png"
DEFAULT_GRID_PAIRS = 4
GRID_TILE = 256
GRID_HEADER = 30
GRID_SEPARATOR = 90
GRID_HEADER_GRAY = 40
MODEL_BATCH = 16
MODEL_METHOD = "fuse"

BASELINE_LABELS = {
    "mean": "pixel mean",
    "max": "pixel max",
    "laplacian": f"Laplacian pyramid ({baselines.LAPLACIAN_LEVELS} levels, max-abs)",
    "dwt": f"DWT {baselines.DWT_WAVELET} ({baselines.DWT_LEVELS} levels, max-abs)",
}

PUBLISHED_BEST = {
    "EN": 4.88,
    "SD": 79.17,
    "SF": 38.14,
    "MI": 2.61,
    "SCD": 1.41,
    "VIF": 0.61,
    "Qabf": 0.68,
    "SSIM": 1.34,
}
"""Best published learned model on harvard/ct-mri-test, as shared/data/README.md reports it."""
PUBLISHED_BEST_LABEL = "best published learned model (reported in shared/data/README.md, not run here)"
PUBLISHED_BEST_PAIRS = 21

PROTOCOL = (
    "Conventions (`fuse_runtime.metrics`): sources read as 8-bit gray; fused images quantised to 8 bits "
    "(round(f·255), clipped) and, when RGB, scored on their BT.601 luminance 0.299R+0.587G+0.114B. "
    "EN in bits; MI = MI(A,F)+MI(B,F) in nats; SCD, VIF (4-scale pixel VIF, σn²=2) and SSIM "
    "(scikit-image, data_range=2) summed over the two sources; Qabf Xydeas–Petrović; "
    "PSNR = 10·log10(255²/MSE) dB with MSE averaged over the sources; CC the mean correlation with the sources."
)

FuseFn = Callable[[Pair, np.ndarray, np.ndarray], np.ndarray]
"""``(pair, first8, second8) -> fused`` 8-bit-valued float, ``[H,W]`` gray or ``[H,W,3]`` RGB."""


@dataclass
class Method:
    """One fusion method under test: table name, a longer label, and the function that fuses."""

    name: str
    label: str
    fuse: FuseFn
    details: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] | None = None


def run_quality(
    data: str | Path,
    out: str | Path,
    checkpoint: str | Path | None = None,
    engine: str | Path | None = None,
    grid_pairs: int = DEFAULT_GRID_PAIRS,
    task: str = "ct-mri",
    provider: str = "auto",
    progress: bool = True,
    command: str | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Score every baseline (and the model, given ``checkpoint`` or ``engine``) on the pairs in ``data``.

    Writes ``out/quality.json``, ``out/quality.md`` and (``grid_pairs`` > 0) ``out/grid.png``;
    returns the JSON data. A pair that cannot be read or fused is reported and skipped. Raises
    FuseError when no pair could be scored or the model cannot be loaded.
    """
    if checkpoint is not None and engine is not None:
        raise FuseError("give either a checkpoint or an engine, not both")
    if grid_pairs < 0:
        raise ValueError(f"grid_pairs must be >= 0, got {grid_pairs}")
    out = Path(out)
    methods = baseline_methods()
    if checkpoint is not None:
        methods.append(checkpoint_method(checkpoint, task))
    elif engine is not None:
        methods.append(engine_method(engine, provider, backend))

    per_pair: dict[str, dict[str, dict[str, float]]] = {m.name: {} for m in methods}
    seconds: dict[str, float] = {m.name: 0.0 for m in methods}
    grid_rows: list[tuple[str, list[np.ndarray]]] = []
    try:
        report = find_pairs(data, task=task)
        problems = [_problem_dict(p) for p in report.problems]
        for pair in tqdm(report.pairs, desc="quality", unit="pair", disable=not progress):
            try:
                first8, second8 = read_gray8(pair.first), read_gray8(pair.second)
                fused = {}
                for method in methods:
                    start = time.perf_counter()
                    fused[method.name] = method.fuse(pair, first8, second8)
                    seconds[method.name] += time.perf_counter() - start
                scores = {name: metrics.evaluate(first8, second8, image) for name, image in fused.items()}
            except FuseError as error:
                problems.append(_problem_dict(PairProblem.from_error(pair, error)))
                continue
            for name, values in scores.items():
                per_pair[name][pair.name] = values
            if len(grid_rows) < grid_pairs:
                grid_rows.append((pair.name, [first8, second8, *fused.values()]))
    finally:
        for method in methods:
            if method.close is not None:
                method.close()

    scored = len(per_pair[methods[0].name])
    if scored == 0:
        raise FuseError(
            f"none of the {len(report.pairs)} pair(s) could be scored: "
            + "; ".join(f"{p['name']}: {p['reason']}" for p in problems[:3]),
            data,
        )
    result = {
        "data": str(Path(data).resolve()),
        "task": task,
        "pairs_scored": scored,
        "pairs": sorted(per_pair[methods[0].name]),
        "problems": problems,
        "protocol": PROTOCOL,
        "methods": {
            m.name: {
                "label": m.label,
                **m.details,
                "seconds_per_pair": seconds[m.name] / scored,
                "mean": _means(per_pair[m.name]),
                "per_pair": per_pair[m.name],
            }
            for m in methods
        },
        "reference": {"label": PUBLISHED_BEST_LABEL, "pairs": PUBLISHED_BEST_PAIRS, "mean": PUBLISHED_BEST}
        if task == "ct-mri"
        else None,
        "command": command,
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / JSON_NAME, result)
    write_text(out / MARKDOWN_NAME, quality_markdown(result))
    if grid_rows:
        labels = [*TASKS[task].labels, *(m.name for m in methods)]
        write_png(out / GRID_NAME, compose_grid(grid_rows, labels))
    return result


def baseline_methods() -> list[Method]:
    """The four classical baselines, fusing the 8-bit sources scaled to [0, 1]."""
    return [Method(name, BASELINE_LABELS[name], _baseline_fuser(rule)) for name, rule in baselines.BASELINES.items()]


def engine_method(path: str | Path, provider: str = "auto", backend: str = "auto") -> Method:
    """The exported model behind ``fuse_runtime.engines.open_engine`` with its own preprocessing.

    backend: as ``fuse-run --backend`` (``openvino`` scores what OpenVINO computes, bf16 where the CPU
    has it natively); the label names it and its precision."""
    from fuse_runtime.engines import open_engine

    engine = open_engine(path, provider=provider, backend=backend)
    details = {
        "engine": str(path), "provider": engine.provider, "description": engine.description,
        "notices": list(engine.notices),
    }
    where = engine.provider
    if getattr(engine, "backend", None) == "openvino":
        where = f"OpenVINO {engine.provider} {engine.precision}"
    return Method(MODEL_METHOD, f"fuse model ({Path(path).name}, {where})", _model_fuser(engine), details, engine.close)


def checkpoint_method(path: str | Path, task: str) -> Method:
    """The trained PyTorch model of a fuse-train checkpoint, in eval mode on the CPU."""
    from fuse_train.torch_engine import TorchEngine

    engine = TorchEngine.from_checkpoint(path)
    info = engine.info
    if info.get("task", task) != task:
        raise FuseError(
            f"the checkpoint is a {info['task']} model but --task is {task}; pass --task {info['task']}", path
        )
    details = {"checkpoint": str(path), "epoch": info.get("epoch"), "val_loss": info.get("val_loss")}
    return Method(MODEL_METHOD, f"fuse model ({Path(path).name}, PyTorch eager)", _model_fuser(engine), details)


def model_method(checkpoint: Path | None, engine: Path | None, data: str | Path, task: str = "ct-mri") -> Method:
    """The model under test from exactly one of a fuse-train checkpoint or an exported engine."""
    if (checkpoint is None) == (engine is None):
        raise FuseError("give exactly one of a checkpoint or an engine", data)
    return checkpoint_method(checkpoint, task) if checkpoint is not None else engine_method(engine)


def read_gray8(path: Path) -> np.ndarray:
    """Read an 8-bit image file as gray (OpenCV ``IMREAD_GRAYSCALE``), float64 ``[H,W]`` in [0,255].

    Raises FuseError for anything but an 8-bit 2-D image (the metrics' protocol).
    """
    if path.is_dir() or "".join(path.suffixes).lower() in (".nii", ".nii.gz", ".dcm"):
        raise FuseError("the quality benchmark scores 2-D 8-bit images (PNG/TIFF/JPEG) only", path)
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise FuseError(f"cannot read the file ({error.strerror})", path) from None
    unchanged = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if unchanged is None:
        raise FuseError("not a readable image; the quality benchmark scores 2-D 8-bit PNG/TIFF/JPEG", path)
    if unchanged.dtype != np.uint8:
        raise FuseError(
            f"the image holds {unchanged.dtype} samples, not 8-bit; the metrics are defined on 8-bit images",
            path,
        )
    return cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE).astype(np.float64)


def quality_markdown(result: dict[str, Any]) -> str:
    """The Markdown report: one row per method (means over pairs), the reference row, conventions."""
    names = metrics.METRIC_NAMES
    rows = [
        [method["label"], result["pairs_scored"], *(method["mean"].get(n) for n in names)]
        for method in result["methods"].values()
    ]
    if result.get("reference"):
        reference = result["reference"]
        rows.append([f"*{reference['label']}*", reference["pairs"], *(reference["mean"].get(n) for n in names)])
    lines = [
        "# Fusion quality",
        "",
        f"Data: `{result['data']}` (task {result['task']}): {result['pairs_scored']} pair(s) scored"
        + (f", {len(result['problems'])} skipped (reasons in {JSON_NAME})" if result["problems"] else "")
        + ". Mean over pairs; higher is better for every metric.",
        "",
        markdown_table(["method", "pairs", *names], rows),
        "",
        PROTOCOL,
    ]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    lines += ["", "## Machine", "", machine_markdown(result["machine"])]
    return "\n".join(lines)


def compose_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], labels: Sequence[str]) -> np.ndarray:
    """Tile images into a labelled BGR uint8 grid: one row per pair, one column per label.

    Each image is 8-bit-valued ``[H,W]`` gray or ``[H,W,3]`` RGB, letterboxed into a
    ``GRID_TILE`` square; the pair's name is written in the row's first tile.
    """
    header = np.full((GRID_HEADER, GRID_TILE * len(labels), 3), GRID_HEADER_GRAY, dtype=np.uint8)
    for column, label in enumerate(labels):
        _put_text(header, label, (column * GRID_TILE + 8, GRID_HEADER - 10), (255, 255, 255))
    bands = [header]
    for name, images in rows:
        if len(images) != len(labels):
            raise ValueError(f"row {name!r} has {len(images)} images for {len(labels)} labels")
        tiles = [_tile(image) for image in images]
        _put_text(tiles[0], name, (6, 20), (0, 255, 255))
        bands.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(bands, axis=0)
    for column in range(1, len(labels)):
        grid[:, column * GRID_TILE - 1 : column * GRID_TILE + 1] = GRID_SEPARATOR
    return grid


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Encode a BGR uint8 image as PNG and write it atomically."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise FuseError("OpenCV could not encode the PNG", path)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path


def _baseline_fuser(rule: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> FuseFn:
    def fuse(pair: Pair, first8: np.ndarray, second8: np.ndarray) -> np.ndarray:
        return metrics.to_8bit(rule(first8 / metrics.PEAK, second8 / metrics.PEAK))

    return fuse


def _model_fuser(engine: Engine) -> FuseFn:
    def fuse(pair: Pair, first8: np.ndarray, second8: np.ndarray) -> np.ndarray:
        restored = fuse_pair(engine, *load_pair(pair), pair.roles, MODEL_BATCH)
        if restored.shape[0] != 1:
            raise FuseError(f"the pair has {restored.shape[0]} slices; the quality benchmark scores 2-D pairs")
        return metrics.to_8bit(restored[0].transpose(1, 2, 0))

    return fuse


def _means(per_pair: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([values[name] for values in per_pair.values()])) for name in metrics.METRIC_NAMES}


def _problem_dict(problem: PairProblem) -> dict[str, Any]:
    return {"name": problem.name, "paths": [str(p) for p in problem.paths], "reason": problem.reason}


def _tile(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    height, width = bgr.shape[:2]
    scale = GRID_TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(bgr, size, interpolation=interpolation) if scale != 1 else bgr
    tile = np.zeros((GRID_TILE, GRID_TILE, 3), dtype=np.uint8)
    top, left = (GRID_TILE - size[1]) // 2, (GRID_TILE - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = resized
    return tile


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of registered 8-bit 2-D pairs, e.g. DIR/CT/<name>.png + DIR/MRI/<name>.png "
    "(../shared/data/harvard/ct-mri-test).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also score a fuse-train checkpoint (RUN/best.pt), run with PyTorch on the CPU. Needs the train extra.",
)
@click.option(
    "--engine",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also score an exported model (OUT/model.onnx or model.plan) through fuse_runtime.engines. "
    "Excludes --checkpoint.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder for quality.json, quality.md and grid.png (created; existing files are replaced).",
)
@click.option(
    "--grid-pairs",
    type=click.IntRange(min=0),
    default=DEFAULT_GRID_PAIRS,
    show_default=True,
    help="Number of pairs (the first by name) shown in grid.png; 0 writes no grid.",
)
@click.option(
    "--task",
    type=click.Choice(sorted(TASKS)),
    default="ct-mri",
    show_default=True,
    help="Which pairs to look for: CT/ + MRI/ folders, or vi/ + ir/ folders.",
)
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_CHOICES),
    default="auto",
    show_default=True,
    help="ONNX Runtime execution provider for --engine model.onnx (a .plan always runs on TensorRT).",
)
@click.option(
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="auto",
    show_default=True,
    help="Inference library for --engine, as fuse-run --backend (openvino: bf16 where the CPU has it natively).",
)
def main(
    data: Path,
    checkpoint: Path | None,
    engine: Path | None,
    out: Path,
    grid_pairs: int,
    task: str,
    provider: str,
    backend: str,
) -> None:
    """Score the classical fusion baselines (pixel mean, pixel max, Laplacian pyramid, DWT) and,
    when given, the fuse model with the literature's metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf,
    SSIM, PSNR, CC), averaged over the pairs in --data."""
    if checkpoint is not None and engine is not None:
        raise click.UsageError("give either --checkpoint or --engine, not both")
    command = command_line("benchmarks.quality")
    try:
        result = run_quality(
            data, out, checkpoint, engine, grid_pairs, task, provider, progress=True, command=command, backend=backend
        )
    except FuseError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    for problem in result["problems"]:
        click.echo(f"skipped {problem['name']}: {problem['reason']}", err=True)
    click.echo(f"wrote {out / JSON_NAME}, {out / MARKDOWN_NAME}" + (f" and {out / GRID_NAME}" if grid_pairs else ""))


if __name__ == "__main__":
    main()
