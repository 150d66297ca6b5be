"""How well can a forecaster that sees only the instance-normalised look-back do? A floor for BALM on ETTh1.

BALM (docs/model.md) normalises every look-back window (RevIN without affine), forecasts in that
space and de-normalises; its statistics prompt is computed from the normalised window too. So no
BALM setting lets it see the window's level or scale. Its time-series branch (patches -> Conv1d ->
Linear -> head) is linear in the normalised input. This bench fits that linear map in closed form:
least squares on all training windows, each row weighted by its standard deviation so the fitted
error is the MSE after de-normalising (BALM's training loss). It prints its validation MSE on the
default space's 512 evenly spaced windows and its test MSE over every window, beside the linear
baseline of core/baselines.py (the same fit on the raw look-back) on the same windows.

    python bench/normalised_linear.py                       # T = 96 192 336 512, H = 96 (about a minute)
    python bench/normalised_linear.py --seq-len 96 512
"""

from __future__ import annotations

import argparse

import torch

from core.baselines import CHUNK, LinearForecast, eval_index, score
from core.config import quickstart
from core.data import WindowSet, load_data
from core.prompts import normalise


def fit_normalised(train: WindowSet) -> torch.Tensor:
    """[T + 1, H]: least squares from [x_norm, 1] to y_norm, rows weighted by the window's std."""
    width = train.seq_len + 1
    gram = torch.zeros(width, width, dtype=torch.float64)
    moment = torch.zeros(width, train.pred_len, dtype=torch.float64)
    for index in torch.arange(len(train)).split(CHUNK):
        x_norm, mean, std = (t.double() for t in normalise(train.inputs(index)))
        design = torch.cat([x_norm, torch.ones(len(x_norm), 1, dtype=torch.float64)], dim=1) * std
        gram += design.T @ design
        moment += design.T @ (train.targets(index).double() - mean)  # (y_norm * std)
    return torch.linalg.lstsq(gram, moment).solution


def normalised_forecast(weight: torch.Tensor):
    def forecast(x: torch.Tensor) -> torch.Tensor:
        x_norm, mean, std = (t.double() for t in normalise(x))
        design = torch.cat([x_norm, torch.ones(len(x_norm), 1, dtype=torch.float64)], dim=1)
        return (design @ weight) * std + mean

    return forecast


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, nargs="+", default=[96, 192, 336, 512])
    args = p.parse_args()
    base = quickstart()
    print(f"ETTh1, H={base.pred_len}; validation over {base.max_eval_batches * base.batch_size} evenly spaced windows")
    print(f"{'T':>4s} {'normalised linear val / test':>30s} {'linear baseline val / test':>28s}  test windows")
    for seq_len in args.seq_len:
        data = load_data(base.with_overrides({"seq_len": seq_len}))
        val = eval_index(len(data.val), base.batch_size, base.max_eval_batches)
        test = torch.arange(len(data.test))
        rows = []
        for forecast in (normalised_forecast(fit_normalised(data.train)), LinearForecast.fit(data.train)):
            rows.append((score(forecast, data.val, val).mse, score(forecast, data.test, test).mse))
        (nv, nt), (lv, lt) = rows
        print(f"{seq_len:4d} {nv:21.4f} / {nt:.4f} {lv:19.4f} / {lt:.4f}  {len(test):,}")


if __name__ == "__main__":
    main()
