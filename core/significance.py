"""Is one forecaster's lower test error real? The Diebold-Mariano test on per-window losses (DESIGN §5).

Diebold and Mariano (1995, "Comparing predictive accuracy") with the small-sample correction of
Harvey, Leybourne and Newbold (1997). For two forecasts of the same T test windows:

    d_t    = L_a(t) - L_b(t)       L: squared error averaged over the horizon and the window's variables
    var    = gamma_0 + 2 * sum_{k=1}^{h-1} gamma_k       (autocovariances of d; h = pred_len, since
                                                          windows one step apart share h - 1 targets)
    DM     = mean(d) / sqrt(var / T)
    DM*    = DM * sqrt((T + 1 - 2h + h (h - 1) / T) / T),  two-sided p from Student t with T - 1 d.o.f.

Channel-independent rows of one window are one t (their losses are averaged first). The test needs
many more windows than h; with fewer than MIN_WINDOWS_PER_HORIZON * h, or a long-run variance
estimate that is not positive, it says it does not apply instead of printing a number.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch
from scipy import stats

ALPHA = 0.05  # the level at which a difference is called significant
MIN_WINDOWS_PER_HORIZON = 2  # T >= 2h: the h - 1 autocovariances then use at most half the windows


@dataclass(frozen=True)
class DieboldMariano:
    """The test of equal accuracy of forecasts a and b; `statistic`/`p_value` None where it does not apply."""

    windows: int  # T
    mean_difference: float  # mean of L_a - L_b: negative when a is more accurate
    statistic: float | None = None  # DM*, Harvey-Leybourne-Newbold corrected
    p_value: float | None = None  # two-sided
    reason: str | None = None  # why it does not apply

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    def p_text(self) -> str:
        """'p=0.013', 'p<0.001', or why the test does not apply."""
        if self.p_value is None:
            return f"Diebold-Mariano test not applicable: {self.reason}"
        return "p<0.001" if self.p_value < 0.001 else f"p={self.p_value:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_losses(row_losses: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Per-row losses [R] and each row's window start [R] -> the mean loss of each start present [T],
    in order of start (the rows of one window are its variables)."""
    _, which = torch.unique(starts, return_inverse=True)
    return torch.bincount(which, weights=row_losses.double()) / torch.bincount(which)


def diebold_mariano(loss_a: torch.Tensor, loss_b: torch.Tensor, horizon: int) -> DieboldMariano:
    """The HLN-corrected Diebold-Mariano test of per-window losses [T] of forecasts a and b."""
    if loss_a.shape != loss_b.shape:
        raise ValueError(f"the two forecasts were scored on different windows: {len(loss_a)} vs {len(loss_b)}")
    d = (loss_a.double() - loss_b.double()).cpu()
    t, h = len(d), horizon
    mean = d.mean().item() if t else math.nan
    if t < MIN_WINDOWS_PER_HORIZON * h:
        return DieboldMariano(
            t,
            mean,
            reason=f"{t} windows, fewer than {MIN_WINDOWS_PER_HORIZON} x pred_len = {MIN_WINDOWS_PER_HORIZON * h}",
        )
    centred = d - mean
    gammas = [(centred[k:] * centred[: t - k]).sum().item() / t for k in range(h)]  # gamma_0 .. gamma_{h-1}
    variance = gammas[0] + 2 * sum(gammas[1:])
    if not variance > 0:
        reason = (
            "the two forecasts are identical" if gammas[0] == 0 else "the long-run variance estimate is not positive"
        )
        return DieboldMariano(t, mean, reason=reason)
    dm = mean / math.sqrt(variance / t)
    statistic = dm * math.sqrt((t + 1 - 2 * h + h * (h - 1) / t) / t)
    return DieboldMariano(t, mean, statistic, float(2 * stats.t.sf(abs(statistic), df=t - 1)))


@dataclass(frozen=True)
class SeedSpread:
    """A figure over several training seeds: its mean, sample std and whether the interval mean +- std
    excludes another figure (a baseline's, or the winner's beside an ablation arm). The spread is the
    seeds', not the windows': a difference inside it can come from the seed alone."""

    mean: float
    std: float
    seeds: int

    @classmethod
    def of(cls, values: list[float]) -> SeedSpread:
        values = [float(v) for v in values]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))

    def excludes(self, other: float) -> bool:
        return abs(other - self.mean) > self.std

    def text(self, other: float) -> str:
        """'4 seeds 0.3926 +- 0.0024 excludes 0.3951' (or 'includes')."""
        word = "excludes" if self.excludes(other) else "includes"
        return f"{self.seeds} seeds {self.mean:.4f} +- {self.std:.4f} {word} {other:.4f}"
