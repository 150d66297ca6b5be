"""Every use of a Ray or Optuna internal, in one place: where no public API does the job.

Ray releases monthly and changes its private modules without notice; tests/balm_tune/test_compat.py
checks each name below against the installed versions and fails with the name that moved. The
subclass hooks (`PRIVATE_HOOKS`) are private methods of Ray callbacks that balm_tune overrides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# (class, private attributes the override relies on): checked by the test, read by nobody else
PRIVATE_HOOKS = {
    # balm_tune.wandb_logger: wait for a trial's W&B run to finish before Ray kills its logging actor
    "ray.air.integrations.wandb.WandbLoggerCallback": ("_cleanup_logging_actor", "_trial_logging_futures"),
    # balm_tune.callbacks: TensorBoard HParams with the final best val MSE/MAE instead of the last result
    "ray.tune.logger.TBXLoggerCallback": ("_try_log_hparams",),
}


def bootstrap_address(address: str) -> str | None:
    """HOST:PORT of the GCS that `ray.init(address)` would join ('auto': the running cluster), or None.
    Public alternative: none (ray.init retries for minutes before it fails)."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address)


def ray_cpu_count() -> int:
    """The CPUs a local Ray would give its node (cgroup and affinity limits included), without starting it.
    Public alternative: none (os.cpu_count ignores container quotas)."""
    from ray._private.utils import get_num_cpus

    return get_num_cpus()


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """While inside: `ray.init` keeps a 127.0.0.1 node address instead of mapping it to the machine's
    outward IP (Ray's own setting for machines it believes cannot form clusters).
    Public alternative: none (`_node_ip_address` is remapped all the same)."""
    from ray._private import ray_constants

    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters


def loopback_environment() -> dict[str, str]:
    """Environment under which another process's `ray.init(address=...)` joins a loopback-only Ray of this
    machine (loopback_node) instead of mapping 127.0.0.1 to the machine's outward IP.
    Public alternative: none (the variable is Ray's switch for macOS/Windows clusters)."""
    from ray._private import ray_constants

    return {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}


def autoscaler_cluster_config() -> Any:
    """The cluster config the autoscaler reported to the GCS (autoscaler v2, KubeRay), or None.
    Public alternative: none (`ray.autoscaler.sdk` requests resources but does not list node types)."""
    from ray._private import state

    with contextlib.suppress(Exception):  # not every Ray reports one
        return state.state.get_cluster_config()
    return None


def staging_folder(trial: Any) -> tuple[str, Any, str]:
    """(experiment path, its pyarrow filesystem, the driver's local staging folder) of a Tune trial's
    storage context: where Ray writes its state before it uploads it (balm_tune.integrity.Sealer)."""
    storage = trial.storage
    return storage.experiment_fs_path, storage.storage_filesystem, str(storage.experiment_driver_staging_path)


def storage_id(trial: Any) -> int:
    """The storage id of an Optuna trial (`optuna.Trial(study, id)` takes it; a trial's public `number`
    does not map to it without the storage's private lookup either)."""
    return trial._trial_id
