"""fuse_runtime: read scans, preprocess them and run an exported fusion model, without PyTorch.

``Fuser`` and ``fuse_files`` (``fuse_runtime.api``) are the Python API: open a model once, fuse
arrays, files or folders. They are imported on first use, so ``import fuse_runtime.errors`` stays light.
"""

from typing import Any

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig, prepare_pair, restore_geometry
from fuse_runtime.scan import Scan

__all__ = ["FuseError", "Fuser", "PreprocessConfig", "Scan", "__version__", "fuse_files", "prepare_pair",
           "restore_geometry"]

__version__ = "0.1.0"
"""Kept equal to pyproject.toml's version; ``fuse_runtime.version.package_version`` prefers the installed one."""

_API = ("Fuser", "fuse_files")


def __getattr__(name: str) -> Any:
    if name in _API:
        from fuse_runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'fuse_runtime' has no attribute {name!r}")
