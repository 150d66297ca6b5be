"""Every user-facing error shares one base class, so callers catch them in one place."""

import errno
import os

import pytest

from balm_tune.space import SpaceError, load_space
from core.backbones import BackboneError
from core.config import BalmConfig, ConfigError
from core.data import DataError, load_data
from core.errors import BalmError, fault_line, storage_fault, text_fault


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


def test_a_full_disk_quota_or_read_only_file_system_is_found_behind_rays_and_pythons_wrapping():
    from ray.exceptions import RayTaskError

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert storage_fault(RayTaskError("train_balm", "Traceback (most recent call last): ...", full)) is full
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("checkpoint not saved") from err
    except RuntimeError as chained:
        assert storage_fault(chained) is full
    quota, read_only = OSError(errno.EDQUOT, "quota"), OSError(errno.EROFS, "read-only")
    assert storage_fault(quota) is quota and storage_fault(read_only) is read_only
    assert storage_fault(FileNotFoundError(errno.ENOENT, "gone")) is None and storage_fault(RuntimeError()) is None
    assert text_fault("Saving failed: [Errno 28] No space left on device").errno == errno.ENOSPC  # Ray's text
    assert text_fault("Path not found") is None
    named = OSError(errno.ENOSPC, "x", "/runs/a.pt")
    assert fault_line(named, "/runs") == "/runs/a.pt: No space left on device (errno 28)"
