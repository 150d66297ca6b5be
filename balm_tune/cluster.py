"""Connecting to Ray: join a cluster (`--address`) or start a private local Ray, and size the search."""

from __future__ import annotations

import math
import os

from balm_tune.space import SearchSpace


def init_ray(address: str | None, space: SearchSpace) -> int:
    """Join a cluster or start a local Ray (or use the Ray this process already started, as a Python API
    user may have); returns how many trials fit at once."""
    import ray

    if ray.is_initialized():
        pass
    elif address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray >= 2.59 clusters use token authentication
        ray.init(address=address, log_to_driver=False)
    else:
        # a private local Ray; its trial workers at normal priority (Ray's default niceness 15 lets the
        # driver and Ray's own daemons take CPU from the trials on a small machine)
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    fits = resources.get("CPU", 0) / space.cpus_per_trial
    if space.gpus_per_trial:
        if resources.get("GPU", 0) < space.gpus_per_trial:
            raise SystemExit(
                f"error: --gpus-per-trial {space.gpus_per_trial} but the Ray cluster has {resources.get('GPU', 0)} GPUs"
            )
        fits = min(fits, resources["GPU"] / space.gpus_per_trial)
    if fits < 1:
        raise SystemExit(f"error: one trial needs {space.cpus_per_trial} CPUs; the cluster has {resources.get('CPU')}")
    return max(1, math.floor(fits + 1e-9))
