"""Long-term-forecasting CSVs -> standardised splits -> channel-independent windows.

A CSV has a `date` column and one column per variable. Splits follow the published convention
(the Informer/Autoformer convention): ETT hourly 12/4/4 months, ETT minutely the same at 4x the rows, other
files 70/10/20; validation and test windows look back `seq_len` rows into the previous split. The
scaler is fitted on the train split only. Every (start, variable) pair is one window, indexed
`variable * n_starts + start` as in the reference loaders.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.config import BalmConfig
from core.errors import BalmError

EMBEDDED = {"ETTh1": Path(__file__).parent / "datasets" / "ETTh1.csv"}
SPLITS = ("train", "val", "test")


class DataError(BalmError, ValueError):
    """Bad data input; the message names the file/column and what was expected."""


def resolve_data_path(data_path: str) -> Path:
    """`embedded:NAME` -> the CSV shipped in core/datasets; anything else is a file path."""
    if data_path.startswith("embedded:"):
        name = data_path.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise DataError(f"data_path {data_path!r}: unknown embedded dataset, expected one of {sorted(EMBEDDED)}")
        return EMBEDDED[name]
    path = Path(data_path).expanduser()
    if path.is_dir():
        raise DataError(f"data file {path} is a folder, expected a CSV file (config key 'data_path')")
    if not path.is_file():
        raise DataError(f"data file {path} not found (config key 'data_path')")
    return path


@cache
def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_series(path: Path, features: str, target: str) -> tuple[np.ndarray, list[str], pd.Timedelta]:
    """Read the CSV and return (values [rows, variables] float64, variable names, the step between rows).

    For S only the target column is kept; for M and MS all variables, target last.
    """
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])  # pandas would rename a repeated name ('HUFL.1')
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"data file {path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    repeated = sorted({str(c) for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"data file {path}: column names {repeated} appear more than once; each must be unique")
    if "date" not in frame.columns:
        raise DataError(f"data file {path}: no 'date' column (columns: {list(frame.columns)[:10]})")
    if target not in frame.columns:
        raise DataError(
            f"data file {path}: target column {target!r} not found (config key 'target'); "
            f"columns: {list(frame.columns)[:10]}"
        )
    variables = [c for c in frame.columns if c not in ("date", target)] + [target]
    if features == "S":
        variables = [target]
    values = frame[variables]
    for column in variables:
        numeric = pd.to_numeric(values[column], errors="coerce")
        bad = numeric.isna() & values[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"data file {path}: column {column!r} row {row + 2} has non-numeric value "
                f"{values[column].iloc[row]!r}, expected a number"
            )
        if numeric.isna().any():
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise DataError(f"data file {path}: column {column!r} row {row + 2} is empty/NaN, expected a number")
        if np.isinf(numeric.to_numpy(dtype=np.float64)).any():
            row = int(np.flatnonzero(np.isinf(numeric.to_numpy(dtype=np.float64)))[0])
            raise DataError(
                f"data file {path}: column {column!r} row {row + 2} is {str(values[column].iloc[row])!r}, "
                "expected a finite number"
            )
    step = check_dates(path, frame["date"])
    return values.to_numpy(dtype=np.float64), variables, step


def check_dates(path: Path, dates: pd.Series) -> pd.Timedelta:
    """Dates must parse and strictly increase: windows are cut by row, so an unsorted or duplicated
    row would silently join unrelated times into one window. Files are refused, never reordered.
    Returns the most common step between two rows (the data's frequency)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format": the NaT check below reports it
        parsed = pd.to_datetime(dates, errors="coerce")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(f"data file {path}: column 'date' row {row + 2} is {dates.iloc[row]!r}, expected a date")
    steps = np.diff(parsed.to_numpy())
    if (steps <= np.timedelta64(0)).any():
        row = int(np.flatnonzero(steps <= np.timedelta64(0))[0]) + 1
        what = "repeats" if steps[row - 1] == np.timedelta64(0) else "comes before"
        raise DataError(
            f"data file {path}: column 'date' row {row + 2} ({dates.iloc[row]}) {what} row {row + 1} "
            f"({dates.iloc[row - 1]}), expected dates sorted in increasing order without duplicates"
        )
    return pd.Series(steps).mode().iloc[0] if len(steps) else pd.Timedelta(0)


def split_kind(config: BalmConfig, path: Path) -> str:
    if config.split != "auto":
        return config.split
    name = path.name.lower()
    return "ett_hour" if name.startswith("etth") else "ett_minute" if name.startswith("ettm") else "ratio"


def split_borders(kind: str, n_rows: int, seq_len: int, percent: float = 100.0) -> dict[str, tuple[int, int]]:
    """Row ranges [begin, end) of train/val/test, including the look-back overlap."""
    if kind in ("ett_hour", "ett_minute"):
        month = 30 * 24 * (4 if kind == "ett_minute" else 1)
        ends = [12 * month, 16 * month, 20 * month]
    else:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        ends = [n_train, n_rows - n_test, n_rows]
    begins = [0, ends[0] - seq_len, ends[1] - seq_len]
    if percent < 100:  # few-shot: first percent% of the training windows (reference formula)
        ends[0] = int((ends[0] - seq_len) * percent // 100 + seq_len)
    return dict(zip(SPLITS, zip(begins, ends)))


@dataclass
class WindowSet:
    """All windows of one split: `series` [rows, variables] standardised, windows over `channels`."""

    name: str
    series: torch.Tensor  # [rows, N] float32, standardised
    channels: list[int]  # which variables yield windows (MS val/test: the target only)
    seq_len: int
    pred_len: int

    @property
    def n_starts(self) -> int:
        return self.series.shape[0] - self.seq_len - self.pred_len + 1

    def __len__(self) -> int:
        return self.n_starts * len(self.channels)

    def locate(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window index -> (start row, variable column)."""
        channel = torch.as_tensor(self.channels, device=index.device)[index // self.n_starts]
        return index % self.n_starts, channel

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        """Look-back windows [len(index), T]."""
        start, channel = self.locate(index)
        rows = start[:, None] + torch.arange(self.seq_len, device=index.device)
        return self.series[rows, channel[:, None]]

    def targets(self, index: torch.Tensor) -> torch.Tensor:
        """Horizons [len(index), H] that follow each look-back window."""
        start, channel = self.locate(index)
        rows = start[:, None] + self.seq_len + torch.arange(self.pred_len, device=index.device)
        return self.series[rows, channel[:, None]]


@dataclass(frozen=True)
class Scaler:
    """What standardised the training data: its variables (target last), their train-split mean and
    std, and the step between two rows."""

    variables: list[str]
    mean: np.ndarray  # [N]
    std: np.ndarray  # [N]
    step: pd.Timedelta

    def to_dict(self) -> dict:
        return {
            "variables": self.variables,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "step_seconds": self.step.total_seconds(),
        }

    @classmethod
    def from_dict(cls, saved: dict) -> Scaler:
        return cls(
            list(saved["variables"]),
            np.asarray(saved["mean"], dtype=np.float64),
            np.asarray(saved["std"], dtype=np.float64),
            pd.Timedelta(seconds=saved["step_seconds"]),
        )


@dataclass
class ForecastData:
    train: WindowSet
    val: WindowSet
    test: WindowSet
    variables: list[str]
    mean: np.ndarray  # scaler fitted on the train split
    std: np.ndarray
    step: pd.Timedelta  # the most common gap between two dates (the data's frequency)
    path: Path
    sha256: str
    split_kind: str

    def split(self, name: str) -> WindowSet:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    @property
    def scaler(self) -> Scaler:
        return Scaler(list(self.variables), self.mean, self.std, pd.Timedelta(self.step))


def load_data(config: BalmConfig) -> ForecastData:
    """Validate and load the CSV of `config`, split, standardise and window it."""
    path = resolve_data_path(config.data_path)
    values, variables, step = read_series(path, config.features, config.target)
    kind = split_kind(config, path)
    full = split_borders(kind, len(values), config.seq_len)
    borders = split_borders(kind, len(values), config.seq_len, config.percent)
    need = config.seq_len + config.pred_len
    for name, (begin, end) in borders.items():
        if begin < 0 or end > len(values) or end - begin < need:
            raise DataError(
                f"data file {path}: {len(values)} rows give the {name} split rows [{begin}, {end}), "
                f"too short for seq_len + pred_len = {need} (config keys 'seq_len', 'pred_len', 'percent')"
            )
    train_rows = values[full["train"][0] : full["train"][1]]  # the scaler always sees the full train split
    mean, std = train_rows.mean(axis=0), train_rows.std(axis=0)
    std[std == 0] = 1.0
    scaled = torch.from_numpy(((values - mean) / std).astype(np.float32))
    all_channels = list(range(len(variables)))
    target_only = [len(variables) - 1]

    def windows(name: str) -> WindowSet:
        begin, end = borders[name]
        channels = target_only if config.features == "MS" and name != "train" else all_channels
        return WindowSet(name, scaled[begin:end], channels, config.seq_len, config.pred_len)

    return ForecastData(
        windows("train"), windows("val"), windows("test"), variables, mean, std, step, path, file_sha256(path), kind
    )
