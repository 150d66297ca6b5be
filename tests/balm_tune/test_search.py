"""End-to-end searches through the real CLI, real Ray, real Optuna, on a tiny real backbone."""

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from balm_tune.search import main as search_main
from balm_tune.study import open_study
from balm_tune.train import main as train_main
from core.baselines import verdict as verdict_of
from core.config import BalmConfig
from core.data import load_data
from core.significance import DieboldMariano
from tests.conftest import ETTH1, finish, read_lines, run_command, search_command, wait_for, write_tiny_space


def _rows(experiment: Path, file: str = "leaderboard.csv") -> list[dict]:
    with open(experiment / file) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One 6-trial search (Optuna TPE + ASHA, 3 epochs max) shared by the tests of this module."""
    folder = tmp_path_factory.mktemp("search")
    args = ["--space", str(write_tiny_space(folder)), "--storage", str(folder / "runs"), "--name", "e2e"]
    run = run_command(search_command(*args, "--final-seeds", "2"), timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return folder / "runs" / "e2e", run.stdout, run.stderr


def test_search_exports_leaderboard_best_config_checkpoint_and_test_metrics(search):
    experiment, out, _ = search
    rows = _rows(experiment)
    assert len(rows) == 6
    assert {
        "prompt_len",
        "contrastive_weight",
        "scale_factor",
        "learning_rate",
        "best_val_mse",
        "best_val_mae",
        "epochs_run",
        "status",
    } <= set(rows[0])
    assert any(r["status"] == "pruned by asha" for r in rows), rows
    assert float(rows[0]["best_val_mse"]) == min(float(r["best_val_mse"]) for r in rows)
    best = BalmConfig.load(experiment / "config.yaml")
    assert best.epochs == 3 and best.prompt_len == int(rows[0]["prompt_len"])
    for key in ("torch", "transformers", "ray", "optuna", "device", "precision", "seed", "data_sha256"):
        assert key in best.extras, key
    assert best.extras["data_sha256"] == "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"
    assert (experiment / "checkpoint.pt").is_file()
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["test"]["test_mse"] > 0 and summary["winner"]["trial_id"] == rows[0]["trial_id"]
    # built once in the driver; trials load no backbone and tokenise no prompt
    assert summary["built_in_driver"]["backbone_loads"] == 1
    assert summary["built_in_trials"] == {"backbone_loads": 0, "prompt_builds": 0}
    assert f"python -m balm_tune.train --config {experiment / 'config.yaml'}" in out
    assert f"tensorboard --logdir {experiment}" in out
    assert "To visualize your results with TensorBoard" not in out  # Ray's hint names a folder under /tmp/ray
    assert out.count("[trial ") >= 6  # one line per finished trial
    assert "importances: " in out and f"report:        {experiment / 'report' / 'index.html'}" in out
    seeds = summary["final_seeds"]  # --final-seeds 2: the winner retrained on seeds 2022 and 2023
    assert sorted(r["seed"] for r in seeds["runs"]) == [best.seed + 1, best.seed + 2]
    assert seeds["test_mse_mean"] == pytest.approx(sum(r["test_mse"] for r in seeds["runs"]) / 2)
    assert seeds["test_mse_std"] > 0 and "winner on 2 further seeds: test mse" in out


def test_the_console_is_one_table_a_line_per_trial_and_a_phase_line_before_each_long_step(search):
    _, out, err = search
    lines = out.splitlines()
    ray_log = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING) \S+\.py:\d+ --", re.M)
    assert not ray_log.search(out + err), err  # Ray's INFO lines and its token-authentication notice: --verbose
    assert len(lines) <= 70, out  # 6 trials, 2 final seeds (the default search of 16 trials: about 100)
    assert not any(box in out for box in "╭╰│") and "process_trial_result" not in out  # no Ray boxes, no idle warnings
    assert sum(line.startswith("[trial ") for line in lines) == 6  # one line per ended trial
    (header,) = [line for line in lines if line.split()[:5] == ["trial", "status", "epoch", "val", "mse"]]
    assert header.split()[5:] == ["best", "val", "contrastive_weight", "learning_rate", "prompt_len", "scale_factor"]
    assert any(" pruned by asha " in line for line in lines)  # the scheduler's word, not Tune's TERMINATED
    for phase in ("starting a local Ray on this machine", "loading the backbone",
                  "scoring the repeat-last and linear baselines", "scoring the winner",
                  "retraining the winner on 2 further seeds", "writing the report"):  # fmt: skip
        assert any(line.startswith(phase) and line.endswith("...") for line in lines), phase
    assert lines[-1].startswith("retrain:       python -m balm_tune.train --config")


def test_the_winner_is_tested_on_every_test_window_beside_baselines_scored_on_the_same_windows(search):
    experiment, out, _ = search
    summary = json.loads((experiment / "summary.json").read_text())
    data = load_data(BalmConfig(data_path=str(ETTH1), seq_len=96, pred_len=24, percent=10))
    test_windows = len(data.test)  # 7 variables x 2,857 starts
    assert summary["test"]["test_windows"] == summary["windows"]["test"] == test_windows == 19_999
    assert summary["windows"]["val"] == summary["winner"]["val_windows"] == 64  # max_eval_batches 2 x batch 32
    assert all(run["test_windows"] == test_windows for run in summary["final_seeds"]["runs"])
    assert f"winner's test mse {summary['test']['test_mse']:.4f}" in out and f"over {test_windows:,} windows" in out
    winner = summary["winner"]["best_val_mse"]
    baselines = {row["baseline"]: row for row in _rows(experiment, "baselines.csv")}
    assert set(baselines) == set(summary["baselines"]) == {"repeat_last", "linear"}
    for name, scores in summary["baselines"].items():
        assert scores["val"]["windows"] == 64 and scores["test"]["windows"] == test_windows
        assert float(baselines[name]["val_mse"]) == pytest.approx(scores["val"]["mse"])
        assert int(baselines[name]["test_windows"]) == test_windows
        assert scores["beats_on_val"] == (winner < scores["val"]["mse"])
        assert scores["beats_on_test"] == (summary["test"]["test_mse"] < scores["test"]["mse"])
        verdict = "beats" if scores["beats_on_val"] else "does NOT beat"
        assert f"the winner {verdict} it on val ({winner:.4f} vs {scores['val']['mse']:.4f})" in out
        # the Diebold-Mariano test pairs the 2,857 test windows (each the mean over its 7 variables), so
        # the mean loss difference is the difference of the two test MSEs
        test = DieboldMariano(**scores["significance_on_test"])
        assert test.windows == test_windows // 7 and test.p_value is not None
        assert test.mean_difference == pytest.approx(summary["test"]["test_mse"] - scores["test"]["mse"], abs=1e-9)
        expected = verdict_of(summary["test"]["test_mse"], scores["test"]["mse"], test)
        assert f"{expected} it on test ({summary['test']['test_mse']:.4f} vs {scores['test']['mse']:.4f}, " in out
        assert f"{scores['test']['mse']:.4f}, {test.p_text()}; 3 seeds " in out  # the winner's and --final-seeds 2
    # the linear baseline, refitted here by hand on every training window, scores the same on test
    x = data.train.inputs(torch.arange(len(data.train))).double()
    y = data.train.targets(torch.arange(len(data.train))).double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, y).solution
    test_x = data.test.inputs(torch.arange(test_windows)).double()
    forecast = test_x @ solution[:-1] + solution[-1]
    mse = (forecast - data.test.targets(torch.arange(test_windows)).double()).square().mean().item()
    assert summary["baselines"]["linear"]["test"]["mse"] == pytest.approx(mse, rel=1e-6)


def test_retraining_the_best_config_reproduces_the_winners_validation_mse(search, tmp_path):
    experiment, _, _ = search
    winner = json.loads((experiment / "summary.json").read_text())["winner"]
    assert (
        train_main(["--config", str(experiment / "config.yaml"), "--out", str(tmp_path), "--name", "re", "--quiet"])
        == 0
    )
    retrained = json.loads((tmp_path / "re" / "summary.json").read_text())
    assert retrained["val_mse"] == pytest.approx(winner["best_val_mse"], abs=1e-6)


def test_tensorboard_shows_every_trials_curves_and_hparams(search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    experiment, _, _ = search
    trial_dirs = [d for d in experiment.iterdir() if d.name.startswith("train_balm_")]
    assert len(trial_dirs) == 6
    for trial_dir in trial_dirs:
        events = EventAccumulator(str(trial_dir)).Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"ray/tune/val_mse", "ray/tune/train_loss", "ray/tune/lr"} <= scalars  # lr: the scheduled rate
        assert "ray/tune/learning_rate" not in scalars  # the searched key's name is the hparam's alone
        assert len(events.Scalars("ray/tune/val_mse")) >= 1
        content = events.PluginTagToContent("hparams")
        session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert set(session.session_start_info.hparams) == {
            "prompt_len",
            "contrastive_weight",
            "scale_factor",
            "learning_rate",
        }
        experiment_info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        metrics = {m.name.tag for m in experiment_info.experiment.metric_infos}
        assert {"ray/tune/best_val_mse", "ray/tune/best_val_mae"} <= metrics


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_refuses_budget_or_space_changes_and_keeps_the_results(search, capsys, write_space):
    experiment, _, _ = search
    before = _files(experiment)
    resume = ["--storage", str(experiment.parent), "--name", experiment.name, "--resume"]
    for flags, change in [
        (["--num-samples", "6", "--max-epochs", "6"], "budget.max_epochs: 3 vs 6"),
        (["--set", "dropout=2e-1"], "base.dropout: 0.1 vs 0.2"),
        (["--space", str(write_space(seed=5))], "seed: 0 vs 5"),
    ]:
        assert search_main([*resume, *flags]) == 2
        err = capsys.readouterr().err
        assert f"--resume continues {experiment}" in err and change in err and err.count("\n") == 1, err
    assert _files(experiment) == before


@pytest.mark.parametrize(
    "damage", [b"", b'{"trial_data": [["{', b'{"runner_data": {}}'], ids=["empty", "truncated", "no-trial-list"]
)
def test_a_damaged_tune_state_is_named_in_one_line_before_anything_starts(search, tmp_path, capsys, damage):
    import shutil

    experiment = Path(shutil.copytree(search[0], tmp_path / "runs" / "e2e"))
    state = sorted(experiment.glob("experiment_state-*.json"))[-1]  # the one Tune would restore from
    state.write_bytes(damage)
    before = _files(experiment)
    assert search_main(["--storage", str(experiment.parent), "--name", "e2e", "--resume"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and f"--resume: {state} is not a Tune experiment state" in err, err
    assert "Ray" not in out and "loading the backbone" not in out  # refused before anything started
    assert _files(experiment) == before


def test_a_truncated_winner_checkpoint_is_not_exported_and_earlier_results_are_kept(search, tmp_path):
    import shutil

    experiment = Path(shutil.copytree(search[0], tmp_path / "runs" / "copy"))
    winner = json.loads((experiment / "summary.json").read_text())["winner"]["trial_id"]
    (trial,) = experiment.glob(f"train_balm_{winner}_*")
    for checkpoint in trial.glob("checkpoint_*/trainer.pt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    before = _files(experiment)
    run = run_command(search_command("--storage", str(experiment.parent), "--name", "copy", "--resume"), timeout=420)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"of the winning trial {winner} cannot be loaded" in run.stderr and "nothing exported" in run.stderr
    after = _files(experiment)
    for name in ("leaderboard.csv", "config.yaml", "checkpoint.pt", "summary.json"):
        assert after[name] == before[name], name


def test_a_diverging_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path):
    path = write_tiny_space(
        tmp_path,
        search={
            "learning_rate": {"type": "choice", "values": [1.0e30, 0.001]},
            "prompt_len": {"type": "int", "low": 2, "high": 4},
        },
        budget={"num_samples": 3, "max_epochs": 1},
    )
    run = run_command(
        search_command("--space", str(path), "--storage", str(tmp_path / "runs"), "--name", "nan"), timeout=420
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _rows(tmp_path / "runs" / "nan")
    failed = [r for r in rows if r["outcome"] == "failed"]
    assert failed and all("training loss became" in r["reason"] for r in failed)
    assert {r["status"] for r in failed} == {"diverged"}  # a non-finite loss is labelled diverged
    assert all(float(r["learning_rate"]) == 1e30 for r in failed)
    assert BalmConfig.load(tmp_path / "runs" / "nan" / "config.yaml").learning_rate == 0.001


def _result_lines(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _snapshot(experiment: Path) -> dict[str, str]:
    """Tune trial id -> status in the newest experiment state Tune saved ({} before its first, or while
    Tune is still copying it in)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    try:
        trials = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
    except (IndexError, json.JSONDecodeError):
        return {}
    return {t["trial_id"]: t["status"] for t in trials}


def test_resume_after_the_driver_is_killed_keeps_finished_trials(tmp_path):
    path = write_tiny_space(
        tmp_path, base={"max_train_batches": 70, "percent": 100}, budget={"num_samples": 8, "max_epochs": 3}
    )
    storage = tmp_path / "runs"
    experiment = storage / "killed"
    args = ("--space", str(path), "--storage", str(storage), "--name", "killed")
    driver = subprocess.Popen(
        search_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # its own process group: the local Ray dies with it
    lines = read_lines(driver)
    wait_for(lambda: sum("[trial " in x for x in lines) >= 2, 300, "two trials to end")
    printed = list(lines)  # trials that had ended when the kill was decided
    deadline = time.monotonic() + 60  # kill once Tune's saved state holds a trial as running
    while "RUNNING" not in _snapshot(experiment).values() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not (experiment / "leaderboard.csv").exists()
    finished = {line.split("]")[0].split()[-1] for line in printed if "[trial " in line}
    before = {d.name: len(_result_lines(d)) for d in experiment.iterdir() if d.name.startswith("train_balm_")}
    # the race a kill can land in: the searcher closed a trial that Tune's last snapshot still holds as running
    # (ASHA stopped it in the seconds between); made certain here by closing the one with the most epochs left
    epochs_done = {name.split("_")[2]: count for name, count in before.items()}
    live = [t for t, status in _snapshot(experiment).items() if status in ("RUNNING", "PENDING", "PAUSED")]
    assert live, _snapshot(experiment)
    study = open_study(experiment / "optuna.journal", "killed")
    by_tune_id = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    least = min(live, key=lambda t: epochs_done.get(t, 0))
    if by_tune_id[least].state == TrialState.RUNNING:
        study.tell(by_tune_id[least].number, state=TrialState.PRUNED)
    closed = {
        t: study.trials[by_tune_id[t].number] for t in live if study.trials[by_tune_id[t].number].state.is_finished()
    }

    resumed = run_command(search_command("--storage", str(storage), "--name", "killed", "--resume"), timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # a resumed search prints what a new one does: the search's table (restored from tuner.pkl), no Ray boxes
    assert re.search(r"^\d\d:\d\d:\d\d 8 trials: ", resumed.stdout, re.M), resumed.stdout[-3000:]
    assert "╭" not in resumed.stdout + resumed.stderr and "Trial status" not in resumed.stdout
    rows = _rows(experiment)
    assert len(rows) == 8 and all(r["status"] != "failed" for r in rows)
    for name, count in before.items():
        trial_id, after = name.split("_")[2], len(_result_lines(experiment / name))
        if trial_id in closed:  # stopped at its first result after the resume (none if it had no epoch left)
            assert after - count <= 1, name
        elif trial_id in finished:  # finished before the kill and saved so by Tune: not trained again
            assert after == count, name
    # the same Optuna study went on: one Optuna trial per Tune trial, every epoch reported once, none left open
    study = open_study(experiment / "optuna.journal", "killed")
    recorded = {t.user_attrs["ray_trial_id"]: t for t in study.trials if t.state != TrialState.FAIL}
    assert set(recorded) == {r["trial_id"] for r in rows}
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    for row in rows:
        trial = recorded[row["trial_id"]]
        if row["trial_id"] in closed:  # the study keeps what it recorded before the kill
            old = closed[row["trial_id"]]
            assert (trial.state, trial.intermediate_values) == (old.state, old.intermediate_values)
        else:
            assert len(trial.intermediate_values) == int(row["epochs_run"])


def test_a_full_disk_stops_the_search_in_one_line_and_resume_finishes_it_once_space_is_freed(small_disk, tmp_path):
    mount, grow = small_disk
    disk = mount("1500k")  # fills up a few trials in: their checkpoints and Tune's state files need more
    path = write_tiny_space(tmp_path)
    run = run_command(search_command("--space", str(path), "--storage", str(disk), "--name", "full"), timeout=300)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"error: {disk / 'full'}"), run.stderr[-3000:]
    assert "No space left on device (errno 28)" in run.stderr and "then continue with --resume" in run.stderr
    assert "Traceback" not in run.stdout  # the trials' table (and lines of those that ended), then the one error
    experiment = disk / "full"
    assert not list(experiment.rglob(".*.tmp")) and not (experiment / "driver.lock").exists()  # nothing stray
    assert not (experiment / "leaderboard.csv").exists()

    grow(experiment.parent)  # space freed: the same search goes on from what it had written
    resumed = run_command(search_command("--storage", str(disk), "--name", "full", "--resume"), timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    rows = _rows(experiment)
    assert len(rows) == 6 and all(r["status"] != "failed" for r in rows), rows  # the budget, all trained


@pytest.mark.parametrize("counted", [0, 1], ids=["counter-as-saved", "counter-one-ahead"])
def test_a_resume_whose_tune_state_is_a_step_ahead_of_its_trials_trains_exactly_the_missing_trials(tmp_path, counted):
    """Issue 18: Ray uploads its state files one at a time, so a driver killed during an upload can leave
    a searcher state (`search_gen_state-*`: Tune's trial counter and its list of live trials) a step newer
    than the experiment state that Tune restores its trials from: the newer one holds a trial that the
    study then marks lost. Made certain here: the driver is killed once a trial has finished, and the
    state it left is advanced by that asked trial, with Tune's counter as saved or counting it too. The
    search used to wait for the trial forever (counter as saved) or end a trial short (counter ahead)."""
    import ray.cloudpickle as cloudpickle

    from balm_tune.integrity import seal
    from balm_tune.storage import open_location

    path = write_tiny_space(
        tmp_path, base={"max_train_batches": 24}, budget={"num_samples": 4, "max_epochs": 2},
        resources={"cpus_per_trial": 2},  # one trial at a time on this 2-CPU Ray
    )  # fmt: skip
    storage, experiment = tmp_path / "runs", tmp_path / "runs" / "ahead"
    args = ("--space", str(path), "--storage", str(storage), "--name", "ahead")
    # Tune's state saved every second (the search's 5 s would let a fast machine end all 4 trials unseen)
    snapshots = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(
        search_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=snapshots,
    )  # fmt: skip
    try:
        wait_for(lambda: "TERMINATED" in _snapshot(experiment).values(), 300, "Tune to save a finished trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    known = _snapshot(experiment)
    assert len(known) < 4, known
    # the trial the searcher asked for next: in the study (the journal is written at once) and in the newer
    # searcher state (Tune's counter and its concurrency limiter's live trials), not in the experiment state
    study = open_study(experiment / "optuna.journal", "ahead")
    asked = study.ask()
    asked.set_user_attr("ray_trial_id", "a5c4e000")
    (state_file,) = experiment.glob("search_gen_state-*.json")
    state = cloudpickle.loads(state_file.read_bytes())
    state["counter"] += counted
    limiter = state.get("name:ConcurrencyLimiter")
    if limiter is not None:  # the old layout; the searcher now counts its own running trials
        limiter["live_trials"] = {"a5c4e000"}
        limiter["num_unfinished_live_trials"] = 1
    state_file.write_bytes(cloudpickle.dumps(state))
    seal(open_location(experiment))  # as the killed driver's Sealer would have signed them

    resumed = run_command(search_command("--storage", str(storage), "--name", "ahead", "--resume"), timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = _rows(experiment)
    assert len(rows) == 4 and "a5c4e000" not in {r["trial_id"] for r in rows}  # exactly the budget, all trained
    study = open_study(experiment / "optuna.journal", "ahead")
    counted = [t for t in study.trials if not t.user_attrs.get("lost")]
    assert {t.user_attrs["ray_trial_id"] for t in counted} == {r["trial_id"] for r in rows}
    lost = {t.user_attrs["ray_trial_id"]: t.state for t in study.trials if t.user_attrs.get("lost")}
    assert "a5c4e000" in lost and set(lost.values()) == {TrialState.FAIL}  # (the kill may have lost one too)
    assert "stalled" not in resumed.stdout + resumed.stderr


def test_a_trial_whose_worker_is_killed_resumes_from_its_checkpoint_and_a_second_driver_is_refused(tmp_path):
    path = write_tiny_space(tmp_path, base={"max_train_batches": 60}, budget={"num_samples": 1, "max_epochs": 4})
    storage = tmp_path / "runs"
    driver = subprocess.Popen(
        search_command("--space", str(path), "--storage", str(storage), "--name", "crash"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        experiment = storage / "crash"
        trial_dir = wait_for(
            lambda: next((d for d in experiment.glob("train_balm_*") if _result_lines(d)), None),
            240,
            "the trial's first epoch",
        )
        first = _result_lines(trial_dir)[0]
        os.kill(first["pid"], signal.SIGKILL)  # the Ray worker running the trial
        # one driver per experiment: a second one on the same --name is one line naming the first, rc 2
        second = run_command(search_command("--space", str(path), "--storage", str(storage), "--name", "crash"), 120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr[-2000:]
        assert "driver.lock: the experiment is being run by " in second.stderr and f"pid {driver.pid} " in second.stderr
        out, _ = finish(driver, timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, out[-3000:]
    results = _result_lines(trial_dir)
    assert results[-1]["epoch"] == 4 and results[-1]["pid"] != first["pid"]  # finished in a new worker
    assert [r["epoch"] for r in results] == sorted({r["epoch"] for r in results})  # no epoch trained twice
    assert "Failure # 1" in (trial_dir / "error.txt").read_text()
    assert _rows(experiment)[0]["status"] == "finished" and not (experiment / "driver.lock").exists()


@pytest.mark.parametrize(
    ("stop", "resume"),
    [
        (lambda driver: os.killpg(driver.pid, signal.SIGINT), True),  # Ctrl-C in a terminal: the foreground group
        # Slurm, Kubernetes, docker stop: the driver alone; it becomes the same SIGINT (api.stop_on_termination),
        # so the state it leaves is resumed as the Ctrl-C case shows
        (lambda driver: os.kill(driver.pid, signal.SIGTERM), False),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_stops_the_trials_exports_nothing_exits_130_and_resume_continues(
    tmp_path, capsys, stop, resume
):
    # epochs long enough (about 2 s) that the stop rarely lands while Tune handles a trial's last report: then
    # the resumed trial may train that epoch again from the checkpoint before it (seen at 25 batches)
    path = write_tiny_space(tmp_path, base={"max_train_batches": 60}, budget={"num_samples": 3, "max_epochs": 2})
    storage = tmp_path / "runs"
    experiment = storage / "ctrlc"
    driver = subprocess.Popen(
        search_command("--space", str(path), "--storage", str(storage), "--name", "ctrlc"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(_result_lines(d) for d in experiment.glob("train_balm_*")), 240, "a first epoch")
        stop(driver)
        out, _ = finish(driver, timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out[-3000:]
    assert "interrupted (after " in out and "nothing exported" in out, out[-3000:]
    exported = ("leaderboard.csv", "config.yaml", "checkpoint.pt", "summary.json")
    assert not any((experiment / name).exists() for name in exported)
    epochs = {d.name: [r["epoch"] for r in _result_lines(d)] for d in experiment.glob("train_balm_*")}
    assert any(epochs.values())  # the epochs trained before the stop were kept
    if not resume:
        return

    assert search_main(["--storage", str(storage), "--name", "ctrlc", "--resume", "--max-epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues" in err and "budget.max_epochs: 2 vs 4" in err and err.count("\n") == 1

    resumed = run_command(search_command("--storage", str(storage), "--name", "ctrlc", "--resume"), timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = _rows(experiment)
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"finished", "pruned by asha"}, rows
    for name, before in epochs.items():  # every interrupted trial went on from its last epoch
        after = [r["epoch"] for r in _result_lines(experiment / name)]
        assert after[: len(before)] == before and after == sorted(set(after)), (name, before, after)
