"""The Python API: open an exported model once, then fuse arrays, files or whole folders with it.

    from fuse_runtime import Fuser

    fuser = Fuser("export/model.onnx")            # or model.plan; backend="auto" as fuse-run
    fused = fuser.fuse(ct, mri)                    # numpy [H,W] or [S,H,W] (or Scans) -> uint8 RGB
    fuser.fuse_files("CT/a.png", "MRI/a.png", "fused/a.png")
    report = fuser.run_folder("scans", "fused", metrics=True)   # what fuse-run does

Every path goes through the same pieces as ``fuse-run``: ``prepare_pair`` with the model's own
preprocessing, ``fuse_runtime.inference`` (batches, padding), ``restore_geometry`` back to the
source grid and ``writers.to_display`` (8 bits), so the pixels are those ``fuse-run`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fuse_runtime import writers
from fuse_runtime.engines import open_engine
from fuse_runtime.engines.base import Engine
from fuse_runtime.errors import FuseError
from fuse_runtime.inference import infer_slices
from fuse_runtime.io.nifti import HU_EVIDENCE_BELOW
from fuse_runtime.pairing import TASKS, Kind, Pair, load_pair
from fuse_runtime.pipeline import AUTO_FORMAT, FORMATS, Job, RunOptions, run, write_pair
from fuse_runtime.preprocess import Role, prepare_pair, restore_geometry
from fuse_runtime.report import PairResult, RunReport
from fuse_runtime.scan import Scan

__all__ = ["Fuser", "as_scan", "fuse_files", "fuse_pair"]

ImageLike = np.ndarray | Scan
#: Output file suffixes and the format each one means; any other path is a folder of slices.
SUFFIX_FORMATS = {".png": "png", ".nii.gz": "nifti", ".nii": "nifti", ".dcm": "dicom"}
_KINDS: dict[str, Kind] = {"image": "image", "dicom": "dicom-file", "dicom-series": "dicom-series", "nifti": "nifti"}


def fuse_pair(
    engine: Engine, first: Scan, second: Scan, roles: tuple[Role, Role] = ("ct", "mri"), batch_size: int | None = None
) -> np.ndarray:
    """Read-to-restore for one registered pair: preprocess with the engine's settings, infer, restore.

    Returns float32 ``[S,3,H,W]`` in [0,1] on ``first``'s grid (a 2-D scan gives S = 1). Raises
    FuseError for an unusable pair (not registered, constant, NaN) or an engine failure.
    """
    prepared = prepare_pair(first, second, roles, engine.preprocess)
    fused = infer_slices(engine, prepared.first, prepared.second, batch_size)
    return restore_geometry(fused, prepared.restore)


def as_scan(image: ImageLike, modality: str, hu: bool | None = None) -> Scan:
    """A numpy image ``[H,W]`` or volume ``[S,H,W]`` as a Scan (a Scan is returned unchanged).

    ``uint8`` data is taken as already windowed for display (``x / 255``, as a PNG is); other data as
    raw values: a CT in Hounsfield units when ``hu`` (None: when its minimum is below −500, as for
    NIfTI), MRI scaled by percentiles. Raises FuseError for anything but a 2-D or 3-D gray array.
    """
    if isinstance(image, Scan):
        return image
    array = np.asarray(image)
    if array.ndim not in (2, 3) or not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise FuseError(
            f"the {modality} array must be a real gray image [H,W] or volume [S,H,W], got {array.dtype} "
            f"{array.shape}; convert colour images to gray first"
        )
    bit_depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(array.dtype)
    pixels = array.astype(np.float32)
    if hu is None:
        hu = modality == "CT" and bit_depth != 8 and pixels.size > 0 and float(pixels.min()) < HU_EVIDENCE_BELOW
    return Scan(
        pixels=pixels, modality=modality, source=Path(f"<{modality} array>"), source_format="image",
        is_hu=bool(hu), bit_depth=bit_depth,
    )


class Fuser:
    """An exported fusion model opened once, fusing arrays, file pairs or folders.

    model: ``model.onnx`` / ``model.plan`` written by fuse-export, or an open Engine (kept open by
        the caller). backend, provider, threads: as ``fuse-run --backend/--provider/--threads``.
    batch_size: slices per engine call for volumes and folders (clamped to the engine's range).
    Use it as a context manager, or call ``close()``, to release the engine.
    """

    def __init__(
        self,
        model: str | Path | Engine,
        backend: str = "auto",
        provider: str = "auto",
        threads: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._owned = not isinstance(model, Engine)
        self.engine = open_engine(model, provider, threads, backend) if self._owned else model  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.task = "-".join(self.engine.modalities)
        if self.task not in TASKS:
            raise FuseError(f"the model fuses {self.task}, which fuse cannot pair; re-export it", self.engine.path)

    @property
    def description(self) -> str:
        return self.engine.description

    @property
    def notices(self) -> list[str]:
        """Messages about the engine (e.g. which backend ``auto`` chose and why)."""
        return self.engine.notices

    def fuse(self, ct: ImageLike, mri: ImageLike, gray: bool = False, ct_hu: bool | None = None) -> np.ndarray:
        """Fuse a registered pair at its own size: what fuse-run writes, before encoding.

        ``ct``, ``mri``: numpy ``[H,W]`` or ``[S,H,W]`` of the same shape (see ``as_scan`` for how
        values are read; ``ct_hu`` overrides the Hounsfield-unit guess), or Scans from
        ``fuse_runtime.io.read_scan``. Returns uint8 ``[H,W,3]`` RGB for 2-D input, ``[S,H,W,3]``
        for a volume (``[..,H,W]`` luminance when ``gray``). Raises FuseError for an unusable pair.
        """
        first_modality, second_modality = TASKS[self.task].modalities
        first = as_scan(ct, first_modality, ct_hu)
        second = as_scan(mri, second_modality)
        fused = fuse_pair(self.engine, first, second, TASKS[self.task].roles, self.batch_size)
        images = writers.to_display(fused, gray=gray)
        return images if first.is_volume else images[0]

    def fuse_files(
        self,
        ct_path: str | Path,
        mri_path: str | Path,
        out_path: str | Path,
        output_format: str = "auto",
        gray: bool = False,
        overwrite: bool = False,
        register: str | None = None,
    ) -> Path:
        """Read a CT and an MRI (any format fuse-run reads), fuse them and write ``out_path`` as fuse-run would.

        ``out_path`` ending ``.png``, ``.nii.gz``/``.nii`` or ``.dcm`` is one file of that format;
        any other path is a folder of slices in ``output_format`` (auto: the input's kind, as
        fuse-run). An existing ``out_path`` is kept unless ``overwrite``. An MRI on another grid is
        resampled onto the CT's by world coordinates, or registered first with ``register="rigid"``
        (``fuse-run --register``). Returns ``out_path``.
        Raises FuseError for unreadable or unregistered inputs, or an output that cannot be written.
        """
        out_path = Path(out_path)
        if output_format not in FORMATS:
            raise FuseError(f"unknown output format {output_format!r}; use one of {', '.join(FORMATS)}", out_path)
        if out_path.exists() and not overwrite:
            raise FuseError("the output exists; pass overwrite=True to replace it", out_path)
        pair = Pair(Path(ct_path).name, Path(ct_path), Path(mri_path), "image", self.task)  # type: ignore[arg-type]
        ct, mri = load_pair(pair, register)
        pair = Pair(pair.name, pair.first, pair.second, _KINDS[ct.source_format], self.task)  # type: ignore[arg-type]
        fmt, single = _output_plan(out_path, pair.kind, output_format)
        prepared = prepare_pair(ct, mri, pair.roles, self.engine.preprocess)
        fused = infer_slices(self.engine, prepared.first, prepared.second, self.batch_size)
        job = Job(
            0, pair, out_path, fmt, single, None, PairResult(name=pair.name, inputs=[str(ct_path), str(mri_path)])
        )
        options = RunOptions(batch_size=self.batch_size, gray=gray, progress=False, register=register)
        write_pair(job, ct, prepared.restore, None, fused, options, self.engine.description)
        if job.result.status != "ok":
            raise FuseError(job.result.error or "the result could not be written", out_path)
        return out_path

    def run_folder(self, in_dir: str | Path, out_dir: str | Path, **options: Any) -> RunReport:
        """Fuse every pair under ``in_dir`` into ``out_dir``, exactly as ``fuse-run`` (``pipeline.run``).

        ``options`` are ``RunOptions`` fields (``metrics=True``, ``preview=True``, ``output_format``,
        ``overwrite``, ``progress``...); ``batch_size`` defaults to this Fuser's. Returns the report,
        also written to ``out_dir/report.json``.
        """
        options.setdefault("batch_size", self.batch_size)
        return run(self.engine, in_dir, out_dir, RunOptions(**options))

    def close(self) -> None:
        """Release the engine (when this Fuser opened it)."""
        if self._owned:
            self.engine.close()

    def __enter__(self) -> Fuser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fuse_files(
    ct_path: str | Path, mri_path: str | Path, out_path: str | Path, model: str | Path, **options: Any
) -> Path:
    """One-off ``Fuser(model).fuse_files(ct_path, mri_path, out_path)``; ``options`` go to ``fuse_files``
    (``output_format``, ``gray``, ``overwrite``). Open a Fuser yourself to fuse many pairs."""
    with Fuser(model) as fuser:
        return fuser.fuse_files(ct_path, mri_path, out_path, **options)


def _output_plan(out_path: Path, kind: str, output_format: str) -> tuple[str, bool]:
    """(format, single file?) for ``out_path``: its suffix decides, else a folder in ``output_format``."""
    name = out_path.name.lower()
    by_suffix = next((fmt for suffix, fmt in SUFFIX_FORMATS.items() if name.endswith(suffix)), None)
    if by_suffix is None:
        fmt = AUTO_FORMAT[kind] if output_format == "auto" else output_format
        if fmt == "nifti":
            raise FuseError("a NIfTI result is one file: give an output path ending .nii.gz", out_path)
        return fmt, False
    if output_format not in ("auto", by_suffix):
        raise FuseError(f"the output's suffix means {by_suffix}, not {output_format}; make them agree", out_path)
    return by_suffix, True
