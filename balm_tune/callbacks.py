"""Tune callbacks: TensorBoard curves + HParams per trial, and one printed line per finished trial."""

from __future__ import annotations

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from balm_tune.outcome import trial_outcome

# what every trial reports each epoch (balm_tune.trainable); TensorBoard shows these and nothing else
CURVES = (
    "train_loss",
    "train_mse",
    "train_contrastive",
    "val_mse",
    "val_mae",
    "best_val_mse",
    "best_val_mae",
    "epoch",
    "learning_rate",
    "temperature",
    "epoch_seconds",
)
FINAL = ("best_val_mse", "best_val_mae", "epoch")


class TensorBoard(TBXLoggerCallback):
    """Ray's TensorBoard logger (event files in each trial folder), limited to BALM's metrics, with an
    HParams entry per trial: the searched values against the final best val MSE/MAE. Being a
    TBXLoggerCallback, it replaces the logger Tune would add by default (no duplicate event files)."""

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        kept = {k: v for k, v in result.items() if k in CURVES or k == "training_iteration"}
        super().log_trial_result(iteration, trial, kept)

    def _try_log_hparams(self, trial, result: dict) -> None:
        final = {f"ray/tune/{k}": result[f"ray/tune/{k}"] for k in FINAL if f"ray/tune/{k}" in result}
        super()._try_log_hparams(trial, final)


class TrialLines(tune.Callback):
    """Prints one line when a trial finishes, is ended early by the scheduler, or fails."""

    def __init__(self, max_epochs: int, patience: int, scheduler: str):
        self.max_epochs, self.patience, self.scheduler = max_epochs, patience, scheduler

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        outcome, reason = trial_outcome(result, self.max_epochs, self.patience)
        status = outcome.label(self.scheduler)
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.evaluated_params.items())
        print(
            f"[trial {trial.trial_id}] {status} ({reason}): best val mse {result.get('best_val_mse', float('nan')):.4f}"
            f"  {params}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        print(f"[trial {trial.trial_id}] failed after retries; see {trial.path}/error.txt", flush=True)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
