"""fuse_export: checkpoint → model.onnx, model.fp16.onnx, model.plan (TensorRT), parity and manifest.

``fuse-export`` (``fuse_export.cli``) is the command; ``run_export`` is the same work as a function.
TensorRT is imported only by ``fuse_export.tensorrt_build``, and only when an engine is built.
"""

from fuse_export.config import ExportConfig, Tolerances
from fuse_export.pipeline import ExportResult, run_export

__all__ = ["ExportConfig", "ExportResult", "Tolerances", "run_export"]
