"""--dry-run's wall-time estimate: ASHA's expected epochs per trial, and a real measured step."""

import pytest

from balm_tune.estimate import measure, pruned_epochs
from balm_tune.space import load_space
from core.data import load_data
from tests.conftest import write_tiny_space


def test_asha_keeps_one_trial_in_reduction_factor_at_each_rung():
    # rungs at epochs 1, 2 and 4 of 5: every trial trains epoch 1, half epoch 2, a quarter 3-4, an eighth 5
    assert pruned_epochs(5, "asha", {"grace_period": 1, "reduction_factor": 2}) == pytest.approx(2.125)
    assert pruned_epochs(9, "asha", {"grace_period": 3, "reduction_factor": 3}) == pytest.approx(3 + 6 / 3)
    assert pruned_epochs(5, "fifo", {}) == 5.0  # no early stopping: every epoch


def test_the_estimate_comes_from_a_step_measured_here(tmp_path):
    space = load_space(write_tiny_space(tmp_path, budget={"num_samples": 6, "max_epochs": 3}))
    estimate = measure(space, load_data(space.base), at_once=2)
    assert estimate.batch_s > 0 and estimate.val_s > 0
    assert estimate.val_windows == 64 and estimate.batches_per_epoch == 5  # max_eval_batches 2 x 32, 5 batches
    low, high = (estimate.seconds(e) for e in estimate.epochs)
    assert 0 < low < high
    line = estimate.line()
    assert line.startswith("estimate: ") and "from a measured step" in line and "6 trials x 1.8 to 3 epochs" in line


def test_the_retrainings_after_the_search_are_counted_in_the_estimate(tmp_path):
    from balm_tune.api import prepare_search
    from balm_tune.estimate import retrains

    path = write_tiny_space(tmp_path, enqueue=[{"prompt_len": 4}])
    plan = prepare_search(path, storage=tmp_path / "runs", official=True, ablations=["no_llm", "llm2attn"])
    assert retrains(plan, final_seeds=2) == 2 + 3 + 2 * 3  # final seeds; official and each arm on 3 seeds
    space = load_space(path)
    bare, retrained = measure(space, load_data(space.base), 2), measure(space, load_data(space.base), 2, 11)
    assert retrained.seconds(3) > bare.seconds(3) and "then 11 retraining(s) of 3 epochs" in retrained.line()
