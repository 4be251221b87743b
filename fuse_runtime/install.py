"""How to install what is missing: the distribution's name and the pip lines every hint uses.

The distribution is ``fuse-ctmri`` (``fuse`` on the package index is another project); the import
packages keep their names. ONNX Runtime comes in one flavour per environment: ``[cpu]``, or
``[gpu-cu12]`` / ``[gpu-cu13]`` for the CUDA major of the machine's driver.
"""

from __future__ import annotations

DISTRIBUTION = "fuse-ctmri"
CPU_INSTALL = f"pip install '{DISTRIBUTION}[cpu]'"
GPU_INSTALL = (
    f"pip install '{DISTRIBUTION}[gpu-cu12]' (CUDA 12 driver) or '{DISTRIBUTION}[gpu-cu13]' (CUDA 13 driver; "
    "nvidia-smi shows the version)"
)
ONNXRUNTIME_MISSING = (
    f"ONNX Runtime is not installed; add exactly one flavour: {CPU_INSTALL} for the CPU, or on NVIDIA GPUs "
    f"{GPU_INSTALL}"
)
