"""``fuse-run``: fuse every CT/MRI pair under a folder with an exported model (no PyTorch needed).

Exit status: 0 when every pair was fused or skipped, 1 when any pair failed (each is named in the
output and in OUT/report.json), 2 for a usage error (bad option, missing or unusable engine, input
folder missing, output folder not writable or held by another run, Ray missing or unreachable), 130
when interrupted. Every run's report is kept: OUT/reports/<run id>.json, and OUT/report.json (the latest).

``--ray`` runs the same work on a Ray cluster (``fuse_runtime.distributed``, the ``fuse-ctmri[distributed]``
extra); Ray is imported only then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fuse_runtime.distributed import EngineInfo, RayOptions, run_on_ray
from fuse_runtime.engines import BACKEND_CHOICES, PROVIDER_CHOICES, open_engine
from fuse_runtime.engines.base import Engine
from fuse_runtime.errors import FuseError
from fuse_runtime.pipeline import FORMATS, RunOptions, run
from fuse_runtime.report import REPORT_NAME
from fuse_runtime.version import version_option

EXIT_FAILED_PAIRS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: What a bare ``--ray`` stands for: the Ray running on this machine, else a new local one.
RAY_LOCAL = "local"
_DEFAULTS = RunOptions()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option("fuse-run")
@click.option(
    "--engine", "engine_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Exported model: model.onnx (ONNX Runtime) or model.plan (TensorRT), as written by fuse-export. "
    "Preprocessing settings are read from the manifest.json beside it (else the ONNX metadata).",
)
@click.option(
    "--in", "in_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder searched recursively for pairs: CT/ + MRI/ folders with matching names (PNG/TIFF/JPEG, "
    "DICOM), case folders with CT/ + MRI/ DICOM series, or ct.nii.gz + mri.nii.gz.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created if missing, must not be inside --in). Mirrors the input tree and gets "
    f"{REPORT_NAME} (and reports/<run id>.json for every run). One fuse-run at a time per folder.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True,
    help="Slices per engine call; slices of several studies share a batch. Clamped to the engine's batch range.",
)
@click.option(
    "--format", "output_format", type=click.Choice(FORMATS), default=_DEFAULTS.output_format, show_default=True,
    help="Output format. auto: same kind as the input (images → PNG, DICOM → DICOM Secondary Capture, "
    "NIfTI → NIfTI). png: 8-bit PNG (a folder of slices for volumes). nifti: .nii.gz on the CT's grid "
    "(RGB24 colour; float32 with --gray). dicom: a derived Secondary Capture series on the CT's grid.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=_DEFAULTS.workers, show_default=True,
    help="Threads reading and preprocessing pairs while the engine runs (local runs; with --ray, Ray runs "
    "one read task per pair).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads ONNX Runtime uses inside one engine call, or OpenVINO over all its streams [default: the "
    "library's, one per core]. With "
    "--ray on a cluster without GPUs: threads (and CPUs reserved) per inference actor [default: 1].",
)
@click.option(
    "--provider", type=click.Choice(PROVIDER_CHOICES), default="auto", show_default=True,
    help="ONNX Runtime execution provider for .onnx (auto: CUDA when available, else CPU; naming one "
    "selects ONNX Runtime). A missing provider falls back to the CPU with a notice. A .plan always runs on "
    "TensorRT.",
)
@click.option(
    "--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
    help="Inference library. auto: TensorRT for .plan; for .onnx OpenVINO bf16 on a CPU-only machine whose CPU "
    "has AVX512-BF16/AMX when OpenVINO is installed and no --provider is named (about 4x faster there at the "
    "same fusion metrics), and for model.int8.onnx also on CPUs with AMX-INT8/VNNI; else ONNX Runtime; the "
    "choice and why are printed as a note. openvino: OpenVINO "
    "on the CPU (pip install 'fuse-ctmri[openvino]'; bf16 where the CPU has AVX512-BF16/AMX, else f32; reads "
    "model.onnx or model.int8.onnx). onnxruntime / tensorrt: force that library.",
)
@click.option(
    "--streams", type=click.IntRange(min=0), default=0, show_default=True,
    help="OpenVINO only: inference streams. 0: the throughput hint, OpenVINO chooses the streams and "
    "batches run side by side (fastest for folders); 1: one stream using every thread per batch (latency); "
    "N: N streams sharing --threads.",
)
@click.option(
    "--device", type=click.IntRange(min=0), default=0, show_default=True,
    help="CUDA device index for a .plan and for ONNX Runtime's CUDA/TensorRT providers (nvidia-smi lists them). "
    "Ignored on the CPU and with --ray (Ray gives each actor its own GPU).",
)
@click.option(
    "--overwrite", is_flag=True,
    help="Replace existing outputs [default: skip those made from the same inputs, model and options, redo those "
    "whose inputs, model or options changed, refuse files fuse did not make], so a re-run resumes.",
)
@click.option(
    "--wait", is_flag=True,
    help="When another fuse-run is writing to --out, wait for it to finish [default: refuse, naming it].",
)
@click.option(
    "--metrics", is_flag=True,
    help="Add fusion metrics per pair (EN, SD, SF, MI, SCD, VIF, Qabf, SSIM...; 8-bit gray, mean over slices) "
    "to the report.",
)
@click.option("--preview", is_flag=True, help="Also write CT | MRI | fused side-by-side PNGs under OUT/preview/.")
@click.option("--gray", is_flag=True,
              help="Write gray (BT.601 luminance of the fused RGB) instead of RGB: 8-bit PNG/DICOM, float32 NIfTI.")
@click.option(
    "--register", type=click.Choice(["rigid"]), default=None,
    help="Register each MRI to its CT before fusing: rigid (SimpleITK, Mattes mutual information; 3-D for volumes, "
    "2-D for slices). The transform is written beside the output (.tfm) and the metric before/after goes in the "
    "report; a pair whose registration does not converge fails, the others go on. [default: none; an MRI on "
    "another grid is resampled onto the CT's by the headers' world coordinates]",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--ray", "ray_address", is_flag=False, flag_value=RAY_LOCAL, default=None, metavar="[ADDRESS]",
    help="Run on a Ray cluster with Ray Data (needs the fuse-ctmri[distributed] extra): same outputs and report. "
    "--ray alone: the Ray running on this machine, else a new local one; --ray auto: the cluster this machine "
    "joined with `ray start`; --ray HOST:PORT (head node) or ray://HOST:10001 (Ray Client). Every node must see "
    "--engine, --in and --out at the same paths. [default: no Ray, run here]",
)
def main(
    engine_path: Path,
    in_dir: Path,
    out_dir: Path,
    batch_size: int,
    output_format: str,
    workers: int,
    threads: int | None,
    provider: str,
    backend: str,
    device: int,
    streams: int,
    overwrite: bool,
    wait: bool,
    metrics: bool,
    preview: bool,
    gray: bool,
    register: str | None,
    quiet: bool,
    ray_address: str | None,
) -> None:
    """Fuse every CT/MRI pair under --in with an exported model and write the results to --out.

    Reading, inference and writing overlap (worker threads, the engine, a writer thread). A pair
    that cannot be fused is reported and skipped; the others complete. Every file is written under
    a temporary name and renamed, so an interrupted run leaves no partial file and a re-run resumes.
    """
    options = RunOptions(
        batch_size=batch_size,
        output_format=output_format,  # type: ignore[arg-type]
        workers=workers,
        overwrite=overwrite,
        wait=wait,
        metrics=metrics,
        preview=preview,
        gray=gray,
        progress=not quiet,
        register=register,
    )
    engine_notices: list[str] = []

    def announce(engine: Engine | EngineInfo) -> None:
        engine_notices.extend(engine.notices)
        for notice in engine.notices:
            click.echo(f"fuse-run: note: {notice}", err=True)
        click.echo(f"fuse-run: {engine.description}", err=True)

    try:
        if ray_address is not None and backend != "auto":
            raise FuseError(f"--backend {backend} is not available with --ray yet; drop --backend (workers use auto)")
        if ray_address is not None:
            address = None if ray_address == RAY_LOCAL else ray_address
            ray_options = RayOptions(address=address, provider=provider, threads=threads)
            report = run_on_ray(engine_path, in_dir, out_dir, options, ray_options, on_engine=announce)
        else:
            with open_engine(
                engine_path, provider=provider, threads=threads, backend=backend, device=device, streams=streams
            ) as engine:
                announce(engine)
                report = run(engine, in_dir, out_dir, options)
    except FuseError as error:
        click.echo(f"fuse-run: error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("fuse-run: interrupted; finished outputs are kept, re-run to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    for notice in report.notices[len(engine_notices):]:
        click.echo(f"fuse-run: note: {notice}", err=True)
    for result in report.pairs:
        if result.status == "failed":
            click.echo(f"fuse-run: failed: {result.name}: {result.error}", err=True)
        elif result.status == "ok" and result.note:
            click.echo(f"fuse-run: note: {result.name}: {result.note}", err=True)
    click.echo(report.summary_line())
    click.echo(f"report: {out_dir / REPORT_NAME}")
    if report.counts["failed"]:
        sys.exit(EXIT_FAILED_PAIRS)


if __name__ == "__main__":
    main()
