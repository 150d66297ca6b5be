"""Simple forecasts that every BALM score is shown beside, scored on exactly the same windows.

- repeat-last value: the last look-back value held for the whole horizon;
- linear: one weight matrix look-back -> horizon plus a bias, shared by every variable, fitted in
  closed form (least squares, normal equations in float64) on all training windows of the run
  (for few-shot runs: the kept `percent`% of them), as the linear models of the long-term
  forecasting literature (Zeng et al., "Are Transformers Effective for Time Series Forecasting?").

A model that does not beat the linear model on validation has learnt nothing the look-back's linear
structure does not already give; the CLIs and the search summary say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.config import BalmConfig
from core.data import ForecastData, WindowSet
from core.significance import DieboldMariano, SeedSpread, diebold_mariano, window_losses

CHUNK = 4096  # windows per block when fitting or scoring (bounded memory at T=512, H=720)
BASELINES = {"repeat_last": "repeat-last value", "linear": "linear (least squares, look-back -> horizon)"}


@dataclass
class Metrics:
    """MSE and MAE on standardised values, and over how many windows they were taken. `window_mse`: the
    MSE of each window start scored (all its variables), for the significance test; never saved."""

    mse: float
    mae: float
    windows: int
    window_mse: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"mse": self.mse, "mae": self.mae, "windows": self.windows}

    def describe(self, total: int | None = None) -> str:
        """'mse 0.3815 mae 0.4012 over 19,495 windows' (+ 'of N' when a subset)."""
        of = f" of {total:,}" if total is not None and total != self.windows else ""
        return f"mse {self.mse:.4f} mae {self.mae:.4f} over {self.windows:,}{of} windows"


class ErrorSum:
    """Accumulates squared and absolute errors block by block (float64) into Metrics, and each row's MSE."""

    def __init__(self) -> None:
        self.squared = self.absolute = 0.0
        self.windows = self.values = 0
        self.rows: list[torch.Tensor] = []  # [B] MSE over the horizon, per block

    def add(self, forecast: torch.Tensor, target: torch.Tensor) -> None:
        error = (forecast.double() - target.double()).detach()
        squared = error.square()
        self.squared += squared.sum().item()
        self.absolute += error.abs().sum().item()
        self.windows += error.shape[0]
        self.values += error.numel()
        self.rows.append(squared.mean(dim=1).cpu())

    def metrics(self, starts: torch.Tensor | None = None) -> Metrics:
        """The scores; with `starts` (each row's window start, in the order added) also `window_mse`."""
        values = max(self.values, 1)
        by_window = None
        if starts is not None and self.rows:
            by_window = window_losses(torch.cat(self.rows), starts.cpu())
        return Metrics(self.squared / values, self.absolute / values, self.windows, by_window)


def eval_index(n: int, batch_size: int, max_batches: int | None) -> torch.Tensor:
    """All n windows, or max_batches batches of evenly spaced ones (fixed across epochs and trials)."""
    if max_batches is None or max_batches * batch_size >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, max_batches * batch_size).round().long().unique()


def repeat_last(x: torch.Tensor, pred_len: int) -> torch.Tensor:
    """x [B, T] -> [B, H]: the last value, repeated."""
    return x[:, -1:].expand(-1, pred_len)


@dataclass
class LinearForecast:
    """forecast = x @ weight + bias; weight [T, H] and bias [H] in float64."""

    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, windows: WindowSet) -> LinearForecast:
        """Least squares over every window of `windows` via the normal equations (float64)."""
        width = windows.seq_len + 1
        gram = torch.zeros(width, width, dtype=torch.float64)
        moment = torch.zeros(width, windows.pred_len, dtype=torch.float64)
        for index in torch.arange(len(windows)).split(CHUNK):
            x = windows.inputs(index.to(windows.series.device)).double().cpu()
            design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
            gram += design.T @ design
            moment += design.T @ windows.targets(index.to(windows.series.device)).double().cpu()
        solution = torch.linalg.lstsq(gram, moment).solution  # [T + 1, H]; lstsq: robust if gram is singular
        return cls(weight=solution[:-1], bias=solution[-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.double().cpu() @ self.weight + self.bias


def score(forecast: Callable[[torch.Tensor], torch.Tensor], windows: WindowSet, index: torch.Tensor) -> Metrics:
    """Metrics of `forecast` (look-backs [B, T] -> [B, H]) on the windows `index` of a split."""
    errors = ErrorSum()
    for chunk in index.split(CHUNK):
        chunk = chunk.to(windows.series.device)
        errors.add(forecast(windows.inputs(chunk)).cpu(), windows.targets(chunk).cpu())
    return errors.metrics(windows.locate(index)[0])


def baseline_metrics(
    train: WindowSet, splits: dict[str, tuple[WindowSet, torch.Tensor]]
) -> dict[str, dict[str, Metrics]]:
    """{baseline: {split: Metrics}} for every baseline, the linear model fitted on `train`.

    `splits` maps a split name to (its windows, the index of the windows the model is scored on).
    """
    linear = LinearForecast.fit(train)
    forecasts = {"repeat_last": lambda x: repeat_last(x, train.pred_len), "linear": linear}
    return {
        name: {split: score(forecast, windows, index) for split, (windows, index) in splits.items()}
        for name, forecast in forecasts.items()
    }


def run_baselines(data: ForecastData, config: BalmConfig) -> dict[str, dict[str, Metrics]]:
    """Baselines on the windows a run is scored on: validation's eval_index subset, every test window."""
    val = eval_index(len(data.val), config.batch_size, config.max_eval_batches)
    return baseline_metrics(data.train, {"val": (data.val, val), "test": (data.test, torch.arange(len(data.test)))})


def significance(model: Metrics, baseline: Metrics, horizon: int) -> DieboldMariano | None:
    """The Diebold-Mariano test of the model against a baseline on the same windows (core/significance.py),
    or None where either was scored without its per-window errors."""
    if model.window_mse is None or baseline.window_mse is None:
        return None
    return diebold_mariano(model.window_mse, baseline.window_mse, horizon)


def verdict(model_mse: float, baseline_mse: float, test: DieboldMariano | None = None) -> str:
    """'beats', 'does NOT beat', or, where a Diebold-Mariano test applies and finds nothing at ALPHA,
    'shows no significant difference from'."""
    if test is not None and test.p_value is not None and not test.significant:
        return "shows no significant difference from"
    return "beats" if model_mse < baseline_mse else "does NOT beat"


def comparison(
    name: str,
    model: dict[str, Metrics],
    baseline: dict[str, Metrics],
    who: str = "the model",
    tests: dict[str, DieboldMariano] | None = None,
    spread: SeedSpread | None = None,
) -> str:
    """One line: the baseline's scores and whether `who` beats it (lower MSE) on each split, with the
    p-value of the split's Diebold-Mariano test where `tests` has one and, with `spread` (`who`'s test
    MSE over several seeds), whether its mean +- std excludes the baseline's test MSE."""
    tests = tests or {}
    scores = ", ".join(f"{split} {baseline[split].describe()}" for split in baseline)
    verdicts = []
    for split in (split for split in baseline if split in model):
        a, b, test = model[split].mse, baseline[split].mse, tests.get(split)
        figures = f"{a:.4f} vs {b:.4f}" + (f", {test.p_text()}" if test is not None else "")
        figures += f"; {spread.text(b)}" if spread is not None and split == "test" else ""
        verdicts.append(f"{verdict(a, b, test)} it on {split} ({figures})")
    return f"baseline {BASELINES[name]}: {scores}; {who} " + " and ".join(verdicts)
