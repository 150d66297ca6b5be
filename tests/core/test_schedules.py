"""The learning-rate schedules against the official code's formulas, written out here independently.

Official: run_main.py calls adjust_learning_rate(epoch + 1) (utils/tools.py) after every epoch;
'TST' steps a OneCycleLR after every batch; 'COS' steps CosineAnnealingLR(T_max=20, eta_min=1e-8)
after every epoch; with k processes accelerate steps the scheduler object k times per call.
"""

import dataclasses
import math

import pytest
import torch

from core.config import BalmConfig, ConfigError
from core.schedules import Schedule

LR = 1e-2


def official_type1(epoch: int, lr: float) -> float:
    """Rate of 0-based epoch: adjust_learning_rate(e) sets lr * 0.5 ** ((e - 1) // 1) after epoch e - 1."""
    return lr if epoch == 0 else lr * 0.5 ** ((epoch - 1) // 1)


def official_one_cycle(step: int, lr: float, total: int, pct_start: float) -> float:
    """torch's OneCycleLR (cos annealing, div_factor 25, final_div_factor 1e4) at step `step`."""
    initial, minimum = lr / 25, lr / 25 / 1e4
    peak = float(pct_start * total) - 1

    def anneal(start, end, pct):
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    if step <= peak:
        return anneal(initial, lr, step / peak)
    return anneal(lr, minimum, (step - peak) / (total - 1 - peak))


def official_cos(step: int, lr: float) -> float:
    return 1e-8 + (lr - 1e-8) * (1 + math.cos(math.pi * step / 20)) / 2


def run(schedule: str, epochs: int, batches: int, **config) -> tuple[list[float], list[float]]:
    """Drive a Schedule as the Trainer does; returns each epoch's first rate and every step's rate."""
    config = BalmConfig(lr_schedule=schedule, learning_rate=LR, epochs=epochs, **config)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    groups = config.batch_groups
    schedule = Schedule(optimizer, config, batches)
    per_epoch, per_step = [], []
    for _ in range(epochs):
        per_epoch.append(schedule.learning_rate)
        for _ in range(math.ceil(batches / groups)):
            per_step.append(schedule.learning_rate)
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch()
    return per_epoch, per_step


def test_type1_halves_after_the_second_epoch_as_the_official_adjust_learning_rate():
    rates, _ = run("type1", 8, 3)
    assert rates == pytest.approx([official_type1(e, LR) for e in range(8)])
    assert rates[:3] == pytest.approx([LR, LR, LR / 2])


def test_reference_starts_at_one_cycles_lr_over_25_and_continues_as_type1():
    rates, _ = run("reference", 8, 3)
    assert rates == pytest.approx([official_type1(e, LR / 25) for e in range(8)])
    assert rates[:3] == pytest.approx([LR / 25, LR / 25, LR / 50])


@pytest.mark.parametrize("pct_start", [0.2, 0.3])
def test_tst_steps_a_one_cycle_after_every_batch(pct_start):
    epochs, batches = 4, 10
    _, steps = run("tst", epochs, batches, pct_start=pct_start)
    assert len(steps) == epochs * batches
    assert steps == pytest.approx([official_one_cycle(s, LR, epochs * batches, pct_start) for s in range(len(steps))])


def test_tst_with_k_groups_advances_k_one_cycle_steps_per_optimizer_step():
    epochs, batches, k = 3, 12, 4  # 12 batches of batch_size: 3 optimizer steps of 4 groups per epoch
    _, steps = run("tst", epochs, batches, batch_groups=k)
    assert steps == pytest.approx([official_one_cycle(k * s, LR, epochs * batches, 0.2) for s in range(len(steps))])


@pytest.mark.parametrize("groups", [1, 4])
def test_cos_is_cosine_annealing_with_t_max_20_stepped_per_epoch_and_per_process(groups):
    rates, _ = run("cos", 15, 2, batch_groups=groups)
    assert rates == pytest.approx([official_cos(groups * e, LR) for e in range(15)], abs=1e-12)


def test_constant_and_cosine_are_documented_project_schedules():
    assert run("constant", 4, 2)[0] == pytest.approx([LR] * 4)
    assert run("cosine", 4, 2)[0] == pytest.approx([LR * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_a_restored_schedule_continues_where_it_stopped():
    config = BalmConfig(lr_schedule="tst", learning_rate=LR, epochs=3)
    first = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = Schedule(first, config, 5)
    for _ in range(7):
        first.step()
        schedule.after_step()
    second = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    restored = Schedule(second, config, 5)
    second.load_state_dict(first.state_dict())
    restored.load_state_dict(schedule.state_dict())
    for _ in range(8):
        for optimizer, s in ((first, schedule), (second, restored)):
            optimizer.step()
            s.after_step()
        assert restored.learning_rate == schedule.learning_rate
    other = dataclasses.replace(config, lr_schedule="type1")
    with pytest.raises(ConfigError, match="differs from lr_schedule"):
        Schedule(second, other, 5).load_state_dict(schedule.state_dict())
    with pytest.raises(ConfigError, match="no learning-rate schedule state .written by an earlier balm_tune"):
        restored.load_state_dict({"name": "tst"})  # a checkpoint from before schedules were saved
