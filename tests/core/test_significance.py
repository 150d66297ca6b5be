"""The Diebold-Mariano test (HLN-corrected, HAC variance with h - 1 lags) against hand computations."""

import math

import pytest
import torch

from core.significance import SeedSpread, diebold_mariano, window_losses


def _losses(differences: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of a and b whose per-window differences are `differences` (b's losses are all 1)."""
    d = torch.tensor(differences, dtype=torch.float64)
    return d + 1.0, torch.ones_like(d)


def test_one_step_ahead_on_four_windows_matches_the_hand_computation():
    # d = 1, 2, 3, 4: mean 2.5, gamma_0 = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25 and no further lag (h = 1):
    # DM = 2.5 / sqrt(1.25 / 4) = sqrt(20); HLN factor sqrt((4 + 1 - 2) / 4) = sqrt(3 / 4): DM* = sqrt(15)
    result = diebold_mariano(*_losses([1, 2, 3, 4]), horizon=1)
    assert result.windows == 4 and result.mean_difference == pytest.approx(2.5)
    assert result.statistic == pytest.approx(math.sqrt(15), rel=1e-12)
    # Student t with 3 d.o.f.: two-sided critical values 3.182 (p = 0.05) and 4.541 (p = 0.02)
    assert 0.02 < result.p_value < 0.05 and result.significant


def test_two_step_ahead_adds_the_first_autocovariance_twice():
    # d = 1 3 2 5 4 6: mean 3.5, deviations -2.5 -0.5 -1.5 1.5 0.5 2.5; gamma_0 = 17.5 / 6,
    # gamma_1 = (1.25 + 0.75 - 2.25 + 0.75 + 1.25) / 6 = 1.75 / 6, so var = 21 / 6 = 3.5 and
    # DM = 3.5 / sqrt(3.5 / 6) = sqrt(21); HLN: (6 + 1 - 4 + 2 / 6) / 6 = 5 / 9, so DM* = sqrt(21 * 5 / 9)
    result = diebold_mariano(*_losses([1, 3, 2, 5, 4, 6]), horizon=2)
    assert result.statistic == pytest.approx(math.sqrt(21 * 5 / 9), rel=1e-12)
    # t with 5 d.o.f.: two-sided critical values 3.365 (p = 0.02) and 4.032 (p = 0.01); DM* = 3.416
    assert 0.01 < result.p_value < 0.02
    assert result.p_text() == f"p={result.p_value:.3f}"


def test_the_sign_says_which_forecast_is_better_and_swapping_them_flips_it():
    torch.manual_seed(0)
    a = torch.rand(400) + 0.1  # a has the lower losses
    b = a + 0.05 + 0.2 * torch.rand(400)
    ab, ba = diebold_mariano(a, b, horizon=4), diebold_mariano(b, a, horizon=4)
    assert ab.statistic < 0 and ab.mean_difference < 0 and ab.p_value < 0.001 and ab.p_text() == "p<0.001"
    assert ba.statistic == pytest.approx(-ab.statistic) and ba.p_value == pytest.approx(ab.p_value)


def test_equally_accurate_forecasts_of_overlapping_windows_are_rejected_about_5_percent_of_the_time():
    # d_t the sum of h = 5 consecutive shocks: what overlapping windows of equally good forecasts give
    generator = torch.Generator().manual_seed(0)
    rejected = {1: 0, 5: 0}
    for _ in range(300):
        shocks = torch.randn(400 + 4, generator=generator, dtype=torch.float64)
        d = shocks.unfold(0, 5, 1).sum(dim=1)  # [400], autocorrelated up to lag 4
        for horizon in rejected:
            rejected[horizon] += diebold_mariano(d, torch.zeros_like(d), horizon).significant
    assert 0.01 <= rejected[5] / 300 <= 0.09  # the HAC variance over h - 1 lags keeps the 5% level
    assert rejected[1] / 300 > 0.25  # ignoring the overlap (h = 1) would call noise a win


def test_too_few_windows_or_identical_forecasts_are_said_not_a_number():
    few = diebold_mariano(*_losses([1, 2, 3, 4, 5]), horizon=3)  # 5 windows < 2 x 3
    assert few.statistic is None and few.p_value is None and not few.significant
    assert few.p_text() == "Diebold-Mariano test not applicable: 5 windows, fewer than 2 x pred_len = 6"
    same = diebold_mariano(torch.ones(10), torch.ones(10), horizon=1)
    assert same.p_value is None and same.reason == "the two forecasts are identical"
    with pytest.raises(ValueError, match="different windows: 3 vs 4"):
        diebold_mariano(torch.ones(3), torch.ones(4), horizon=1)


def test_rows_of_one_window_count_once_with_their_mean_loss():
    # rows: variables 0 and 1 of starts 0, 1, 2 (the order core.data.WindowSet gives: variable-major)
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    starts = torch.tensor([0, 1, 2, 0, 1, 2])
    assert window_losses(losses, starts).tolist() == [3.0, 4.0, 5.0]


def test_a_seed_spread_is_the_mean_and_sample_std_and_excludes_what_lies_beyond_one_std():
    spread = SeedSpread.of([1.0, 2.0, 3.0])
    assert (spread.mean, spread.std, spread.seeds) == (2.0, 1.0, 3)
    assert spread.excludes(3.5) and spread.excludes(0.5) and not spread.excludes(2.9)
    assert spread.text(3.5) == "3 seeds 2.0000 +- 1.0000 excludes 3.5000"
    assert SeedSpread.of([0.4]).std == 0.0  # one seed: no spread, so any other figure is excluded
