"""``fuse-export``: turn a fuse-train checkpoint into ONNX (FP32, FP16) and a TensorRT engine.

Exit status: 0 done; 2 a problem you can fix (message says which file and how); 3 ``--fp16`` asked
for a TensorRT engine but this machine has no GPU/TensorRT (the ONNX files, parity.json and
manifest.json are written); 4 an artifact's output is outside the parity tolerance.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from fuse_export.config import MAX_OPSET, MIN_OPSET, ExportConfig
from fuse_export.int8 import CALIBRATION_METHODS, Int8Config, check_calibration_dir, export_int8, remove_stale_int8
from fuse_export.pipeline import run_export
from fuse_runtime.errors import FuseError

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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint written by fuse-train for the ct-mri task (e.g. RUN/best.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder for model.onnx, model.fp16.onnx, model.plan, parity.json and "
                   "manifest.json; created when missing.")
@click.option("--fp16", is_flag=True,
              help="Also write model.fp16.onnx (FP16 compute, float32 inputs/outputs) and build the FP16 "
                   "TensorRT engine model.plan; without a CUDA GPU and TensorRT the ONNX files are still "
                   "written and checked, then the command exits 3.")
@click.option("--onnx-only", is_flag=True,
              help="Write the ONNX files only (with --fp16: both), never a TensorRT engine; exits 0 on a "
                   "machine without a GPU.")
@click.option("--opset", type=int, default=MIN_OPSET, show_default=True,
              help=f"ONNX opset to export to ({MIN_OPSET} to {MAX_OPSET}).")
@click.option("--batch", "batch_text", default="1,8,32", show_default=True,
              help="Batch sizes MIN,OPT,MAX: the TensorRT optimisation profile of the dynamic batch axis "
                   "(ONNX files accept any batch).")
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
              help="Replace artifacts of an earlier export in --out instead of refusing.")
@click.option("--int8", is_flag=True,
              help="Also write model.int8.onnx for CPUs: static INT8 quantisation of model.onnx (QDQ, uint8 "
                   "activations, int8 per-channel weights; attention gates, output sigmoids and stems kept in "
                   "float), calibrated on --calibration-data, with parity.int8.json comparing it with model.onnx "
                   "on the --parity-data pairs (all of them, up to 21). Needs --calibration-data.")
@click.option("--calibration-data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --int8: folder of registered TRAINING CT/MRI pairs to calibrate on (e.g. "
                   "../shared/data/harvard/ct-mri-train), preprocessed with the model's own settings; the "
                   "parity folder itself is refused.")
@click.option("--calibration-pairs", type=click.IntRange(min=1), default=Int8Config.calibration_pairs,
              show_default=True, help="With --int8: how many calibration pairs (spread evenly by name).")
@click.option("--calibration-method", type=click.Choice(tuple(CALIBRATION_METHODS)),
              default=Int8Config.calibration_method, show_default=True,
              help="With --int8: how activation ranges are chosen (percentile: 99.999th percentile of each "
                   "tensor's histogram; minmax: observed extremes; entropy: KL-divergence threshold).")
def main(
    checkpoint: Path,
    out_dir: Path,
    fp16: bool,
    onnx_only: bool,
    opset: int,
    batch_text: str,
    image_size: int | None,
    parity_data: Path | None,
    parity_pairs: int,
    workspace_gb: float,
    timing_cache: Path | None,
    no_simplify: bool,
    overwrite: bool,
    int8: bool,
    calibration_data: Path | None,
    calibration_pairs: int,
    calibration_method: str,
) -> None:
    """Export a CT–MRI fusion checkpoint to ONNX (and with --fp16 a TensorRT FP16 engine), check
    every artifact against PyTorch on real pairs, and write manifest.json for fuse-run.

    Exit status: 0 done; 2 bad argument, file or folder (the message says how to fix it); 3 --fp16
    on a machine without a CUDA GPU or TensorRT (everything but model.plan written); 4 parity
    outside tolerance (the message names the output, pair and pixel).
    """
    try:
        try:
            config = ExportConfig(
                image_size=image_size,
                opset=opset,
                batch=_batch(batch_text),
                fp16=fp16,
                onnx_only=onnx_only,
                simplify=not no_simplify,
                workspace_gb=workspace_gb,
                timing_cache=timing_cache,
                parity_data=parity_data,
                parity_pairs=parity_pairs,
                overwrite=overwrite,
            )
            int8_config = Int8Config(calibration_method=calibration_method, calibration_pairs=calibration_pairs)
        except ValueError as error:
            raise FuseError(str(error)) from None
        _check_int8_options(int8, calibration_data, parity_data)
        result = run_export(checkpoint, out_dir, config, log=click.echo)
        if int8:
            int8_result = export_int8(out_dir, calibration_data, int8_config, parity_data, log=click.echo)
        elif overwrite:
            for name in remove_stale_int8(out_dir):
                click.echo(f"  removed {name} left by an earlier export (it no longer matches model.onnx)")
    except FuseError as error:
        click.echo(f"fuse-export: error: {error}", err=True)
        sys.exit(EXIT_USER_ERROR)

    click.echo(result.table)
    if int8:
        click.echo(int8_result.table)
    for failure in result.failures:
        click.echo(f"fuse-export: parity failed: {failure}", err=True)
    if not result.parity_passed:
        sys.exit(EXIT_PARITY)
    if result.engine_skipped is not None:
        click.echo(
            f"fuse-export: the TensorRT engine model.plan was not built because {result.engine_skipped} "
            f"(model.onnx, model.fp16.onnx, parity.json and manifest.json are written); run the same "
            f"command on the machine with the NVIDIA GPU and TensorRT that will serve it: "
            f"{_same_command()}",
            err=True,
        )
        sys.exit(EXIT_NO_ENGINE)
    sys.exit(EXIT_OK)


def _check_int8_options(int8: bool, calibration_data: Path | None, parity_data: Path | None) -> None:
    """Refuse INT8 options that cannot work, before anything is exported."""
    if int8 and calibration_data is None:
        raise FuseError(
            "--int8 needs --calibration-data DIR: a folder of registered training CT/MRI pairs to calibrate "
            "the INT8 ranges on (e.g. ../shared/data/harvard/ct-mri-train)"
        )
    if not int8 and calibration_data is not None:
        raise FuseError("--calibration-data is used only with --int8; add --int8 or drop --calibration-data")
    if int8:
        check_calibration_dir(calibration_data, parity_data)


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
        else:
            args += [param.opts[0], str(value)]
    return shlex.join([*args, "--overwrite"])
