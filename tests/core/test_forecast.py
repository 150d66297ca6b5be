"""Forecasting new data with a trained model: the same forecast the test score was taken on, in data units."""

import pandas as pd
import pytest
import torch

from core.config import BalmConfig
from core.data import DataError, split_borders
from core.forecast import Forecaster, from_long, to_long
from core.train import Trainer

START = 100  # a test window's start (row offset inside the test split)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, etth1_path):
    config = BalmConfig(
        data_path=str(etth1_path), backbone="tiny-gpt2", llm_layers=2, seq_len=96, pred_len=24, d_model=16,
        d_ff=32, batch_size=32, epochs=1, max_train_batches=3, max_eval_batches=1,
    )  # fmt: skip
    trainer = Trainer(config, show_progress=False)
    trainer.fit()
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    trainer.save(path)
    return trainer, path, pd.read_csv(etth1_path)


def _scored_forecast(trainer: Trainer) -> torch.Tensor:
    """The model's forecasts of test window START for every variable, as `evaluate("test")` computes them
    (in a batch with other windows), brought back to data units: [H, N]."""
    test = trainer.windows["test"]
    index = torch.arange(len(test.channels)) * test.n_starts + START  # variable-major window index
    batch = torch.cat([index, torch.arange(200)])  # scored among other windows, as in evaluate
    trainer.model.eval()
    with torch.no_grad():
        x, _, ids, lengths = trainer.batch("test", batch)
        forecast = trainer.model(x, ids, lengths).forecast[: len(index)].double()
    data = trainer.data
    return forecast.T * torch.from_numpy(data.std) + torch.from_numpy(data.mean)


def test_predicting_at_a_test_window_reproduces_its_scored_forecast_in_data_units(trained):
    trainer, checkpoint, frame = trained
    trainer.use_best_weights()
    begin = split_borders("ett_hour", len(frame), 96)["test"][0]
    at = frame["date"].iloc[begin + START + 96 - 1]  # the look-back's last row
    forecaster = Forecaster.load(checkpoint)
    forecast = forecaster.predict(frame, at=at)
    assert list(forecast.columns) == ["date", *trainer.data.variables]  # features M: every variable, target last
    assert len(forecast) == 24 and forecast["date"].iloc[0] == pd.Timestamp(at) + pd.Timedelta(hours=1)
    assert forecast["date"].diff().dropna().eq(pd.Timedelta(hours=1)).all()  # the data's own frequency
    expected = _scored_forecast(trainer)
    got = torch.tensor(forecast[trainer.data.variables].to_numpy())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_scaler_travels_in_the_checkpoint(trained, tmp_path):
    trainer, checkpoint, frame = trained
    moved = tmp_path / "elsewhere.csv"  # the training file is not read again
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data_path"] = str(moved)
    torch.save(state, tmp_path / "c.pt")
    forecaster = Forecaster.load(tmp_path / "c.pt")
    assert forecaster.scaler.variables == trainer.data.variables
    assert forecaster.scaler.mean.tolist() == pytest.approx(trainer.data.mean.tolist())
    assert len(forecaster.predict(frame.tail(96))) == 24  # the last 96 rows by default


def test_a_checkpoint_without_a_scaler_refits_it_on_the_training_split_and_says_so(trained, tmp_path, capsys):
    trainer, checkpoint, frame = trained
    state = torch.load(checkpoint, weights_only=True)
    del state["scaler"]
    torch.save(state, tmp_path / "old.pt")
    forecaster = Forecaster.load(tmp_path / "old.pt")
    assert "has no scaler" in capsys.readouterr().err
    assert forecaster.scaler.std.tolist() == pytest.approx(trainer.data.std.tolist())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.tail(50), "50 rows up to the forecast's start, expected at least seq_len = 96"),
        (lambda f: f.drop(columns=["HUFL"]).tail(96), "missing ['HUFL']"),
        (lambda f: f.assign(extra=1.0).tail(96), "unexpected ['extra']"),
        (lambda f: f.tail(96).iloc[::-1], "expected dates sorted in increasing order"),
        (lambda f: f.tail(96).assign(OT=lambda g: g["OT"].where(g.index != g.index[5])), "column 'OT' row"),
        (lambda f: f.iloc[::2].tail(96), "expected the training data's step 0 days 01:00:00"),
    ],
    ids=["too-few-rows", "missing-column", "extra-column", "dates-not-increasing", "nan", "another-frequency"],
)
def test_bad_input_is_one_line_naming_what_is_wrong(trained, change, message):
    _, checkpoint, frame = trained
    forecaster = Forecaster.load(checkpoint)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        forecaster.predict(change(frame), source="new.csv")


def test_the_long_format_goes_in_and_comes_out(trained):
    _, checkpoint, frame = trained
    forecaster = Forecaster.load(checkpoint)
    tail = frame.tail(96)
    long = tail.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    wide = forecaster.predict(tail)
    out = to_long(forecaster.predict(from_long(long)))
    assert list(out.columns) == ["unique_id", "ds", "y"] and len(out) == 24 * 7
    ot = out[out["unique_id"] == "OT"]["y"].to_numpy()
    assert ot.tolist() == pytest.approx(wide["OT"].tolist())
