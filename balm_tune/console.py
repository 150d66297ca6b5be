"""What a search prints while Tune runs: one compact table of the trials every `every_s` seconds (Ray
Tune's public `ProgressReporter`), beside `balm_tune.callbacks.TrialLines`' one line per ended trial.

Ray's own per-trial config and result boxes are Tune's verbosity 3; a search runs Tune at verbosity 1
(experiment status only) with this table instead, and `--verbose` gives Ray's full output back
(`balm_tune.tuner`). Tune honours a custom reporter only with its classic output engine
(`RAY_AIR_NEW_OUTPUT=0`, a documented Ray setting), which `build_tuner` selects with this table.
"""

from __future__ import annotations

import time
from collections import Counter

from ray.tune import ProgressReporter

from balm_tune.outcome import trial_outcome, trial_status

EVERY_S = 60.0  # seconds between two tables (the last one is printed when Tune ends)
BEST_SHOWN = 3  # ended trials shown in a table, best first, beside every running one


class SearchTable(ProgressReporter):
    """Every `every_s` seconds: a line of counts, then the running trials and the best ended ones, with
    their epoch, last and best val MSE and searched values (4 significant digits). Ended trials carry the
    scheduler's word ('pruned by asha'), as in the leaderboard."""

    def __init__(self, searched: list[str], max_epochs: int, patience: int, scheduler: str, every_s: float = EVERY_S):
        self.searched, self.max_epochs, self.patience, self.scheduler = searched, max_epochs, patience, scheduler
        self.every_s, self._last = every_s, time.monotonic()

    def should_report(self, trials: list, done: bool = False) -> bool:
        if done or time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            return bool(trials)
        return False

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        print(self.table(trials, done), flush=True)

    def table(self, trials: list, done: bool = False) -> str:
        """The table as text (what `report` prints)."""
        rows = [(trial, self.status(trial)) for trial in trials]
        counts = Counter(status for _, status in rows)
        live = [r for r in rows if r[0].status in ("RUNNING", "PENDING", "PAUSED")]
        ended = sorted((r for r in rows if r not in live), key=lambda r: _best(r[0]))
        shown = live + ended[: len(ended) if done else BEST_SHOWN]
        head = f"{time.strftime('%H:%M:%S')} {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        columns = ["trial", "status", "epoch", "val mse", "best val", *self.searched]
        cells = [[trial.trial_id, status, *self.numbers(trial)] for trial, status in shown]
        widths = [max(len(str(c)) for c in column) for column in zip(columns, *cells)]
        lines = [head, "  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
        lines += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in cells]
        if not done and len(ended) > BEST_SHOWN:
            lines.append(f"  ... and {len(ended) - BEST_SHOWN} more ended trials")
        return "\n".join(lines)

    def status(self, trial) -> str:
        if trial.status == "TERMINATED":
            result = trial.last_result or {}
            outcome = trial_outcome(result, self.max_epochs, self.patience)[0]
            return trial_status(result, outcome, self.scheduler)
        return {"ERROR": "failed"}.get(trial.status, trial.status.lower())

    def numbers(self, trial) -> list[str]:
        result = trial.last_result or {}
        epoch = f"{result['epoch']}/{self.max_epochs}" if result.get("epoch") else "-"
        values = [_number(result.get("val_mse")), _number(result.get("best_val_mse"))]
        return [epoch, *values, *(_number(trial.config.get(key)) for key in self.searched)]


def _best(trial) -> float:
    value = (trial.last_result or {}).get("best_val_mse")
    return value if isinstance(value, int | float) else float("inf")


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
