"""fuse-run over a Ray cluster with Ray Data: the same pairs, outputs, report and resume as one machine.

The driver (``fuse-run --ray``) runs the local runner's ``pipeline.plan_run`` (lock ``--out``, pairs,
names, identity records) and ``pipeline.finish_run`` (reports), holding the lock until the report is
written; write tasks run ``pipeline.write_pair``: both runners agree on every name, record and message.

1. Read + preprocess: one Ray Data task per pair (``flat_map``) runs ``pipeline.read_pair`` with the
   engine's preprocessing and emits one row per slice (``ct [3,size,size]``, ``mri [1,size,size]``
   float32 in [0,1]); the first slice also carries what writing needs: the CT's header and metadata
   (not its pixels), the ``Restore`` record and, for ``--metrics``/``--preview``, the normalised
   scans. A pair that cannot be read becomes one row carrying its error.
2. Inference: an autoscaling actor pool (``map_batches`` over ``_FuseActor``), one engine per actor —
   one GPU each when the cluster has GPUs, else ``threads`` CPU threads each — gets ``batch_size``
   slices at a time (slices of several studies share a batch, as locally), runs
   ``pipeline.infer_batch`` and returns fused slices ``[3,size,size]`` in [0,1].
3. Writing: the driver gathers each pair's fused slices as they stream back; once a pair is complete
   it submits one Ray task running ``pipeline.write_pair`` (restore to the CT's grid, 8 bits, the
   writers through ``atomic_path``, preview, metrics), which returns the pair's result.

Why pairs are reassembled in the driver rather than written by Ray Data block by block: a volume's
result is one file (NIfTI) or one folder written as a whole (a DICOM series sharing one
SeriesInstanceUID, a folder of PNG slices), and its slices come back from different actors in any
order. Ray Data has no streaming group-by-key (``groupby`` is an all-to-all barrier that would hold
every volume at once), so the driver keeps a pair's fused slices only until its last slice arrives,
then hands the whole pair to a write task and lets go of it. Memory stays bounded: the driver holds
only pairs still in flight, write tasks in flight are capped (the driver waits for one to finish
before submitting another), and while the driver waits Ray Data's streaming executor backpressures
reading and inference, so batches of slices flow and whole volumes are never all in memory.

Failure isolation and resume are the local runner's: a failure of one pair (unreadable, NaN, an
engine error on its batch, a write error, a dead worker) is recorded for that pair only. Every node
must see the engine, ``--in`` and ``--out`` at the same paths (a shared file system); URLs (``s3://``)
are refused with a hint to mount them. A pair's ``seconds`` spans its read and write tasks (two clocks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm import tqdm

from fuse_runtime.engines import PROVIDER_CHOICES, open_engine
from fuse_runtime.engines.base import Engine
from fuse_runtime.errors import FuseError, first_line
from fuse_runtime.pairing import Pair
from fuse_runtime.pipeline import (
    Job,
    RunOptions,
    RunPlan,
    check_folders,
    finish_run,
    infer_batch,
    plan_run,
    read_pair,
    write_pair,
)
from fuse_runtime.preprocess import PreprocessConfig, Restore
from fuse_runtime.report import PairResult, RunReport
from fuse_runtime.scan import Scan

__all__ = ["EngineInfo", "RayOptions", "run_on_ray"]

INSTALL_HINT = "install it with: pip install 'fuse-ctmri[distributed]'"
#: Ray Data settings for a run (restored afterwards): fuse-run shows its own progress bar, and a block
#: lost to a dead worker fails only the pairs in it (they are reported) instead of the whole run.
DATA_SETTINGS: dict[str, Any] = {
    "enable_progress_bars": False,
    "print_on_execution_start": False,
    "max_errored_blocks": -1,
}
#: Share of the cluster's CPUs inference actors may take on a cluster without GPUs (the rest read and write).
CPU_SHARE_FOR_INFERENCE = 0.5
MIN_WRITES_IN_FLIGHT = 2
LOST_PAIR = (
    "its slices never came back from the Ray cluster ({why}); finished pairs are kept, re-run to resume"
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


@dataclass(frozen=True)
class RayOptions:
    """Where and how ``fuse-run --ray`` runs.

    address: None: the Ray already running on this machine, else a new local one; ``"auto"``: the
        cluster this machine joined with ``ray start``; ``"HOST:PORT"`` (a head node) or
        ``"ray://HOST:10001"`` (Ray Client). A Ray already initialised in this process is used as it is.
    provider: ONNX Runtime provider of every actor's engine (``auto``: CUDA where the actor has a GPU).
    threads: CPU threads of each inference actor's engine, and the CPUs it reserves, on a cluster
        without GPUs or with ``provider="cpu"`` (None: 1). Otherwise each actor takes one GPU and one CPU.
    actors: most inference actors (None: one per GPU, else half the cluster's CPUs / ``threads``, at
        least 1); the pool starts with one and grows while slices wait.
    writes_in_flight: write tasks submitted and not yet finished (None: the cluster's CPUs, at least 2).
    """

    address: str | None = None
    provider: str = "auto"
    threads: int | None = None
    actors: int | None = None
    writes_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(f"provider must be one of {PROVIDER_CHOICES}, got {self.provider!r}")
        for name in ("threads", "actors", "writes_in_flight"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EngineInfo:
    """The engine as the driver sees it: what ``pipeline.plan_run`` and the readers need.

    Read by opening the engine once on a worker with an actor's resources, so the driver needs
    neither a GPU nor TensorRT, and a model the workers cannot open fails before any pair is read.
    """

    path: str
    description: str
    provider: str
    batch_range: tuple[int, int]
    image_size: int
    modalities: tuple[str, str]
    preprocess: PreprocessConfig
    notices: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, engine: Engine) -> EngineInfo:
        return cls(
            path=str(engine.path),
            description=engine.description,
            provider=engine.provider,
            batch_range=tuple(engine.batch_range),  # type: ignore[arg-type]
            image_size=engine.image_size,
            modalities=tuple(engine.modalities),  # type: ignore[arg-type]
            preprocess=engine.preprocess,
            notices=list(engine.notices),
        )


def run_on_ray(
    engine_path: str | Path,
    in_dir: str | Path,
    out_dir: str | Path,
    options: RunOptions = RunOptions(),
    ray_options: RayOptions = RayOptions(),
    on_engine: Callable[[EngineInfo], None] | None = None,
) -> RunReport:
    """Fuse every pair under ``in_dir`` into ``out_dir`` on a Ray cluster; write ``out_dir/report.json``.

    Same outputs, report, resume and failure handling as ``pipeline.run``; the paths are made absolute
    (workers do not share the driver's working directory); ``options.workers``/``queue_pairs`` are unused.
    ``on_engine`` gets the engine's description and notices once it is open on a worker, before any read.

    Raises FuseError before any pair is read when Ray is missing or unreachable, a path is a URL, the
    engine cannot be opened on a worker, ``in_dir`` holds nothing recognisable or ``out_dir`` cannot
    be written.
    """
    for name, path in (("--engine", engine_path), ("--in", in_dir), ("--out", out_dir)):
        _refuse_url(name, path)
    engine_path, in_dir, out_dir = (Path(p).absolute() for p in (engine_path, in_dir, out_dir))
    if not engine_path.is_file():
        raise FuseError("engine file not found; pass the model.onnx or model.plan written by fuse-export", engine_path)
    check_folders(in_dir, out_dir)
    ray = _import_ray()
    with _connected(ray, ray_options.address) as cluster:
        actors = _actor_plan(cluster, ray_options)
        info = _probe_engine_on_worker(ray, engine_path, ray_options.provider, actors)
        if on_engine is not None:
            on_engine(info)
        with plan_run(info, in_dir, out_dir, options) as plan:
            plan.report.settings["ray"] = {
                **ray_options.to_dict(), "nodes": cluster.nodes, "cluster_cpus": cluster.cpus,
                "cluster_gpus": cluster.gpus, "max_actors": actors.max_actors, "actor_resources": actors.resources,
            }
            started = time.perf_counter()
            if plan.todo:
                writes = ray_options.writes_in_flight or max(MIN_WRITES_IN_FLIGHT, int(cluster.cpus))
                _Execution(ray, info, plan, options, actors, writes, started).run()
            return finish_run(plan, time.perf_counter() - started)


# --- connecting and sizing ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cluster:
    address: str
    nodes: int
    cpus: float
    gpus: float
    largest_node_cpus: float


@dataclass(frozen=True)
class _ActorPlan:
    """Resources of one inference actor, its engine's threads and the pool's largest size."""

    resources: dict[str, float]
    engine_threads: int | None
    max_actors: int


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs the ray[data] extra: pandas, pyarrow)
    except ImportError as error:
        raise FuseError(f"fuse-run --ray needs Ray Data, which is not installed ({error}); {INSTALL_HINT}") from None
    return ray


def _refuse_url(option: str, path: str | Path) -> None:
    if _URL.match(str(path)):
        raise FuseError(
            f"{option} is a URL; fuse-run reads and writes file-system paths. Mount the bucket on every node "
            "(e.g. s3fs, gcsfuse, a shared NFS) and pass the mounted path",
            path,
        )


@contextlib.contextmanager
def _connected(ray: ModuleType, address: str | None) -> Iterator[_Cluster]:
    """Connect to (or start) Ray unless this process already is; disconnect at the end if we connected."""
    connected_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except Exception as error:  # ConnectionError, ValueError for a malformed address, RuntimeError...
            where = f"at {address}" if address else "on this machine"
            raise FuseError(
                f"cannot connect to a Ray cluster {where} ({first_line(error)}); start one with `ray start --head` "
                "and pass its address to --ray (or `auto` on a cluster node), or pass --ray alone for a local Ray"
            ) from None
        connected_here = True
    try:
        alive = [node for node in ray.nodes() if node.get("Alive")]
        totals = ray.cluster_resources()
        yield _Cluster(
            address=address or "local",
            nodes=len(alive),
            cpus=float(totals.get("CPU", 0.0)),
            gpus=float(totals.get("GPU", 0.0)),
            largest_node_cpus=max((float(node["Resources"].get("CPU", 0.0)) for node in alive), default=0.0),
        )
    finally:
        if connected_here:
            ray.shutdown()


def _actor_plan(cluster: _Cluster, options: RayOptions) -> _ActorPlan:
    if cluster.gpus >= 1 and options.provider != "cpu":
        return _ActorPlan({"num_cpus": 1.0, "num_gpus": 1.0}, options.threads, options.actors or int(cluster.gpus))
    threads = options.threads or 1
    if threads > cluster.largest_node_cpus:
        raise FuseError(
            f"--threads {threads} asks for more CPUs per inference actor than any Ray node has "
            f"({cluster.largest_node_cpus:g}); pass --threads {max(1, int(cluster.largest_node_cpus))} or fewer"
        )
    default = max(1, int(cluster.cpus * CPU_SHARE_FOR_INFERENCE) // threads)
    return _ActorPlan({"num_cpus": float(threads)}, threads, options.actors or default)


def _probe_engine_on_worker(ray: ModuleType, engine_path: Path, provider: str, actors: _ActorPlan) -> EngineInfo:
    probe = ray.remote(**actors.resources)(_probe_engine)
    outcome = ray.get(probe.remote(str(engine_path), provider, actors.engine_threads))
    if isinstance(outcome, str):
        raise FuseError(f"{outcome} (the engine was opened on a Ray worker)")
    return outcome


def ray_backend(engine_path: str | Path) -> str:
    """The inference library of every Ray actor: ONNX Runtime for ``.onnx``, TensorRT for a plan.

    Not the local ``auto``, which picks OpenVINO bf16 on AMX/AVX512-BF16 CPUs: a cluster's nodes may
    differ in that, so slices would be fused in different precisions depending on the node that took
    them, and even on one AMX machine OpenVINO's bf16 inside Ray workers gave outputs up to 2 levels
    (mean 0.03) off the local run's, measured on the 149 training pairs. ONNX Runtime FP32 (or CUDA)
    keeps the outputs byte-identical to a local ``--provider cpu`` run on any node.
    """
    return "onnxruntime" if Path(engine_path).suffix.lower() == ".onnx" else "auto"


def _probe_engine(engine_path: str, provider: str, threads: int | None) -> EngineInfo | str:
    """Runs on a worker: the engine's settings, or the FuseError message when it cannot be opened."""
    try:
        with open_engine(engine_path, provider=provider, threads=threads, backend=ray_backend(engine_path)) as engine:
            return EngineInfo.of(engine)
    except FuseError as error:
        return str(error)


# --- the three stages -----------------------------------------------------------------------------


def _read_slices(
    row: dict[str, Any], config: PreprocessConfig, native: bool, register: str | None = None
) -> list[dict[str, Any]]:
    """Ray Data ``flat_map``: one pair → one row per preprocessed slice (or one row with its error)."""
    started = time.time()
    pair = Pair(str(row["name"]), Path(row["first"]), Path(row["second"]), row["kind"], row["task"])
    job = int(row["job"])
    try:
        ct, prepared, normalised = read_pair(pair, config, native, register)
    except FuseError as error:
        size = config.image_size
        blank_ct, blank_mri = np.zeros((3, size, size), np.float32), np.zeros((1, size, size), np.float32)
        return [_slice_row(job, 0, 1, blank_ct, blank_mri, str(error), _pack({"started": started}))]
    meta = _pack(
        {
            "started": started,
            "ct": dataclasses.replace(ct, pixels=np.empty(0, np.float32)),
            "shape": ct.pixels.shape,
            "restore": prepared.restore,
            "native": normalised,
        }
    )
    count = prepared.first.shape[0]
    return [
        _slice_row(job, s, count, prepared.first[s], prepared.second[s], "", meta if s == 0 else b"")
        for s in range(count)
    ]


def _slice_row(
    job: int, index: int, count: int, ct: np.ndarray, mri: np.ndarray, error: str, meta: bytes
) -> dict[str, Any]:
    return {"job": job, "slice": index, "slices": count, "ct": ct, "mri": mri, "error": error, "meta": meta}


class _FuseActor:
    """Ray Data ``map_batches`` actor: one engine, opened once, fusing batches of slice rows."""

    def __init__(self, engine_path: str, provider: str, threads: int | None, batch_size: int) -> None:
        self.engine = open_engine(engine_path, provider=provider, threads=threads, backend=ray_backend(engine_path))
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows with ``ct`` ``[N,3,H,W]`` and ``mri`` ``[N,1,H,W]`` → the same rows with ``fused`` ``[N,3,H,W]``.

        Rows that already carry an error pass through; an engine failure is recorded on the rows of
        its batch only.
        """
        errors = np.array([str(error) for error in batch["error"]], dtype=object)
        ct, mri = batch["ct"], batch["mri"]
        fused = np.zeros((len(errors), 3, *ct.shape[2:]), np.float32)
        good = np.flatnonzero(errors == "")
        for start in range(0, len(good), self.batch_size):
            rows = good[start : start + self.batch_size]
            try:
                fused[rows] = infer_batch(self.engine, ct[rows], mri[rows])
            except FuseError as error:
                errors[rows] = str(error)
        return {
            "job": batch["job"],
            "slice": batch["slice"],
            "slices": batch["slices"],
            "meta": batch["meta"],
            "error": errors,
            "fused": fused,
        }


def _write_task(
    job: Job,
    fused: np.ndarray,
    header: Scan,
    shape: tuple[int, ...],
    restore: Restore,
    native: tuple[np.ndarray, np.ndarray] | None,
    options: RunOptions,
    engine_description: str,
    started: float,
) -> PairResult:
    """Ray task: write one fused pair ``[S,3,size,size]`` exactly as the local runner does; its result."""
    ct = dataclasses.replace(header, pixels=np.broadcast_to(np.zeros((), np.float32), shape))
    write_pair(job, ct, restore, native, fused, options, engine_description)
    job.result.seconds = round(time.time() - started, 4)
    return job.result


@dataclass(eq=False)
class _Partial:
    """A pair whose fused slices are coming back."""

    remaining: int
    fused: np.ndarray | None = None
    meta: dict[str, Any] | None = None
    error: str | None = None


class _Execution:
    """One Ray Data run over ``plan.todo``, with the driver gathering pairs and submitting writes."""

    def __init__(
        self,
        ray: ModuleType,
        info: EngineInfo,
        plan: RunPlan,
        options: RunOptions,
        actors: _ActorPlan,
        writes_in_flight: int,
        started: float,
    ) -> None:
        self.ray = ray
        self.info = info
        self.plan = plan
        self.options = options
        self.actors = actors
        self.writes_in_flight = writes_in_flight
        self.started = started
        self.partials: dict[int, _Partial] = {}
        self.finished: set[int] = set()
        self.writing: dict[Any, int] = {}
        self.write = ray.remote(num_cpus=1)(_write_task)
        self.bar = tqdm(
            total=0, unit="slice", desc="fusing", disable=not options.progress, dynamic_ncols=True, leave=True
        )

    def run(self) -> None:
        lost = "a Ray task or actor failed; see the Ray logs"
        try:
            try:
                with _data_settings(self.ray.data):
                    for batch in self._dataset().iter_batches(batch_size=None, batch_format="numpy"):
                        self._take(batch)
                        self._collect(block=False)
            except Exception as error:  # the cluster failed the run: report the unfinished pairs, keep the rest
                lost = f"the Ray Data run stopped: {first_line(error)}"
            while self.writing:
                self._collect(block=True)
            self._show_rate()
        finally:
            self.bar.close()
        for index, job in enumerate(self.plan.todo):
            if index not in self.finished:
                job.result.status, job.result.error = "failed", LOST_PAIR.format(why=lost)

    def _dataset(self) -> Any:
        data = self.ray.data
        items = [
            {
                "job": index,
                "name": job.pair.name,
                "first": str(job.pair.first),
                "second": str(job.pair.second),
                "kind": job.pair.kind,
                "task": job.pair.task,
            }
            for index, job in enumerate(self.plan.todo)
        ]
        native = self.options.metrics or self.options.preview
        return (
            data.from_items(items, override_num_blocks=len(items))
            .flat_map(
                _read_slices,
                fn_kwargs={"config": self.info.preprocess, "native": native, "register": self.options.register},
                num_cpus=1,
            )
            .map_batches(
                _FuseActor,
                batch_size=self.plan.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "engine_path": self.info.path,
                    "provider": self.info.provider,
                    "threads": self.actors.engine_threads,
                    "batch_size": self.plan.batch_size,
                },
                compute=data.ActorPoolStrategy(min_size=1, max_size=self.actors.max_actors),
                **self.actors.resources,
            )
        )

    def _take(self, batch: dict[str, np.ndarray]) -> None:
        for row in range(len(batch["job"])):
            index = int(batch["job"][row])
            partial = self.partials.get(index)
            if partial is None:
                partial = self.partials[index] = _Partial(remaining=int(batch["slices"][row]))
                self.bar.total += partial.remaining
                self.bar.refresh()
            if batch["meta"][row]:
                partial.meta = pickle.loads(batch["meta"][row])
            error = str(batch["error"][row])
            if error and partial.error is None:
                partial.error, partial.fused = error, None
            elif partial.error is None:
                fused = batch["fused"][row]
                if partial.fused is None:
                    partial.fused = np.empty((int(batch["slices"][row]), *fused.shape), np.float32)
                partial.fused[int(batch["slice"][row])] = fused
            partial.remaining -= 1
            self.bar.update(1)
            if partial.remaining == 0:
                del self.partials[index]
                self._complete(index, partial)

    def _complete(self, index: int, partial: _Partial) -> None:
        job = self.plan.todo[index]
        meta = partial.meta or {}
        if partial.error is not None or partial.fused is None:
            job.result.status, job.result.error = "failed", partial.error
            job.result.seconds = round(time.time() - meta.get("started", time.time()), 4)
            self.finished.add(index)
            return
        while len(self.writing) >= self.writes_in_flight:
            self._collect(block=True)
        ref = self.write.remote(
            job,
            partial.fused,
            meta["ct"],
            meta["shape"],
            meta["restore"],
            meta["native"],
            self.options,
            self.info.description,
            meta["started"],
        )
        self.writing[ref] = index

    def _collect(self, block: bool) -> None:
        """Take the results of finished write tasks (at least one when ``block``)."""
        if not self.writing:
            return
        refs = list(self.writing)
        done, _ = self.ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block else 0)
        for ref in done:
            index = self.writing.pop(ref)
            job = self.plan.todo[index]
            try:
                result: PairResult = self.ray.get(ref)
            except Exception as error:  # the write task itself died (worker lost, out of memory)
                job.result.status = "failed"
                job.result.error = f"the Ray task writing {job.output} failed: {first_line(error)}; re-run to resume"
            else:
                for name in (f.name for f in dataclasses.fields(PairResult)):
                    setattr(job.result, name, getattr(result, name))
            self.finished.add(index)
        self._show_rate()

    def _show_rate(self) -> None:
        elapsed = time.perf_counter() - self.started
        if elapsed > 0:
            self.bar.set_postfix_str(f"{len(self.finished) / elapsed:.2f} pairs/s", refresh=False)


@contextlib.contextmanager
def _data_settings(data: ModuleType) -> Iterator[None]:
    """For the run: DATA_SETTINGS on this process's Ray Data context, and Ray Data's console quieter.

    Ray Data's console handler shows warnings and errors only (its INFO lines and the notice that its
    own progress bars are off would break up fuse-run's bar); its log file keeps everything. All is
    restored afterwards.
    """
    context = data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in DATA_SETTINGS}
    consoles = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)
                and "File" not in type(h).__name__]
    levels = [handler.level for handler in consoles]
    for name, value in DATA_SETTINGS.items():
        setattr(context, name, value)
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.addFilter(_hide_progress_bar_notice)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)
            handler.removeFilter(_hide_progress_bar_notice)


def _hide_progress_bar_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Progress bars disabled")


def _pack(value: dict[str, Any]) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
