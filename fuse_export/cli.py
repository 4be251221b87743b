"""``fuse-export``: turn a fuse-train checkpoint into the formats of one table (``fuse_export.formats``):
onnx (always), fp16, int8, plan (TensorRT), triton (a Triton model repository).

Exit status: 0 done; 2 a problem you can fix (message says which file and how; nothing is published);
3 a TensorRT engine was asked for but this machine has no GPU/TensorRT (every other format,
parity.json and manifest.json are published); 4 an artifact's output is outside the parity
tolerance (nothing is published).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from fuse_export.config import MAX_OPSET, MIN_OPSET, TRITON_FOLDER, ExportConfig
from fuse_export.formats import FORMATS
from fuse_export.int8 import CALIBRATION_METHODS, Int8Config
from fuse_export.pipeline import run_export
from fuse_export.triton import DEFAULT_NAME
from fuse_runtime.errors import FuseError
from fuse_runtime.version import version_option

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_NO_ENGINE = 3
EXIT_PARITY = 4


def _batch(value: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(part) for part in value.split(","))
    except ValueError:
        raise FuseError(f"--batch must be three integers MIN,OPT,MAX such as 1,8,32, got {value!r}") from None
    return low, opt, high


def _format_help() -> str:
    rows = "; ".join(f"{f.name}: {f.summary}" for f in FORMATS)
    return (
        "Formats to write, comma-separated or repeated (e.g. --format fp16,int8,triton). "
        f"{rows}. A format pulls in those it is built from (plan: fp16)."
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option("fuse-export")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint written by fuse-train for the ct-mri task (e.g. RUN/best.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder for the model files, parity.json and manifest.json; created when missing. "
                   "Everything is written to a staging folder inside it and published only when every "
                   "check passes.")
@click.option("--format", "formats", multiple=True, metavar="FORMAT[,FORMAT...]", help=_format_help())
@click.option("--fp16", is_flag=True,
              help="Same as --format fp16,plan: model.fp16.onnx (FP16 compute, float32 inputs/outputs) and "
                   "the FP16 TensorRT engine model.plan; without a CUDA GPU and TensorRT everything else is "
                   "still written and checked, then the command exits 3.")
@click.option("--onnx-only", is_flag=True,
              help="Never build a TensorRT engine (with --fp16: fp16 ONNX only); exits 0 on a machine "
                   "without a GPU. Kept for older scripts: --format lists what to write.")
@click.option("--int8", is_flag=True,
              help="Same as --format int8: model.int8.onnx for CPUs, static INT8 quantisation of model.onnx "
                   "(QDQ, uint8 activations, int8 per-channel weights; attention gates, output sigmoids and "
                   "stems kept in float), calibrated on --calibration-data, with parity.int8.json comparing "
                   "it with model.onnx on the --parity-data pairs (all of them, up to 21).")
@click.option("--triton", "triton_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help=f"Write a Triton model repository into this folder (implies --format triton; default "
                   f"with --format triton: OUT/{TRITON_FOLDER}): DIR/NAME/config.pbtxt, preprocessing.json "
                   "and 1/model.plan (when built) or 1/model.onnx.")
@click.option("--triton-name", default=DEFAULT_NAME, show_default=True,
              help="The model's name (its folder) in the Triton repository.")
@click.option("--opset", type=int, default=MIN_OPSET, show_default=True,
              help=f"ONNX opset to export to ({MIN_OPSET} to {MAX_OPSET}).")
@click.option("--batch", "batch_text", default="1,8,32", show_default=True,
              help="Batch sizes MIN,OPT,MAX: the TensorRT optimisation profile of the dynamic batch axis "
                   "and Triton's max_batch_size (ONNX files accept any batch).")
@click.option("--image-size", type=int, default=None,
              help="Model input height and width in pixels, a multiple of 32. Default: the size the "
                   "checkpoint was trained for (256 by design).")
@click.option("--parity-data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of registered CT/MRI pairs (CT/ + MRI/ folders, DICOM series or NIfTI cases) "
                   "for the parity check. Default: ../shared/data/harvard/ct-mri-test when present, else "
                   "synthetic phantoms.")
@click.option("--parity-pairs", type=int, default=4, show_default=True,
              help="How many pairs the parity check uses (spread evenly over the folder's pairs by name).")
@click.option("--workspace-gb", type=float, default=4.0, show_default=True,
              help="TensorRT builder memory-pool (workspace) limit in GiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TensorRT timing-cache file, reused and updated by every build. "
                   "Default: ~/.cache/fuse/tensorrt-timing.cache ($XDG_CACHE_HOME honoured).")
@click.option("--no-simplify", is_flag=True,
              help="Skip onnxslim (by default its graph is kept only when outputs stay bit-identical).")
@click.option("--overwrite", is_flag=True,
              help="Replace the artifacts of an earlier export in --out (and the Triton model folder) "
                   "instead of refusing; files an earlier export wrote that this one does not are removed.")
@click.option("--calibration-data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="For int8: folder of registered TRAINING CT/MRI pairs to calibrate on (e.g. "
                   "../shared/data/harvard/ct-mri-train), preprocessed with the model's own settings; the "
                   "parity folder itself is refused.")
@click.option("--calibration-pairs", type=click.IntRange(min=1), default=Int8Config.calibration_pairs,
              show_default=True, help="For int8: how many calibration pairs (spread evenly by name).")
@click.option("--calibration-method", type=click.Choice(tuple(CALIBRATION_METHODS)),
              default=Int8Config.calibration_method, show_default=True,
              help="For int8: how activation ranges are chosen (percentile: 99.999th percentile of each "
                   "tensor's histogram; minmax: observed extremes; entropy: KL-divergence threshold).")
def main(
    checkpoint: Path,
    out_dir: Path,
    formats: tuple[str, ...],
    fp16: bool,
    onnx_only: bool,
    int8: bool,
    triton_dir: Path | None,
    triton_name: str,
    opset: int,
    batch_text: str,
    image_size: int | None,
    parity_data: Path | None,
    parity_pairs: int,
    workspace_gb: float,
    timing_cache: Path | None,
    no_simplify: bool,
    overwrite: bool,
    calibration_data: Path | None,
    calibration_pairs: int,
    calibration_method: str,
) -> None:
    """Export a CT–MRI fusion checkpoint to the asked formats (always model.onnx; --fp16: FP16 ONNX
    and a TensorRT FP16 engine), check every artifact against PyTorch on real pairs, write
    parity.json and manifest.json for fuse-run, and publish them into --out only when every check
    passes.

    Exit status: 0 done; 2 bad argument, file or folder (the message says how to fix it; nothing
    published); 3 a TensorRT engine asked for (--fp16, --format plan) on a machine without a CUDA GPU
    or TensorRT (everything but model.plan published); 4 parity outside tolerance (the message names
    the output, pair and pixel; nothing published).
    """
    try:
        try:
            config = ExportConfig(
                image_size=image_size,
                opset=opset,
                batch=_batch(batch_text),
                formats=_split_formats(formats) + (("int8",) if int8 else ()),
                fp16=fp16,
                onnx_only=onnx_only,
                calibration_data=calibration_data,
                int8=Int8Config(calibration_method=calibration_method, calibration_pairs=calibration_pairs),
                triton_dir=triton_dir,
                triton_name=triton_name,
                simplify=not no_simplify,
                workspace_gb=workspace_gb,
                timing_cache=timing_cache,
                parity_data=parity_data,
                parity_pairs=parity_pairs,
                overwrite=overwrite,
            )
        except ValueError as error:
            raise FuseError(str(error)) from None
        result = run_export(checkpoint, out_dir, config, log=click.echo)
    except FuseError as error:
        click.echo(f"fuse-export: error: {error}", err=True)
        sys.exit(EXIT_USER_ERROR)

    click.echo(result.table)
    for failure in result.failures:
        click.echo(f"fuse-export: parity failed: {failure}", err=True)
    if not result.published:
        click.echo(f"fuse-export: nothing was published; {out_dir} is as it was before this export", err=True)
        sys.exit(EXIT_PARITY)
    if result.engine_skipped is not None:
        written = [*result.artifacts, "manifest.json"]
        click.echo(
            f"fuse-export: the TensorRT engine model.plan was not built because {result.engine_skipped} "
            f"({', '.join(written[:-1])} and {written[-1]} are written); run the same "
            f"command on the machine with the NVIDIA GPU and TensorRT that will serve it: "
            f"{_same_command()}",
            err=True,
        )
        sys.exit(EXIT_NO_ENGINE)
    sys.exit(EXIT_OK)


def _split_formats(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--format a,b --format c`` → ``(a, b, c)`` (lower-cased, blanks dropped)."""
    return tuple(name.strip().lower() for value in values for name in value.split(",") if name.strip())


def _same_command() -> str:
    """This invocation as a shell command, with --overwrite added (OUT now holds the ONNX files)."""
    ctx = click.get_current_context()
    args = ["fuse-export"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name == "overwrite":
            continue
        if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            args += [param.opts[0]] if value else []
        elif param.multiple:
            args += [part for item in value for part in (param.opts[0], str(item))]
        else:
            args += [param.opts[0], str(value)]
    return shlex.join([*args, "--overwrite"])
