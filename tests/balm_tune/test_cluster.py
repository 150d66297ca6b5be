"""Real Ray clusters on this machine: two nodes, and logical GPUs shared by fractional trials."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import search_command, write_tiny_space

RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Ray installed beside this Python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_nodes():
    """Start Ray nodes with `ray start`; on teardown kill only the processes these calls started."""
    port, groups = _free_port(), []
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # Ray >= 2.59 clusters use token authentication
    address = f"127.0.0.1:{port}"

    def start(*args: str) -> None:
        node = (
            ["--head", f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false"]
            if not groups
            else [f"--address={address}"]
        )
        run = subprocess.Popen(
            [RAY, "start", *node, "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # its daemons stay in this process group
        groups.append(run.pid)
        out, _ = run.communicate(timeout=180)
        assert run.returncode == 0, out[-2000:]

    yield start, {**env, "RAY_ADDRESS": address}
    for group in groups:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(group, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _search(tmp_path: Path, env: dict, *args: str, **sections) -> list[dict]:
    path = write_tiny_space(tmp_path, **sections)
    run = subprocess.run(
        search_command(
            "--space", str(path), "--storage", str(tmp_path / "runs"), "--name", "c", "--address", "auto", *args
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    experiment = tmp_path / "runs" / "c"
    return [
        [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        for d in sorted(experiment.glob("train_balm_*"))
    ]


def test_a_search_on_a_two_node_cluster_places_trials_on_both_nodes(ray_nodes, tmp_path):
    start, env = ray_nodes
    start("--num-cpus=1", '--resources={"head_node": 1}')
    start("--num-cpus=1", '--resources={"worker_node": 1}')
    # trials long enough that the second node starts one before the first node has run them all
    space = {"budget": {"num_samples": 4, "max_epochs": 3}, "base": {"max_train_batches": 150, "percent": 100}}
    trials = _search(tmp_path, env, **space)
    assert len(trials) == 4
    assert len({results[0]["node_id"] for results in trials}) == 2


def test_half_a_gpu_per_trial_runs_eight_trials_at_once_on_four_gpus(ray_nodes, tmp_path):
    start, env = ray_nodes
    start("--num-cpus=8", "--num-gpus=4")  # logical GPUs: Ray schedules and sets CUDA_VISIBLE_DEVICES
    trials = _search(
        tmp_path,
        env,
        "--gpus-per-trial",
        "0.5",
        budget={"num_samples": 8, "max_epochs": 2},
        base={"max_train_batches": 100, "percent": 100},
    )
    assert len(trials) == 8
    spans = [(r[0]["timestamp"] - r[0]["time_this_iter_s"], r[-1]["timestamp"]) for r in trials]
    most_at_once = max(sum(begin <= t < end for begin, end in spans) for t, _ in spans)
    assert most_at_once == 8
    gpus = [r[0]["cuda_visible_devices"] for r in trials]
    assert sorted(gpus) == sorted(["0", "1", "2", "3"] * 2)  # two trials share each GPU
    assert {r[0]["device"] for r in trials} == {"cpu"}  # no CUDA here: the trials fall back to the CPU
