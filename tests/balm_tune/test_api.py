"""The Python API: a search from code, results as objects (the CLI is a thin layer over it)."""

import json

import pandas as pd
import pytest

from balm_tune.api import prepare_search, run_search
from balm_tune.space import SpaceError, load_space
from core.baselines import verdict
from core.significance import DieboldMariano
from tests.conftest import write_tiny_space


def test_run_search_returns_the_leaderboard_best_config_test_metrics_and_paths(tmp_path, capsys):
    space = write_tiny_space(tmp_path, budget={"num_samples": 2, "max_epochs": 1})
    result = run_search(space, name="api", storage=tmp_path / "runs", max_train_batches=2, sampler_seed=3)
    trials = result.leaderboard
    assert isinstance(trials, pd.DataFrame) and len(trials) == 2
    assert trials["best_val_mse"].is_monotonic_increasing  # best first
    assert trials["prompt_len"].dtype.kind == trials["epochs_run"].dtype.kind == "i"  # integers read as integers
    assert list(result.baselines["baseline"]) == ["repeat_last", "linear"]  # baselines.csv
    assert (result.baselines["test_windows"] == result.test["test_windows"]).all()
    assert result.best_config.max_train_batches == 2  # the base override reached the trials
    assert result.best_config.prompt_len == trials["prompt_len"].iloc[0]
    assert result.test["test_mse"] > 0 and result.summary.test == result.test
    assert set(result.paths) == {"leaderboard", "baselines", "summary", "study", "config", "checkpoint", "report"}
    assert all(path.is_file() and tmp_path / "runs" / "api" in path.parents for path in result.paths.values())
    # it ends as the CLI does: the same closing lines, printed and kept as text
    assert result.text.splitlines()[-1] == f"retrain:       python -m balm_tune.train --config {result.paths['config']}"
    assert capsys.readouterr().out.rstrip().endswith(result.text.rstrip())


def test_prepare_search_checks_everything_and_starts_nothing(tmp_path):
    space = write_tiny_space(tmp_path)
    plan = prepare_search(space, name="plan", storage=tmp_path / "runs", num_samples=3, learning_rate=0.01)
    assert plan.space.num_samples == 3 and plan.space.base.learning_rate == 0.01
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SpaceError, match="'search.prompt_len': value 12 is invalid"):
        prepare_search(space, storage=tmp_path / "runs", seq_len=32)


def test_a_half_created_experiment_holding_only_its_space_can_be_resumed(tmp_path):
    space = load_space(write_tiny_space(tmp_path, budget={"num_samples": 2, "max_epochs": 1}))
    experiment = tmp_path / "runs" / "half"
    experiment.mkdir(parents=True)
    space.with_base_overrides({"max_train_batches": 2}).save(experiment / "search_space.yaml")
    with pytest.raises(SpaceError, match="exists; continue it with --resume"):
        prepare_search(space, name="half", storage=tmp_path / "runs")
    result = run_search(name="half", storage=tmp_path / "runs", resume=True)
    assert len(result.leaderboard) == 2 and result.best_config.max_train_batches == 2


def test_ablations_retrain_the_winners_config_without_its_llm_and_test_the_winner_against_each(tmp_path):
    arms = ["no_llm", "llm2attn", "random_llm"]
    space = write_tiny_space(tmp_path, budget={"num_samples": 2, "max_epochs": 1})
    result = run_search(
        space, name="arms", storage=tmp_path / "runs", ablations=arms, final_seeds=1, max_train_batches=2
    )
    summary = result.summary
    assert list(summary.ablations) == arms
    for arm, scores in summary.ablations.items():
        run, other = scores["runs"]  # the winner's own seed, then the --final-seeds one
        assert run["seed"] == result.best_config.seed and run["text_branch"] == arm
        assert other["seed"] == run["seed"] + 1
        assert scores["test_windows"] == summary.test["test_windows"] == 19_999  # the winner's windows
        tested = DieboldMariano(**scores["significance_on_test"])  # 2,857 windows of 7 variables
        assert tested.windows == 2_857 and tested.mean_difference == pytest.approx(
            summary.test["test_mse"] - run["test_mse"],
            abs=1e-9,  # paired with the arm's run on the winner's seed
        )
        assert scores["tested_run"] == {"seed": run["seed"], "test_mse": run["test_mse"]}  # what the test paired
        word = verdict(summary.test["test_mse"], run["test_mse"], tested)
        assert (
            f"the winner {word} its seed-{run['seed']} run on test ({summary.test['test_mse']:.4f} vs " in result.text
        )
        assert f"ablation {arm} (" in result.text and f"{tested.p_text()})" in result.text
    parameters = {arm: scores["parameters"] for arm, scores in summary.ablations.items()}
    assert parameters["no_llm"] < parameters["random_llm"] < parameters["llm2attn"]  # what each arm trains
    assert (result.experiment / "ablations").is_dir()  # the arms' own trials, beside final_seeds/
    saved = json.loads((result.experiment / "summary.json").read_text())["ablations"]
    assert "test_window_mse" not in saved["no_llm"]["runs"][0]  # per-window errors are not kept
    page = (result.experiment / "report" / "index.html").read_text()
    assert all(f">ablation {arm}</td>" in page for arm in arms)  # a row per arm beside the baselines
    # baselines.csv: a row per arm after the baselines, with the arms' own columns (empty for the baselines)
    rows = pd.read_csv(result.experiment / "baselines.csv")
    assert list(rows["baseline"]) == ["repeat_last", "linear", *(f"ablation {arm}" for arm in arms)]
    assert list(rows["baseline"]) == list(result.baselines["baseline"])
    arm_rows = rows.set_index("baseline").loc[[f"ablation {arm}" for arm in arms]]
    assert list(arm_rows["seeds"]) == [2, 2, 2] and list(arm_rows["parameters"]) == list(parameters.values())
    assert list(arm_rows["test_mse"]) == pytest.approx([summary.ablations[a]["test_mse_mean"] for a in arms])
    assert rows.set_index("baseline").loc[["repeat_last", "linear"], "parameters"].isna().all()


def test_with_several_seeds_each_comparison_says_whether_the_seeds_interval_excludes_the_other_figure(tmp_path):
    space = write_tiny_space(tmp_path, budget={"num_samples": 2, "max_epochs": 1})
    result = run_search(
        space, name="spread", storage=tmp_path / "runs", ablations=["no_llm"], final_seeds=2, max_train_batches=2
    )
    summary = result.summary
    winner = [summary.test["test_mse"], *(run["test_mse"] for run in summary.final_seeds["runs"])]
    spread = summary.seed_spread()
    assert spread.seeds == 3 and spread.mean == pytest.approx(sum(winner) / 3)
    for scores in summary.baselines.values():  # the winner's 3 seeds against each baseline's test MSE
        other = scores["test"]["mse"]
        word = "excludes" if abs(other - spread.mean) > spread.std else "includes"
        assert f"; 3 seeds {spread.mean:.4f} +- {spread.std:.4f} {word} {other:.4f})" in result.text
    arm = summary.ablations["no_llm"]  # the arm's 3 seeds against the winner's 3-seed mean
    word = "excludes" if abs(spread.mean - arm["test_mse_mean"]) > arm["test_mse_std"] else "includes"
    said = f"its 3 seeds {arm['test_mse_mean']:.4f} +- {arm['test_mse_std']:.4f} {word} {spread.mean:.4f}"
    assert f"{said} (the winner's 3-seed mean)" in result.text
    assert said in (result.experiment / "report" / "index.html").read_text()


def test_an_unknown_ablation_arm_is_one_line_before_anything_starts(tmp_path):
    with pytest.raises(SpaceError, match="--ablations: got 'nollm', expected some of no_llm, llm2attn, random_llm"):
        prepare_search(write_tiny_space(tmp_path), storage=tmp_path / "runs", ablations=["nollm"])
    assert not (tmp_path / "runs").exists()


def test_searched_ablations_search_each_arm_with_the_same_budget_and_retrain_its_own_winner(tmp_path, capsys):
    space = write_tiny_space(tmp_path, budget={"num_samples": 2, "max_epochs": 1})
    result = run_search(
        space, name="searched", storage=tmp_path / "runs", ablations=["no_llm"], ablation_search=True,
        max_train_batches=2,
    )  # fmt: skip
    arm = result.summary.ablations["no_llm"]
    searched = result.experiment / "ablation_searches" / "no_llm"  # the arm's own experiment
    trials = pd.read_csv(searched / "leaderboard.csv")
    assert len(trials) == 2 and "prompt_len" not in trials and "learning_rate" in trials  # the same budget
    own = json.loads((searched / "summary.json").read_text())
    assert arm["searched"] == {"params": own["params"], "experiment": "ablation_searches/no_llm"}
    assert own["params"]["learning_rate"] == pytest.approx(trials["learning_rate"].iloc[0])  # its winner's
    (run,) = arm["runs"]  # its winner retrained on the winner's seed, paired with the winner on test
    assert run["text_branch"] == "no_llm" and run["seed"] == result.best_config.seed
    assert (result.experiment / "ablations" / "no_llm").is_dir()
    assert "searching the ablation no_llm with the same space and budget" in capsys.readouterr().out
