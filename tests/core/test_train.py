import dataclasses

import pytest
import torch

from balm_tune.train import main as train_main
from core.config import BalmConfig
from core.train import Trainer, eval_index, naive_metrics


def test_short_real_training_beats_the_repeat_last_value_forecast(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=3, max_train_batches=40, max_eval_batches=8, learning_rate=0.005)
    trainer = Trainer(config, show_progress=False)
    fit = trainer.fit()
    naive = naive_metrics(trainer.windows["val"], eval_index(len(trainer.windows["val"]), 32, 8))
    assert fit.best_val_mse < 0.9 * naive.mse, (fit.best_val_mse, naive.mse)
    assert trainer.evaluate("val", 8).mse == pytest.approx(fit.best_val_mse)  # best weights are loaded at the end


def test_same_seed_same_numbers_on_cpu(tiny_config):
    first = Trainer(tiny_config, show_progress=False).fit().history
    second = Trainer(tiny_config, show_progress=False).fit().history
    strip = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in first]
    assert strip == [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in second]
    other = Trainer(dataclasses.replace(tiny_config, seed=7), show_progress=False).fit().history
    assert other[0]["train_loss"] != first[0]["train_loss"]


def test_resume_from_checkpoint_gives_the_same_next_epoch_as_an_uninterrupted_run(tiny_config, tmp_path):
    config = dataclasses.replace(tiny_config, epochs=3)
    uninterrupted = Trainer(config, show_progress=False).fit().history

    interrupted = Trainer(dataclasses.replace(config, epochs=1), show_progress=False)
    interrupted.fit(checkpoint_path=tmp_path / "ckpt.pt")
    resumed = Trainer(config, show_progress=False)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.epoch == 1
    history = resumed.fit().history
    for h in (history, uninterrupted):
        for row in h:
            row.pop("epoch_seconds")
    assert history == uninterrupted
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "rng"} <= set(state)
    assert not any(k.startswith("llm.") for k in state["model"])  # only trainable weights are saved


@pytest.mark.parametrize(
    ("schedule", "rates"),
    [
        ("type1", [1e-2, 5e-3, 2.5e-3]),
        ("reference", [4e-4, 2e-4, 1e-4]),
        ("constant", [1e-2, 1e-2, 1e-2]),
        ("cosine", [1e-2, 8.535534e-3, 5e-3]),
    ],
)
def test_learning_rate_schedules(tiny_config, schedule, rates):
    config = dataclasses.replace(tiny_config, epochs=4, lr_schedule=schedule, learning_rate=1e-2)
    trainer = Trainer(config, show_progress=False)
    assert [trainer.learning_rate(e) for e in range(3)] == pytest.approx(rates)


def test_early_stopping_on_validation_mse(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=8, patience=1, learning_rate=0.3, lr_schedule="constant")
    fit = Trainer(config, show_progress=False).fit()
    assert fit.stopped_early and fit.epochs_run < 8


def test_nan_loss_stops_training_with_a_reason(tiny_config):
    from core.train import DivergedError

    trainer = Trainer(dataclasses.replace(tiny_config, learning_rate=1e30), show_progress=False)
    with pytest.raises(DivergedError, match="training loss became"):
        trainer.fit()
        trainer.fit()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "missing.yaml"], "config file missing.yaml not found"),
        (["--set", "seq_lenn=96"], "unknown config key(s) ['seq_lenn']"),
        (["--set", "backbone=no-such-org/no-model"], "backbone 'no-such-org/no-model': not a local directory"),
        (["--set", "data_path=nowhere.csv"], "data file nowhere.csv not found"),
        (["--set", "seq_len=20000"], "too short for seq_len + pred_len"),
    ],
)
def test_train_cli_rejects_bad_input_before_loading_a_model(args, message, capsys, tmp_path):
    assert train_main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing was started


def test_train_cli_trains_and_writes_results(tiny_config, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    tiny_config.save(path)
    assert (
        train_main(["--config", str(path), "--set", "epochs=1", "--out", str(tmp_path), "--name", "r", "--quiet"]) == 0
    )
    out = capsys.readouterr().out
    assert "val mse" in out and "test mse" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"config.yaml", "checkpoint.pt", "results.json"}
    assert BalmConfig.load(tmp_path / "r" / "config.yaml").epochs == 1
