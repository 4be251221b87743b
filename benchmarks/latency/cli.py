"""``python -m benchmarks.latency``: the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from benchmarks.latency.backends import BACKENDS
from benchmarks.latency.config import LatencyConfig
from benchmarks.latency.run import JSON_NAME, MARKDOWN_NAME, run_latency
from benchmarks.report import command_line
from fuse_runtime.errors import FuseError


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,4,8"`` → ``(1, 4, 8)``; raises FuseError for anything but positive integers."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise FuseError(f"--batch must be positive integers separated by commas such as 1,4,8, got {text!r}")
    return values


def parse_backends(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of backend names → a tuple; raises FuseError for unknown names."""
    if text.strip() == "all":
        return BACKENDS
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise FuseError(
            f"--backends: unknown {', '.join(unknown) or 'empty list'}; choose from all, {', '.join(BACKENDS)}"
        )
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="fuse-train checkpoint (RUN/best.pt) for the PyTorch rows; without --onnx it is also "
                   "exported to model.onnx (see --export-dir) for the ONNX Runtime and fuse-run rows.")
@click.option("--onnx", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Exported .onnx file (model.onnx, model.int8.onnx...) for the ONNX Runtime and fuse-run rows. "
                   "Repeat it to compare files: each gets its own rows, labelled with its file name.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT model.plan (with its manifest.json) for the TensorRT and fuse-run rows; GPU only.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of CT/MRI pairs: the inputs of every row and what fuse-run fuses "
                   "[default: ../shared/data/harvard/ct-mri-test beside the repository, or under $FUSE_SHARED_DATA].")
@click.option("--batch", "batch_text", default="1,4,8,16,32", show_default=True,
              help="Batch sizes (slices per call), comma-separated.")
@click.option("--image-size", type=int, default=None,
              help="Model input size in pixels, a multiple of 32 [default: the model's own, 256 by design]. "
                   "Must match --onnx/--engine when given.")
@click.option("--warmup", type=click.IntRange(min=0), default=LatencyConfig.warmup, show_default=True,
              help="Untimed calls per backend and batch size before timing (torch.compile always gets one).")
@click.option("--iters", type=click.IntRange(min=1), default=LatencyConfig.iters, show_default=True,
              help="Timed calls per backend and batch size (p50/p95/p99 are over these).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for PyTorch, ONNX Runtime and fuse-run [default: every usable core].")
@click.option("--backends", "backends_text", default="all", show_default=True,
              help=f"Backends to run, comma-separated: all or some of {', '.join(BACKENDS)}. "
                   "The others are listed as not selected.")
@click.option("--emulated-bf16-batch", type=click.IntRange(min=1), default=LatencyConfig.emulated_bf16_max_batch,
              show_default=True,
              help="Largest batch for bf16 autocast on a CPU without native bf16 (emulated, many times slower).")
@click.option("--emulated-bf16-iters", type=click.IntRange(min=1), default=LatencyConfig.emulated_bf16_iters,
              show_default=True, help="Most timed calls for bf16 autocast on a CPU without native bf16.")
@click.option("--compile-timeout", type=click.FloatRange(min=0, min_open=True), default=LatencyConfig.compile_timeout_s,
              show_default=True, help="Seconds the torch.compile process may take in all, compilation included.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=LatencyConfig.timeout_s,
              show_default=True, help="Seconds every other backend's process (and each fuse-run) may take.")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the model.onnx exported from --checkpoint in this folder (which must hold no earlier "
                   "export) [default: a temporary folder].")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for latency.json and latency.md (created; those two files replaced).")
@click.option("--quiet", is_flag=True, help="No progress bars (the one-line progress messages stay on stderr).")
def main(
    checkpoint: Path | None,
    onnx: tuple[Path, ...],
    engine: Path | None,
    data: Path | None,
    batch_text: str,
    image_size: int | None,
    warmup: int,
    iters: int,
    threads: int | None,
    backends_text: str,
    emulated_bf16_batch: int,
    emulated_bf16_iters: int,
    compile_timeout: float,
    timeout: float,
    export_dir: Path | None,
    out: Path,
    quiet: bool,
) -> None:
    """Measure latency (p50/p95/p99 ms per batch), throughput (slices/s, GFLOP/s) and peak memory of
    the fusion model per backend, model file and batch size; write OUT/latency.json and OUT/latency.md."""
    command = command_line("benchmarks.latency")
    try:
        try:
            config = LatencyConfig(
                batches=parse_batches(batch_text), image_size=image_size, warmup=warmup, iters=iters,
                threads=threads, backends=parse_backends(backends_text),
                emulated_bf16_max_batch=emulated_bf16_batch, emulated_bf16_iters=emulated_bf16_iters,
                compile_timeout_s=compile_timeout, timeout_s=timeout,
            )
        except (ValueError, FuseError) as error:
            raise click.UsageError(str(error)) from None
        run_latency(out, checkpoint, onnx, engine, data, config, export_dir, progress=not quiet, command=command)
    except FuseError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"wrote {out / JSON_NAME} and {out / MARKDOWN_NAME}")
