"""`python -m balm_tune.predict`: a run's folder and a CSV in, the forecast CSV out; mistakes in one line."""

import pandas as pd
import pytest

from balm_tune.predict import main as predict_main
from balm_tune.train import main as train_main


@pytest.fixture(scope="module")
def run(tmp_path_factory, etth1_path):
    """A `balm_tune.train` run folder (config.yaml, checkpoint.pt, summary.json) of a seconds-long model."""
    out = tmp_path_factory.mktemp("runs")
    keys = ["backbone=tiny-gpt2", "llm_layers=2", "seq_len=96", "pred_len=24", "d_model=16", "d_ff=32"]
    keys += ["epochs=1", "max_train_batches=2", "max_eval_batches=1", f"data_path={etth1_path}"]
    argv = ["--out", str(out), "--name", "r", "--quiet", *(a for k in keys for a in ("--set", k))]
    assert train_main(argv) == 0
    return out / "r"


def test_a_run_folder_forecasts_the_rows_after_the_data_into_its_folder(run, etth1_path, capsys):
    assert predict_main([str(run), "--data", str(etth1_path)]) == 0
    forecast = pd.read_csv(run / "forecasts.csv", parse_dates=["date"])
    frame = pd.read_csv(etth1_path, parse_dates=["date"])
    assert len(forecast) == 24 and forecast["date"].iloc[0] == frame["date"].iloc[-1] + pd.Timedelta(hours=1)
    assert list(forecast.columns) == ["date", *frame.columns[1:]]  # every variable, no truth after the file's end
    assert "for 24 rows from" in capsys.readouterr().out


def test_a_back_test_writes_the_truth_beside_the_forecast(run, etth1_path, tmp_path):
    frame = pd.read_csv(etth1_path)
    at = frame["date"].iloc[15_000]
    out = tmp_path / "backtest.csv"
    assert predict_main([str(run), "--data", str(etth1_path), "--at", at, "--out", str(out)]) == 0
    written = pd.read_csv(out)
    assert written["OT_true"].tolist() == pytest.approx(frame["OT"].iloc[15_001:15_025].tolist())
    assert written["date"].iloc[0] == frame["date"].iloc[15_001]


def test_long_format_in_and_out(run, etth1_path, tmp_path):
    tail = pd.read_csv(etth1_path).tail(96)
    long = tail.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    long.to_csv(tmp_path / "long.csv", index=False)
    out = tmp_path / "f.csv"
    assert predict_main([str(run), "--data", str(tmp_path / "long.csv"), "--format", "long", "--out", str(out)]) == 0
    assert list(pd.read_csv(out).columns) == ["unique_id", "ds", "y"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nowhere", "--data", "{data}"], "nowhere not found"),
        (["{tmp}", "--data", "{data}"], "has no checkpoint.pt"),
        (["{run}", "--data", "{tmp}/missing.csv"], "missing.csv: cannot be read as CSV"),
        (["{run}", "--data", "{data}", "--at", "1999-01-01"], "--at 1999-01-01: no row of"),
    ],
    ids=["no-such-model", "folder-without-checkpoint", "no-such-data", "date-not-in-data"],
)
def test_a_mistake_is_one_error_line_and_exit_2(run, etth1_path, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, data=etth1_path, run=run) for a in argv]
    assert predict_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
