"""Resume by identity: what made each output, recorded beside it, and names fitted from the pair alone.

An output's name depends only on its pair's name (``output_base``): the name with unsafe characters
replaced, plus ``-<8 hex of the original name>`` when replacing changed it, so ``a b`` and ``a_b``
never share (or swap) an output however the set of pairs changes between runs.

Beside every output ``OUT/<name>`` a hidden record ``OUT/.<name>.fuse.json`` says what made it: the
input files (path relative to ``--in``, and a digest of each file's size and modification time, every
file of a DICOM series folder included), the model file's SHA-256 and the options that change pixels
(output format, gray, the engine's preprocessing, registration). It is written as ``writing`` before
the output and ``done`` after it (with the slices, metrics and the engine's description, kept for
information: another backend or provider changes pixels by rounding only and does not redo outputs),
so a kill -9 at any point is seen on the next run.

``decide`` then says for each planned output: ``fuse`` (missing, interrupted, or made from something
else: the reason says what changed), ``skip`` (made by a finished run from exactly these inputs,
model and options) or ``refuse`` (a file fuse has no record of making: never replaced without
``--overwrite``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fuse_runtime.atomic import write_json_atomic
from fuse_runtime.report import PairResult

RECORD_VERSION = 1
PREVIEW_DIR = "preview"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_sha_cache: dict[tuple[str, int, int], str] = {}

Action = Literal["fuse", "skip", "refuse"]


@dataclass(frozen=True)
class Decision:
    """What to do with one planned output, why, and the record found (for a skip: its slices, metrics)."""

    action: Action
    reason: str = ""
    record: dict[str, Any] | None = None


def safe_relative_name(name: str) -> str:
    """A pair name as a safe relative path: ``[A-Za-z0-9._-]`` per component, no hidden or ``..`` parts.

    Only ``/`` separates components (a backslash in a folder name is replaced like any unsafe
    character). A leading ``preview/`` is moved aside (``_preview/``): ``OUT/preview/`` holds previews.
    """
    parts = []
    for part in name.split("/"):
        clean = _UNSAFE.sub("_", part).lstrip(".")
        if clean:
            parts.append(clean)
    if not parts:
        parts = ["pair"]
    if parts[0] == PREVIEW_DIR and len(parts) > 1:
        parts[0] = f"_{PREVIEW_DIR}"
    return "/".join(parts)


def output_base(name: str) -> str:
    """The output name of pair ``name`` (no suffix): safe, and a function of ``name`` alone.

    When making it safe changed the name, 8 hex digits of the original's SHA-256 are appended, so two
    names that sanitise alike (``a b``, ``a_b``, ``a\\b``) keep apart without counting in run order.
    """
    safe = safe_relative_name(name)
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def record_path(output: Path) -> Path:
    return output.parent / f".{output.name}.fuse.json"


def model_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the model file (cached per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def input_identity(path: Path, in_root: Path) -> dict[str, Any]:
    """One input (a file, or a DICOM series folder): its path under ``in_root`` and a digest of its files.

    The digest covers every visible file's relative name, size and modification time (ns).
    """
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        relative = file.relative_to(path).as_posix() if file != path else ""
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    try:
        shown = path.relative_to(in_root).as_posix()
    except ValueError:
        shown = str(path)
    return {"path": shown, "files": len(files), "stat_sha256": digest.hexdigest()}


def identity(inputs: list[Path], in_root: Path, model: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Everything an output's pixels depend on (see the module docstring), as plain JSON data.

    Raises OSError when an input cannot be listed or stat-ed (the caller reports the pair).
    """
    return {"inputs": [input_identity(p, in_root) for p in inputs], "model": model, "options": options}


def pixel_options(output_format: str, gray: bool, preprocess: Any, register: str | None = None) -> dict[str, Any]:
    """The run options that change an output's pixels (format, gray, the engine's preprocessing, registration)."""
    config = dataclasses.asdict(preprocess) if dataclasses.is_dataclass(preprocess) else dict(preprocess or {})
    options = {"format": output_format, "gray": bool(gray), "preprocess": config, "register": register}
    return json.loads(json.dumps(options))


def read_record(output: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(record_path(output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == RECORD_VERSION else None


def write_record(output: Path, ident: dict[str, Any] | None, run_id: str, state: str, **facts: Any) -> None:
    """Write the record of ``output``: ``state`` is ``writing`` (before) or ``done`` (after, with ``facts``).

    Nothing without an identity (a job planned outside ``plan_run``).
    """
    if ident is None:
        return
    write_json_atomic(
        record_path(output),
        {"version": RECORD_VERSION, "state": state, "run_id": run_id, "identity": ident, **facts},
    )


def decide(output: Path, ident: dict[str, Any], overwrite: bool) -> Decision:
    """Whether a planned ``output`` is fused, skipped or refused (see the module docstring)."""
    if not output.exists() and not output.is_symlink():
        return Decision("fuse")
    record = read_record(output)
    if overwrite:
        return Decision("fuse", "replaced (--overwrite)", record)
    if record is None:
        return Decision(
            "refuse",
            f"{output} exists but no fuse-run record says what made it (a file from elsewhere or an older "
            "fuse); move it away, or pass --overwrite to replace it",
        )
    if record.get("state") != "done":
        return Decision("fuse", f"redone: run {record.get('run_id')} was interrupted while writing it", record)
    changed = [what for what in ("inputs", "model", "options") if record["identity"].get(what) != ident[what]]
    if changed:
            return Decision(
                "fuse", f"redone: its {', '.join(changed)} changed since run {record.get('run_id')} made it", record
            )
    return Decision("skip", f"made by run {record.get('run_id')} from the same inputs, model and options", record)


def plan_output(
    result: PairResult,
    output: Path,
    inputs: list[Path],
    in_root: Path,
    model: dict[str, Any],
    pixels: dict[str, Any],
    overwrite: bool,
) -> dict[str, Any] | None:
    """Decide one planned output; returns its identity when it is to be fused, else fills ``result``.

    A skipped output's result carries the slices and metrics its record holds and the run that made
    it; a refused one (or one whose inputs cannot be read) is failed with the reason. A redone
    output's ``note`` says why.
    """
    try:
        ident = identity(inputs, in_root, model, pixels)
    except OSError as error:
        result.status, result.error = "failed", f"cannot read {error.filename} ({error.strerror}); check it is there"
        return None
    decision = decide(output, ident, overwrite)
    if decision.action == "refuse":
        result.status, result.error = "failed", decision.reason
        return None
    if decision.action == "skip":
        record = decision.record or {}
        result.status, result.outputs = "skipped", [str(output)]
        result.error = "output exists; pass --overwrite to replace it"
        result.slices, result.metrics = int(record.get("slices") or 0), record.get("metrics")
        result.alignment, result.made_by = record.get("alignment"), record.get("run_id")
        return None
    result.note = decision.reason or None
    return ident


def plan_job(job: Any, in_root: Path, model: dict[str, Any], preprocess: Any, options: Any, run_id: str) -> bool:
    """Decide one ``pipeline.Job`` of run ``run_id``: True when it is to be fused (its ``identity`` set).

    A job already failed, or whose output would land inside ``in_root``, is not fused; otherwise
    ``plan_output`` decides from the output's record.
    """
    if job.result.status == "failed":
        return False
    if in_root.resolve() in job.output.resolve().parents:
        job.result.status = "failed"
        job.result.error = f"its output {job.output} would land inside the input folder; choose another --out"
        return False
    job.run_id = run_id
    pixels = pixel_options(job.output_format, options.gray, preprocess, getattr(options, "register", None))
    inputs = [job.pair.first, job.pair.second]
    job.identity = plan_output(job.result, job.output, inputs, in_root, model, pixels, options.overwrite)
    return job.identity is not None
