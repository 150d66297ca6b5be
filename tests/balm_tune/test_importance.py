"""Importances of searched keys from a real, seeded Optuna study, and the refusal below enough trials."""

import math

import optuna
import pytest

from balm_tune.importance import (
    MIN_COMPLETE,
    STUDY_FILE,
    StudyError,
    experiment_importances,
    load_study,
    param_importances,
)


def _study(n_complete: int, n_pruned: int = 0, storage=None, name: str | None = None) -> optuna.Study:
    """x decides the value (a valley at 0.3), y is ignored; pruned trials report one intermediate value."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name=name)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_float("y", 0.0, 1.0)
        value = (x - 0.3) ** 2
        trial.report(value, step=1)
        if trial.number >= n_complete:
            raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n_complete + n_pruned)
    return study


@pytest.mark.parametrize("evaluator", ["fANOVA", "PED-ANOVA"])
def test_the_key_that_decides_the_objective_gets_almost_all_the_importance(evaluator):
    result = param_importances(_study(30), evaluator=evaluator)
    assert result.evaluator == evaluator and result.complete_trials == 30 and not result.reason
    assert list(result.values) == ["x", "y"]  # largest first
    assert math.isclose(sum(result.values.values()), 1.0)
    assert result.values["x"] > 0.8 > 0.2 > result.values["y"]
    assert result.line().startswith(f"importances ({evaluator} over 30 COMPLETE trials): x ")


def test_too_few_complete_trials_give_the_reason_not_numbers():
    result = param_importances(_study(MIN_COMPLETE - 1, n_pruned=10))  # pruned trials do not count
    assert result.values == {} and result.complete_trials == MIN_COMPLETE - 1
    assert f"{MIN_COMPLETE - 1} COMPLETE trials, at least {MIN_COMPLETE} needed" in result.line()


def test_the_persisted_study_of_an_experiment_is_read_from_its_journal(tmp_path):
    experiment = tmp_path / "my-search"
    experiment.mkdir()
    assert "unavailable: no Optuna study" in experiment_importances(experiment).line()
    backend = optuna.storages.journal.JournalFileBackend(str(experiment / STUDY_FILE))
    _study(MIN_COMPLETE, storage=optuna.storages.JournalStorage(backend), name="my-search")
    assert len(load_study(experiment).trials) == MIN_COMPLETE
    assert set(experiment_importances(experiment).values) == {"x", "y"}
    other = tmp_path / "renamed"
    experiment.rename(other)
    with pytest.raises(StudyError, match=r"optuna.journal: no study named 'renamed' \(found \['my-search'\]\)"):
        load_study(other)
