"""Real Ray clusters on this machine: two nodes (one sharing no disk with the driver), logical GPUs
shared by fractional trials, an autoscaling cluster (Ray's fake multi-node provider), S3 storage
served by moto on 127.0.0.1, and the checks that stop a search before it starts."""

import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml

from balm_tune.api import prepare_search
from balm_tune.cluster import ClusterError
from balm_tune.storage import open_location
from balm_tune.train import main as train_main
from tests.conftest import free_port, read_lines, run_command, search_command, wait_for, write_tiny_space

RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Ray installed beside this Python
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the node id Ray's fake multi-node provider gives its head


class RayNodes:
    """Ray nodes started with `ray start` (the first is the head); `stop` kills only what they started:
    their process groups and every process spawned under them (Ray workers get groups of their own)."""

    def __init__(self, env: dict):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths must fit 107 bytes
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "token"}  # Ray >= 2.59 uses token authentication
        self.groups: list[int] = []

    @property
    def driver_env(self) -> dict:
        return {**self.env, "RAY_ADDRESS": self.address}

    def start(self, *args: str, private: tuple[Path, ...] = (), autoscaling_config: Path | None = None) -> None:
        """Start the head (first call) or a worker; `private` folders get a tmpfs seen by this node only."""
        env = self.env
        if self.groups:
            node = [f"--address={self.address}"]
        else:
            node = [
                "--head",
                f"--port={self.port}",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
            ]
        if autoscaling_config:
            node.append(f"--autoscaling-config={autoscaling_config}")
            env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        command = [
            RAY,
            "start",
            *node,
            "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            *args,
        ]
        if private:  # a mount namespace of its own: these folders are a fresh tmpfs for this node only
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in private)
            command = [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && exec {shlex.join(command)}",
            ]
        run = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )  # its daemons stay in this process group
        self.groups.append(run.pid)
        out, _ = run.communicate(timeout=180)
        assert run.returncode == 0, out[-2000:]

    def stop(self) -> None:
        started = [p for p in psutil.process_iter() if _group(p) in self.groups]
        for process in list(started):
            with contextlib.suppress(psutil.Error):
                started += process.children(recursive=True)
        for process in started:
            with contextlib.suppress(psutil.Error):
                process.kill()
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(group, signal.SIGKILL)
        psutil.wait_procs(started, timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _unshare_allowed() -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.fixture
def ray_nodes():
    nodes = RayNodes({})
    yield nodes.start, nodes.driver_env
    nodes.stop()


@pytest.fixture(scope="module")
def no_shared_disk(tmp_path_factory, s3_endpoint):
    """Two nodes; the second runs in a private mount namespace with a tmpfs over the test folder, so it
    shares no disk with the driver, as two machines would. Both reach the S3 endpoint. The head has no
    CPU for trials (as cluster.yaml's head has no GPU): every trial and its checkpoints land on the
    node that shares no disk."""
    if not _unshare_allowed():
        pytest.skip("needs root and `unshare -m` to start a node that shares no disk with the driver")
    folder = tmp_path_factory.mktemp("noshare")
    nodes = RayNodes(s3_endpoint)
    try:
        nodes.start("--num-cpus=0")
        nodes.start("--num-cpus=1", private=(folder,))
        yield nodes, folder
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory, s3_endpoint):
    """A CPU head (1 CPU) whose autoscaler (Ray's fake multi-node provider) starts up to 2 GPU workers
    (1 CPU, 1 GPU each) from zero when trials ask for GPUs."""
    folder = tmp_path_factory.mktemp("autoscaling")
    nodes = RayNodes(s3_endpoint)
    config = folder / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(_fake_autoscaler(nodes.address)))
    try:
        nodes.start("--num-cpus=1", autoscaling_config=config)
        yield nodes, folder
    finally:
        nodes.stop()


def _fake_autoscaler(gcs_address: str) -> dict:
    no_commands = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    starts = ("head_start_ray_commands", "worker_start_ray_commands")
    return {
        "cluster_name": "fake",
        "max_workers": 2,
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {
                "resources": {"CPU": 1, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        **{key: [] for key in no_commands + starts},
    }


def _search(tmp_path: Path, env: dict, *args: str, **sections) -> list[dict]:
    path = write_tiny_space(tmp_path, **sections)
    run = run_command(
        search_command(
            "--space", str(path), "--storage", str(tmp_path / "runs"), "--name", "c", "--address", "auto", *args
        ),
        env=env,
        timeout=420,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    experiment = tmp_path / "runs" / "c"
    return [
        [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        for d in sorted(experiment.glob("train_balm_*"))
    ]


def _refused(env: dict, folder: Path, *args: str) -> tuple[str, str]:
    """Run a search expected to stop before anything starts; returns (its one error line, stdout)."""
    space = write_tiny_space(folder)
    run = run_command(
        search_command("--space", str(space), "--name", "refused", *args), env=env, timeout=300
    )  # today's hang (7+ minutes of GCS retries) fails here
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "loading the backbone" not in run.stdout  # nothing expensive
    return errors[0], run.stdout


def _s3_results(experiment) -> dict[str, list[dict]]:
    """Every trial's result.json lines, read from the experiment's storage location."""
    return {
        name.split("/")[0]: [json.loads(line) for line in experiment.child(name).read_bytes().decode().splitlines()]
        for name in experiment.files("result.json")
        if name.startswith("train_balm_")
    }


def test_a_search_on_a_two_node_cluster_places_trials_on_both_nodes(ray_nodes, tmp_path):
    start, env = ray_nodes
    start("--num-cpus=1", '--resources={"head_node": 1}')
    start("--num-cpus=1", '--resources={"worker_node": 1}')
    # trials long enough that the second node starts one before the first node has run them all;
    # the storage is a local path both nodes share (one disk): proven by a marker each node reads back
    space = {"budget": {"num_samples": 4, "max_epochs": 2}, "base": {"max_train_batches": 100, "percent": 100}}
    trials = _search(tmp_path, env, **space)
    assert len(trials) == 4
    assert len({results[0]["node_id"] for results in trials}) == 2


def test_half_a_gpu_per_trial_packs_two_trials_on_each_of_four_gpus(ray_nodes, tmp_path):
    start, env = ray_nodes
    start("--num-cpus=8", "--num-gpus=4")  # logical GPUs: Ray schedules and sets CUDA_VISIBLE_DEVICES
    trials = _search(
        tmp_path,
        env,
        "--gpus-per-trial",
        "0.5",
        budget={"num_samples": 8, "max_epochs": 2},
        base={"max_train_batches": 70, "percent": 100},
    )
    assert len(trials) == 8
    # each trial's span, from its first epoch's start to its last report; Ray's timestamps are whole seconds,
    # rounded down, so the span starts a second late: it lies inside the trial's real time and overlaps no more
    spans = [(r[0]["timestamp"] + 1 - r[0]["time_this_iter_s"], r[-1]["timestamp"]) for r in trials]
    most_at_once = max(sum(begin <= t < end for begin, end in spans) for t, _ in spans)
    assert most_at_once > 4  # more trials at once than GPUs: fractions packed (8 on an idle machine)
    on_gpu = {}  # each GPU's trials' spans: Ray gives a freed half to the next trial, so count overlaps
    for (begin, end), results in zip(spans, trials):
        on_gpu.setdefault(results[0]["cuda_visible_devices"], []).append((begin, end))
    assert set(on_gpu) <= {"0", "1", "2", "3"} and len(on_gpu) >= 3
    sharing = [max(sum(b <= t < e for b, e in gpu) for t, _ in gpu) for gpu in on_gpu.values()]
    assert max(sharing) == 2  # two trials at once on a GPU, never more
    assert {r[0]["device"] for r in trials} == {"cpu"}  # no CUDA here: the trials fall back to the CPU


def test_a_search_on_nodes_sharing_no_disk_keeps_its_experiment_in_s3_and_resumes_after_a_killed_driver(
    no_shared_disk, tmp_path
):
    nodes, folder = no_shared_disk
    space = write_tiny_space(
        folder, base={"max_train_batches": 30, "percent": 100}, budget={"num_samples": 4, "max_epochs": 2}
    )
    where = ("--storage", "s3://balm/cluster", "--out", str(folder / "out"), "--name", "s3", "--address", "auto")
    driver = subprocess.Popen(
        search_command("--space", str(space), *where),
        env=nodes.driver_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    experiment = open_location("s3://balm/cluster/s3")
    try:
        lines = read_lines(driver)
        wait_for(lambda: any("[trial " in x for x in lines), 300, "a first trial to end")
        finished = {line.split("]")[0].split()[-1] for line in list(lines) if "[trial " in line}
        assert finished, "".join(lines[-50:])

        def state_knows_a_finished_trial() -> bool:  # Tune's experiment state, as synced to S3
            states = experiment.files("experiment_state-")
            return bool(states) and "TERMINATED" in experiment.child(states[-1]).read_bytes().decode()

        wait_for(state_knows_a_finished_trial, 120, "the experiment state in S3 to record a finished trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not experiment.child("leaderboard.csv").exists()
    before = {name: len(results) for name, results in _s3_results(experiment).items()}

    resumed = run_command(search_command("--resume", "--final-seeds", "2", *where), env=nodes.driver_env, timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = folder / "out" / "s3"  # the exported results, on the driver's machine and in S3
    for file in ("leaderboard.csv", "config.yaml", "checkpoint.pt", "summary.json"):
        assert (out / file).is_file() and experiment.child(file).read_bytes() == (out / file).read_bytes(), file
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert len(rows) == 4 and all(r["status"] != "failed" for r in rows)
    assert len({r["node_id"] for r in rows}) == 1  # the node that shares no disk (the head has no CPU)
    params = [tuple(r[k] for k in ("prompt_len", "contrastive_weight", "scale_factor", "learning_rate")) for r in rows]
    assert len(set(params)) == 4  # the resumed sampler does not propose the interrupted search's configs again
    results = _s3_results(experiment)
    for name in before:
        if name.split("_")[2] in finished:  # finished before the kill: not trained again
            assert len(results[name]) == before[name], name
    assert sum(len(r) for r in results.values()) > sum(before.values())  # the resumed search trained the rest
    events = {p.parent.name.split("_")[2] for p in out.glob("train_balm_*/events.out.tfevents.*")}
    assert {r["trial_id"] for r in rows} <= events  # every trial's TensorBoard curves, copied down
    page = (out / "report" / "index.html").read_text()  # the report, built from S3's trial results, uploaded
    assert experiment.child("report", "index.html").read_bytes().decode() == page and "curves.png" in page
    assert all(f"<td>{r['trial_id']}</td>" in page for r in rows)
    winner = json.loads((out / "summary.json").read_text())
    assert winner["experiment"] == "s3://balm/cluster/s3" and winner["test"]["test_mse"] > 0
    assert [r["test_mse"] > 0 for r in winner["final_seeds"]["runs"]] == [True, True]  # final-seed trials use S3 too
    assert train_main(["--config", str(out / "config.yaml"), "--out", str(tmp_path), "--name", "re", "--quiet"]) == 0
    retrained = json.loads((tmp_path / "re" / "summary.json").read_text())
    assert retrained["val_mse"] == pytest.approx(winner["winner"]["best_val_mse"], rel=1e-3)


def test_a_local_storage_path_on_nodes_sharing_no_disk_is_refused_before_anything_starts(no_shared_disk):
    nodes, folder = no_shared_disk
    storage = folder / "local-runs"
    error, _ = _refused(nodes.driver_env, folder, "--storage", str(storage), "--address", "auto")
    assert f"--storage {storage} is a local path that node(s)" in error and "s3://" in error
    assert not storage.exists()  # nothing created


def test_gpu_trials_on_an_autoscaling_cluster_start_gpu_workers_from_zero_and_finish(autoscaling_cluster):
    nodes, folder = autoscaling_cluster
    space = write_tiny_space(folder, budget={"num_samples": 2, "max_epochs": 1})
    command = search_command(
        "--space", str(space), "--storage", "s3://balm/autoscaled", "--out", str(folder / "out"),
        "--name", "auto", "--address", "auto", "--gpus-per-trial", "0.5",
    )  # fmt: skip
    run = run_command(command, env=nodes.driver_env, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = _s3_results(open_location("s3://balm/autoscaled/auto"))
    assert len(results) == 2
    nodes_used = {r[0]["node_id"] for r in results.values()}
    assert FAKE_HEAD_NODE_ID not in nodes_used  # the CPU head has no GPU: the trials ran on started GPU workers
    assert all(r[0]["cuda_visible_devices"] for r in results.values())
    assert (folder / "out" / "auto" / "config.yaml").is_file()


def test_a_demand_no_node_type_can_meet_is_refused_before_anything_starts(autoscaling_cluster):
    nodes, folder = autoscaling_cluster
    error, _ = _refused(
        nodes.driver_env, folder, "--storage", "s3://balm/never", "--address", "auto", "--gpus-per-trial", "2"
    )
    assert "one trial needs 1 CPU and 2 GPU on one node" in error and "gpu_worker: 1 CPU, 1 GPU" in error


def test_a_local_storage_path_on_an_autoscaling_cluster_is_refused(autoscaling_cluster):
    nodes, folder = autoscaling_cluster
    error, _ = _refused(
        nodes.driver_env, folder, "--storage", str(folder / "runs"), "--address", "auto", "--gpus-per-trial", "0.5"
    )
    assert "is a local path but this cluster autoscales (node types gpu_worker)" in error


def test_an_address_where_nothing_listens_fails_in_seconds_with_one_line(tmp_path):
    port = free_port()
    error, _ = _refused(os.environ, tmp_path, "--storage", str(tmp_path / "runs"), "--address", f"127.0.0.1:{port}")
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers" in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--cpus-per-trial", "4096"), "one trial needs 4096 CPU and 0 GPU on one node"),
        (("--gpus-per-trial", "1"), "one trial needs 1 CPU and 1 GPU on one node"),
    ],
)
def test_a_trial_the_local_ray_cannot_hold_is_refused_before_anything_starts(tmp_path, flags, expected):
    error, _ = _refused(os.environ, tmp_path, "--storage", str(tmp_path / "runs"), *flags)
    assert expected in error


def test_the_local_ray_of_a_search_listens_on_loopback_only(tmp_path):
    import ray

    from balm_tune.cluster import init_ray

    init_ray(None, open_location(tmp_path))
    try:
        ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
        ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        addresses = {
            line.split()[3].rsplit(":", 1)[0]
            for line in listening.splitlines()
            if any(f"pid={pid}," in line for pid in ours)
        }
    finally:
        ray.shutdown()
    assert addresses and addresses <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, addresses


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--cpus-per-trial", "4096"), "one trial needs 4096 CPU and 0 GPU on one node"),
        (("--address", "127.0.0.1:{port}"), "--address 127.0.0.1:{port}: no Ray cluster answers"),
    ],
)
def test_dry_run_runs_the_cluster_checks_too(tmp_path, capsys, flags, expected):
    from balm_tune.search import main as search_main

    port = free_port()
    flags = [f.format(port=port) for f in flags]
    space = write_tiny_space(tmp_path)
    assert search_main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--dry-run", *flags]) == 2
    assert expected.format(port=port) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_concurrency_follows_what_the_head_and_every_startable_worker_can_hold():
    from balm_tune.cluster import Cluster, NodeShape

    head = NodeShape("head", {"CPU": 8})
    workers = NodeShape("gpu_worker", {"CPU": 8, "GPU": 1}, count=4)  # cluster.yaml's shape, none started yet
    assert Cluster([head], [workers]).trials_at_once(1, 0.25) == 16  # 4 trials per GPU on 4 workers
    assert Cluster([head], [workers]).trials_at_once(1, 0) == 8 + 32  # CPU trials use the head too
    assert Cluster([head], []).trials_at_once(2, 0) == 4
    with pytest.raises(ClusterError, match="one trial needs 1 CPU and 2 GPU on one node"):
        Cluster([head], [workers]).trials_at_once(1, 2)  # 4 GPUs in all, but never 2 on one node


def test_gpus_per_trial_auto_means_one_trial_per_cpus_per_trial_without_gpus(tmp_path):
    from balm_tune.api import trials_at_once
    from balm_tune.cluster import Cluster, NodeShape, auto_gpus_per_trial

    plan = prepare_search(
        write_tiny_space(tmp_path), storage=tmp_path / "runs", cpus_per_trial=2, gpus_per_trial="auto"
    )
    assert plan.auto_gpus
    cpu_only = Cluster([NodeShape("head", {"CPU": 8})], [])
    assert auto_gpus_per_trial(cpu_only, shared=None) == 0.0 and trials_at_once(plan, cpu_only) == 4
    gpu_types = Cluster([NodeShape("head", {"CPU": 8})], [NodeShape("gpu_worker", {"CPU": 8, "GPU": 1}, count=2)])
    assert trials_at_once(plan, gpu_types) == 2  # a whole GPU per trial until the probe trial has measured one
