"""Write files under a temporary name in the destination folder, then rename: never a partial file.

Temporary names are hidden and carry ``.partial``: ``.<name>.<random>.partial<suffix>``. Inside a
fuse-run (``run_tag``) they also carry the run's id, ``.<name>.fuse-<run id>.<random>.partial...``,
so ``remove_run_partials`` can remove exactly what fuse-runs left behind and never a user's file
that merely has ``.partial`` in its name.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fuse_runtime.errors import FuseError

PARTIAL_MARKER = ".partial"
#: A temporary name made inside a fuse-run: the run id between ``.fuse-`` and mkstemp's random part.
_RUN_PARTIAL = re.compile(r"^\..*\.fuse-(?P<run>\d{8}T\d{6}-[0-9a-f]{8})\.[A-Za-z0-9_]+\.partial(?:-dir|-old|\.|$)")
_tag: contextvars.ContextVar[str | None] = contextvars.ContextVar("fuse_run_tag", default=None)


@contextlib.contextmanager
def run_tag(run_id: str) -> Iterator[None]:
    """Name the temporary files and folders made in this thread after ``run_id`` until the block ends."""
    token = _tag.set(run_id)
    try:
        yield
    finally:
        _tag.reset(token)


def temp_prefix(path: Path) -> str:
    """The hidden prefix of a temporary name for ``path`` (with the current run's id, if any)."""
    tag = _tag.get()
    return f".{path.name}.fuse-{tag}." if tag else f".{path.name}."


def is_run_partial(name: str) -> str | None:
    """The run id in a fuse-run's temporary name, else None (a user's file, whatever it is called)."""
    match = _RUN_PARTIAL.match(name)
    return match.group("run") if match else None


def remove_run_partials(
    root: str | Path, keep_run: str | None = None, keep_out: Sequence[str | Path] = ()
) -> list[Path]:
    """Remove the temporary files and staging folders that earlier fuse-runs left under ``root``.

    Only names made by ``atomic_path``/``atomic_dir`` inside a fuse-run are touched (never another
    hidden ``.partial`` name), not those of run ``keep_run``, and nothing inside ``keep_out``. Call
    it only while holding the output folder's lock (``outlock``): then their runs are gone.
    """
    root = Path(root)
    protected = {Path(p).resolve() for p in keep_out}
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in list(dirs):
            run = is_run_partial(name)
            if (here / name).resolve() in protected:
                dirs.remove(name)
            elif run is not None and run != keep_run:
                shutil.rmtree(here / name, ignore_errors=True)
                removed.append(here / name)
                dirs.remove(name)
        for name in files:
            run = is_run_partial(name)
            if run is not None and run != keep_run:
                (here / name).unlink(missing_ok=True)
                removed.append(here / name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the final suffix (``.nii.gz``, ``.png``) so writers that pick the
    format from the name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=f"{PARTIAL_MARKER}{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (mkstemp creates 0600 files; results should get the usual permissions)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def ensure_writable(folder: str | Path, what: str = "output folder",
                    fix: str = "choose a writable --out or fix its permissions") -> None:
    """Create ``folder`` and prove a file can be written in it (a temporary file, gone at once), or
    raise FuseError naming the folder, ``what`` it is and the ``fix``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test.partial"):
            pass
    except OSError as error:
        raise FuseError(f"the {what} cannot be written ({error.strerror or error}); {fix}", folder) from None
