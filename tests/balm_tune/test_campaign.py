"""A campaign: one real search per space and horizon (tiny backbone, real Ray and Optuna), its manifest,
its resume after a kill, its tables and report page, and the cells it refuses before anything starts."""

import csv
import json
import math
import os
import signal
import subprocess
import sys

import pytest

from balm_tune.campaign import main as campaign_main
from tests.conftest import finish, run_command, wait_for, write_tiny_space

OFFICIAL = {"prompt_len": 4, "contrastive_weight": 1.0, "scale_factor": 1.0, "learning_rate": 0.003}
TINY = {"budget": {"num_samples": 2, "max_epochs": 1}, "enqueue": [OFFICIAL]}


def campaign_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "balm_tune.campaign", *args]


def _manifest(folder) -> dict:
    path = folder / "campaign.json"
    return json.loads(path.read_text()) if path.is_file() else {"cells": []}


def _states(folder) -> list[str]:
    return [cell["state"] for cell in _manifest(folder)["cells"]]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A two-horizon campaign on ETTh1 stopped by SIGTERM while its second cell runs, then resumed, then
    resumed again: (folder, the three runs' outputs and exit codes)."""
    folder = tmp_path_factory.mktemp("campaign")
    space = write_tiny_space(folder, **TINY)
    storage = folder / "runs"
    args = ["--space", str(space), "--horizons", "24", "48", "--final-seeds", "1", "--storage", str(storage)]
    args += ["--name", "table"]
    first = subprocess.Popen(
        campaign_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    experiment = storage / "table"
    try:
        wait_for(lambda: _states(experiment) == ["done", "running"], 420, "the first cell done, the second running")
        wait_for(lambda: list((experiment / "space-48").glob("train_balm_*")), 120, "the second cell's trials")
        os.kill(first.pid, signal.SIGTERM)  # the campaign alone, as Slurm or Kubernetes stop it
        stopped, _ = finish(first, timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    states = _states(experiment)
    resumed = run_command(campaign_command("--storage", str(storage), "--name", "table", "--resume"), timeout=420)
    again = run_command(campaign_command("--storage", str(storage), "--name", "table", "--resume"), timeout=120)
    return experiment, (first.returncode, stopped, states), resumed, again


def test_a_campaign_stopped_during_its_second_cell_exits_130_and_resume_continues_only_that_cell(campaign):
    experiment, (code, out, states), resumed, _ = campaign
    assert code == 130, out[-3000:]
    assert states == ["done", "interrupted"], out[-3000:]
    assert "continue with --name table --resume" in out
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "space-24: done, skipped" in resumed.stdout
    assert "continued (--resume)" in resumed.stdout and "space-48: searching" in resumed.stdout
    assert "space-24: searching" not in resumed.stdout
    log = (experiment / "logs" / "space-48.log").read_text()
    assert "interrupted:" in log and log.count("starting a local Ray") == 2  # stopped once, continued once
    assert _states(experiment) == ["done", "done"]


def test_a_rerun_with_resume_skips_every_finished_cell(campaign):
    _, _, _, again = campaign
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 cells (2 done)" in again.stdout and "searching" not in again.stdout
    assert "| ETTh1 | 24 |" in again.stdout  # the table, printed at the end


def test_the_table_holds_a_row_per_horizon_and_an_average_with_finite_figures_and_window_counts(campaign):
    experiment = campaign[0]
    with open(experiment / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["horizon"]) for r in rows] == [("ETTh1", "24"), ("ETTh1", "48"), ("ETTh1", "avg")]
    for row in rows:
        for column in ("tuned_mse", "tuned_mae", "official_mse", "linear_mse", "repeat_last_mae"):
            assert math.isfinite(float(row[column])), (column, row)
        assert int(row["tuned_windows"]) > 0 and int(row["linear_windows"]) == int(row["tuned_windows"])
    for row in rows[:2]:  # the winner and the official config, each on its own seed and the one final seed
        assert row["tuned_seeds"] == row["official_seeds"] == "2"
        assert float(row["tuned_mse_std"]) >= 0 and row["tuned_vs_linear_p"] != ""
        summary = json.loads((experiment / f"space-{row['horizon']}" / "summary.json").read_text())
        assert float(row["tuned_mse"]) == pytest.approx(
            (summary["test"]["test_mse"] + summary["final_seeds"]["runs"][0]["test_mse"]) / 2
        )
        assert summary["official"]["params"] == OFFICIAL
    average = rows[2]
    assert float(average["linear_mse"]) == pytest.approx(
        (float(rows[0]["linear_mse"]) + float(rows[1]["linear_mse"])) / 2
    )
    markdown = (experiment / "table.md").read_text()
    assert markdown.count("**") >= 4  # the lowest MSE and MAE of each row in bold
    latex = (experiment / "table.tex").read_text()
    assert "\\toprule" in latex and "\\bottomrule" in latex and "\\textbf{" in latex
    manifest = _manifest(experiment)
    assert [c["figures"]["tuned"]["seeds"] for c in manifest["cells"]] == [2, 2]


def test_the_campaign_page_links_every_searchs_own_report(campaign):
    experiment = campaign[0]
    page = (experiment / "report" / "index.html").read_text()
    for cell in ("space-24", "space-48"):
        assert f"href='../{cell}/report/index.html'" in page
        assert (experiment / cell / "report" / "index.html").is_file()
    assert "<table>" in page and "<b>" in page


def test_dry_run_refuses_a_cell_whose_data_file_is_missing_before_anything_starts(tmp_path, capsys):
    good = write_tiny_space(tmp_path, **TINY)
    bad = tmp_path / "other.yaml"
    bad.write_text(good.read_text().replace("ETTh1.csv", "missing.csv"))
    args = ["--space", str(good), "--space", str(bad), "--horizons", "24", "--storage", str(tmp_path / "runs")]
    assert campaign_main([*args, "--name", "bad", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cell other-24 (") and "missing.csv" in err and err.count("\n") == 1
    assert campaign_main([*args, "--name", "bad"]) == 2  # a real start refuses it the same way, first
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--official"], "--official: the campaign sets it for every cell itself"),
        (["--set", "pred_len=48"], "--set pred_len: each cell's horizon comes from --horizons"),
        (["--num-samples", "many"], "(a search flag): argument --num-samples: invalid int value"),
        (["--concurrent", "0"], "--concurrent: got 0, expected an integer >= 1"),
    ],
)
def test_a_flag_the_campaign_sets_or_the_search_refuses_is_one_line(tmp_path, capsys, flags, said):
    with pytest.raises(SystemExit) as stopped:
        campaign_main(["--space", str(write_tiny_space(tmp_path)), *flags])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err


def test_resume_refuses_a_flag_that_would_change_the_saved_campaign(campaign, capsys):
    experiment = campaign[0]
    args = ["--storage", str(experiment.parent), "--name", "table", "--resume", "--horizons", "96"]
    assert campaign_main(args) == 2
    err = capsys.readouterr().err
    assert "cannot change --horizons" in err and err.count("\n") == 1


def test_concurrent_cells_share_one_ray_cluster_each_search_taking_an_even_share(tmp_path):
    space = write_tiny_space(tmp_path, **TINY)
    storage = tmp_path / "runs"
    args = ["--space", str(space), "--horizons", "24", "48", "--storage", str(storage), "--name", "both"]
    run = run_command(campaign_command(*args, "--concurrent", "2"), timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "each search runs at most 1 of the 2 trials the cluster holds at once" in run.stdout
    lines = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert [line.split(":")[1].strip()[:9] for line in lines[:2]] == ["searching", "searching"]  # both started first
    for cell in ("space-24", "space-48"):
        log = (storage / "both" / "logs" / f"{cell}.log").read_text()
        assert "joining the Ray cluster at auto" in log and "up to 1 trials at once" in log
    assert _states(storage / "both") == ["done", "done"]
