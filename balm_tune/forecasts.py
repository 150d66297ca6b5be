"""The search winner's forecasts on a few test windows, beside the simple baselines, in the data's units.

The winner is rebuilt on the CPU from what the search exported (config.yaml + checkpoint.pt,
its best validation weights), so the pictures show exactly the model a user retrains or deploys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from balm_tune.experiment import CHECKPOINT, CONFIG
from core.baselines import BASELINES, LinearForecast, repeat_last
from core.config import BalmConfig
from core.data import DataError, ForecastData, load_data, split_borders
from core.train import Trainer

WINNER = "BALM-TSF (winner)"


@dataclass
class WindowForecast:
    """One test window of one variable: what was seen, what happened, what each method forecast."""

    variable: str
    first_date: str  # date of the first forecast step (the CSV's `date` column)
    history: np.ndarray  # the look-back window, data units
    truth: np.ndarray  # the horizon, data units
    forecasts: dict[str, np.ndarray]  # method -> horizon forecast, data units
    mse: dict[str, float]  # method -> MSE over this window's horizon, standardised (as the search's metrics)


def rebuild_winner(experiment: Path) -> Trainer:
    """The winner's Trainer on the CPU with its best weights; checks the data file is the searched one."""
    config = BalmConfig.load(experiment / CONFIG)
    searched_sha = config.extras.get("data_sha256")
    config = config.with_overrides({"device": "cpu", "num_threads": None}, source=str(experiment / CONFIG))
    data = load_data(config)
    if searched_sha and data.sha256 != searched_sha:
        raise DataError(
            f"data file {data.path}: sha256 {data.sha256[:12]}... differs from the searched file's "
            f"{searched_sha[:12]}... ({CONFIG} 'data_sha256'); the forecasts would not be the search's"
        )
    trainer = Trainer(config, data=data, show_progress=False)
    trainer.load(experiment / CHECKPOINT)
    trainer.use_best_weights()
    return trainer


def baseline_forecasts(x: torch.Tensor, linear: LinearForecast, pred_len: int) -> dict[str, torch.Tensor]:
    """Forecasts [n, H] of the simple baselines (core.baselines) for standardised look-backs x [n, T]."""
    return {BASELINES["repeat_last"]: repeat_last(x, pred_len), BASELINES["linear"]: linear(x.cpu()).to(x.device)}


@torch.no_grad()
def winner_forecasts(trainer: Trainer, per_variable: int = 3) -> list[WindowForecast]:
    """`per_variable` evenly spaced test windows of every evaluated variable (MS: the target only)."""
    data: ForecastData = trainer.data
    test = trainer.windows["test"]
    starts = np.linspace(0, test.n_starts - 1, per_variable).round().astype(int)
    dates = _test_dates(data, trainer.config)
    trainer.model.eval()
    linear = LinearForecast.fit(data.train)  # least squares on every training window, once for all variables
    out = []
    for position, channel in enumerate(test.channels):
        index = torch.as_tensor(position * test.n_starts + starts)
        x, y, ids, lengths = trainer.batch("test", index)
        with trainer.autocast():
            forecast = trainer.model(x, ids, lengths).forecast.float()
        methods = {WINNER: forecast, **baseline_forecasts(x, linear, trainer.config.pred_len)}
        mean, std = data.mean[channel], data.std[channel]
        for row, start in enumerate(starts):
            out.append(
                WindowForecast(
                    variable=data.variables[channel],
                    first_date=dates[start + test.seq_len],
                    history=x[row].cpu().numpy() * std + mean,
                    truth=y[row].cpu().numpy() * std + mean,
                    forecasts={name: f[row].cpu().numpy() * std + mean for name, f in methods.items()},
                    mse={name: float((f[row] - y[row]).double().square().mean()) for name, f in methods.items()},
                )
            )
    return out


def _test_dates(data: ForecastData, config: BalmConfig) -> list[str]:
    """The `date` of every row of the test split (look-back rows included)."""
    dates = pd.read_csv(data.path, usecols=["date"])["date"].astype(str).tolist()
    begin, end = split_borders(data.split_kind, len(dates), config.seq_len)["test"]
    return dates[begin:end]
