"""Ray's W&B logger callback, with its logging processes killed only after their run has finished.

Ray's `WandbLoggerCallback` runs each trial's W&B run in a logging actor and removes that actor with
`ray.kill` (`_cleanup_logging_actor`). Seen here: the kill can land while the actor is still inside
`wandb.finish()`; W&B writes its run file when the run is finished, so that run's file then holds only
its 7-byte header (no config, no metrics; Ray's worker log says "killed by `ray.kill`" 40 ms after the
run began finishing). Here the kill first waits, up to FINISH_WAIT_S, for the actor's run to return.
"""

from __future__ import annotations

import ray
from ray.air.integrations.wandb import WandbLoggerCallback

FINISH_WAIT_S = 60.0  # an offline run finishes in well under a second; an online one uploads first


class FinishedWandbLoggerCallback(WandbLoggerCallback):
    """`WandbLoggerCallback` that lets each trial's W&B run finish before its logging actor is killed."""

    def _cleanup_logging_actor(self, trial) -> None:
        future = self._trial_logging_futures.get(trial)
        if future is not None:
            ray.wait([future], timeout=FINISH_WAIT_S)
        super()._cleanup_logging_actor(trial)
