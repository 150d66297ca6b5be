"""Tune callbacks: TensorBoard curves + HParams per trial, and one printed line per finished trial."""

from __future__ import annotations

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback, TBXLoggerCallback

from balm_tune.outcome import trial_outcome, trial_status

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
    "lr",
    "temperature",
    "epoch_seconds",
)
FINAL = ("best_val_mse", "best_val_mae", "epoch")


class _BalmTBX(TBXLoggerCallback):
    """Ray's TensorBoard writer limited to BALM's metrics, with an HParams entry per trial: the searched
    values against the final best val MSE/MAE."""

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        kept = {k: v for k, v in result.items() if k in CURVES or k == "training_iteration"}
        super().log_trial_result(iteration, trial, kept)

    def _try_log_hparams(self, trial, result: dict) -> None:
        final = {f"ray/tune/{k}": result[f"ray/tune/{k}"] for k in FINAL if f"ray/tune/{k}" in result}
        super()._try_log_hparams(trial, final)


class TensorBoard(LoggerCallback):
    """TensorBoard event files in each trial folder of the experiment (`tensorboard --logdir <experiment>`).

    It wraps Ray's writer instead of being one: Tune prints a `tensorboard --logdir` hint for its
    driver-side staging folder (under /tmp/ray) whenever a TBXLoggerCallback is present, a folder that
    holds none of these curves. The search passes Tune's CSV and JSON loggers explicitly and turns off its
    automatic ones (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS), so no logger is doubled.
    """

    def __init__(self):
        self._writer = _BalmTBX()

    def log_trial_start(self, trial) -> None:
        self._writer.log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._writer.log_trial_result(iteration, trial, result)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._writer.log_trial_end(trial, failed)


def loggers() -> list[LoggerCallback]:
    """Every logger a search writes with: Tune's result.json/progress.csv and BALM's TensorBoard."""
    return [CSVLoggerCallback(), JsonLoggerCallback(), TensorBoard()]


class TrialLines(tune.Callback):
    """Prints one line when a trial finishes, is ended early by the scheduler, or fails."""

    def __init__(self, max_epochs: int, patience: int, scheduler: str):
        self.max_epochs, self.patience, self.scheduler = max_epochs, patience, scheduler

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        outcome, reason = trial_outcome(result, self.max_epochs, self.patience)
        status, reason = trial_status(result, outcome, self.scheduler), result.get("diverged") or reason
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
