"""Shared test fixtures: the ETTh1 file embedded in the package and small real configs.

Tests need nothing outside the repository: the real ETTh1 ships as core/datasets/ETTh1.csv, and
small purpose-made files live in tests/data/.
"""

import subprocess
from pathlib import Path

import pytest

from core.config import BalmConfig
from core.data import EMBEDDED

ETTH1 = EMBEDDED["ETTh1"]  # the unmodified ETDataset file (sha256 checked in tests/core/test_data.py)
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def etth1_path() -> Path:
    return ETTH1


@pytest.fixture
def tiny_config(etth1_path) -> BalmConfig:
    """A seconds-long real run: ETTh1, a 2-layer random GPT-2 with GPT-2's real tokenizer."""
    return BalmConfig(
        data_path=str(etth1_path),
        backbone="tiny-gpt2",
        llm_layers=2,
        seq_len=96,
        pred_len=24,
        d_model=16,
        d_ff=32,
        batch_size=32,
        epochs=2,
        max_train_batches=4,
        max_eval_batches=2,
        percent=10,
    ).validate()


TINY_SPACE = {
    "description": "tiny test search",
    "base": {
        "backbone": "tiny-gpt2",
        "llm_layers": 2,
        "seq_len": 96,
        "pred_len": 24,
        "percent": 10,
        "d_model": 16,
        "d_ff": 32,
        "batch_size": 32,
        "max_train_batches": 5,
        "max_eval_batches": 2,
        "patience": 5,
    },
    "search": {
        "prompt_len": {"type": "int", "low": 2, "high": 12},
        "contrastive_weight": {"type": "float", "low": 0.0, "high": 2.0},
        "scale_factor": {"type": "log_float", "low": 0.25, "high": 4.0},
        "learning_rate": {"type": "log_float", "low": 0.0003, "high": 0.01},
    },
    "budget": {"num_samples": 6, "max_epochs": 3},
    "scheduler": {"grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "seed": 0,
}


def write_tiny_space(folder: Path, **sections) -> Path:
    """Write the tiny search space to folder/space.yaml; mapping sections are updated, others (and a
    `searcher` or `scheduler` with a `type`: another strategy) replaced."""
    import copy

    import yaml

    space = copy.deepcopy(TINY_SPACE)
    space["base"]["data_path"] = str(ETTH1)
    for key, value in sections.items():
        merge = isinstance(value, dict) and isinstance(space.get(key), dict) and "type" not in value
        space[key] = {**space[key], **value} if merge else value
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture
def write_space(tmp_path):
    return lambda **sections: write_tiny_space(tmp_path, **sections)


def search_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "balm_tune.search", *args]


def run_command(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """Run `command` in a process group of its own with its output captured. On a timeout the whole group
    (a driver and the local Ray it started) is killed and the test fails with the command's last output,
    so a hang shows where it waited instead of a bare TimeoutExpired."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options
    )
    out, err = finish(process, timeout)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait for a process started in a group of its own (`start_new_session=True`) and return its output;
    after `timeout` s its whole group is killed and the test fails with the last of that output."""
    import os
    import signal

    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        command = " ".join(map(str, process.args[1:]))
        pytest.fail(f"{command} did not end in {timeout:g} s; its last output:\n{out[-3000:]}\n{(err or '')[-3000:]}")


def read_lines(process: subprocess.Popen) -> list[str]:
    """The lines of `process.stdout`, collected by a background thread as they come (the list grows), so a
    test waits for a line with `wait_for` and a timeout instead of blocking on a pipe that may never speak."""
    import threading

    lines: list[str] = []

    def collect() -> None:
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=collect, daemon=True).start()
    return lines


@pytest.fixture
def small_disk(tmp_path):
    """`mount(size)`: a new folder on a tmpfs of that size (a disk that fills up), and `grow(folder)`: 64 MB
    more of it (space freed). Needs root (mount); unmounted when the test ends."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a disk that fills up)")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    def grow(folder: Path) -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)

    yield mount, grow
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible endpoint on 127.0.0.1 (moto in server mode) with the bucket `balm`; the AWS_*
    variables that point pyarrow, boto3 and Ray at it are set for this process and returned for others."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    boto3 = pytest.importorskip("boto3")
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3").create_bucket(Bucket="balm")
        yield env
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` every 0.5 s until it returns something truthy (returned), or fail after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
