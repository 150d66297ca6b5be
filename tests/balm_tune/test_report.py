"""The report every search ends with: real tiny search, real pictures read back, the rebuild CLI."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.image import imread

from balm_tune.api import run_search
from balm_tune.forecasts import WINNER, rebuild_winner, winner_forecasts
from balm_tune.importance import MIN_COMPLETE, STUDY_FILE
from balm_tune.report import ReportError, _cell, trial_curves, write_report
from core.baselines import BASELINES
from core.config import ConfigError
from core.data import DataError
from tests.conftest import ETTH1, write_tiny_space

PICTURES = ("history.png", "curves.png", "forecasts.png")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 4-trial search (2 epochs x 2 batches, ASHA grace 1): some trials finish, some are stopped."""
    folder = tmp_path_factory.mktemp("report")
    space = write_tiny_space(folder, budget={"num_samples": 4, "max_epochs": 2})
    return run_search(space, name="rep", storage=folder / "runs", max_train_batches=2, sampler_seed=1)


def _pictures(report) -> list:
    return sorted(p.name for p in report.glob("*.png"))


def test_every_search_ends_with_a_report_of_valid_pictures(search):
    report = search.experiment / "report"
    assert search.paths["report"] == report / "index.html"
    assert set(PICTURES) <= set(_pictures(report))
    for name in _pictures(report):
        image = imread(report / name)
        height, width = image.shape[:2]
        assert 250 <= height <= 3000 and 400 <= width <= 3000, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} is blank"


def test_index_html_shows_every_picture_and_every_trial_offline(search):
    page = (search.experiment / "report" / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == _pictures(search.experiment / "report")
    for trial_id in search.leaderboard["trial_id"]:
        assert f"<td>{trial_id}</td>" in page
    assert "<script" not in page and "http" not in page  # readable offline: no scripts, no remote links
    assert "evenly spaced of" in page and "test windows" in page  # the windows behind every metric


def test_importances_are_in_the_summary_or_the_reason_they_are_not(search):
    summary = json.loads((search.experiment / "summary.json").read_text())
    importances = summary["importances"]
    # 4 trials: never enough COMPLETE trials (or no persisted study) -> a reason, no numbers
    assert importances["values"] == {} and importances["reason"]
    assert importances["reason"] in (search.experiment / "report" / "index.html").read_text()


def test_the_curves_hold_every_trial_with_its_epochs_and_outcome(search):
    curves = {c.trial_id: c for c in trial_curves(search.experiment, search.leaderboard.astype(str).to_dict("records"))}
    assert set(curves) == set(search.leaderboard["trial_id"])
    for row in search.leaderboard.itertuples():
        curve = curves[row.trial_id]
        assert curve.epochs == list(range(1, row.epochs_run + 1)) and curve.status == row.status
        assert min(curve.val_mse) == pytest.approx(row.best_val_mse)
    assert {c.ended for c in curves.values()} == {"finished", "stopped"}  # ASHA stopped some, drawn apart


def test_the_forecasts_are_the_exported_winners_in_the_datas_units(search):
    trainer = rebuild_winner(search.experiment)
    assert trainer.device.type == "cpu"
    windows = winner_forecasts(trainer, per_variable=2)
    csv = pd.read_csv(ETTH1)
    assert [w.variable for w in windows] == [v for v in csv.columns[1:] for _ in range(2)]
    for w in windows:
        row = int(np.flatnonzero(csv["date"] == w.first_date)[0])
        np.testing.assert_allclose(w.truth, csv[w.variable].to_numpy()[row : row + 24], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(w.forecasts[BASELINES["repeat_last"]], csv[w.variable].iloc[row - 1], rtol=1e-5)
        assert set(w.forecasts) == set(w.mse) == {WINNER, *BASELINES.values()} and w.mse[WINNER] > 0
    # the rebuilt model is the winner: its test MSE over every test window is the search's
    assert trainer.evaluate("test").mse == pytest.approx(search.test["test_mse"])


def test_the_cli_rebuilds_the_report(search, tmp_path):
    copy = tmp_path / "rep"
    shutil.copytree(search.experiment, copy)
    shutil.rmtree(copy / "report")
    run = subprocess.run([sys.executable, "-m", "balm_tune.report", str(copy)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"report: {copy / 'report' / 'index.html'}" in run.stdout
    assert _pictures(copy / "report") == _pictures(search.experiment / "report")


def test_the_cli_builds_the_report_of_an_experiment_in_s3_and_uploads_it_beside(search, s3_endpoint, tmp_path):
    from balm_tune.storage import open_location

    location = open_location("s3://balm/reports/rep")
    for path in search.experiment.rglob("*"):  # the experiment as a search with --storage s3://... leaves it
        parts = path.relative_to(search.experiment).parts
        if path.is_file() and parts[0] != "report":
            location.child(*parts).upload(path)
    command = [sys.executable, "-m", "balm_tune.report", "s3://balm/reports/rep", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **s3_endpoint})
    assert run.returncode == 0, run.stderr[-2000:]
    local = tmp_path / "rep" / "report"
    assert _pictures(local) == _pictures(search.experiment / "report")
    for name in [*_pictures(local), "index.html"]:
        assert location.child("report", name).read_bytes() == (local / name).read_bytes()
    missing = [sys.executable, "-m", "balm_tune.report", "s3://balm/reports/none", "--out", str(tmp_path)]
    run = subprocess.run(missing, capture_output=True, text=True, env={**os.environ, **s3_endpoint})
    assert (
        run.returncode == 2
        and run.stderr
        == "error: s3://balm/reports/none: not a finished balm_tune experiment (no leaderboard.csv there)\n"
    )


def test_a_persisted_study_with_enough_complete_trials_adds_the_importance_picture(search, tmp_path):
    copy = tmp_path / "studied"
    shutil.copytree(search.experiment, copy)
    backend = optuna.storages.journal.JournalFileBackend(str(copy / STUDY_FILE))
    study = optuna.create_study(
        storage=optuna.storages.JournalStorage(backend), study_name="studied", sampler=optuna.samplers.RandomSampler(0)
    )
    # the searched keys; the learning rate alone decides the value
    study.optimize(
        lambda t: (
            t.suggest_int("prompt_len", 2, 12),
            t.suggest_float("contrastive_weight", 0.0, 2.0),
            t.suggest_float("scale_factor", 0.25, 4.0, log=True),
            abs(np.log(t.suggest_float("learning_rate", 3e-4, 1e-2, log=True) / 2e-3)),
        )[-1],
        n_trials=MIN_COMPLETE,
    )
    report = write_report(copy)
    assert next(iter(report.importances.values)) == "learning_rate"
    assert (
        report.folder / "importances.png" in report.figures and imread(report.folder / "importances.png").shape[0] > 100
    )
    page = report.index.read_text()
    assert '<img src="importances.png"' in page and f"over {MIN_COMPLETE} COMPLETE trials): learning_rate" in page
    (copy / STUDY_FILE).unlink()  # a rebuild without the study keeps no stale importance picture
    assert write_report(copy).importances.values == {} and not (report.folder / "importances.png").exists()


def test_a_changed_data_file_is_refused_before_the_model_is_built(search, tmp_path):
    copy = tmp_path / "changed"
    shutil.copytree(search.experiment, copy)
    config = yaml.safe_load((copy / "best_config.yaml").read_text())
    config["extras"]["data_sha256"] = "0" * 64
    (copy / "best_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(
        DataError, match=r"ETTh1.csv: sha256 f18de3ad269c\.\.\. differs from the searched file's 000000000000"
    ):
        rebuild_winner(copy)


def test_an_experiment_of_an_earlier_version_gives_one_line_not_a_traceback(search, tmp_path):
    copy = tmp_path / "older"
    shutil.copytree(search.experiment, copy)
    summary = json.loads((copy / "summary.json").read_text())
    del summary["windows"]  # summary.json before window counts were recorded
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match="summary.json: no window counts .* earlier balm_tune"):
        write_report(copy)
    checkpoint = torch.load(copy / "best_checkpoint.pt", weights_only=True)
    del checkpoint["scheduler"]["scheduler"]  # a checkpoint before schedules were saved
    torch.save(checkpoint, copy / "best_checkpoint.pt")
    with pytest.raises(ConfigError, match="no learning-rate schedule state"):
        rebuild_winner(copy)


def test_leaderboard_cells_keep_ids_as_written_and_shorten_floats():
    assert _cell("trial_id", "1203e807") == "1203e807"  # a Ray trial id that parses as a float
    assert _cell("learning_rate", "0.008236400756555733") == "0.008236" and _cell("prompt_len", "12") == "12"


def test_a_folder_that_is_not_an_experiment_gives_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not an experiment")
    run = subprocess.run([sys.executable, "-m", "balm_tune.report", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"error: {tmp_path}: not a finished balm_tune")
    assert list(tmp_path.iterdir()) == [tmp_path / "notes.txt"]  # nothing written
