"""deploy/: the KubeRay RayJob against KubeRay's CRD schema, the Slurm script by a --print dry run."""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from balm_tune.search import parse_args

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAYJOB = DEPLOY / "kuberay-rayjob.yaml"
SLURM = DEPLOY / "slurm.sh"
IMAGE_ROOT = "/home/ray/balm-tune"  # where deploy/Dockerfile puts the clone


def _strict(schema: object) -> object:
    """The schema with unknown fields refused, as `kubectl apply` (strict field validation) refuses them;
    without this a misspelt field would pass (structural schemas prune unknown fields, they do not refuse them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((DEPLOY / "schema" / "rayjob-v1.json").read_text())
    assert "KubeRay v1.7.0" in schema["$comment"]
    return jsonschema.Draft7Validator(_strict(schema))


@pytest.fixture
def job() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def _containers(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _search_args(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "balm_tune.search"], command
    return words[3:]


def test_rayjob_passes_kuberay_crd_schema(validator, job):
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    validator.validate(job)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j["spec"].update(rayClusterSpc=j["spec"].pop("rayClusterSpec")),  # unknown field
        lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),  # not a str
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),  # required
        lambda j: j["spec"]["rayClusterSpec"]["autoscalerOptions"].update(version="v3"),  # enum
    ],
)
def test_schema_refuses_a_broken_rayjob(validator, job, mutate):
    broken = copy.deepcopy(job)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_rayjob_cpu_head_gpu_workers_from_zero_autoscaling_token_auth(job):
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"  # reports the worker groups to Ray (balm_tune.cluster)
    assert cluster["authOptions"]["mode"] == "token"
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1
    for container in gpu["template"]["spec"]["containers"]:
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for container in cluster["headGroupSpec"]["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_rayjob_credentials_from_a_secret_never_in_the_file(job):
    for container in _containers(job):
        assert {"secretRef": {"name": "balm-tune-s3"}} in container["envFrom"], container["name"]
        assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_") and "value" in e]
    data = yaml.safe_dump(job)  # what is applied, comments left out
    assert "AWS_" not in data and "aws_" not in data.lower()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", RAYJOB.read_text())  # no access key id, comments included


def test_rayjob_entrypoint_parses_with_the_search_parser(job):
    args = parse_args(_search_args(job["spec"]["entrypoint"]))
    assert args.address == "auto"
    assert args.storage.startswith("s3://")
    assert args.name
    assert (ROOT / Path(args.space).relative_to(IMAGE_ROOT)).is_file()


def test_rayjob_image_is_built_from_the_ray_version_of_the_cluster(job):
    ray_version = job["spec"]["rayClusterSpec"]["rayVersion"]
    images = {c["image"] for c in _containers(job)}
    images |= {c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray_version}-py311-gpu" in dockerfile
    assert f"COPY --chown=ray . {IMAGE_ROOT}" in dockerfile
    assert f'"ray[default,tune]=={ray_version}"' in (ROOT / "cluster.yaml").read_text()  # one Ray version


def test_slurm_script_parses():
    subprocess.run(["bash", "-n", str(SLURM)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_slurm_script_passes_shellcheck():
    subprocess.run(["shellcheck", str(SLURM)], check=True)


def test_slurm_print_shows_head_workers_and_search(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu01\\ngpu02\\ngpu03\\n"\n')
    (shim / "scontrol").chmod(0o755)
    env = {
        "PATH": f"{shim}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu[01-03]",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": "/shared/me",
    }
    out = subprocess.run(
        ["bash", str(SLURM), "--print", "--name", "etth1", "--gpus-per-trial", "0.25"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    starts = [line for line in out if " ray start " in line]
    assert starts[0] == (
        "srun --nodes=1 --ntasks=1 -w gpu01 ray start --head --node-ip-address=HEAD_IP --port=6379 "
        "--num-cpus=8 --num-gpus=1 --block &"
    )
    assert starts[1:] == [
        f"srun --nodes=1 --ntasks=1 -w {node} ray start --address=HEAD_IP:6379 --num-cpus=8 --num-gpus=1 --block &"
        for node in ("gpu02", "gpu03")
    ]
    args = parse_args(_search_args(out[-1]))
    assert (args.address, args.storage, args.name) == ("HEAD_IP:6379", "/shared/me/runs", "etth1")
    assert args.gpus_per_trial == 0.25
    env["BALM_STORAGE"] = "s3://bucket/balm-tune"
    out = subprocess.run(["bash", str(SLURM), "--print"], env=env, capture_output=True, text=True, check=True).stdout
    assert parse_args(_search_args(out.splitlines()[-1])).storage == "s3://bucket/balm-tune"
