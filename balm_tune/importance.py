"""Which searched keys mattered: Optuna's importance evaluators on the search's study.

fANOVA (a random forest over the trials, then a variance decomposition) is used when scikit-learn
is installed, PED-ANOVA (how the best quarter of the trials differs from all of them) otherwise; the
result says which. Only COMPLETE trials have a final value in Optuna, so ASHA-pruned and failed
trials do not count. Below `MIN_COMPLETE` of them no numbers are given, only the reason.

Why 16: bench/importance_threshold.py runs seeded TPE studies over the default space's four keys on
a synthetic objective that one key (learning_rate) clearly dominates. Over 20 seeds, fANOVA ranks
it first in 12/20 studies of 10 trials, 16/20 of 12 and 18/20 of 16 and of 20 trials; PED-ANOVA
(top quarter) in 14/20, 16/20, 18/20, 18/20. Fewer trials mostly give a ranking by chance.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from core.errors import BalmError

STUDY_FILE = "optuna.journal"  # <experiment>/optuna.journal, study name = experiment folder name
MIN_COMPLETE = 16
PED_ANOVA_QUANTILE = 0.25  # Optuna's default 0.1 keeps 1-2 trials of a small study: 10/20 right at n=16


class StudyError(BalmError):
    """The experiment's Optuna study file cannot be read as this experiment's study."""


@dataclass
class Importances:
    """Normalised importances (sum 1, largest first) of the searched keys, or why there are none."""

    evaluator: str  # "fANOVA" | "PED-ANOVA"
    complete_trials: int
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # set when `values` is empty

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One printable line: the importances, or the reason there are none."""
        if not self.values:
            return f"importances: {self.reason}"
        shown = ", ".join(f"{k} {v:.2f}" for k, v in self.values.items())
        return f"importances ({self.evaluator} over {self.complete_trials} COMPLETE trials): {shown}"


def default_evaluator() -> str:
    return "fANOVA" if importlib.util.find_spec("sklearn") else "PED-ANOVA"


def param_importances(
    study: optuna.Study,
    params: list[str] | None = None,
    evaluator: str | None = None,
    min_complete: int = MIN_COMPLETE,
    seed: int = 0,
) -> Importances:
    """Importances of `params` (default: every parameter of the COMPLETE trials) from `study`."""
    evaluator = evaluator or default_evaluator()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < min_complete:
        reason = (
            f"not computed: {len(complete)} COMPLETE trials, at least {min_complete} needed "
            f"(ASHA-pruned and failed trials have no final value)"
        )
        return Importances(evaluator, len(complete), reason=reason)
    if evaluator == "fANOVA":
        engine = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    elif evaluator == "PED-ANOVA":
        engine = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=PED_ANOVA_QUANTILE)
    else:
        raise ValueError(f"evaluator {evaluator!r}: expected 'fANOVA' or 'PED-ANOVA'")
    values = optuna.importance.get_param_importances(study, evaluator=engine, params=params)
    return Importances(evaluator, len(complete), {k: float(v) for k, v in values.items()})


def load_study(experiment: Path) -> optuna.Study | None:
    """The experiment's persisted Optuna study, or None when the search did not persist one."""
    path = Path(experiment) / STUDY_FILE
    if not path.is_file():
        return None
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    try:
        return optuna.load_study(study_name=Path(experiment).name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise StudyError(f"{path}: no study named {Path(experiment).name!r} (found {names})") from None


def experiment_importances(experiment: Path, params: list[str] | None = None) -> Importances:
    """Importances from `<experiment>/optuna.journal`; without that file, the reason instead."""
    study = load_study(experiment)
    if study is None:
        return Importances(
            default_evaluator(), 0, reason=f"unavailable: no Optuna study in this experiment ({STUDY_FILE})"
        )
    return param_importances(study, params)
