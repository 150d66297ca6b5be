"""Which searched keys mattered: Optuna's importance evaluators on the search's study.

fANOVA (a random forest over the trials, then a variance decomposition) is used when scikit-learn
is installed, PED-ANOVA (how the best quarter of the trials differs from all of them) otherwise; the
result says which. ASHA prunes most trials of a search, so the final values of COMPLETE trials alone
would be few and only the survivors': every trial (COMPLETE or PRUNED) is scored instead by its best
validation MSE up to the latest epoch that every one of them reached (epoch 1 when ASHA's grace period
is 1), and the result says which epoch. Failed trials do not count. Below `MIN_TRIALS` no numbers are
given, only the reason.

Why 8, and what it is worth: bench/importance_threshold.py runs seeded TPE studies over the default
space's four keys on a synthetic objective that one key (learning_rate) clearly dominates. Over 20
seeds (rerun 2026-12-02), fANOVA ranks it first in 7/20 studies of 8 trials, 12/20 of 10, 16/20 of 12
and 18/20 of 16; PED-ANOVA (top quarter) in 12/20, 14/20, 16/20 and 18/20. So a search of 8 trials gets
numbers, and below `RELIABLE_TRIALS` (12) the line says that such a ranking is often chance.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from balm_tune.study import StudyError, open_study, study_names

MIN_TRIALS = 8
RELIABLE_TRIALS = 12  # from here on the synthetic check ranks the dominant key first in 16/20 studies or more
PED_ANOVA_QUANTILE = 0.25  # Optuna's default 0.1 keeps 1-2 trials of a small study: 10/20 right at n=16


@dataclass
class Importances:
    """Normalised importances (sum 1, largest first) of the searched keys, or why there are none."""

    evaluator: str  # "fANOVA" | "PED-ANOVA"
    trials: int  # trials the values were computed over (COMPLETE and PRUNED)
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # set when `values` is empty
    epoch: int | None = None  # each trial scored by its best val MSE up to this epoch

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One printable line: the importances, or the reason there are none."""
        if not self.values:
            return f"importances: {self.reason}"
        shown = ", ".join(f"{k} {v:.2f}" for k, v in self.values.items())
        caveat = f"; below {RELIABLE_TRIALS} trials a ranking is often chance" if self.trials < RELIABLE_TRIALS else ""
        return (
            f"importances ({self.evaluator} over {self.trials} trials, each by its best val mse up to epoch "
            f"{self.epoch}, the last all of them reached{caveat}): {shown}"
        )


def default_evaluator() -> str:
    return "fANOVA" if importlib.util.find_spec("sklearn") else "PED-ANOVA"


def param_importances(
    study: optuna.Study,
    params: list[str] | None = None,
    evaluator: str | None = None,
    min_trials: int = MIN_TRIALS,
    seed: int = 0,
) -> Importances:
    """Importances of `params` (default: every parameter the trials have) over the COMPLETE and PRUNED
    trials of `study`, each scored by its best intermediate value up to the latest step all of them
    reached (see the module docstring)."""
    evaluator = evaluator or default_evaluator()
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    scored = [t for t in ended if any(math.isfinite(v) for v in t.intermediate_values.values())]
    if len(scored) < min_trials:
        reason = (
            f"not computed: {len(scored)} trials with a validation score, at least {min_trials} needed "
            f"(failed trials do not count)"
        )
        return Importances(evaluator, len(scored), reason=reason)
    epoch = min(max(t.intermediate_values) for t in scored)
    at_epoch = optuna.create_study(direction=study.direction)
    for trial in scored:
        values = [v for step, v in trial.intermediate_values.items() if step <= epoch and math.isfinite(v)]
        at_epoch.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=min(values), params=trial.params, distributions=trial.distributions
            )
        )
    if evaluator == "fANOVA":
        engine = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    elif evaluator == "PED-ANOVA":
        engine = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=PED_ANOVA_QUANTILE)
    else:
        raise ValueError(f"evaluator {evaluator!r}: expected 'fANOVA' or 'PED-ANOVA'")
    values = optuna.importance.get_param_importances(at_epoch, evaluator=engine, params=params)
    return Importances(evaluator, len(scored), {k: float(v) for k, v in values.items()}, epoch=epoch)


def experiment_importances(journal: Path, name: str, params: list[str] | None = None) -> Importances:
    """Importances from the experiment's study (`journal`, study `name`); without that file, the reason."""
    if not Path(journal).is_file():
        return Importances(
            default_evaluator(), 0, reason=f"unavailable: no Optuna study in this experiment ({journal.name})"
        )
    if name not in study_names(journal):
        raise StudyError(f"{journal}: no study named {name!r} (found {study_names(journal)})")
    return param_importances(open_study(journal, name), params)
