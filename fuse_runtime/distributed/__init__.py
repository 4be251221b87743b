"""Scale-out batch fusion: ``fuse-run --ray`` on a Ray cluster (install the ``fuse-ctmri[distributed]`` extra).

Importing this package does not import Ray; ``run_on_ray`` does, and says how to install it when
it is missing.
"""

from fuse_runtime.distributed.ray_runner import EngineInfo, RayOptions, run_on_ray

__all__ = ["EngineInfo", "RayOptions", "run_on_ray"]
