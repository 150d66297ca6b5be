import re
import subprocess
from pathlib import Path

import pytest

from balm_tune.search import main as search_main
from balm_tune.space import SpaceError, load_space
from core.config import quickstart
from tests.conftest import search_command

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_are_valid_and_search_the_papers_four_knobs(path):
    space = load_space(path)
    assert {"prompt_len", "contrastive_weight", "scale_factor", "learning_rate"} <= set(space.search)
    assert space.gpu_budget.strip(), "every space states its GPU budget"


def test_default_space_is_the_cpu_quick_start():
    space = load_space(SPACES[0].parent / "default.yaml")
    assert space.base == quickstart()
    assert space.gpus_per_trial == 0 and space.base.backbone == "smollm2-135m"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"budgets": {}}, "'budgets': unknown section"),
        ({"budget": {"num_trials": 3}}, "'budget.num_trials': unknown key"),
        (
            {"search": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}},
            "'search.learning_rate': low (0.1) > high (0.01)",
        ),
        (
            {"search": {"learning_rate": {"type": "log_float", "low": 0.0, "high": 0.01}}},
            "'search.learning_rate': log_float needs low > 0",
        ),
        (
            {"search": {"prompt_len": {"type": "int", "low": 2, "high": 40}}},
            "'search.prompt_len': value 40 is invalid for the base config: "
            "config key 'prompt_len': got 40, expected <= n_patches (12",
        ),
        (
            {"search": {"temperature": {"type": "float", "low": 0.1, "high": 1.0}}},
            "'search.temperature': the config has no key 'temperature'",
        ),
        ({"search": {"seq_len": {"type": "choice", "values": [96, 192]}}}, "'search.seq_len': changes the data"),
        ({"search": {"dropout": {"type": "gauss"}}}, "'search.dropout': expected a mapping with 'type' one of"),
        ({"base": {"learning_rat": 0.1}}, "unknown config key(s) ['learning_rat']"),
        ({"scheduler": {"grace_period": 9}}, "'scheduler.grace_period': got 9, expected <= max_epochs (3)"),
        ({"resources": {"gpus_per_trial": -1}}, "'resources.gpus_per_trial': got -1, expected a number >= 0"),
        ({"ablations": ["no_llm", "nollm"]}, "'ablations': got 'nollm', expected some of no_llm, llm2attn, random_llm"),
        ({"ablations": "no_llm"}, "'ablations': got 'no_llm', expected a list of some of no_llm"),
        ({"ablations": {"arms": ["no_llm"], "serch": True}}, "'ablations': unknown key 'serch', expected arms and"),
        ({"ablations": {"arms": ["no_llm"], "search": "yes"}}, "'ablations'.search: got 'yes', expected true or"),
        ({"ablations": {"arms": ["nollm"], "search": True}}, "'ablations'.arms: got 'nollm', expected some of"),
        ({"paper": {96: {"mse": 0.36, "rmse": 0.6}}}, "'paper.96': got {'mse': 0.36, 'rmse': 0.6}, expected a mapping"),
        ({"paper": {96: {"mse": "0.36"}}}, "'paper.96.mse': got '0.36', expected a number >= 0.0"),
        ({"paper": {"H96": {"mse": 0.36}}}, "'paper.H96': expected an integer pred_len >= 1"),
        ({"paper": [0.36, 0.39]}, "'paper': expected a mapping of pred_len to {mse: ..., mae: ...}"),
    ],
)
def test_bad_spaces_name_the_file_and_key(write_space, sections, message):
    path = write_space(**sections)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_bad_space_fails_on_the_command_line_before_ray_starts(write_space, tmp_path):
    path = write_space(search={"learning_rate": {"type": "log_float", "low": -1, "high": 0.01}})
    run = subprocess.run(
        search_command("--space", str(path), "--storage", str(tmp_path / "runs")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert f"error: search space {path}: 'search.learning_rate': log_float needs low > 0" in run.stderr
    assert "Ray" not in run.stdout + run.stderr and not (tmp_path / "runs").exists()


def test_dry_run_checks_everything_and_starts_nothing(write_space, tmp_path, capsys):
    path = write_space()
    assert (
        search_main(
            [
                "--space",
                str(path),
                "--storage",
                str(tmp_path / "runs"),
                "--dry-run",
                "--num-samples",
                "7",
                "--set",
                "max_train_batches=3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "7 trials x up to 3 epochs" in out and "search learning_rate: log_float" in out and "dry run" in out
    assert "estimate: " in out and "from a measured step" in out  # a few steps trained here, no Ray
    assert not (tmp_path / "runs").exists()
    assert search_main(["--space", str(path), "--dry-run", "--set", "backbone=no-such/model"]) == 2
    assert "backbone 'no-such/model'" in capsys.readouterr().err
    assert search_main(["--space", str(path), "--dry-run", "--set", "seq_len=48"]) == 2  # prompt_len high 12 > 6
    assert "'search.prompt_len': value 12 is invalid" in capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(
    ("args", "sections", "message"),
    [
        (["--name", "../x"], {}, "--name '../x': expected a single folder name"),
        (["--name", "/tmp/abs"], {}, "--name '/tmp/abs': expected a single folder name"),
        (["--name", "a/b/c"], {}, "--name 'a/b/c': expected a single folder name"),
        (["--storage", "{tmp}/file.txt"], {}, "--storage {tmp}/file.txt: {tmp}/file.txt is not a folder"),
        (["--storage", "{tmp}/file.txt/runs"], {}, "--storage {tmp}/file.txt/runs: {tmp}/file.txt is not a folder"),
        (["--final-seeds", "-1"], {}, "--final-seeds: got -1, expected an integer >= 0"),
        (["--resume"], {}, "--resume needs --name"),
        (["--official"], {"enqueue": []}, "--official: search space {space} enqueues no config to retrain"),
        (["--max-concurrent-trials", "0"], {}, "--max-concurrent-trials: got 0, expected an integer >= 1"),
        (["--set", "d_ff=64"], {}, "config key 'd_ff': got 64, expected <= the width 32 of backbone 'tiny-gpt2'"),
        (
            [],
            {"search": {"d_ff": {"type": "choice", "values": [16, 64]}}},
            "config key 'd_ff': got 64, expected <= the width 32",
        ),
        (
            [],
            {"search": {"llm_layers": {"type": "int", "low": 1, "high": 6}}},
            "config key 'llm_layers': got 6, expected <= the 4 layers of backbone 'tiny-gpt2'",
        ),
        (["--set", "backbone={tmp}"], {}, "is not a model folder"),
        (["--set", "device=cuda:99"], {}, "config key 'device': got 'cuda:99', but"),
        (["--set", "num_threads=100000"], {}, "config key 'num_threads': got 100000, expected <= "),
        (["--set", "contrastive_weight=.nan"], {}, "config key 'contrastive_weight': got nan, expected a finite"),
        (["--set", "batch_size=[1"], {}, "--set batch_size=[1: not valid YAML"),
        (["--set", "data_path={tmp}/inf.csv"], {}, "inf.csv: column 'OT' row 3 is 'inf', expected a finite number"),
        ([], {"gpu_budget": None}, "'gpu_budget': got None, expected text"),
        (
            [],
            {"search": {"contrastive_weight": {"type": "float", "low": 0.0, "high": float("inf")}}},
            "'search.contrastive_weight.high': got inf, expected a number",
        ),
        (
            [],
            {"search": {"prompt_len": {"type": "int", "low": 1, "high": 4}}},
            "config key 'prompt_len': got 1, expected an integer >= 2",
        ),
    ],
)
def test_bad_search_input_is_one_line_before_anything_starts(
    write_space, tmp_path, capsys, args, sections, message, dry_run
):
    files = tmp_path / "files"
    files.mkdir()
    (files / "file.txt").write_text("a file, not a folder\n")
    (files / "inf.csv").write_text("date,a,OT\n1,2,3\n2,3,inf\n")
    args = [a.replace("{tmp}", str(files)) for a in args]
    storage = [] if "--storage" in args else ["--storage", str(tmp_path / "runs")]
    path = write_space(**sections)
    assert search_main(["--space", str(path), *storage, *args, *(["--dry-run"] if dry_run else [])]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(files)).replace("{space}", str(path)) in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists() and not (tmp_path / "a").exists()
    assert sorted(p.name for p in files.iterdir()) == ["file.txt", "inf.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("search: {a: 1\n", "not valid YAML (while parsing a flow mapping"),
        (
            "base:\n  seed: !!python/object/apply:os.system ['true']\n",
            "not valid YAML (could not determine a constructor for the tag",
        ),
        ("\x00\x01binary", "not a text file, expected YAML or JSON"),
    ],
)
def test_unreadable_space_files_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert search_main(["--space", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"error: search space {path}: {message}" in err and err.count("\n") == 1


def test_exponent_numbers_in_set_reach_the_search(write_space, tmp_path, capsys):
    path = write_space()
    assert search_main(["--space", str(path), "--storage", str(tmp_path), "--dry-run", "--set", "dropout=1e-1"]) == 0
    assert "dry run" in capsys.readouterr().out


def test_the_papers_published_figures_ride_with_the_presets_that_record_them():
    assert load_space(SPACES[0].parent / "paper_etth1.yaml").paper[96] == {
        "mse": 0.365,
        "mae": 0.392,
    }  # DESIGN.md, Table 1
    assert load_space(SPACES[0].parent / "paper_etth2.yaml").paper == {96: {"mse": 0.267, "mae": 0.335}}
    assert sorted(load_space(SPACES[0].parent / "paper_exchange.yaml").paper) == [96, 192, 336, 720]
    assert load_space(SPACES[0].parent / "default.yaml").paper == {}


def test_a_paper_preset_switches_to_the_official_values_of_the_chosen_horizon():
    space = load_space(SPACES[0].parent / "paper_ettm1.yaml")  # scripts_long_term/BALM_ETTm1_GPT2.sh
    assert (space.base.batch_size, space.base.learning_rate, space.base.patience) == (32, 0.001, 10)
    assert (space.base.d_model, space.base.d_ff, space.base.batch_groups) == (64, 256, 4)
    h720 = space.with_base_overrides({"pred_len": 720})
    assert (h720.base.lr_schedule, h720.base.batch_size, h720.base.patience) == ("tst", 24, 20)
    assert h720.max_epochs == 100 and h720.base.pred_len == 720
    mine = space.with_base_overrides({"pred_len": 336, "patience": 3})  # keys given with --set still win
    assert (mine.base.learning_rate, mine.base.patience) == (0.005, 3)
    weather = load_space(SPACES[0].parent / "paper_weather.yaml").with_base_overrides({"pred_len": 336})
    assert (weather.base.lr_schedule, weather.max_epochs, weather.base.batch_size) == ("cos", 10, 16)


@pytest.mark.parametrize(
    ("horizons", "message"),
    [
        (
            {96: {"batch_size": 8}, 192: {"batch_size": 8, "d_model": 8}},
            "'horizons.192': sets ['batch_size', 'd_model']",
        ),
        ({96: {"batch_size": 0}}, "config key 'batch_size': got 0"),
        ({"h96": {"batch_size": 8}}, "'horizons.h96': expected an integer pred_len"),
    ],
)
def test_bad_horizon_tables_are_rejected_naming_the_entry(write_space, horizons, message):
    with pytest.raises(SpaceError, match=re.escape(message)):
        load_space(write_space(horizons=horizons))


def test_a_horizon_without_an_entry_is_an_error_before_anything_starts(write_space):
    space = load_space(write_space(base={"pred_len": 24}, horizons={24: {"batch_size": 16}, 48: {"batch_size": 8}}))
    assert space.base.batch_size == 16
    with pytest.raises(SpaceError, match=r"'horizons': no entry for pred_len 96; expected one of \[24, 48\]"):
        space.with_base_overrides({"pred_len": 96})


def test_a_space_can_ask_for_ablations_and_the_flag_wins(write_space, tmp_path):
    from balm_tune.api import prepare_search

    path = write_space(ablations=["no_llm", "random_llm"])
    assert load_space(path).ablations == ["no_llm", "random_llm"]
    assert prepare_search(path, storage=tmp_path / "a").ablations == ("no_llm", "random_llm")
    assert prepare_search(path, storage=tmp_path / "b", ablations=["llm2attn"]).ablations == ("llm2attn",)


def test_a_space_can_ask_for_each_arm_to_be_searched_with_the_keys_that_apply_to_it(write_space, tmp_path):
    from balm_tune.api import prepare_search

    path = write_space(ablations={"arms": ["no_llm", "llm2attn"], "search": True})
    space = load_space(path)
    assert space.ablations == ["no_llm", "llm2attn"] and space.ablation_search
    assert space.to_dict()["ablations"] == {"arms": ["no_llm", "llm2attn"], "search": True}  # saved for --resume
    assert prepare_search(path, storage=tmp_path / "a").ablation_search
    assert not prepare_search(path, storage=tmp_path / "b", ablation_search=False).ablation_search  # the flag wins
    no_llm = space.for_arm("no_llm")  # no prompt, no contrastive term, no scaling of a text branch: not searched
    assert no_llm.base.text_branch == "no_llm" and not no_llm.ablations and not no_llm.ablation_search
    assert set(no_llm.search) == set(space.search) - {"prompt_len", "contrastive_weight", "scale_factor"}
    assert all(set(point) <= set(no_llm.search) for point in no_llm.enqueue)
    assert set(space.for_arm("llm2attn").search) == set(space.search)  # every key applies to llm2attn
