"""``fuse-train``: train the fusion network (vis-ir pretraining or ct-mri fine-tuning), or resume a run.

Settings resolve in this order, later winning: the design defaults (``TrainConfig``), ``--config
FILE`` (JSON in the layout of a run's ``config.json``, any subset of it), then the options given on
the command line. Works unchanged under ``torchrun --nproc_per_node N fuse-train ...``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import click
from click.core import ParameterSource

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig
from fuse_runtime.version import version_option
from fuse_train.config import DetailTarget, Head, LossWeights, TrainConfig

#: Exit status for a FuseError (a problem the user can fix); click's usage errors also exit 2.
EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class Setting:
    """A TrainConfig field exposed as a command-line option."""

    flag: str
    section: str  # "" (TrainConfig), "preprocess" or "loss"
    name: str
    help: str
    type: Any = None
    nargs: int = 1
    secondary: str | None = None  # "--no-..." for boolean flags


_DEFAULTS = {"": TrainConfig(), "preprocess": PreprocessConfig(), "loss": LossWeights()}

SETTINGS: tuple[Setting, ...] = (
    Setting("--batch-size", "", "batch_size", "Images per optimisation step, per process.", click.IntRange(min=1)),
    Setting("--lr", "", "lr",
            "Base learning rate of AdamW (the decoder's; encoders and fusion blocks get the scales below).", float),
    Setting("--epochs", "", "epochs",
            "Number of epochs (the cosine schedule ends at this epoch).", click.IntRange(min=1)),
    Setting("--patience", "", "early_stopping_patience",
            "Early stopping: epochs without a lower validation loss before stopping (0: never stop early).", int),
    Setting("--freeze-encoder-epochs", "", "freeze_encoder_epochs",
            "Epochs at the start during which both encoders are frozen (no gradients, BatchNorm statistics fixed).",
            click.IntRange(min=0)),
    Setting("--warmup-epochs", "", "warmup_epochs",
            "Linear learning-rate warm-up, in epochs; cosine decay afterwards.", click.IntRange(min=0)),
    Setting("--weight-decay", "", "weight_decay", "AdamW weight decay.", float),
    Setting("--lr-scale-encoder", "", "lr_scale_encoder", "Learning-rate multiple for the two encoders.", float),
    Setting("--lr-scale-fusion", "", "lr_scale_fusion",
            "Learning-rate multiple for the attention fusion blocks.", float),
    Setting("--lr-scale-decoder", "", "lr_scale_decoder",
            "Learning-rate multiple for the decoder, output head and medical attention.", float),
    Setting("--gradient-clip", "", "gradient_clip",
            "Clip the total gradient norm (L2, after unscaling) to this value.", float),
    Setting("--precision", "", "precision",
            "Mixed precision: auto = fp16 + GradScaler on CUDA, bf16 autocast on CPUs with native bf16 "
            "(AVX512-BF16/AMX) and fp32 on other CPUs, where emulated bf16 is ~12× slower; fp32 = off.",
            click.Choice(["auto", "fp32", "bf16", "fp16"])),
    Setting("--seed", "", "seed", "Random seed: model initialisation, the split, shuffling and augmentation.", int),
    Setting("--crop-size", "", "crop_size",
            "Training crop side in pixels (a multiple of 32, at most --image-size); validation uses the full "
            "--image-size.", int),
    Setting("--val-fraction", "", "val_fraction",
            "Fraction of patients (vis-ir: images) held out for validation.", float),
    Setting("--hflip-p", "", "hflip_p", "Probability of a horizontal flip (applied to both images).", float),
    Setting("--rotate-degrees", "", "rotate_degrees",
            "Maximum rotation in degrees, either way (applied to both images).", float),
    Setting("--intensity-jitter", "", "intensity_jitter",
            "Contrast gain jitter: intensities × a gain in [1 − j, 1 + j] (fraction).", float),
    Setting("--checkpoint-every", "", "checkpoint_every",
            "Write epoch_NNN.pt every this many epochs.", click.IntRange(min=1)),
    Setting("--imagenet", "", "imagenet",
            "Start the encoders from torchvision's ImageNet ResNet34 when it is in the local cache (never downloaded); "
            "--no-imagenet: random initialisation.", bool, secondary="--no-imagenet"),
    Setting("--head", "", "head",
            "Output head: design = the design document's (decoder features only, finest skip at 1/4 size); blend = "
            "also sees both sources at full size and outputs a per-pixel blend plus bounded detail (sharper); select = "
            "blend starting from a soft per-pixel maximum of the sources.", click.Choice(list(get_args(Head)))),
    Setting("--num-workers", "", "num_workers",
            "DataLoader worker processes (images are cached in memory, so 0 is usually enough).",
            click.IntRange(min=0)),
    Setting("--max-pairs", "", "max_pairs",
            "Use at most this many pairs, spread over patients; for quick smoke runs.", click.IntRange(min=2)),
    Setting("--min-foreground", "", "min_foreground",
            "Skip volume slices with less than this fraction of pixels above 5% intensity in both images.", float),
    Setting("--image-size", "preprocess", "image_size",
            "Model input side in pixels (a multiple of 32); images are letterboxed/resized to it.", int),
    Setting("--resize-mode", "preprocess", "resize_mode",
            "How images reach --image-size: letterbox (keep aspect, zero-pad) or resize (stretch).",
            click.Choice(["letterbox", "resize"])),
    Setting("--ct-window-center", "preprocess", "ct_window_center",
            "CT window centre in Hounsfield units (applied to HU data only).", float),
    Setting("--ct-window-width", "preprocess", "ct_window_width", "CT window width in Hounsfield units.", float),
    Setting("--mri-percentiles", "preprocess", "mri_percentiles",
            "LOW HIGH percentiles (in %) mapped to 0 and 1 for MRI/IR data with more than 8 bits.", float, nargs=2),
    Setting("--clahe", "preprocess", "clahe",
            "Apply CLAHE after intensity normalisation (--no-clahe: off).", bool, secondary="--no-clahe"),
    Setting("--clahe-clip-limit", "preprocess", "clahe_clip_limit", "CLAHE clip limit.", float),
    Setting("--clahe-tile-grid", "preprocess", "clahe_tile_grid", "CLAHE tile grid, ROWS COLS.", int, nargs=2),
    Setting("--w-content", "loss", "content", "Weight of the content loss (L1 to the brighter source, gray).", float),
    Setting("--w-structure", "loss", "structure", "Weight of the structure loss (1 − SSIM to both sources).", float),
    Setting("--w-detail", "loss", "detail",
            "Weight of the detail loss (L1 of gradients to the larger source gradient).", float),
    Setting("--w-consistency", "loss", "consistency", "Weight of the consistency loss (MSE to both sources).", float),
    Setting("--w-gradient", "loss", "gradient", "Weight of the gradient loss (L1 of gradients to each source).", float),
    Setting("--w-medical", "loss", "medical",
            "Weight of the medical loss (MSE on bright regions of each source).", float),
    Setting("--w-qabf", "loss", "qabf",
            "Weight of 1 − Qabf: the evaluation's edge-preservation metric as a differentiable loss (0: off, the "
            "design's).", float),
    Setting("--w-vif", "loss", "vif",
            "Weight of 1 − VIF/2: the evaluation's information-fidelity metric (summed over both sources) as a "
            "differentiable loss (0: off, the design's).", float),
    Setting("--w-mi", "loss", "mi",
            "Weight of 1 − ΣMI/ΣH: the evaluation's mutual information with each source, over the sources' entropies, "
            "as a differentiable loss (0: off, the design's).", float),
    Setting("--w-ssim", "loss", "ssim",
            "Weight of 1 − ½ΣSSIM with the evaluation's SSIM (7×7 window, data range 2; the structure term is the "
            "design's 11×11 SSIM) as a loss (0: off, the design's).", float),
    Setting("--detail-gain", "loss", "detail_gain",
            "Detail loss target = this × the larger source gradient (1: the design's; above 1 sharpens).", float),
    Setting("--detail-gain-edge", "loss", "detail_gain_edge",
            "Apply --detail-gain only where the larger source gradient (Sobel, [0,1] units) exceeds this; 0: "
            "everywhere.", float),
    Setting("--detail-target", "loss", "detail_target",
            "Detail loss matches the larger source gradient's magnitude (the design's) or its Sobel x/y vector "
            "(orientation too).", click.Choice(list(get_args(DetailTarget)))),
    Setting("--medical-threshold", "loss", "medical_threshold",
            "Intensity in [0,1] above which pixels form the medical loss masks.", float),
)

#: Settings that may change when a run is resumed (extending the schedule).
RESUMABLE = {"epochs", "early_stopping_patience"}


def _default_text(setting: Setting) -> str:
    value = getattr(_DEFAULTS[setting.section], setting.name)
    if setting.secondary is not None:
        return setting.flag if value else setting.secondary
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return "all" if value is None else str(value)


def _options(command: Callable) -> Callable:
    """Add one click option per entry of SETTINGS (default None = "not given")."""
    for setting in reversed(SETTINGS):
        help_text = f"{setting.help}  [default: {_default_text(setting)}]"
        dest = f"{setting.section}__{setting.name}" if setting.section else setting.name
        if setting.secondary is not None:
            option = click.option(f"{setting.flag}/{setting.secondary}", dest, default=None, help=help_text)
        else:
            option = click.option(
                setting.flag, dest, type=setting.type, nargs=setting.nargs, default=None, help=help_text
            )
        command = option(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@version_option("fuse-train")
@click.option("--task", type=click.Choice(["ct-mri", "vis-ir"]), default=None,
              help="ct-mri: fine-tune on CT/ + MRI/ pairs; vis-ir: pretrain on vi/ + ir/ pairs (TNO, RoadScene).  "
                   "[default: ct-mri]")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of registered pairs, searched recursively (CT/ + MRI/, vi/ + ir/, case folders). "
                   "Required unless --resume.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="New run directory for checkpoints, history and config.json; refused if it already holds a run.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this directory from its last.pt (optimizer, scheduler, scaler, early "
                   "stopping, RNG). Only --epochs and --patience may change.")
@click.option("--init", type=click.Path(path_type=Path), default=None,
              help="Initialise from another run's checkpoint (e.g. the vis-ir best.pt): vis_→ct_, ir_→mri_, "
                   "tensors of equal name and shape only.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="JSON file of settings in the layout of a run's config.json (any subset); command-line "
                   "options override it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto picks CUDA when present. Under torchrun each process takes GPU LOCAL_RANK.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar per epoch.")
@_options
@click.pass_context
def main(ctx: click.Context, task, data, out, resume, init, config_file, device, progress, **settings) -> None:
    """Train the CT–MRI fusion network, or pretrain it on visible–infrared pairs.

    \b
    Examples:
      fuse-train --task vis-ir --data ../shared/data/vis-ir --out runs/visir --no-imagenet
      fuse-train --data ../shared/data/harvard/ct-mri-train --init runs/visir/best.pt --out runs/ctmri
      fuse-train --resume runs/ctmri --epochs 40
      torchrun --nproc_per_node 2 $(which fuse-train) --data ... --out runs/ddp
    """
    from fuse_train.trainer import RunOptions, run_training  # torch loads only after parsing (fast --help)

    given = {
        key: value
        for key, value in settings.items()
        if ctx.get_parameter_source(key) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    if task is not None:
        given["task"] = task
    try:
        if resume is not None:
            config, data = _resume_config(resume, given, data)
            options = RunOptions(data=data, out=resume, resume=True, device=device, progress=progress)
        else:
            if data is None or out is None:
                raise FuseError("--data and --out are required for a new run (or pass --resume RUN)")
            config = build_config(config_file, given)
            options = RunOptions(data=data, out=out, init=init, device=device, progress=progress)
        run_training(config, options, echo=click.echo)
    except FuseError as error:
        rank = int(os.environ.get("RANK", "0"))
        prefix = f"rank {rank}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        click.echo(f"fuse-train: error: {prefix}{error}", err=True)
        sys.exit(EXIT_USER_ERROR)


def build_config(config_file: Path | None, given: dict[str, Any]) -> TrainConfig:
    """Design defaults, then ``config_file``, then ``given`` (``section__name`` keys from the CLI)."""
    values = TrainConfig().to_dict()
    if config_file is not None:
        _merge(values, _read_json(config_file))
    _merge(values, _nest(given))
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        where = f" (from {config_file} and the options)" if config_file is not None else ""
        raise FuseError(f"invalid training settings{where}: {error}") from None


def _resume_config(run: Path, given: dict[str, Any], data: Path | None) -> tuple[TrainConfig, Path]:
    from fuse_train.checkpoint import read_checkpoint
    from fuse_train.trainer import LAST_NAME

    payload = read_checkpoint(run / LAST_NAME)
    changed = sorted(key for key in given if key not in RESUMABLE)
    if changed:
        flags = [s.flag for s in SETTINGS if (f"{s.section}__{s.name}" if s.section else s.name) in changed]
        raise FuseError(
            f"a resumed run keeps its settings; drop {', '.join(flags or changed)} "
            "(only --epochs and --patience may change), or start a new run with --out",
            run,
        )
    values = dict(payload["config"])
    values.update(given)
    try:
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise FuseError(f"invalid settings for the resumed run: {error}", run) from None
    saved_data = payload.get("run", {}).get("data")
    if data is None and saved_data is None:
        raise FuseError("the run does not record its data folder; pass --data", run)
    return config, Path(data if data is not None else saved_data)


def _nest(given: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in given.items():
        section, _, name = key.rpartition("__")
        target = nested.setdefault(section, {}) if section else nested
        target[name] = list(value) if isinstance(value, tuple) else value
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise FuseError(f"cannot read the settings file ({error.strerror})", path) from None
    except json.JSONDecodeError as error:
        raise FuseError(f"the settings file is not valid JSON ({error})", path) from None
    if not isinstance(data, dict):
        raise FuseError("the settings file must hold a JSON object like a run's config.json", path)
    return data


if __name__ == "__main__":
    main()
