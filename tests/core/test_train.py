import dataclasses
import json
import warnings

import pytest
import torch

from balm_tune.train import main as train_main
from core.baselines import repeat_last, score
from core.config import BalmConfig
from core.significance import DieboldMariano
from core.train import PromptLengthWarning, Trainer, eval_index


def test_short_real_training_beats_the_repeat_last_value_forecast(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=3, max_train_batches=40, max_eval_batches=8, learning_rate=0.005)
    trainer = Trainer(config, show_progress=False)
    fit = trainer.fit()
    val = trainer.windows["val"]
    naive = score(lambda x: repeat_last(x, config.pred_len), val, eval_index(len(val), 32, 8))
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
        ("type1", [1e-2, 1e-2, 5e-3]),  # the official adjust_learning_rate(epoch + 1) after each epoch
        ("reference", [4e-4, 4e-4, 2e-4]),  # the official run: OneCycleLR's lr/25, then type1
    ],
)
def test_training_runs_each_epoch_at_the_official_rate(tiny_config, schedule, rates):
    config = dataclasses.replace(tiny_config, epochs=3, max_train_batches=1, lr_schedule=schedule, learning_rate=1e-2)
    history = Trainer(config, show_progress=False).fit().history
    assert [h["learning_rate"] for h in history] == pytest.approx(rates)


def test_tst_steps_the_rate_after_every_optimizer_step_and_resumes_mid_cycle(tiny_config, tmp_path):
    config = dataclasses.replace(tiny_config, epochs=2, max_train_batches=4, lr_schedule="tst", learning_rate=1e-2)
    trainer = Trainer(config, show_progress=False)
    trainer.fit(checkpoint_path=tmp_path / "ckpt.pt")
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), max_lr=1e-2, total_steps=8, pct_start=0.2
    )
    for _ in range(8):  # 2 epochs x 4 batches: the cycle has run to its end
        one_cycle.optimizer.step()
        if one_cycle.last_epoch < 8:
            one_cycle.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(one_cycle.get_last_lr()[0])
    restored = Trainer(config, show_progress=False)
    restored.load(tmp_path / "ckpt.pt")
    assert restored.schedule.scheduler.state_dict() == trainer.schedule.scheduler.state_dict()


def test_k_batch_groups_average_the_gradients_of_k_separate_group_losses(tiny_config):
    config = dataclasses.replace(tiny_config, batch_groups=2, dropout=0.0, contrastive_weight=1.0, batch_size=8)
    trainer = Trainer(config, show_progress=False)
    groups = [torch.arange(0, 8), torch.arange(100, 108)]
    losses = trainer.accumulate_gradients(groups)
    grouped = [p.grad.clone() for p in trainer.model.trainable_parameters()]

    def loss_of(index):  # one process: its own forward, MSE + InfoNCE among its own 8 windows
        x, y, ids, lengths = trainer.batch("train", index)
        out = trainer.model(x, ids, lengths, contrastive=True)
        return torch.nn.functional.mse_loss(out.forecast, y) + out.contrastive

    separate = [torch.autograd.grad(loss_of(g), trainer.model.trainable_parameters()) for g in groups]
    for got, *each in zip(grouped, *separate, strict=True):
        torch.testing.assert_close(got, sum(each) / len(each), rtol=1e-5, atol=1e-7)
    assert losses[0].item() == pytest.approx(sum(loss_of(g).item() for g in groups) / 2, rel=1e-5)
    # one batch of all 16 windows is a different objective: InfoNCE would see 15 negatives per row
    whole = torch.autograd.grad(loss_of(torch.cat(groups)), trainer.model.trainable_parameters())
    assert not torch.allclose(whole[0], grouped[0], rtol=1e-3)


def test_a_prompt_length_beyond_the_shortest_prompt_is_warned_about_before_training(tiny_config):
    config = dataclasses.replace(tiny_config, seq_len=512, prompt_style="compact")  # compact: ~20 GPT-2 tokens
    with pytest.warns(PromptLengthWarning, match=r"prompt_len P=64 exceeds the shortest prompt \(\d+ tokens\)"):
        Trainer(dataclasses.replace(config, prompt_len=64), show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptLengthWarning)
        Trainer(dataclasses.replace(config, prompt_len=4), show_progress=False)


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
    results = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert results["test_windows"] == 19_999 and results["val_windows"] == 64  # every test window; val subset
    assert f"test mse {results['test_mse']:.4f} mae {results['test_mae']:.4f} over 19,999 windows" in out
    assert "val mse" in out and "over 64 of 19,999 windows" in out
    for name in ("repeat-last value", "linear (least squares, look-back -> horizon)"):
        assert f"baseline {name}: val mse" in out
    linear = results["baselines"]["linear"]
    assert linear["test"]["windows"] == 19_999 and linear["beats_on_test"] == (
        results["test_mse"] < linear["test"]["mse"]
    )
    tested = DieboldMariano(**linear["significance_on_test"])  # over the 2,857 windows of 7 variables each
    assert tested.windows == 2_857 and tested.p_value is not None
    assert tested.mean_difference == pytest.approx(results["test_mse"] - linear["test"]["mse"], abs=1e-9)
    assert f"{linear['test']['mse']:.4f}, {tested.p_text()})" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"config.yaml", "checkpoint.pt", "summary.json"}
    assert BalmConfig.load(tmp_path / "r" / "config.yaml").epochs == 1


def test_training_onto_a_full_disk_is_one_line_and_leaves_no_partial_file(tiny_config, small_disk, tmp_path, capsys):
    mount, _ = small_disk
    disk = mount("64k")  # the config fits; the first checkpoint does not
    path = tmp_path / "c.yaml"
    tiny_config.save(path)
    assert train_main(["--config", str(path), "--out", str(disk), "--name", "r", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {disk / 'r'}: No space left on device (errno 28)"), err
    assert {p.name for p in (disk / "r").iterdir()} == {"config.yaml"}  # no half-written checkpoint beside it
