"""Forecast a CSV with a trained model: the next pred_len rows after its last seq_len rows, in its units.

The model is a search's winner or a `balm_tune.train` run: its folder (config.yaml and checkpoint.pt;
only the checkpoint is read) or the checkpoint file itself. The data is shaped like the training CSV:
a `date` column and the training variables, at the training data's frequency (or neuralforecast's long
format, `unique_id, ds, y`, with --format long). The forecast continues the dates; its columns are every
variable (features M) or the target (S, MS). With --at DATE the look-back ends at that row instead, and
where the file has the rows that follow, the truth is written beside the forecast (a back-test).

python -m balm_tune.predict runs/my-search --data new.csv                      # -> runs/my-search/forecasts.csv
python -m balm_tune.predict runs/my-search --data ETTh1.csv --at "2017-06-01 00:00:00" --out backtest.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from balm_tune.experiment import CHECKPOINT
from core.cli import Parser, exit_with
from core.errors import BalmError

FORECASTS = "forecasts.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        prog="python -m balm_tune.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help=f"a search's or a training run's folder, or a {CHECKPOINT} file")
    parser.add_argument("--data", required=True, help="CSV with a date column and the training variables")
    parser.add_argument("--out", help=f"CSV to write (default: {FORECASTS} in the model's folder)")
    parser.add_argument("--at", metavar="DATE", help="forecast from the look-back ending at this date (a back-test)")
    parser.add_argument("--format", choices=("wide", "long"), default="wide", help="data and output layout")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: the model's config, auto)")
    return parser.parse_args(argv)


def checkpoint_of(model: str) -> Path:
    """The checkpoint a model argument names: the file, or checkpoint.pt in the folder."""
    path = Path(model).expanduser()
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        where = f"folder {path} has no {CHECKPOINT}" if path.is_dir() else f"{path} not found"
        raise BalmError(f"model {model}: {where}; expected a search's or training run's folder, or a checkpoint")
    return checkpoint


def load_forecaster(model: str | Path, device: str | None = None):
    """The Python API: a core.forecast.Forecaster of a search's or training run's folder (or checkpoint).

    forecaster = load_forecaster("runs/my-search")
    forecast = forecaster.predict(pandas.read_csv("new.csv"))   # date + forecast columns, data units
    """
    from core.forecast import Forecaster

    return Forecaster.load(checkpoint_of(str(model)), device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before torch and transformers are imported: --help answers at once
    import pandas as pd

    from core.forecast import from_long, to_long

    try:
        checkpoint = checkpoint_of(args.model)  # before the data is read: a wrong folder is the likelier mistake
        out = Path(args.out) if args.out else checkpoint.parent / FORECASTS
        try:
            frame = pd.read_csv(args.data)
        except (OSError, ValueError) as err:
            raise BalmError(f"--data {args.data}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
        frame = from_long(frame, args.data) if args.format == "long" else frame
        forecaster = load_forecaster(checkpoint, args.device)
        forecast = forecaster.predict(frame, args.at, source=args.data)
    except BalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    truth = frame.assign(date=pd.to_datetime(frame["date"])).set_index("date")
    known = forecast["date"].isin(truth.index)
    if known.any():  # a back-test: the rows that really followed, beside the forecast
        for column in forecaster.outputs:
            forecast[f"{column}_true"] = truth[column].reindex(forecast["date"]).to_numpy()
    written = to_long(forecast[["date", *forecaster.outputs]]) if args.format == "long" else forecast
    out.parent.mkdir(parents=True, exist_ok=True)
    written.to_csv(out, index=False)
    c = forecaster.config
    print(
        f"forecast of {', '.join(forecaster.outputs)} for {c.pred_len} rows from {forecast['date'].iloc[0]} "
        f"(look-back {c.seq_len} rows{f' ending at {args.at}' if args.at else ''}; "
        f"{int(known.sum())} of them with the truth beside); wrote {out}"
    )
    return 0


if __name__ == "__main__":
    exit_with(main)
