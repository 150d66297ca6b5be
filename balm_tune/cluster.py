"""Connecting to Ray and sizing the search: join a cluster (`--address`) or start a private local Ray,
check that one trial fits a node the cluster has or can start, and that every node reaches the storage.

An autoscaling cluster is sized from its node types, not from the nodes alive at start: GPU workers
at `min_workers: 0` are started by the autoscaler when the pending trials ask for them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass

from balm_tune.storage import Location
from core.errors import BalmError

CONNECT_TIMEOUT_S = 3.0
GPU_HEADROOM = 0.8  # --gpus-per-trial auto packs trials into this share of a GPU's memory
HEAD_RESOURCE = "node:__internal_head__"


class ClusterError(BalmError, RuntimeError):
    """A Ray cluster that cannot be reached or cannot run the search as asked; one line."""


@dataclass(frozen=True)
class NodeShape:
    """The resources of one node (alive, or of a node type the autoscaler can start `count` of)."""

    name: str
    resources: dict[str, float]
    count: int = 1

    def trials(self, cpus: float, gpus: float) -> int:
        """How many trials of `cpus` CPUs and `gpus` GPUs fit on one such node."""
        fits = self.resources.get("CPU", 0) / cpus if cpus else math.inf
        if gpus:
            fits = min(fits, self.resources.get("GPU", 0) / gpus)
        return 0 if fits == math.inf else math.floor(fits + 1e-9)


def check_address(address: str | None) -> None:
    """Fail within seconds when nothing listens at `address` (Ray itself would retry for minutes)."""
    if not address or address == "local":
        return
    from balm_tune.compat import bootstrap_address

    try:
        resolved = bootstrap_address(address)
    except (ConnectionError, ValueError) as err:
        raise ClusterError(f"--address {address}: {str(err).strip().splitlines()[0]}") from None
    if resolved is None:
        raise ClusterError(f"--address {address}: no running Ray cluster found here; give HOST:PORT or set RAY_ADDRESS")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise ClusterError(
            f"--address {address}: no Ray cluster answers at {resolved} ({err}); start one or check HOST:PORT"
        ) from None


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a search runs on: its live nodes and the node types it can still start."""

    live: list[NodeShape]
    types: list[NodeShape]

    @property
    def has_gpus(self) -> bool:
        return any(n.resources.get("GPU", 0) for n in self.live + self.types)

    def trials_at_once(self, cpus: float, gpus: float) -> int:
        """Trials it can hold at once: its live nodes, or its head plus every startable worker.

        Raises ClusterError when no single node (alive or of a node type) fits one trial.
        """
        shapes = self.live + self.types
        if not any(n.trials(cpus, gpus) for n in shapes):
            have = "; ".join(f"{n.name}: {_shape(n.resources)}" for n in shapes)
            raise ClusterError(
                f"one trial needs {cpus:g} CPU and {gpus:g} GPU on one node (--cpus-per-trial/--gpus-per-trial, "
                f"resources in the space) but no node the cluster has or can start fits it ({have})"
            )
        now = sum(n.trials(cpus, gpus) for n in self.live)
        head = sum(n.trials(cpus, gpus) for n in self.live if n.name == "head")
        scaled = head + sum(t.count * t.trials(cpus, gpus) for t in self.types)
        return max(1, now, scaled if self.types else 0)


def init_ray(address: str | None, storage: Location, verbose: bool = False) -> Cluster:
    """Join the cluster at `address` (or start a local Ray on loopback) and describe it.

    Raises ClusterError, before any trial starts, when nothing answers at `address` or a local
    `storage` path is not shared by every node the cluster has or can start.
    """
    import ray

    if ray.is_initialized():  # the Ray this process has already started (a Python API user, tests)
        return Cluster(live_nodes(), [])
    check_address(address)
    if not address or address == "local":
        start_local_ray(verbose)
        return Cluster(live_nodes(), [])
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray >= 2.59 clusters use token authentication
    ray.init(address=address, log_to_driver=False, logging_level=_ray_log_level(verbose))
    cluster = Cluster(live_nodes(), node_types())
    if storage.is_local:
        check_shared(storage, cluster)
    return cluster


def local_cluster() -> Cluster:
    """The node a private local Ray would have (what --dry-run checks without starting Ray)."""
    import torch

    from balm_tune.compat import ray_cpu_count

    return Cluster([NodeShape("head", {"CPU": float(ray_cpu_count()), "GPU": float(torch.cuda.device_count())})], [])


def auto_gpus_per_trial(cluster: Cluster, shared) -> float:
    """`--gpus-per-trial auto`: 0 on a cluster without GPUs (one trial per --cpus-per-trial); else the
    GPU fraction that packs as many trials per GPU as a probe trial's memory allows with headroom.
    The probe runs in a worker of its own that exits after it (max_calls=1), freeing its GPU."""
    import ray

    from balm_tune.trainable import probe_gpu_memory

    if not cluster.has_gpus:
        return 0.0
    cpus = shared.space.cpus_per_trial
    probe = ray.remote(num_cpus=cpus, num_gpus=1, max_calls=1)(probe_gpu_memory)
    held, total = ray.get(probe.remote(shared))
    per_gpu = max(1, math.floor(GPU_HEADROOM * total / max(held, 1)))
    print(
        f"--gpus-per-trial auto: a probe trial held {held / 2**30:.2f} GiB of {total / 2**30:.1f} GiB: "
        f"{per_gpu} trials per GPU",
        flush=True,
    )
    return 1.0 / per_gpu


TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"  # its warning at every local start:
TOKEN_ENABLED = "Token authentication is enabled for this Ray cluster"  # (the "disabled" warning still shows)


def _ray_log_level(verbose: bool) -> int:
    """Ray's INFO lines ("Started a local Ray instance", Tune's "Wrote the latest version of all result
    files ...") only with --verbose: the search prints its own line for each step."""
    return logging.INFO if verbose else logging.WARNING


def _token_notice(record: logging.LogRecord) -> bool:
    """Ray's default token authentication, on as it should be: nothing for the user to do."""
    return not record.getMessage().startswith(TOKEN_ENABLED)


def start_local_ray(verbose: bool = False) -> None:
    """A private Ray on loopback only: node IP 127.0.0.1, so GCS, raylet and workers bind 127.0.0.1.

    `ray.init` maps a 127.0.0.1 node address to the machine's outward IP unless Ray believes the
    machine cannot form clusters (its setting for macOS/Windows); that setting is applied for this call.
    """
    import ray

    from balm_tune.compat import loopback_node

    # trial workers at normal priority (Ray's default niceness 15 lets the driver and Ray's own
    # daemons take CPU from the trials on a small machine)
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not verbose:  # added once however many searches this process runs (addFilter keeps one of each)
        logging.getLogger(TOKEN_LOGGER).addFilter(_token_notice)
    with loopback_node():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=_ray_log_level(verbose))


def live_nodes() -> list[NodeShape]:
    import ray

    return [
        NodeShape("head" if HEAD_RESOURCE in n["Resources"] else n["NodeID"], dict(n["Resources"]))
        for n in ray.nodes()
        if n["Alive"]
    ]


def node_types() -> list[NodeShape]:
    """The worker node types the autoscaler can start (count = max_workers); [] without an autoscaler.

    Read from the cluster config the autoscaler reports to the GCS (autoscaler v2, KubeRay), else from
    the `--autoscaling-config` file of the head's autoscaler process (the cluster launcher's
    ~/ray_bootstrap_config.yaml), read by a task on the head so the driver may run anywhere.
    """
    import ray

    from balm_tune.compat import autoscaler_cluster_config

    config = autoscaler_cluster_config()
    if config is not None and config.node_group_configs:
        return [
            NodeShape(g.name, {k: float(v) for k, v in g.resources.items()}, g.max_count if g.max_count >= 0 else 1000)
            for g in config.node_group_configs
            if g.max_count != 0
        ]
    gcs = ray.get_runtime_context().gcs_address
    read = ray.remote(num_cpus=0, resources={HEAD_RESOURCE: 0.001})(_autoscaling_config_on_head)
    try:
        config = ray.get(read.remote(gcs), timeout=120)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError("the head node did not answer within 120 s (reading its autoscaler's node types)") from None
    if not config:
        return []
    limit = int(config.get("max_workers", 1000))
    head = config.get("head_node_type")
    return [
        NodeShape(name, {k: float(v) for k, v in (t.get("resources") or {}).items()}, min(limit, t["max_workers"]))
        for name, t in (config.get("available_node_types") or {}).items()
        if name != head and t.get("max_workers", limit)
    ]


def _autoscaling_config_on_head(gcs_address: str) -> dict | None:
    """The YAML of the autoscaler serving `gcs_address` on this machine (None when it runs none)."""
    import psutil
    import yaml

    port = gcs_address.rsplit(":", 1)[-1]
    for process in psutil.process_iter(["cmdline"]):
        args = process.info["cmdline"] or []
        if not any(a.endswith("monitor.py") for a in args):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if flags.get("gcs-address", "").rsplit(":", 1)[-1] == port and flags.get("autoscaling-config"):
            with open(os.path.expanduser(flags["autoscaling-config"])) as handle:
                return yaml.safe_load(handle)
    return None


def check_shared(storage: Location, cluster: Cluster) -> None:
    """Refuse a local storage path unless every node of the cluster provably sees the driver's folder.

    The driver writes a marker file; a task pinned to each live node reads it back. A cluster that can
    start more nodes cannot be proven: its future nodes are unknown.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    advice = "use --storage s3://BUCKET/PREFIX (or another URI every node reaches)"
    root = storage.parent
    if cluster.types:
        raise ClusterError(
            f"--storage {root.uri} is a local path but this cluster autoscales (node types "
            f"{', '.join(t.name for t in cluster.types)}): nodes it starts will not see it; {advice}"
        )
    if len(cluster.live) < 2:
        return
    created = not root.exists()
    marker, token = root.child(f".balm-shared-{uuid.uuid4().hex}"), uuid.uuid4().hex
    try:
        marker.write_bytes(token.encode())
    except OSError as err:
        raise ClusterError(f"--storage {root.uri}: cannot write there ({err})") from None
    try:
        read = ray.remote(num_cpus=0)(_read_marker)
        seen = ray.get(
            [
                read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                    marker.path
                )
                for n in ray.nodes()
                if n["Alive"]
            ],
            timeout=120,
        )
    finally:
        with contextlib.suppress(OSError):
            marker.delete()
            if created:
                root.delete()
    missing = [ip for ip, text in seen if text != token]
    if missing:
        raise ClusterError(
            f"--storage {root.uri} is a local path that node(s) {', '.join(missing)} do not share; {advice}"
        )


def _read_marker(path: str) -> tuple[str, str | None]:
    import ray

    ip = ray.util.get_node_ip_address()
    try:
        with open(path) as handle:
            return ip, handle.read()
    except OSError:
        return ip, None


def _shape(resources: dict[str, float]) -> str:
    return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"
