"""An experiment's folder has one owner: where it is kept and its local mirror, its file names, the
copies between the two (a real S3 endpoint), and summary.json as typed data read back unchanged."""

import json
import os
import socket

import pytest

from balm_tune.experiment import (
    JOURNAL,
    LOCK,
    SUMMARY,
    Experiment,
    ExperimentError,
    LockError,
    Summary,
    Windows,
    Winner,
)
from balm_tune.importance import Importances


def _summary(**winner_fields) -> Summary:
    return Summary(
        experiment="s3://balm/exp/x",
        results="/runs/x",
        trials=4,
        outcomes={"finished": 1, "pruned by asha": 3},
        strategy={"searcher": {"type": "tpe"}, "scheduler": {"type": "asha"}},
        study={"journal": "/runs/x/optuna.journal", "name": "x"},
        warm_start=None,
        built_in_driver={"backbone_loads": 1, "prompt_builds": 1},
        built_in_trials={"backbone_loads": 0, "prompt_builds": 0},
        windows=Windows(val=512, val_total=2_857, test=2_857),
        baselines={
            name: {"val": {"mse": mse, "mae": 0.5, "windows": 512}, "test": {"mse": mse, "mae": 0.5, "windows": 2_857}}
            for name, mse in (("repeat_last", 0.9), ("linear", 0.6))
        },
        stalled=None,
        importances=Importances("fANOVA", 0, reason="4 trials with a validation score, at least 8 needed"),
        **winner_fields,
    )


def test_a_local_experiment_is_its_own_mirror_and_names_every_file(tmp_path):
    experiment = Experiment.open(tmp_path / "runs", "etth1")
    assert experiment.folder == tmp_path / "runs" / "etth1" and not experiment.mirrored
    assert experiment.journal == experiment.folder / JOURNAL and experiment.summary_file.name == SUMMARY
    assert experiment.taken() is None and not experiment.folder.exists()  # opening creates nothing
    experiment.folder.mkdir(parents=True)
    assert experiment.taken() == str(experiment.folder)
    assert experiment.fetch(JOURNAL) == 0  # nothing to copy: the location is the folder


def test_a_remote_experiment_publishes_its_files_and_fetches_the_trials(s3_endpoint, tmp_path):
    experiment = Experiment.open("s3://balm/experiments", "remote", out=tmp_path / "runs")
    assert experiment.mirrored and experiment.folder == tmp_path / "runs" / "remote"
    assert experiment.uri == "s3://balm/experiments/remote"
    experiment.report.mkdir(parents=True)
    (experiment.report / "index.html").write_text("<html></html>")
    experiment.leaderboard.write_text("trial_id\n")
    experiment.publish(experiment.leaderboard, experiment.report / "index.html")
    assert experiment.location.child("report", "index.html").read_bytes() == b"<html></html>"
    experiment.location.child("trial_1", "result.json").write_bytes(b"{}\n")
    experiment.location.child("trial_1", "events.out.tfevents.7").write_bytes(b"curves")
    again = Experiment.open("s3://balm/experiments", "remote", out=tmp_path / "elsewhere")
    assert again.fetch("leaderboard.csv") == 1 and again.leaderboard.read_text() == "trial_id\n"
    assert again.fetch("result.json") == 0 and again.fetch("result.json", trials=True) == 1
    assert again.fetch_tensorboard() == 1 and (again.folder / "trial_1" / "events.out.tfevents.7").is_file()


def test_a_summary_reads_back_as_written_and_a_winnerless_one_has_no_winner_keys(tmp_path):
    experiment = Experiment.local(tmp_path / "x")
    winnerless = _summary()
    experiment.write_summary(winnerless)
    data = json.loads(experiment.summary_file.read_text())
    assert "winner" not in data and "test" not in data and data["stalled"] is None
    assert experiment.read_summary() == winnerless and not winnerless.has_winner
    won = _summary(
        winner=Winner("a1", 0.55, 0.48, 4, 512),
        params={"prompt_len": 12},
        test={"test_mse": 0.4, "test_mae": 0.42, "test_windows": 2_857},
        wall_seconds=12.5,
    )
    experiment.write_summary(won)
    assert experiment.read_summary() == won and won.has_winner
    assert won.scores()["test"].describe() == "mse 0.4000 mae 0.4200 over 2,857 windows"
    assert list(won.baseline_scores()) == ["repeat_last", "linear"]


def test_a_summary_of_an_earlier_balm_tune_is_one_line(tmp_path):
    experiment = Experiment.local(tmp_path / "old")
    with pytest.raises(ExperimentError, match=r"summary.json: missing \(the search has not finished\)"):
        experiment.read_summary()
    data = _summary().to_dict()
    del data["windows"]
    experiment.summary_file.parent.mkdir(parents=True)
    experiment.summary_file.write_text(json.dumps(data))
    with pytest.raises(ExperimentError, match=r"summary.json: no window counts \(missing, or written by an earlier"):
        experiment.read_summary()


@pytest.mark.parametrize(
    ("damage", "message"),
    [(b'{"windows": {"val', "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "not a summary")],
    ids=["truncated", "binary", "a-list"],
)
def test_a_damaged_summary_is_one_line_naming_it(tmp_path, damage, message):
    experiment = Experiment.local(tmp_path / "damaged")
    experiment.summary_file.parent.mkdir(parents=True)
    experiment.summary_file.write_bytes(damage)
    with pytest.raises(ExperimentError, match=f"summary.json: {message}"):
        experiment.read_summary()


def _ended_process() -> tuple[int, float]:
    """The pid and start time of a process that has run and ended (a driver that died)."""
    import subprocess
    import sys

    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, started


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_one_driver_holds_an_experiment_and_a_dead_drivers_lock_is_taken_over(s3_endpoint, tmp_path, storage):
    where = tmp_path / "runs" if storage == "local" else "s3://balm/locks"
    experiment = Experiment.open(where, "locked", out=tmp_path / "out")
    lock = experiment.location.child(LOCK)
    with experiment.locked():
        held = json.loads(lock.read_bytes())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(LockError, match=rf"driver.lock: the experiment is being run by .*pid {os.getpid()} since"):
            Experiment.open(where, "locked", out=tmp_path / "other").check_unlocked()
        with pytest.raises(LockError, match="is being run by"), experiment.locked():
            pass  # a second driver in this very process is refused too
    assert not lock.exists()  # released on the way out
    pid, started = _ended_process()
    lock.write_bytes(json.dumps({"host": socket.gethostname(), "pid": pid, "started": started}).encode())
    with experiment.locked():  # its holder has ended: taken over, with a note
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    lock.write_bytes(json.dumps({"host": "another-node", "pid": 1, "started": 0.0}).encode())
    with pytest.raises(LockError, match=r"another-node pid 1 .*--break-lock if that driver is gone"):
        experiment.check_unlocked()  # another host's driver cannot be told dead from here
    with experiment.locked(break_lock=True):
        assert json.loads(lock.read_bytes())["host"] == socket.gethostname()
    assert not lock.exists()


def test_a_lock_released_before_anything_was_written_leaves_no_folder(tmp_path):
    experiment = Experiment.open(tmp_path / "new" / "runs", "x")
    with experiment.locked():
        assert (tmp_path / "new" / "runs" / "x" / LOCK).is_file()
    assert not (tmp_path / "new").exists()  # a search refused at once (a cluster check) created nothing
    with experiment.locked():
        (experiment.folder / "search_space.yaml").write_text("x\n")
    assert sorted(p.name for p in experiment.folder.iterdir()) == ["search_space.yaml"]
