"""Every user-facing error shares one base class, so callers catch them in one place."""

import pytest

from balm_tune.space import SpaceError, load_space
from core.backbones import BackboneError
from core.config import BalmConfig, ConfigError
from core.data import DataError, load_data
from core.errors import BalmError


@pytest.mark.parametrize("error", [ConfigError, DataError, BackboneError, SpaceError])
def test_each_user_facing_error_is_a_balm_error(error):
    assert issubclass(error, BalmError)


def test_one_except_clause_catches_config_data_and_space_mistakes(tmp_path):
    mistakes = [
        lambda: BalmConfig(batch_size=0).validate(),
        lambda: load_data(BalmConfig(data_path=str(tmp_path / "missing.csv"))),
        lambda: load_space(tmp_path / "missing.yaml"),
    ]
    for mistake in mistakes:
        with pytest.raises(BalmError):
            mistake()
