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


TINY = ["--set", "backbone=tiny-gpt2", "--set", "llm_layers=2", "--set", "d_model=16"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "missing.yaml"], "config file missing.yaml not found"),
        (["--set", "seq_lenn=96"], "unknown config key(s) ['seq_lenn']"),
        (["--set", "backbone=no-such-org/no-model"], "backbone 'no-such-org/no-model': not a local directory"),
        (["--set", "data_path=nowhere.csv"], "data file nowhere.csv not found"),
        (["--set", "seq_len=20000"], "too short for seq_len + pred_len"),
        ([*TINY, "--set", "d_ff=64"], "config key 'd_ff': got 64, expected <= the width 32 of backbone 'tiny-gpt2'"),
        ([*TINY, "--set", "llm_layers=5"], "config key 'llm_layers': got 5, expected <= the 4 layers of backbone"),
        (["--set", "d_ff=1000"], "config key 'd_ff': got 1000, expected <= the width 576 of backbone 'smollm2-135m'"),
        (["--set", "backbone={tmp}"], "is not a model folder (its config.json cannot be read"),
        (["--set", "device=cuda:99"], "config key 'device': got 'cuda:99', but"),
        (["--set", "device=cudax"], "config key 'device': got 'cudax', expected auto, cpu, cuda or cuda:N"),
        (["--set", "num_threads=100000"], "config key 'num_threads': got 100000, expected <= "),
        (["--set", "contrastive_weight=.nan"], "config key 'contrastive_weight': got nan, expected a finite number"),
        (["--set", "prompt_len=1"], "config key 'prompt_len': got 1, expected an integer >= 2"),
        (["--set", "batch_size=[1"], "--set batch_size=[1: not valid YAML"),
        (["--set", "seed=!!python/object/apply:os.system ['true']"], "could not determine a constructor"),
        (["--config", "{tmp}/binary.yaml"], "binary.yaml: not a text file, expected YAML or JSON"),
        (
            ["--config", "{tmp}/syntax.yaml"],
            "syntax.yaml: not valid YAML (mapping values are not allowed here at line 2",
        ),
        (["--name", "../x"], "--name '../x': expected a single folder name"),
        (["--name", "/tmp/abs"], "--name '/tmp/abs': expected a single folder name"),
        (["--name", "a/b/c"], "--name 'a/b/c': expected a single folder name"),
        (["--name", ".."], "--name '..': expected a single folder name"),
        (["--name", "a\\b"], "expected a single folder name"),
        (["--out", "{tmp}/binary.yaml"], "--out/--name {tmp}/binary.yaml/"),
    ],
)
def test_train_cli_rejects_bad_input_before_loading_a_model(args, message, capsys, tmp_path):
    files = tmp_path / "files"  # planted inputs, outside the output folder
    files.mkdir()
    (files / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (files / "syntax.yaml").write_text("a: 1\n  b: 2\n")
    (files / "weights.bin").write_bytes(b"not a model")
    args = [a.replace("{tmp}", str(files)) for a in args]
    out = tmp_path / "out"
    if "--out" not in args:
        args += ["--out", str(out)]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(files)) in err and err.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in files.iterdir()) == ["binary.yaml", "syntax.yaml", "weights.bin"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "a").exists()  # nothing was started, nothing escaped


def test_train_name_refuses_an_existing_run_folder_unless_overwrite(tiny_config, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    tiny_config.save(path)
    run = ["--config", str(path), "--set", "epochs=1", "--out", str(tmp_path), "--name", "r", "--quiet"]
    assert train_main(run) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    capsys.readouterr()
    assert train_main([*run, "--set", "seed=7"]) == 2
    err = capsys.readouterr().err
    assert f"run folder {tmp_path / 'r'} exists; choose another --name or add --overwrite" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before  # nothing touched
    assert train_main([*run, "--set", "seed=7", "--overwrite"]) == 0
    assert BalmConfig.load(tmp_path / "r" / "config.yaml").seed == 7
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() != before["checkpoint.pt"]


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
