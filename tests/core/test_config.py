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
