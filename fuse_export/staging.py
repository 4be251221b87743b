"""Write an export into a staging folder and publish it only when every check has passed.

``Staging.open(out_dir, overwrite)`` refuses early (before anything is written) when OUT cannot be
written or already holds an export without ``overwrite``, then creates a hidden staging folder
inside OUT (same file system, so publishing is a rename per file). ``publish`` moves the files into
OUT (the old manifest.json removed first, the new one renamed in last, so OUT never has a manifest
that describes other files) and, with ``overwrite``, removes what an earlier export left that this
one did not write. ``discard`` removes the staging folder and any folder the export created, so a
failed export leaves OUT as it was and a re-run starts clean.

A folder published elsewhere (a Triton model repository) is staged beside its destination with
``stage_folder`` and renamed into place by ``publish`` as well.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fuse_runtime.atomic import ensure_writable
from fuse_runtime.errors import FuseError
from fuse_runtime.manifest import MANIFEST_NAME

STAGE_PREFIX = ".fuse-export."
STAGE_SUFFIX = ".partial"


@dataclass
class Staging:
    """One export's staging folder inside ``out_dir`` and the folders it will publish elsewhere."""

    out_dir: Path
    stage: Path
    overwrite: bool
    created: list[Path] = field(default_factory=list)
    folders: dict[Path, Path] = field(default_factory=dict)
    """Destination folder → its staged copy."""

    @classmethod
    def open(cls, out_dir: Path, overwrite: bool, artifact_names: Iterable[str]) -> Staging:
        """Check OUT and create the staging folder; FuseError (nothing written) when OUT is unusable."""
        created = _make_dirs(out_dir, "output folder", "choose a writable --out")
        existing = [name for name in (*artifact_names, MANIFEST_NAME) if (out_dir / name).exists()]
        if existing and not overwrite:
            _remove_created(created)
            raise FuseError(
                f"already holds {', '.join(existing)} from an earlier export; pass --overwrite to replace "
                "them or choose another --out",
                out_dir,
            )
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, suffix=STAGE_SUFFIX, dir=out_dir))
        return cls(out_dir, stage, overwrite, created)

    def stage_folder(self, destination: Path, hint: str) -> Path:
        """A staging folder for ``destination`` (published by renaming); FuseError when it exists and
        ``overwrite`` is off, or its parent cannot be written. ``hint`` names the option to change."""
        if destination.exists() and not self.overwrite:
            raise FuseError(f"already exists; pass --overwrite to replace it or choose another {hint}", destination)
        self.created += _make_dirs(destination.parent, "folder", f"choose a writable {hint}")
        staged = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=STAGE_SUFFIX, dir=destination.parent))
        self.folders[destination] = staged / destination.name
        return staged

    def publish(self, names: list[str], stale: Iterable[str], log: Callable[[str], None]) -> None:
        """Move ``names`` (and manifest.json, last) from the staging folder into OUT, publish the
        staged folders, and with ``overwrite`` delete the ``stale`` names this export did not write."""
        manifest = self.out_dir / MANIFEST_NAME
        manifest.unlink(missing_ok=True)
        for name in names:
            os.replace(self.stage / name, self.out_dir / name)
        for destination, staged in self.folders.items():
            _replace_folder(staged, destination)
        if self.overwrite:
            for name in stale:
                path = self.out_dir / name
                if name not in names and path.exists():
                    path.unlink()
                    log(f"  removed {name} left by an earlier export (it no longer matches model.onnx)")
        os.replace(self.stage / MANIFEST_NAME, manifest)
        self._clean()

    def discard(self) -> None:
        """Remove everything this export wrote; OUT is left as it was before."""
        self._clean()
        _remove_created(self.created)

    def _clean(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        for staged in self.folders.values():
            shutil.rmtree(staged.parent, ignore_errors=True)


def _make_dirs(folder: Path, what: str, fix: str) -> list[Path]:
    """Create ``folder`` (and missing parents) and check it is writable; returns the folders created."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        ensure_writable(folder, what, fix)
    except FuseError:
        _remove_created([p for p in missing if p.is_dir()])
        raise
    return missing


def _remove_created(created: list[Path]) -> None:
    """Remove the folders an export created, deepest first, when they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def _replace_folder(staged: Path, destination: Path) -> None:
    """Rename ``staged`` onto ``destination``; an existing destination is moved aside first and
    deleted only after the new folder is in place."""
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
        os.replace(destination, old / destination.name)
    os.replace(staged, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
