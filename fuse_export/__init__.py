"""fuse_export: checkpoint → model.onnx, model.fp16.onnx, model.plan (TensorRT), parity and manifest.

``fuse-export`` (``fuse_export.cli``) is the command; ``run_export`` is the same work as a function.
TensorRT is imported only by ``fuse_export.tensorrt_build``, and only when an engine is built.
ONNX Runtime (export, FP16 conversion, parity) comes from the flavour the user installed: ``[cpu]`` or
``[gpu-cu12]`` / ``[gpu-cu13]``; without one, importing fuse_export says which to add.
"""

from fuse_runtime.install import ONNXRUNTIME_MISSING

try:
    import onnxruntime  # noqa: F401  (fuse_export.pipeline uses it; checked first for the message)
except ImportError:
    raise ImportError(f"fuse-export needs ONNX Runtime: {ONNXRUNTIME_MISSING}") from None

from fuse_export.config import ExportConfig, Tolerances
from fuse_export.pipeline import ExportResult, run_export

__all__ = ["ExportConfig", "ExportResult", "Tolerances", "run_export"]
