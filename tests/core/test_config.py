import pytest

from core.config import BalmConfig, ConfigError, parse_set_args, quickstart


def test_yaml_round_trip_keeps_every_value(tmp_path):
    config = quickstart().with_overrides({"prompt_len": 5, "scale_factor": 0.5, "prompt_decimals": None})
    config.save(tmp_path / "c.yaml")
    config.save(tmp_path / "c.json")
    assert BalmConfig.load(tmp_path / "c.yaml") == config
    assert BalmConfig.load(tmp_path / "c.json") == config


def test_default_prompt_len_follows_the_paper():
    config = BalmConfig(seq_len=512, pred_len=96)
    assert config.n_patches == 64
    assert config.resolved_prompt_len == 12  # min(64, 64 * 96 // 512)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rat": 0.1}, "unknown config key(s) ['learning_rat']"),
        ({"seq_len": "96"}, "config key 'seq_len': got '96' (str), expected int"),
        ({"batch_size": 0}, "config key 'batch_size': got 0, expected an integer >= 1"),
        ({"learning_rate": -1.0}, "config key 'learning_rate': got -1.0, expected a number > 0"),
        ({"padding": "middle"}, "config key 'padding': got 'middle', expected one of"),
        ({"prompt_len": 100}, "config key 'prompt_len': got 100, expected <= n_patches (64"),
        ({"percent": 0}, "config key 'percent': got 0, expected 0 < percent <= 100"),
        ({"dropout": 1.5}, "config key 'dropout'"),
        ({"contrastive_weight": float("nan")}, "config key 'contrastive_weight': got nan, expected a finite number"),
        ({"learning_rate": float("inf")}, "config key 'learning_rate': got inf, expected a finite number"),
        ({"scale_factor": float("-inf")}, "config key 'scale_factor': got -inf, expected a finite number"),
        ({"percent": float("nan")}, "config key 'percent': got nan, expected a finite number"),
        ({"prompt_len": 1}, "config key 'prompt_len': got 1, expected an integer >= 2"),
        ({"seq_len": 512, "pred_len": 8}, "the default min(n_patches, n_patches*H//T) is 1 for seq_len=512"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(overrides, message):
    with pytest.raises(ConfigError) as err:
        BalmConfig.from_dict({**BalmConfig().to_dict(), **overrides}, source="my.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.yaml: ")


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml not found"):
        BalmConfig.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("seq_len: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        BalmConfig.load(tmp_path / "bad.yaml")


def test_set_arguments_are_parsed_as_yaml_values():
    assert parse_set_args(["learning_rate=0.01", "prompt_len=null", "backbone=tiny-gpt2", "llm_dropout=true"]) == {
        "learning_rate": 0.01,
        "prompt_len": None,
        "backbone": "tiny-gpt2",
        "llm_dropout": True,
    }
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set_args(["learning_rate"])


def test_numbers_in_exponent_notation_are_numbers_in_set_config_files_and_spaces(tmp_path, write_space):
    from balm_tune.space import load_space

    assert parse_set_args(["learning_rate=1e-3", "scale_factor=2E+1", "temperature_init=.5e-1"]) == {
        "learning_rate": 0.001,
        "scale_factor": 20.0,
        "temperature_init": 0.05,
    }
    (tmp_path / "c.yaml").write_text("learning_rate: 1e-3\n")
    assert BalmConfig.load(tmp_path / "c.yaml").learning_rate == 0.001
    space = load_space(write_space(search={"learning_rate": {"type": "log_float", "low": 1e-4, "high": 1e-2}}))
    assert (space.search["learning_rate"].low, space.search["learning_rate"].high) == (0.0001, 0.01)
    (tmp_path / "s.yaml").write_text((tmp_path / "space.yaml").read_text().replace("0.0001", "1e-4"))
    assert load_space(tmp_path / "s.yaml").search["learning_rate"].low == 0.0001


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("batch_size=[1", "--set batch_size=[1: not valid YAML (while parsing a flow sequence"),
        ("seed=!!python/object/apply:os.system ['true']", "could not determine a constructor for the tag"),
        ("seed={a: 1", "--set seed={a: 1: not valid YAML"),
    ],
)
def test_bad_set_values_are_one_line_errors(pair, message):
    with pytest.raises(ConfigError) as err:
        parse_set_args([pair])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"seq_len: [1, 2\n", "not valid YAML (while parsing a flow sequence expected ',' or ']'"),
        (b"a: 1\n  b: 2\n", "not valid YAML (mapping values are not allowed here at line 2"),
        (b"seed: !!python/object/apply:os.system ['true']\n", "could not determine a constructor for the tag"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file, expected YAML or JSON"),
        (b"\x00\x01\x02", "not a text file, expected YAML or JSON"),
    ],
)
def test_bad_config_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        BalmConfig.load(tmp_path / "bad.yaml")
    assert message in str(err.value) and "bad.yaml" in str(err.value) and "\n" not in str(err.value)
