"""Learning-rate schedules, as the official BALM-TSF code runs them, built from torch.optim.lr_scheduler.

The official training loop (run_main.py with utils/tools.py of the BALM-TSF repository, the code of
arXiv 2509.00622) calls `adjust_learning_rate(epoch + 1)` after every epoch. Per 0-based epoch e:

    type1       lr, lr, lr/2, lr/4, ...       lr * 0.5 ** max(e - 1, 0)  (Time-Series-Library's type1)
    reference   lr/25, lr/25, lr/50, ...      the official scripts' actual run: the OneCycleLR built at
                                              start sets lr/25 and is never stepped; type1 continues from it
    tst         OneCycleLR(max_lr=lr, pct_start) stepped after every batch (the scripts' 'TST')
    cos         CosineAnnealingLR(T_max=20, eta_min=1e-8) stepped after every epoch (the scripts' 'COS')
    cosine      lr * (1 + cos(pi * e / epochs)) / 2, per epoch (this project's; not in the official code)
    constant    lr

Data-parallel groups (config `batch_groups` k) stand for the official k processes. Accelerate's
scheduler wrapper steps the scheduler object k times per call when k processes run, so `tst`
advances k steps per optimizer step (its length counts batches of `batch_size`, as the official
`steps_per_epoch`) and `cos` advances k steps per epoch. type1/reference set the rate directly
and do not depend on k.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, OneCycleLR

from core.config import BalmConfig, ConfigError

COS_T_MAX, COS_ETA_MIN = 20, 1e-8  # run_main.py's CosineAnnealingLR
ONE_CYCLE_DIV = 25.0  # OneCycleLR's default div_factor: the first rate is lr / 25
PER_BATCH = ("tst",)


class Schedule:
    """A torch scheduler on the trainer's optimizer, stepped where the official code steps it.

    The trainer calls `after_step()` after every optimizer step and `after_epoch()` after every
    epoch; `state_dict()` goes into checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: BalmConfig, batches_per_epoch: int):
        self.name = config.lr_schedule
        self.repeats = config.batch_groups if self.name in ("tst", "cos") else 1
        self.scheduler = build_scheduler(optimizer, config, batches_per_epoch)

    @property
    def learning_rate(self) -> float:
        return self.scheduler.optimizer.param_groups[0]["lr"]

    def after_step(self) -> None:
        if self.name in PER_BATCH:
            self._step()

    def after_epoch(self) -> None:
        if self.name not in PER_BATCH:
            self._step()

    def _step(self) -> None:
        for _ in range(self.repeats):
            total = getattr(self.scheduler, "total_steps", None)
            if total is None or self.scheduler.last_epoch < total:  # accelerate's guard: OneCycleLR raises past its end
                self.scheduler.step()

    def state_dict(self) -> dict:
        return {"name": self.name, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "scheduler" not in state:
            raise ConfigError(
                "the checkpoint holds no learning-rate schedule state (written by an earlier balm_tune); "
                "train again to get a checkpoint this version can resume or evaluate"
            )
        if state.get("name") != self.name:
            raise ConfigError(f"checkpoint schedule {state.get('name')!r} differs from lr_schedule {self.name!r}")
        self.scheduler.load_state_dict(state["scheduler"])


def build_scheduler(optimizer: torch.optim.Optimizer, config: BalmConfig, batches_per_epoch: int) -> LRScheduler:
    """The torch scheduler of `config.lr_schedule`; the optimizer's rate is set for the first step."""
    name, lr = config.lr_schedule, config.learning_rate
    if name == "tst":
        return OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=config.epochs * max(batches_per_epoch, 1),
            pct_start=config.pct_start,
            div_factor=ONE_CYCLE_DIV,
        )
    if name == "cos":
        return CosineAnnealingLR(optimizer, T_max=COS_T_MAX, eta_min=COS_ETA_MIN)
    factors = {
        "type1": lambda e: 0.5 ** max(e - 1, 0),
        "reference": lambda e: 0.5 ** max(e - 1, 0) / ONE_CYCLE_DIV,
        "cosine": lambda e: 0.5 * (1 + math.cos(math.pi * e / config.epochs)),
        "constant": lambda e: 1.0,
    }
    return LambdaLR(optimizer, factors[name])
