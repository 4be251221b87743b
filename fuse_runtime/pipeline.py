"""The batch pipeline behind fuse-run: read → preprocess → infer → restore → write, overlapped.

Three stages joined by bounded queues, so memory stays bounded and the engine is not left waiting
for the disk:

1. ``workers`` reader threads: ``load_pair`` then ``prepare_pair`` with the ENGINE's
   PreprocessConfig → a prepared pair (``[S,3,size,size]`` + ``[S,1,size,size]``) on ``ready``.
2. The calling thread feeds the engine: slices from one or more pairs are packed into batches of
   ``batch_size`` (a batch may span studies), with up to two batches of slices in hand so the
   readers keep working while a batch runs; a pair whose slices are all fused goes on ``done``.
3. One writer thread: ``restore_geometry`` back to the CT's grid, 8-bit, write through
   ``atomic_path`` (metrics and preview when asked), record the result.

A failing pair (unreadable, unregistered, NaN, constant, write error) is recorded with its error
and the rest goes on. Output paths come from the pair's name (relative path of its inputs) with
unsafe characters replaced (``resume.output_base``: a function of the pair's name alone), never from
DICOM tag text. A run holds the output folder's lock (``outlock``) from planning to its report; its
temporary files carry its run id and those of earlier, dead runs are removed at the start. Each
output's record says what made it (``resume``): a re-run skips an output only when its inputs, model
and pixel options are the same, redoes it when they changed, and refuses a file it has no record of
making unless ``overwrite``.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tqdm import tqdm

from fuse_runtime import resume, writers
from fuse_runtime.atomic import ensure_writable, run_tag
from fuse_runtime.engines.base import Engine, submit_batch
from fuse_runtime.errors import FuseError
from fuse_runtime.inference import infer_batch
from fuse_runtime.outlock import OutputLock, Owner, check_folders, new_run_id
from fuse_runtime.pairing import TASKS, Pair, PairProblem, find_pairs, load_pair
from fuse_runtime.preprocess import (
    PreparedPair,
    PreprocessConfig,
    Restore,
    normalise_scan,
    prepare_pair,
    restore_geometry,
)
from fuse_runtime.report import PairResult, RunReport, write_report
from fuse_runtime.resume import PREVIEW_DIR, safe_relative_name
from fuse_runtime.scan import Scan

__all__ = ["FORMATS", "EngineSettings", "Job", "RunOptions", "RunPlan", "check_folders", "ensure_writable",
           "finish_run", "infer_batch", "pair_metrics", "plan_jobs", "plan_run", "read_pair", "run",
           "safe_relative_name", "write_pair"]

OutputFormat = Literal["auto", "png", "nifti", "dicom"]
FORMATS: tuple[str, ...] = ("auto", "png", "nifti", "dicom")
#: ``auto`` writes the kind of file that was read.
AUTO_FORMAT = {"image": "png", "dicom-file": "dicom", "dicom-series": "dicom", "nifti": "nifti"}
#: Pair kinds whose result is one 2-D image (one file); the others are volumes (a folder or one NIfTI).
FLAT_KINDS = ("image", "dicom-file")
#: ``RunOptions.register``: None (resample by world coordinates when the grids differ) or rigid registration.
REGISTER_CHOICES: tuple[str | None, ...] = (None, "rigid")
_POLL_SECONDS = 0.1
PREFETCH_BATCHES = 2
"""Slices the engine stage holds ready, in batches: one running, one waiting."""


@dataclass(frozen=True)
class RunOptions:
    """Settings of one fuse-run.

    batch_size: slices per engine call (clamped to the engine's batch range).
    output_format: ``auto`` (same kind as the input), ``png``, ``nifti`` or ``dicom``.
    workers: reader/preprocessing threads.
    queue_pairs: prepared pairs allowed to wait for the engine (bounds memory), and as many
        fused pairs waiting for the writer.
    overwrite: replace existing outputs instead of skipping them.
    metrics: add fusion metrics (fuse_runtime.metrics) per pair to the report.
    preview: write CT | MRI | fused PNGs under ``OUT/preview/``.
    gray: write luminance instead of RGB (8-bit PNG/DICOM, float32 NIfTI).
    progress: show a tqdm bar over slices.
    register: ``None`` (an MRI on another grid is resampled by world coordinates) or ``"rigid"``
        (registered to the CT first; the transform is written beside the output as ``.tfm``).
    wait: when another run holds the output folder's lock, wait for it instead of refusing.
    """

    batch_size: int = 8
    output_format: OutputFormat = "auto"
    workers: int = 2
    queue_pairs: int = 4
    overwrite: bool = False
    metrics: bool = False
    preview: bool = False
    gray: bool = False
    progress: bool = True
    register: str | None = None
    wait: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "queue_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {FORMATS}, got {self.output_format!r}")
        if self.register not in REGISTER_CHOICES:
            raise ValueError(f"register must be one of {REGISTER_CHOICES}, got {self.register!r}")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class Job:
    """One pair to fuse and where its result goes."""

    index: int
    pair: Pair
    output: Path
    output_format: str
    single_file: bool
    preview: Path | None
    result: PairResult
    started: float = 0.0
    run_id: str = ""
    identity: dict[str, Any] | None = None


class EngineSettings(Protocol):
    """What planning a run needs to know about the engine (an ``Engine`` has all of it)."""

    path: Any
    preprocess: PreprocessConfig
    modalities: tuple[str, str]
    provider: str
    notices: list[str]
    batch_range: tuple[int, int]

    @property
    def description(self) -> str: ...


@dataclass
class RunPlan:
    """A run decided before any pixel is read: the report so far, every result entry, the jobs to fuse.

    ``results`` holds one PairResult per pair and per pairing problem (the jobs' own ``result``
    objects, so filling a job's result fills the report); ``todo`` are the jobs neither skipped nor
    refused; ``batch_size`` is the requested one clamped to the engine's batch range. ``lock`` is
    the output folder's lock, held until ``release`` or the end of ``with plan:``.
    """

    out_dir: Path
    report: RunReport
    results: list[PairResult]
    todo: list[Job]
    batch_size: int
    lock: OutputLock | None = None

    @property
    def run_id(self) -> str:
        return self.report.run_id

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(eq=False)
class _Prepared:
    """A pair read and preprocessed, waiting for (or receiving) its fused slices."""

    job: Job
    ct: Scan
    prepared: PreparedPair
    native: tuple[np.ndarray, np.ndarray] | None
    fused: np.ndarray
    remaining: int


@dataclass
class _Failed:
    job: Job
    error: str


def run(engine: Engine, in_dir: str | Path, out_dir: str | Path, options: RunOptions = RunOptions()) -> RunReport:
    """Fuse every pair under ``in_dir`` into ``out_dir`` and write ``out_dir/report.json``.

    Raises FuseError before any work when ``in_dir`` holds nothing recognisable or ``out_dir``
    cannot be written; everything that goes wrong with one pair is recorded in the report instead.
    """
    with plan_run(engine, in_dir, out_dir, options) as plan:
        started = time.perf_counter()
        _Runner(engine, plan.todo, options, plan.batch_size, started).run()
        return finish_run(plan, time.perf_counter() - started)


def plan_run(engine: EngineSettings, in_dir: str | Path, out_dir: str | Path, options: RunOptions) -> RunPlan:
    """Everything before the first pixel: check the folders, lock ``out_dir``, find the pairs, plan outputs.

    Takes the output folder's lock (release it with ``plan.release()``), removes the temporary files
    of earlier, dead runs, and decides each output by its record (``resume.decide``). Raises FuseError
    when ``in_dir`` holds nothing recognisable, ``out_dir`` cannot be written or another run holds it.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_folders(in_dir, out_dir)
    task = "-".join(engine.modalities)
    pairing = find_pairs(in_dir, task=task)
    ensure_writable(out_dir)
    report = RunReport(
        engine=engine.description,
        provider=engine.provider,
        settings={"in": str(in_dir), "out": str(out_dir), "task": task, **options.to_dict()},
        notices=list(engine.notices),
        run_id=new_run_id(),
    )

    def waiting(owner: Owner | None) -> None:
        report.notices.append(f"waited for {owner.describe() if owner else 'another fuse-run'} to finish")

    lock = OutputLock(out_dir, report.run_id, wait=options.wait, on_wait=waiting).acquire()
    try:
        if lock.unlocked:
            report.notices.append(
                f"{out_dir} cannot be locked (its file system has no locks): run one fuse-run at a time there"
            )
        leftovers = [] if lock.unlocked else writers.remove_partials(out_dir, keep_out=[in_dir], keep_run=report.run_id)
        if leftovers:
            report.notices.append(f"removed {len(leftovers)} partial file(s) left by an interrupted run")
        batch_size = _fit_batch(engine, options.batch_size, report.notices)
        jobs = plan_jobs(pairing.pairs, out_dir, options)
        model = {"sha256": resume.model_sha256(engine.path)}
    except BaseException:
        lock.release()
        raise
    results = [job.result for job in jobs] + [_problem_result(p) for p in pairing.problems]
    todo = [job for job in jobs if resume.plan_job(job, in_dir, model, engine.preprocess, options, report.run_id)]
    return RunPlan(out_dir, report, results, todo, batch_size, lock)


def finish_run(plan: RunPlan, wall_seconds: float) -> RunReport:
    """Put the results in name order, write ``OUT/report.json`` and return the report."""
    report = plan.report
    report.wall_seconds = wall_seconds
    report.pairs = sorted(plan.results, key=lambda r: r.name)
    with run_tag(plan.run_id):
        write_report(plan.out_dir, report)
    return report


def read_pair(
    pair: Pair, config: PreprocessConfig, native: bool, register: str | None = None
) -> tuple[Scan, PreparedPair, tuple[np.ndarray, np.ndarray] | None]:
    """Read and preprocess one pair with the engine's ``config``, the MRI put on the CT's grid.

    ``register`` is ``RunOptions.register`` (see ``pairing.load_pair``). Returns the CT scan, the model
    inputs, and (when ``native``) both normalised scans at their own size, ``[S,H,W]`` in [0,1], for
    metrics and previews. Raises FuseError for anything that goes wrong, its message naming both files.
    """
    try:
        ct, mri = load_pair(pair, register)
        prepared = prepare_pair(ct, mri, pair.roles, config)
        normalised = None
        if native:
            normalised = (normalise_scan(ct, pair.roles[0], config), normalise_scan(mri, pair.roles[1], config))
    except FuseError:
        raise
    except Exception as error:  # one bad pair must not stop the others
        raise FuseError(
            f"cannot read or preprocess {pair.first} + {pair.second}: {type(error).__name__}: {error}"
        ) from None
    return ct, prepared, normalised


def write_pair(
    job: Job,
    ct: Scan,
    restore: Restore,
    native: tuple[np.ndarray, np.ndarray] | None,
    fused: np.ndarray,
    options: RunOptions,
    engine_description: str,
) -> None:
    """Restore ``fused`` ``[S,3,size,size]`` in [0,1] to the CT's grid, write it (and the preview, metrics).

    Fills ``job.result``: status ``ok`` with its outputs, or ``failed`` with the error; a failure
    never escapes. ``ct`` needs only its geometry and metadata (``pixels`` may be a stand-in of the
    right shape).
    """
    result = job.result
    try:
        with run_tag(job.run_id):
            resume.write_record(job.output, job.identity, job.run_id, "writing")
            restored = restore_geometry(fused, restore)
            images = writers.to_display(restored, gray=options.gray)
            _write_output(job, images, ct, engine_description, restored)
            result.outputs = [str(job.output)]
            _record_alignment(job, ct)
            if native is not None:
                ct_native, mri_native = native
                if options.preview and job.preview is not None:
                    middle = len(images) // 2
                    writers.write_preview(job.preview, ct_native[middle], mri_native[middle], images[middle],
                                          TASKS[job.pair.task].labels)
                    result.outputs.append(str(job.preview))
                if options.metrics:
                    result.metrics = pair_metrics(ct_native, mri_native, images)
            resume.write_record(job.output, job.identity, job.run_id, "done", slices=int(fused.shape[0]),
                                metrics=result.metrics, outputs=result.outputs, alignment=result.alignment,
                                engine=engine_description)
        result.status = "ok"
    except FuseError as error:
        result.status, result.error = "failed", str(error)
    except Exception as error:  # one bad pair must not stop the others
        result.status = "failed"
        result.error = f"cannot write {job.output}: {type(error).__name__}: {error}"
    result.slices = fused.shape[0]


def plan_jobs(pairs: list[Pair], out_dir: Path, options: RunOptions) -> list[Job]:
    """Decide each pair's output path: ``OUT/<resume.output_base(pair name)>`` plus the format's suffix.

    Flat pairs (2-D images, single DICOM files) give one file (``.png``, ``.dcm``, ``.nii.gz``);
    volumes give a folder of slices (PNG, DICOM) or one ``.nii.gz``. The name depends on the pair
    alone, never on the other pairs. A pair whose output would be another's (names differing only in
    case), lie inside another pair's output folder or hold one is marked failed: writing it would
    clobber the other.
    """
    taken: dict[str, tuple[str, bool]] = {}
    jobs = []
    for index, pair in enumerate(pairs):
        base = resume.output_base(pair.name)
        fmt = AUTO_FORMAT[pair.kind] if options.output_format == "auto" else options.output_format
        flat = pair.kind in FLAT_KINDS
        if fmt == "nifti":
            output, single = out_dir / f"{base}.nii.gz", True
        elif flat:
            output, single = out_dir / f"{base}.{'png' if fmt == 'png' else 'dcm'}", True
        else:
            output, single = out_dir / base, False
        preview = out_dir / PREVIEW_DIR / f"{base}.png" if options.preview else None
        result = PairResult(name=pair.name, inputs=[str(pair.first), str(pair.second)])
        key = output.relative_to(out_dir).as_posix().lower()
        same = taken.get(key)
        clash = next(
            (name for other, (name, folder) in taken.items() if (folder or not single) and _nested(key, other)), None
        )
        if same is not None:
            result.status = "failed"
            result.error = (
                f"its output {output} is also that of pair {same[0]!r} (the names differ only in case); rename one"
            )
        elif clash is not None:
            result.status = "failed"
            result.error = f"its output {output} would overlap the output folder of pair {clash!r}; rename one of them"
        else:
            taken[key] = (pair.name, not single)
        jobs.append(Job(index, pair, output, fmt, single, preview, result))
    return jobs


def _nested(a: str, b: str) -> bool:
    """True when relative path ``a`` lies inside ``b`` or ``b`` inside ``a`` (or they are equal)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


class _Runner:
    """Owns the threads and queues of one run (see the module docstring)."""

    def __init__(self, engine: Engine, jobs: list[Job], options: RunOptions, batch_size: int, started: float) -> None:
        self.engine = engine
        self.jobs = jobs
        self.options = options
        self.batch_size = batch_size
        self.started = started
        self.todo: queue.Queue[Job] = queue.Queue()
        self.ready: queue.Queue[_Prepared | _Failed | None] = queue.Queue(maxsize=options.queue_pairs)
        self.done: queue.Queue[_Prepared | _Failed | None] = queue.Queue(maxsize=options.queue_pairs)
        self.stop = threading.Event()
        self.pairs_done = 0
        self.bar = tqdm(
            total=0, unit="slice", desc="fusing", disable=not options.progress, dynamic_ncols=True, leave=True
        )

    def run(self) -> None:
        for job in self.jobs:
            self.todo.put(job)
        workers = min(self.options.workers, max(1, len(self.jobs)))
        readers = [threading.Thread(target=self._read, name=f"fuse-read-{i}", daemon=True) for i in range(workers)]
        writer = threading.Thread(target=self._write, name="fuse-write", daemon=True)
        for thread in (*readers, writer):
            thread.start()
        try:
            self._infer(readers_left=workers)
        except BaseException:
            self.stop.set()  # readers and writer give up waiting on the queues
            raise
        finally:
            self._put(self.done, None)
            writer.join()
            elapsed = time.perf_counter() - self.started
            if elapsed > 0:
                self.bar.set_postfix_str(f"{self.pairs_done / elapsed:.2f} pairs/s")
            self.stop.set()
            for thread in readers:
                thread.join()
            self.bar.close()

    # --- stage 1: read and preprocess ---------------------------------------------------------

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                job = self.todo.get_nowait()
            except queue.Empty:
                break
            job.started = time.perf_counter()
            self._put(self.ready, self._prepare(job))
        self._put(self.ready, None)

    def _prepare(self, job: Job) -> _Prepared | _Failed:
        try:
            native_wanted = self.options.metrics or self.options.preview
            ct, prepared, native = read_pair(job.pair, self.engine.preprocess, native_wanted, self.options.register)
        except FuseError as error:
            return _Failed(job, str(error))
        slices = prepared.first.shape[0]
        size = prepared.first.shape[-1]
        fused = np.empty((slices, 3, size, size), dtype=np.float32)
        return _Prepared(job, ct, prepared, native, fused, slices)

    # --- stage 2: batch slices across pairs through the engine ------------------------------------

    def _infer(self, readers_left: int) -> None:
        """Pack slices into batches; keep up to PREFETCH_BATCHES batches of slices taken in hand.

        It waits for more pairs only while it lacks a full batch; otherwise it takes what the readers
        have ready without waiting and runs the batch, so reading goes on while the engine works.
        Up to ``engine.in_flight`` batches are submitted before the oldest result is taken (a
        throughput engine runs them side by side); results are taken in submission order.
        """
        pending: list[tuple[_Prepared, int]] = []
        running: collections.deque[tuple[list[tuple[_Prepared, int]], Callable[[], np.ndarray]]] = collections.deque()
        while readers_left or pending or running:
            while readers_left and len(pending) < PREFETCH_BATCHES * self.batch_size:
                try:
                    item = self.ready.get(block=len(pending) < self.batch_size)
                except queue.Empty:
                    break
                if item is None:
                    readers_left -= 1
                elif isinstance(item, _Failed):
                    self._put(self.done, item)
                else:
                    self.bar.total += item.remaining
                    self.bar.refresh()
                    pending.extend((item, s) for s in range(item.remaining))
            if pending:
                batch, pending = pending[: self.batch_size], pending[self.batch_size :]
                running.append((batch, self._submit_batch(batch)))
            while running and (len(running) >= self.engine.in_flight or not (pending or readers_left)):
                self._run_batch(*running.popleft())

    def _submit_batch(self, batch: list[tuple[_Prepared, int]]) -> Callable[[], np.ndarray]:
        ct = np.stack([item.prepared.first[s] for item, s in batch])
        mri = np.stack([item.prepared.second[s] for item, s in batch])
        return submit_batch(self.engine, ct, mri)

    def _run_batch(self, batch: list[tuple[_Prepared, int]], result: Callable[[], np.ndarray]) -> None:
        """Take the result of a submitted batch and hand finished pairs to the writer."""
        items = list(dict.fromkeys(item for item, _ in batch))
        try:
            fused = result()
        except FuseError as error:
            self._fail_all(items, str(error))
            return
        for (item, s), out in zip(batch, fused):
            if item.remaining <= 0:
                continue  # the pair already failed in an earlier batch
            item.fused[s] = out
            item.remaining -= 1
            if item.remaining == 0:
                self._put(self.done, item)
        self.bar.update(len(batch))
        elapsed = time.perf_counter() - self.started
        self.bar.set_postfix_str(f"{self.pairs_done / elapsed:.2f} pairs/s" if elapsed > 0 else "", refresh=False)

    def _fail_all(self, items: list[_Prepared], error: str) -> None:
        for item in items:
            if item.remaining > 0:
                item.remaining = 0
                self._put(self.done, _Failed(item.job, error))

    # --- stage 3: restore, write, measure ------------------------------------------------------

    def _write(self) -> None:
        while True:
            try:
                item = self.done.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if item is None:
                return
            result = item.job.result
            if isinstance(item, _Failed):
                result.status, result.error = "failed", item.error
            else:
                write_pair(item.job, item.ct, item.prepared.restore, item.native, item.fused, self.options,
                           self.engine.description)
            result.seconds = round(time.perf_counter() - item.job.started, 4)
            self.pairs_done += 1

    def _put(self, target: queue.Queue, item: Any) -> None:
        """``put`` that gives up when the run is stopping (so no thread blocks forever)."""
        while True:
            try:
                target.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                if self.stop.is_set():
                    return


def pair_metrics(ct: np.ndarray, mri: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """``metrics.pair_metrics``: fusion metrics averaged over slices, on 8-bit values (imported when used)."""
    from fuse_runtime import metrics

    return metrics.pair_metrics(ct, mri, fused)


def _write_output(job: Job, images: np.ndarray, ct: Scan, engine_description: str, restored: np.ndarray) -> None:
    fmt = job.output_format
    flat_one = job.single_file and fmt != "nifti"
    if flat_one and len(images) != 1:
        raise FuseError(
            f"the input holds {len(images)} frames but its result was planned as one image; "
            "use --format nifti for multi-frame files",
            job.pair.first,
        )
    if fmt == "png":
        (writers.write_png(job.output, images[0]) if flat_one else writers.write_png_slices(job.output, images))
    elif fmt == "nifti":
        # RGB as 8-bit RGB24; gray as float32 luminance from the unquantised result
        writers.write_nifti(job.output, images if images.ndim == 4 else writers.to_luminance(restored), ct)
    else:
        description = f"Fusion of CT {job.pair.first.name} and MRI {job.pair.second.name} by {engine_description}"
        writers.write_dicom_series(job.output, images, ct, description, single_file=flat_one)


def _record_alignment(job: Job, ct: Scan) -> None:
    """Put how the MRI was aligned in the report; write a registration's transform beside the output."""
    alignment = ct.metadata.get("alignment")
    if alignment is None:
        return
    job.result.alignment = alignment.to_report()
    if alignment.transform is not None:
        from fuse_runtime.register import transform_path, write_transform

        path = write_transform(transform_path(job.output), alignment.transform)
        job.result.alignment["transform_file"] = str(path)
        job.result.outputs.append(str(path))


def _fit_batch(engine: Engine, requested: int, notices: list[str]) -> int:
    low, high = engine.batch_range
    fitted = min(max(requested, low), high)
    if fitted != requested:
        notices.append(f"batch size {requested} is outside the engine's range {low}..{high}; using {fitted}")
    return fitted


def _problem_result(problem: PairProblem) -> PairResult:
    return PairResult(
        name=problem.name, inputs=[str(p) for p in problem.paths], status="failed", error=problem.reason
    )
