"""Experiment trackers: every trial's params and metrics reach MLflow and W&B (Ray's logger callbacks)."""

import json
import re
import struct
import time
from pathlib import Path

import pytest

from balm_tune.api import prepare_search, run_search
from balm_tune.trackers import TrackerError
from tests.conftest import write_tiny_space

SEARCHED = {"prompt_len", "contrastive_weight", "scale_factor", "learning_rate"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny search logged to a local MLflow store (SQLite, MLflow 3's local default) and to W&B offline."""
    folder = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(folder))
        env.setenv("WANDB_SILENT", "true")
        result = run_search(
            write_tiny_space(folder, budget={"num_samples": 2, "max_epochs": 2}),
            name="tracked",
            storage=folder / "runs",
            mlflow=f"sqlite:///{folder / 'mlflow.db'}",
            wandb="balm-tests",
            max_train_batches=2,
        )
    return folder, result


def test_mlflow_has_one_run_per_trial_with_its_params_and_epoch_metrics(tracked):
    from mlflow.tracking import MlflowClient

    folder, result = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    trials = result.leaderboard
    assert len(runs) == len(trials) == 2
    by_prompt_len = {int(r.data.params["prompt_len"]): r for r in runs}
    for _, row in trials.iterrows():
        run = by_prompt_len[int(row["prompt_len"])]
        assert set(run.data.params) >= SEARCHED
        history = client.get_metric_history(run.info.run_id, "val_mse")
        assert len(history) == row["epochs_run"]
        assert min(m.value for m in history) == pytest.approx(row["best_val_mse"])


def _wandb_records(path):
    """The protobuf records of an offline W&B run file (a LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:
            break
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_offline_writes_one_run_per_trial_with_its_config_and_epoch_metrics(tracked):
    folder, result = tracked
    runs = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    trials = result.leaderboard
    assert len(runs) == len(trials)
    best = set()
    for run in runs:
        config, val_mse, kinds = {}, [], []
        for record in _wandb_records(run):
            kind = record.WhichOneof("record_type")
            kinds.append(kind)
            if kind in ("run", "config"):
                items = record.run.config.update if kind == "run" else record.config.update
                config.update({item.key: json.loads(item.value_json) for item in items})
            if kind == "history":
                row = {"/".join(item.nested_key) or item.key: item.value_json for item in record.history.item}
                val_mse.append(float(row["val_mse"]))
        # on a failure, what the file held (a run killed inside wandb.finish held its header only: wandb_logger.py)
        assert set(config) >= SEARCHED, (run, run.stat().st_size, kinds, [str(r) for r in runs])
        best.add(round(min(val_mse), 9))
    assert best == {round(v, 9) for v in trials["best_val_mse"]}


def test_wandb_without_credentials_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(TrackerError, match="--wandb: no W&B credentials"):
        prepare_search(write_tiny_space(tmp_path), storage=tmp_path / "runs", wandb="p")
    assert not (tmp_path / "runs").exists()


def test_an_mlflow_file_store_that_mlflow_refuses_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackerError, match=f"--mlflow file:{tmp_path}/mlruns: .*use sqlite"):
        prepare_search(write_tiny_space(tmp_path), storage=tmp_path / "runs", mlflow=f"file:{tmp_path}/mlruns")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("bogus://::nowhere", "unknown scheme 'bogus', expected one of sqlite"),
        ("http://127.0.0.1:9", "no MLflow server answers at 127.0.0.1:9 within 3 s"),  # nothing listens there
        ("http://[::1", "not a URL"),
    ],
)
def test_an_mlflow_uri_that_cannot_work_is_one_line_within_seconds(tmp_path, uri, message):
    started = time.perf_counter()
    with pytest.raises(TrackerError, match=re.escape(f"--mlflow {uri}: {message}")):
        prepare_search(write_tiny_space(tmp_path), storage=tmp_path / "runs", mlflow=uri)
    assert time.perf_counter() - started < 30 and not (tmp_path / "runs").exists()


def test_a_wandb_logging_actor_is_killed_only_after_its_run_has_finished(tmp_path):
    # Ray's W&B callback once killed a logging actor inside wandb.finish(): that run's file held its header only
    import ray

    from balm_tune.wandb_logger import FinishedWandbLoggerCallback

    @ray.remote(num_cpus=0)
    class SlowFinish:  # a logging actor whose run is still finishing when the kill comes
        def run(self, marker: str) -> None:
            time.sleep(2)
            Path(marker).write_text("finished")

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        callback, trial, marker = FinishedWandbLoggerCallback(project="p"), object(), tmp_path / "finished"
        actor = SlowFinish.remote()
        future = actor.run.remote(str(marker))
        callback._trial_queues[trial], callback._trial_logging_actors[trial] = None, actor
        callback._trial_logging_futures[trial], callback._logging_future_to_trial[future] = future, trial
        callback._cleanup_logging_actor(trial)
        assert marker.read_text() == "finished" and not callback._trial_logging_actors
    finally:
        if started_here:
            ray.shutdown()
