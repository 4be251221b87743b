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


def first_line(error: BaseException, with_type: bool = False, limit: int = 300) -> str:
    """The first non-blank line of ``error``'s message, for a one-line report (library errors, torch's
    above all, run to many lines): at most ``limit`` characters, the type's name when the message is
    empty, and ``Type: line`` with ``with_type``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    if not lines:
        return name
    text = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."
    return f"{name}: {text}" if with_type else text


def one_line(error: BaseException) -> str:
    """The whole message of ``error`` with its line breaks and runs of spaces collapsed, for a reason
    whose detail is not on its first line (SimpleITK's, nibabel's)."""
    return " ".join(str(error).split())
