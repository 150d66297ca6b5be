"""How a trial ended, read from its last reported result: one enum for the leaderboard, the printed
lines, the summary and the Optuna study (COMPLETE / PRUNED / FAIL)."""

from __future__ import annotations

from enum import StrEnum

DIVERGED_FACTOR = 3.0  # best val MSE above this many times the repeat-last baseline's (same windows): diverged


class Outcome(StrEnum):
    """How a trial ended. STOPPED: the scheduler ended it early (ASHA, HyperBand, the median rule);
    PERTURBED: PBT replaced its config (and weights) with a better trial's at least once; INTERRUPTED:
    Ctrl-C stopped it before it ended (`--resume` continues it; never told to Optuna as ended)."""

    FINISHED = "finished"
    STOPPED = "stopped"
    PERTURBED = "perturbed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def label(self, scheduler: str) -> str:
        """What the leaderboard and the trial lines show: 'finished', 'failed', 'pruned by asha', ..."""
        from balm_tune.strategies import SCHEDULERS

        if self is Outcome.STOPPED:
            return f"{SCHEDULERS[scheduler].verb} by {scheduler}"
        if self is Outcome.PERTURBED:
            return f"perturbed by {scheduler}"
        return self.value

    @property
    def optuna_state(self):
        """The state of the trial in the experiment's Optuna study."""
        from optuna.trial import TrialState

        return {
            Outcome.FINISHED: TrialState.COMPLETE,
            Outcome.PERTURBED: TrialState.COMPLETE,
            Outcome.STOPPED: TrialState.PRUNED,
            Outcome.FAILED: TrialState.FAIL,
            Outcome.INTERRUPTED: TrialState.FAIL,
        }[self]


def trial_outcome(
    metrics: dict, max_epochs: int, patience: int, error: str | None = None, interrupted: bool = False
) -> tuple[Outcome, str]:
    """(outcome, reason) of a trial from its last result (and Tune's error text, if it errored);
    `interrupted`: Tune had not ended it when the search stopped (Ctrl-C)."""
    if interrupted:
        return Outcome.INTERRUPTED, f"after {metrics.get('epoch', 0)} of {max_epochs} epochs (Ctrl-C)"
    if error:
        return Outcome.FAILED, error.strip().splitlines()[-1][:300]
    if metrics.get("failed"):
        return Outcome.FAILED, metrics["failed"]
    if not metrics.get("epoch"):
        return Outcome.FAILED, "no epoch reported"
    if metrics.get("perturbations"):
        return Outcome.PERTURBED, f"config replaced {metrics['perturbations']} time(s)"
    if metrics["epoch"] >= max_epochs:
        return Outcome.FINISHED, f"all {max_epochs} epochs"
    if metrics.get("bad_epochs", 0) >= patience:
        return Outcome.FINISHED, f"early stopping (patience {patience})"
    return Outcome.STOPPED, f"after {metrics['epoch']} of {max_epochs} epochs"


def trial_status(metrics: dict, outcome: Outcome, scheduler: str) -> str:
    """The word the console, the leaderboard and the report show: 'diverged' for a trial that diverged
    (a non-finite loss, or a best val MSE above DIVERGED_FACTOR x the repeat-last baseline's on the same
    windows: the trial reports why as `diverged`), else the outcome's label ('pruned by asha', ...)."""
    return "diverged" if metrics.get("diverged") else outcome.label(scheduler)
