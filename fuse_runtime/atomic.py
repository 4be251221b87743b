"""Write files under a temporary name in the destination folder, then rename: never a partial file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuse_runtime.errors import FuseError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the final suffix (``.nii.gz``, ``.png``) so writers that pick the
    format from the name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
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
