"""The installed version of fuse, for ``--version`` on every command.

The distribution that ships ``fuse_runtime`` is looked up by package (so renaming the distribution in
pyproject.toml changes nothing here); without installed metadata (a bare checkout on PYTHONPATH) the
package's own ``fuse_runtime.__version__`` answers.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import click

__all__ = ["package_version", "version_option"]


def package_version() -> str:
    """The version of the installed distribution holding ``fuse_runtime``, else ``fuse_runtime.__version__``."""
    try:
        for name in importlib.metadata.packages_distributions().get("fuse_runtime", []):
            return importlib.metadata.version(name)
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        pass
    import fuse_runtime

    return fuse_runtime.__version__


def version_option(prog_name: str) -> Callable[[Any], Any]:
    """``--version``: print ``PROG VERSION`` and exit. The version is looked up only when asked for,
    so the option costs nothing at start-up."""

    def show(context: click.Context, _: click.Parameter, value: bool) -> None:
        if value and not context.resilient_parsing:
            click.echo(f"{prog_name} {package_version()}")
            context.exit()

    return click.option(
        "--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
        help="Show the version of fuse and exit.",
    )
