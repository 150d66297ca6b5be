"""Forecast new data with a trained BALM model: look-back rows in the data's units -> the next pred_len rows.

A `Forecaster` is a model restored from its checkpoint with the scaler of its training split (stored in
the checkpoint by core.train; for a checkpoint written before that, refitted on the training split of
the config's `data_path`, and said so). It takes a table shaped like the training CSV (a `date` column
and the training variables), checks it, standardises the last `seq_len` rows (or the look-back ending at
`at`), forecasts each variable channel-independently, exactly as core.train scores a window, and returns
the next `pred_len` rows in the data's units, dated at the data's frequency: every variable for
`features: M`, the target for S and MS. `to_long`/`from_long` convert neuralforecast's long format
(`unique_id, ds, y`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.backbones import load_backbone
from core.config import BalmConfig
from core.data import DataError, Scaler, check_dates, load_data
from core.model import BalmModel
from core.prompts import normalise, tokenize_windows
from core.train import read_checkpoint, resolve_device


class Forecaster:
    """A trained model and its scaler; `predict(frame)` forecasts what follows the frame's last rows."""

    def __init__(self, config: BalmConfig, model: BalmModel, tokenizer, scaler: Scaler, device: torch.device):
        self.config, self.model, self.tokenizer, self.scaler, self.device = config, model, tokenizer, scaler, device

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | None = None) -> Forecaster:
        """The best weights of a checkpoint (config.yaml beside it is not needed: the checkpoint has the config)."""
        state = read_checkpoint(checkpoint)
        config = BalmConfig.from_dict(state["config"], source=str(checkpoint))
        if device is not None:
            config = config.with_overrides({"device": device}, source="device")
        if "scaler" in state:
            scaler = Scaler.from_dict(state["scaler"])
        else:
            data = load_data(config)
            scaler = data.scaler
            print(
                f"note: checkpoint {checkpoint} has no scaler (written before predict existed); "
                f"refitted on the training split of {data.path}",
                file=sys.stderr,
            )
        backbone = load_backbone(config.backbone, config.llm_layers, config.attn_implementation)
        resolved = resolve_device(config.device)
        torch.manual_seed(config.seed)
        model = BalmModel(config, backbone)
        model.load_state_dict(state["best_model"], strict=False)
        return cls(config, model.to(resolved).eval(), backbone.tokenizer, scaler, resolved)

    @property
    def outputs(self) -> list[str]:
        """The forecast columns: every variable (M), or the target (S, MS)."""
        return self.scaler.variables if self.config.features == "M" else self.scaler.variables[-1:]

    def look_back(self, frame: pd.DataFrame, at: str | None = None, source: str = "data") -> pd.DataFrame:
        """The `seq_len` rows the forecast starts from, checked: the last ones, or those ending at date `at`."""
        t, variables = self.config.seq_len, self.scaler.variables
        if "date" not in frame.columns:
            raise DataError(f"{source}: no 'date' column (columns: {list(frame.columns)[:10]})")
        missing = [v for v in variables if v not in frame.columns]
        extra = [c for c in frame.columns if c not in ("date", *variables)]
        if missing or extra:
            raise DataError(
                f"{source}: columns must be 'date' and the training variables {variables}; "
                + "; ".join(f"{what} {names}" for what, names in (("missing", missing), ("unexpected", extra)) if names)
            )
        check_dates(Path(source), frame["date"])
        dates = pd.to_datetime(frame["date"])
        end = len(frame)
        if at is not None:
            hits = np.flatnonzero(dates.to_numpy() == pd.Timestamp(at).to_datetime64())
            if not len(hits):
                raise DataError(f"--at {at}: no row of {source} has that date")
            end = int(hits[0]) + 1
        if end < t:
            raise DataError(f"{source}: {end} rows up to the forecast's start, expected at least seq_len = {t}")
        rows = frame.iloc[end - t : end]
        steps = dates.iloc[end - t : end].diff().dropna()
        if (steps != self.scaler.step).any():
            bad = steps[steps != self.scaler.step].index[0]
            raise DataError(
                f"{source}: row {bad + 2} is {steps[bad]} after the one before, expected the training data's "
                f"step {self.scaler.step} in the last seq_len = {t} rows"
            )
        values = rows[variables].apply(pd.to_numeric, errors="coerce")
        if values.isna().any().any():
            column = values.columns[values.isna().any()][0]
            row = int(values.index[values[column].isna()][0])
            raise DataError(f"{source}: column {column!r} row {row + 2} is not a number (NaN or text)")
        return rows

    @torch.no_grad()
    def predict(self, frame: pd.DataFrame, at: str | None = None, source: str = "data") -> pd.DataFrame:
        """The next pred_len rows after the look-back: `date` plus the forecast columns, in data units."""
        rows = self.look_back(frame, at, source)
        s = self.scaler
        values = rows[s.variables].to_numpy(dtype=np.float64)  # [T, N]
        channels = [s.variables.index(c) for c in self.outputs]
        scaled = torch.from_numpy(((values - s.mean) / s.std).astype(np.float32)).T[channels]  # [C, T]
        x = scaled.to(self.device)
        tokens = tokenize_windows(
            normalise(scaled)[0], self.tokenizer, self.config.prompt_decimals, self.config.prompt_style
        )
        ids, lengths = tokens.batch(torch.arange(len(channels)))
        forecast = self.model(x, ids.to(self.device), lengths.to(self.device)).forecast.double().cpu().numpy()  # [C, H]
        out = forecast.T * s.std[channels] + s.mean[channels]  # [H, C], data units
        last = pd.Timestamp(pd.to_datetime(rows["date"]).iloc[-1])
        dates = [last + s.step * (k + 1) for k in range(self.config.pred_len)]
        return pd.DataFrame({"date": dates, **{c: out[:, i] for i, c in enumerate(self.outputs)}})


def from_long(frame: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """neuralforecast's long format (`unique_id, ds, y`) -> the wide table `predict` takes."""
    missing = [c for c in ("unique_id", "ds", "y") if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: long format needs columns unique_id, ds, y; missing {missing}")
    twice = frame.duplicated(["unique_id", "ds"])
    if twice.any():
        row = int(np.flatnonzero(twice.to_numpy())[0])
        raise DataError(f"{source}: row {row + 2} repeats unique_id {frame['unique_id'].iloc[row]!r} at that ds")
    wide = frame.pivot(index="ds", columns="unique_id", values="y").reset_index().rename(columns={"ds": "date"})
    wide.columns.name = None
    return wide


def to_long(frame: pd.DataFrame) -> pd.DataFrame:
    """A wide forecast (`date` + columns) -> `unique_id, ds, y` rows."""
    long = frame.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    return long[["unique_id", "ds", "y"]]
