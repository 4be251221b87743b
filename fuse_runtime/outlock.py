"""One fuse-run per output folder: ``--in``/``--out`` checked, and a lock file on ``--out`` naming its run.

``OUT/.fuse-run.lock`` is held with ``fcntl.flock`` for the whole run, so the kernel releases it when
the process ends however it ends (kill -9 included) and no stale lock can outlive its owner. The file
holds the owner's run id, pid, host and start time: a second run refuses with those facts (or waits
for the lock with ``wait``), and a run that takes the lock over knows that every earlier owner is
gone, so their temporary files may be removed (``atomic.remove_run_partials``). The file itself is left
in place (removing it would let two runs lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fuse_runtime.errors import FuseError

LOCK_NAME = ".fuse-run.lock"


def check_folders(in_dir: Path, out_dir: Path) -> None:
    """Refuse a missing input folder and an output folder inside (or equal to) the input folder."""
    if not in_dir.is_dir():
        raise FuseError("input folder not found; pass the folder holding the scans with --in", in_dir)
    resolved_in, resolved_out = in_dir.resolve(), out_dir.resolve()
    if resolved_out == resolved_in or resolved_in in resolved_out.parents:
        raise FuseError(
            f"the output folder is inside the input folder {in_dir}; results would be read back as inputs "
            "next time. Choose an --out outside --in",
            out_dir,
        )


@dataclass(frozen=True)
class Owner:
    """Who holds (or last held) an output folder's lock."""

    run_id: str
    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"fuse-run {self.run_id} (pid {self.pid} on {self.host}, started {self.started})"


def new_run_id() -> str:
    """``YYYYmmddTHHMMSS-<8 hex>``: sortable by start time, unique across hosts and processes."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


class OutputLock:
    """The lock of one output folder, held from ``acquire`` to ``release`` (or the end of a ``with``)."""

    def __init__(self, out_dir: str | Path, run_id: str, wait: bool = False,
                 on_wait: Callable[[Owner | None], None] | None = None) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.owner = Owner(
            run_id, os.getpid(), socket.gethostname(), datetime.now(timezone.utc).isoformat(timespec="seconds")
        )
        self.wait = wait
        self.on_wait = on_wait
        self.previous: Owner | None = None
        #: True when the file system refused to lock: nothing stops a second run (plan_run says so).
        self.unlocked = False
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock; FuseError naming the running owner when it is held and not ``wait``.

        ``previous`` is then the last owner recorded in the file (gone, since the lock was free).
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise FuseError(
                f"cannot create the lock file ({error.strerror}); choose another --out or fix its permissions",
                self.path,
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_owner(fd)
            if not self.wait:
                os.close(fd)
                who = holder.describe() if holder else "another fuse-run"
                raise FuseError(
                    f"{who} is writing to this output folder; wait for it to finish, pass --wait to queue behind "
                    "it, or choose another --out",
                    self.path.parent,
                ) from None
            if self.on_wait is not None:
                self.on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): run, but say so
            self.unlocked = True
        self.previous = _read_owner(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(self.owner)) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_owner(fd: int) -> Owner | None:
    for _ in range(3):  # the owner may be writing it right now
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode() or "null")
            return Owner(**data) if isinstance(data, dict) else None
        except (ValueError, TypeError):
            time.sleep(0.05)
    return None
