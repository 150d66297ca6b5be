import numpy as np
import pandas as pd
import pytest
import torch

from core.config import BalmConfig
from core.data import DataError, load_data, split_borders


def test_ett_hour_borders_equal_the_published_ones():
    # Informer/Autoformer convention: 12/4/4 months of 30 days; val/test look back seq_len rows
    assert split_borders("ett_hour", 17420, 512) == {
        "train": (0, 8640),
        "val": (8640 - 512, 11520),
        "test": (11520 - 512, 14400),
    }
    assert split_borders("ett_minute", 69680, 96) == {
        "train": (0, 34560),
        "val": (34560 - 96, 46080),
        "test": (46080 - 96, 57600),
    }


def test_ratio_borders_are_70_10_20():
    # exchange_rate: 7588 rows -> train 5311, test 1517, val the rest
    assert split_borders("ratio", 7588, 96) == {"train": (0, 5311), "val": (5311 - 96, 6071), "test": (6071 - 96, 7588)}


def test_few_shot_keeps_the_first_percent_of_training_windows():
    assert split_borders("ett_hour", 17420, 512, percent=10)["train"] == (0, (8640 - 512) * 10 // 100 + 512)


def test_scaler_is_fitted_on_the_train_split_only(etth1_path):
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24))
    raw = pd.read_csv(etth1_path).drop(columns="date").to_numpy()
    np.testing.assert_allclose(data.mean, raw[:8640].mean(axis=0))
    np.testing.assert_allclose(data.std, raw[:8640].std(axis=0))
    assert not np.allclose(data.mean, raw[:14400].mean(axis=0))
    assert data.split_kind == "ett_hour" and data.variables[-1] == "OT"


def test_windows_are_channel_independent_and_follow_the_reference_index(etth1_path):
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24))
    train = data.train
    assert train.n_starts == 8640 - 96 - 24 + 1 and len(train) == train.n_starts * 7
    index = torch.tensor([0, train.n_starts + 5])  # variable 0 start 0, variable 1 start 5
    x, y = train.inputs(index), train.targets(index)
    assert x.shape == (2, 96) and y.shape == (2, 24)
    assert torch.equal(x[1], train.series[5:101, 1]) and torch.equal(y[1], train.series[101:125, 1])


def test_ms_trains_on_every_variable_and_evaluates_the_target(etth1_path):
    data = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24, features="MS"))
    assert data.train.channels == list(range(7)) and data.val.channels == [6] and data.test.channels == [6]
    single = load_data(BalmConfig(data_path=str(etth1_path), seq_len=96, pred_len=24, features="S"))
    assert single.variables == ["OT"]


def _write(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return BalmConfig(data_path=str(path), seq_len=4, pred_len=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,a,OT\n1,2,3\n", "no 'date' column"),
        ("date,a,b\n1,2,3\n", "target column 'OT' not found"),
        ("date,a,OT\n1,2,x\n2,3,4\n", "column 'OT' row 2 has non-numeric value 'x', expected a number"),
        ("date,a,OT\n1,2,3\n2,,4\n", "column 'a' row 3 is empty/NaN"),
        ("date,a,OT\n" + "".join(f"{i},{i},{i}\n" for i in range(10)), "too short for seq_len + pred_len = 6"),
        ("date,a,OT\n1,2,3\n2,inf,4\n", "column 'a' row 3 is 'inf', expected a finite number"),
        ("date,a,OT\n1,2,3\n2,3,-inf\n", "column 'OT' row 3 is '-inf', expected a finite number"),
        ("date,a,OT\n2016-07-01,2,3\n2016-07-0x,3,4\n", "column 'date' row 3 is '2016-07-0x', expected a date"),
        (
            "date,a,OT\n2016-07-02,2,3\n2016-07-01,3,4\n",
            "column 'date' row 3 (2016-07-01) comes before row 2 (2016-07-02), expected dates sorted",
        ),
        ("date,a,OT\n2016-07-01,2,3\n2016-07-01,3,4\n", "column 'date' row 3 (2016-07-01) repeats row 2"),
    ],
)
def test_bad_data_files_give_one_line_errors(tmp_path, text, message):
    config = _write(tmp_path, text)
    with pytest.raises(DataError) as err:
        load_data(config)
    assert message in str(err.value) and "bad.csv" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_embedded_dataset(tmp_path):
    with pytest.raises(DataError, match="data file .*missing.csv not found"):
        load_data(BalmConfig(data_path=str(tmp_path / "missing.csv")))
    with pytest.raises(DataError, match="unknown embedded dataset"):
        load_data(BalmConfig(data_path="embedded:Weather"))


def test_a_repeated_column_name_and_a_folder_as_data_path_are_named(tmp_path):
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("date,HUFL,HUFL,OT\n2020-01-01 00:00,1,2,3\n2020-01-01 01:00,1,2,3\n")
    with pytest.raises(DataError, match=r"repeated.csv: column names \['HUFL'\] appear more than once"):
        load_data(BalmConfig(data_path=str(repeated)))  # pandas alone would read the second as 'HUFL.1'
    with pytest.raises(DataError, match=rf"data file {tmp_path} is a folder, expected a CSV file"):
        load_data(BalmConfig(data_path=str(tmp_path)))


def test_embedded_etth1_is_the_unmodified_file():
    # the sha256 published with the ETDataset copy used by every benchmark (17,420 rows x date + 7)
    data = load_data(BalmConfig(seq_len=96, pred_len=24))
    assert data.sha256 == "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"
    assert data.variables == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
