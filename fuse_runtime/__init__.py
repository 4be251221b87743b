"""fuse_runtime: read scans, preprocess them and run an exported fusion model, without PyTorch."""

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig, prepare_pair, restore_geometry
from fuse_runtime.scan import Scan

__all__ = ["FuseError", "PreprocessConfig", "Scan", "prepare_pair", "restore_geometry"]
