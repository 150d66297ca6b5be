"""Importances of searched keys from a real, seeded Optuna study: every trial scored at the last epoch all
reached (pruned ones count), and the refusal below enough trials."""

import math

import optuna
import pytest

from balm_tune.experiment import JOURNAL, Experiment
from balm_tune.importance import (
    MIN_TRIALS,
    RELIABLE_TRIALS,
    StudyError,
    experiment_importances,
    param_importances,
)


def _study(n_complete: int, n_pruned: int = 0, storage=None, name: str | None = None) -> optuna.Study:
    """x decides the value (a valley at 0.3), y is ignored; every trial reports epochs 1 and 2 (the second a
    little better), then the first `n_complete` finish and the rest are pruned there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name=name)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_float("y", 0.0, 1.0)
        value = (x - 0.3) ** 2
        trial.report(value + 0.1, step=1)
        trial.report(value, step=2)
        if trial.number >= n_complete:
            raise optuna.TrialPruned()
        trial.report(value * 0.9, step=3)
        return value * 0.9

    study.optimize(objective, n_trials=n_complete + n_pruned)
    return study


@pytest.mark.parametrize("evaluator", ["fANOVA", "PED-ANOVA"])
def test_the_key_that_decides_the_objective_gets_almost_all_the_importance(evaluator):
    result = param_importances(_study(30), evaluator=evaluator)
    assert result.evaluator == evaluator and result.trials == 30 and result.epoch == 3 and not result.reason
    assert list(result.values) == ["x", "y"]  # largest first
    assert math.isclose(sum(result.values.values()), 1.0)
    assert result.values["x"] > 0.8 > 0.2 > result.values["y"]
    assert result.line().startswith(f"importances ({evaluator} over 30 trials, each by its best val mse up to epoch 3")


def test_pruned_trials_count_at_the_last_epoch_every_trial_reached():
    result = param_importances(_study(2, n_pruned=RELIABLE_TRIALS - 2))  # ASHA-like: most trials pruned
    assert result.trials == RELIABLE_TRIALS and result.epoch == 2  # the pruned trials' last epoch
    assert next(iter(result.values)) == "x" and "often chance" not in result.line()


def test_a_small_search_gets_numbers_with_a_warning_and_fewer_trials_the_reason():
    small = param_importances(_study(1, n_pruned=MIN_TRIALS - 1))
    assert small.trials == MIN_TRIALS and small.values
    assert f"below {RELIABLE_TRIALS} trials a ranking is often chance" in small.line()
    too_few = param_importances(_study(1, n_pruned=MIN_TRIALS - 2))
    assert too_few.values == {} and too_few.trials == MIN_TRIALS - 1
    assert f"{MIN_TRIALS - 1} trials with a validation score, at least {MIN_TRIALS} needed" in too_few.line()


def test_the_persisted_study_of_an_experiment_is_read_from_its_journal(tmp_path):
    experiment = Experiment.local(tmp_path / "my-search")
    experiment.folder.mkdir()
    assert "unavailable: no Optuna study" in experiment_importances(experiment.journal, experiment.name).line()
    backend = optuna.storages.journal.JournalFileBackend(str(experiment.journal))
    _study(MIN_TRIALS, storage=optuna.storages.JournalStorage(backend), name="my-search")
    assert set(experiment_importances(experiment.journal, experiment.name).values) == {"x", "y"}
    other = tmp_path / "renamed"
    experiment.folder.rename(other)
    with pytest.raises(StudyError, match=r"optuna.journal: no study named 'renamed' \(found \['my-search'\]\)"):
        experiment_importances(other / JOURNAL, "renamed")
