"""Searchers (Optuna samplers) and schedulers (Ray's) chosen in the space file, each in a tiny real search."""

import pytest
from optuna.trial import TrialState

from balm_tune.api import run_search
from balm_tune.outcome import Outcome
from balm_tune.space import SpaceError, load_space
from balm_tune.strategies import SCHEDULERS, SEARCHERS
from balm_tune.study import open_study
from tests.conftest import write_tiny_space

TINY = {"budget": {"num_samples": 3, "max_epochs": 2}, "base": {"max_train_batches": 2}}


@pytest.fixture(scope="module")
def ray_here():
    """One local Ray for this module's searches (run_search uses the Ray the process has started)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _search(folder, searcher: dict, scheduler: dict, **sections):
    space = write_tiny_space(folder, searcher=searcher, scheduler=scheduler, **{**TINY, **sections})
    return run_search(space, name="s", storage=folder / "runs")


@pytest.mark.parametrize(
    ("searcher", "scheduler"),
    [
        ({"type": "gp", "n_startup_trials": 2}, {"type": "hyperband", "reduction_factor": 2}),
        ({"type": "cmaes", "n_startup_trials": 1}, {"type": "median", "grace_period": 1, "min_samples_required": 1}),
        ({"type": "qmc"}, {"type": "fifo"}),
    ],
    ids=["gp+hyperband", "cmaes+median", "qmc+fifo"],
)
def test_each_searcher_and_scheduler_runs_a_search_recorded_in_the_study(ray_here, tmp_path, searcher, scheduler):
    result = _search(tmp_path, searcher, scheduler)
    assert len(result.leaderboard) == 3 and result.best_config is not None
    assert result.summary.strategy == {"searcher": searcher, "scheduler": scheduler}
    study = open_study(result.paths["study"], "s")
    assert len(study.trials) == 3 and all(t.state != TrialState.RUNNING for t in study.trials)
    labels = {Outcome.FINISHED.value, Outcome.FAILED.value, Outcome.STOPPED.label(scheduler["type"])}
    assert set(result.leaderboard["status"]) <= labels


def test_pbt_runs_with_float_mutations_inside_the_space_and_is_recorded_in_the_study(ray_here, tmp_path):
    # Whether PBT replaces a trial depends on when Tune creates the second trial (Ray's PBT is asynchronous);
    # what holds either way is checked, and a replaced trial, when there is one, is checked in full.
    result = _search(
        tmp_path,
        {"type": "random"},
        {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5, "resample_probability": 0.0},
        budget={"num_samples": 2, "max_epochs": 3},
        resources={"cpus_per_trial": 2},
    )
    rows = result.leaderboard
    assert set(rows["status"]) <= {"finished", "perturbed by pbt"} and "finished" in set(rows["status"])
    assert list(rows["epochs_run"]) == [3, 3]  # stopped at max_epochs: PBT has no max_t
    space = load_space(tmp_path / "space.yaml")
    kept = rows[rows["status"] == "finished"].iloc[0]
    for _, perturbed in rows[rows["status"] == "perturbed by pbt"].iterrows():
        assert perturbed["prompt_len"] == kept["prompt_len"]  # int keys change shapes: copied, never perturbed
        for key in ("contrastive_weight", "scale_factor", "learning_rate"):  # float keys: x 0.8 or 1.2, in range
            low, high = space.search[key].low, space.search[key].high
            allowed = [min(max(kept[key] * factor, low), high) for factor in (0.8, 1.2)]
            assert any(perturbed[key] == pytest.approx(value) for value in allowed), (key, perturbed[key], allowed)
    # Ray runs PBT without a searcher; the study records it all the same (starting params, every epoch)
    study = open_study(result.paths["study"], "s")
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_id) == set(rows["trial_id"]) and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sorted(t.user_attrs["outcome"] for t in study.trials) == sorted(rows["outcome"])
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in study.trials)


def test_the_default_strategy_is_tpe_with_asha_and_the_old_scheduler_keys_still_mean_asha(tmp_path):
    space = load_space(write_tiny_space(tmp_path, scheduler={"grace_period": 2, "reduction_factor": 3}))
    assert space.searcher.type == "tpe"
    assert space.scheduler.type == "asha" and space.scheduler.options == {"grace_period": 2, "reduction_factor": 3}
    assert set(SEARCHERS) >= {"tpe", "random", "cmaes", "gp", "qmc"}
    assert set(SCHEDULERS) == {"asha", "hyperband", "median", "pbt", "fifo"}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"searcher": {"type": "bohb"}}, "'searcher.type': got 'bohb', expected one of"),
        ({"searcher": {"type": "tpe", "n_startup": 3}}, "'searcher.n_startup': unknown keyword of tpe"),
        ({"searcher": {"type": "tpe", "seed": 3}}, "'searcher.seed': set by the search"),
        ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "'scheduler':"),
        (
            {"scheduler": {"type": "median", "grace_period": 9}},
            "'scheduler.grace_period': got 9, expected <= max_epochs",
        ),
        ({"scheduler": {"type": "hyperband", "max_t": 9}}, "'scheduler.max_t': set by the search"),
        ({"scheduler": {"type": "pbt"}}, "'searcher.type': got 'tpe': pbt samples its own population"),
        ({"searcher": {"type": "tpe", "pruned_trials": "maybe"}}, "'searcher.pruned_trials': got 'maybe', expected"),
        ({"enqueue": [{"prompt_len": 99}]}, "'enqueue[0].prompt_len': got 99, expected int in [2, 12]"),
        ({"enqueue": [{"dropout": 0.1}]}, "'enqueue[0].dropout': not a searched key"),
    ],
)
def test_a_bad_strategy_is_one_clear_error_before_anything_starts(tmp_path, sections, message):
    with pytest.raises(SpaceError, match="search space .*space.yaml: " + _escape(message)):
        load_space(write_tiny_space(tmp_path, **sections))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


# one keyword of every table entry that takes one, with a value of the right name but the wrong type:
# each used to pass the checks (the class builds) and fail at the first trial, after Ray started
BAD_VALUES = {
    ("searcher", "tpe"): {"n_startup_trials": "ten"},
    ("searcher", "cmaes"): {"n_startup_trials": "ten"},
    ("searcher", "gp"): {"n_startup_trials": "ten"},
    ("searcher", "qmc"): {"qmc_type": "fibonacci"},
    ("searcher", "nsga2"): {"population_size": "ten"},
    ("scheduler", "asha"): {"grace_period": "one"},
    ("scheduler", "hyperband"): {"reduction_factor": "three"},
    ("scheduler", "median"): {"grace_period": "one"},
    ("scheduler", "pbt"): {"perturbation_interval": "often"},
}


def test_every_strategy_with_keywords_has_a_bad_value_case():
    takes_keywords = {("searcher", s) for s in SEARCHERS if s != "random"} | {
        ("scheduler", s) for s in SCHEDULERS if s != "fifo"
    }
    assert set(BAD_VALUES) == takes_keywords  # random and fifo take no keyword of their own


@pytest.mark.parametrize(("section", "kind"), list(BAD_VALUES), ids=[f"{s}-{k}" for s, k in BAD_VALUES])
def test_a_keyword_value_of_the_wrong_type_fails_when_the_space_is_loaded(tmp_path, section, kind):
    sections = {section: {"type": kind, **BAD_VALUES[section, kind]}}
    if kind == "pbt":
        sections["searcher"] = {"type": "random"}
    with pytest.raises(SpaceError, match=rf"search space .*space.yaml: '{section}(\.\w+)?': \S"):
        load_space(write_tiny_space(tmp_path, **sections))
