"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations

from pathlib import Path


class FuseError(Exception):
    """A user-fixable problem: the message names the file (when there is one) and the fix.

    Command-line entry points catch it and print ``str(error)`` without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
