"""`--dry-run`'s estimate of a search's wall time on this machine, from a measured step.

The space's base config trains a few batches here (after a warm-up batch) and scores one validation
pass, with the threads one trial gets (`cpus_per_trial`). The search then takes, per trial, between the
epochs ASHA would leave it if every rung kept exactly 1/reduction_factor of the trials and all
max_epochs; trials run `trials_at_once` at a time, and the winner is scored on every test window at the
measured scoring speed. The retrainings after the search (--final-seeds, --official, --ablations) each
train max_epochs and score every test window, `trials_at_once` at a time; a searched ablation arm
(--search-ablations) is one more whole search. Ray's start-up, the backbone load and the report are not
counted. It is an estimate of the local machine only: a cluster's steps were not measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from balm_tune.space import SearchSpace
from core.data import ForecastData

if TYPE_CHECKING:
    from balm_tune.api import SearchPlan

WARM_UP_BATCHES = 1
TIMED_BATCHES = 3


@dataclass(frozen=True)
class Estimate:
    """What was measured and what it implies for the whole search."""

    batch_s: float  # one training step of batch_size windows
    val_s: float  # one validation pass (the config's evenly spaced subset)
    val_windows: int
    test_windows: int
    batches_per_epoch: int
    epochs: tuple[float, int]  # per trial: as few as ASHA's rungs allow, or every epoch
    trials: int
    at_once: int
    retrains: int = 0  # runs trained after the search (retrains())
    searches: int = 1  # the search, and each searched ablation arm

    def seconds(self, epochs: float) -> float:
        epoch_s = self.batches_per_epoch * self.batch_s + self.val_s
        test_s = self.val_s * self.test_windows / max(self.val_windows, 1)
        search_s = self.trials * epochs * epoch_s / self.at_once + test_s
        retrain_s = math.ceil(self.retrains / self.at_once) * (self.epochs[1] * epoch_s + test_s)
        return self.searches * search_s + retrain_s

    def line(self) -> str:
        """Two lines: the range, then how it was estimated."""
        low, high = (self.seconds(e) / 60 for e in self.epochs)
        return (
            f"estimate: {low:.1f} to {high:.1f} min on this machine (how much the scheduler prunes decides where "
            f"in the range; Ray's start-up not counted)\n  from a measured step: {self.batch_s:.2f} s per training "
            f"batch, {self.val_s:.1f} s per validation pass of {self.val_windows:,} windows; {self.trials} trials x "
            f"{self.epochs[0]:.1f} to {self.epochs[1]} epochs of {self.batches_per_epoch} batches, {self.at_once} at "
            f"once, then the winner on {self.test_windows:,} test windows"
            + (f"; {self.searches - 1} searched ablation arm(s) alike" if self.searches > 1 else "")
            + (f"; then {self.retrains} retraining(s) of {self.epochs[1]} epochs" if self.retrains else "")
        )


def pruned_epochs(max_epochs: int, scheduler: str, options: dict) -> float:
    """Mean epochs per trial if every ASHA/HyperBand rung (grace_period x reduction_factor^k) kept exactly
    1/reduction_factor of the trials that reached it; max_epochs for schedulers that stop no trial early."""
    if scheduler not in ("asha", "hyperband"):
        return float(max_epochs)
    grace, factor = int(options.get("grace_period", 1)), float(options.get("reduction_factor", 2))
    rungs = []
    rung = grace
    while rung < max_epochs:
        rungs.append(rung)
        rung = int(rung * factor)
    return sum(factor ** -sum(r < epoch for r in rungs) for epoch in range(1, max_epochs + 1))


def retrains(plan: SearchPlan, final_seeds: int) -> int:
    """The runs trained after the search: the winner on the final seeds; the official config and each
    ablation arm on the winner's seed and the final seeds (balm_tune.api.export)."""
    seeds = final_seeds + 1
    return final_seeds + (seeds if plan.official else 0) + seeds * len(plan.ablations)


def measure(space: SearchSpace, data: ForecastData, at_once: int, retrains: int = 0, searches: int = 1) -> Estimate:
    """Train WARM_UP_BATCHES + TIMED_BATCHES batches of the base config here and score one validation pass."""
    from core.train import Trainer

    config = space.trial_config({"num_threads": max(1, round(space.cpus_per_trial))})
    trainer = Trainer(config.with_overrides({"max_train_batches": WARM_UP_BATCHES}), data=data, show_progress=False)
    trainer.train_epoch()
    trainer.config = config.with_overrides({"max_train_batches": TIMED_BATCHES})
    started = time.perf_counter()
    trainer.train_epoch()
    batch_s = (time.perf_counter() - started) / TIMED_BATCHES
    started = time.perf_counter()
    val = trainer.evaluate("val", config.max_eval_batches)
    val_s = time.perf_counter() - started
    trainer.config = config
    return Estimate(
        batch_s,
        val_s,
        val.windows,
        len(trainer.windows["test"]),
        trainer.batches_per_epoch,
        (pruned_epochs(space.max_epochs, space.scheduler.type, space.scheduler.options), space.max_epochs),
        space.num_samples,
        min(at_once, space.num_samples),
        retrains,
        searches,
    )
