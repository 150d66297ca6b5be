"""An experiment folder is resumed only if this user's searches signed its pickles."""

import io
import json
import os
import pickle
import stat
import sys
import time
from pathlib import Path, PurePath

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from balm_tune.integrity import DIGESTS, PICKLED, IntegrityError, _digest, pickled_files, seal, secret_key, verify
from balm_tune.search import main as search_main
from balm_tune.space import load_space
from balm_tune.storage import open_location
from tests.conftest import write_tiny_space


class Payload:
    """A crafted pickle: unpickling it runs code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BALM_TUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _experiment(folder):
    """A folder with the files Ray's Tuner.restore unpickles (contents are ours, benign)."""
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (folder / "experiment_state-2026-11-27_10-00-00.json").write_text('{"trial_data": []}')
    (folder / "searcher-state-2026-11-27_10-00-00.pkl").write_bytes(pickle.dumps([1, 2]))
    (folder / "train_balm_0001").mkdir()
    (folder / "train_balm_0001" / "params.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    (folder / "train_balm_0001" / "result.json").write_text("{}")
    return open_location(folder)


def test_the_key_is_created_once_readable_by_the_user_only(cache):
    key = secret_key()
    assert len(key) == 64 and secret_key() == key
    assert stat.S_IMODE((cache / "experiment.key").stat().st_mode) == 0o600


def test_a_sealed_folder_verifies_and_every_pickle_ray_restores_is_covered(cache, tmp_path):
    location = _experiment(tmp_path / "runs" / "e")
    assert pickled_files(location) == [
        "experiment_state-2026-11-27_10-00-00.json",
        "searcher-state-2026-11-27_10-00-00.pkl",
        "train_balm_0001/params.pkl",
        "tuner.pkl",
    ]
    seal(location)
    verify(location)
    moved = (tmp_path / "runs" / "e").rename(
        tmp_path / "elsewhere"
    )  # digests of relative paths: a moved folder verifies
    verify(open_location(moved))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda e: (e / DIGESTS).unlink(), f"has no {DIGESTS}"),
        (lambda e: (e / DIGESTS).write_text("not json"), "is not a digest file"),
        (lambda e: (e / "tuner.pkl").write_bytes(b"\x80\x04K\x01."), "tuner.pkl was not written by this user's search"),
        (
            lambda e: (e / "searcher-state-2026-11-28_00-00-00.pkl").write_bytes(b"\x80\x04K\x01."),
            "searcher-state-2026-11-28_00-00-00.pkl was not written",
        ),
        (lambda e: (e / "train_balm_0001" / "error.pkl").write_bytes(b"\x80\x04K\x01."), "error.pkl was not written"),
        (lambda e: (e / "experiment_state-2026-11-27_10-00-00.json").write_text("{}"), "experiment_state-"),
    ],
)
def test_a_changed_added_or_unsigned_pickle_is_refused(cache, tmp_path, tamper, message):
    location = _experiment(tmp_path / "e")
    seal(location)
    tamper(tmp_path / "e")
    with pytest.raises(IntegrityError) as err:
        verify(location)
    assert message in str(err.value) and "--trust-experiment" in str(err.value) and "\n" not in str(err.value)


def test_another_users_key_does_not_verify(cache, tmp_path, monkeypatch):
    experiment = _experiment(tmp_path / "e")
    seal(experiment)
    monkeypatch.setenv("BALM_TUNE_CACHE", str(tmp_path / "other-user-cache"))
    with pytest.raises(IntegrityError, match="tuner.pkl was not written by this user's search|experiment_state"):
        verify(experiment)


def test_a_crafted_pickle_in_an_experiment_folder_is_not_executed_on_resume(cache, tmp_path, capsys):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(tmp_path / "live")))  # the payload is real: unpickling it runs code
    assert (tmp_path / "live").read_text() == "code ran"

    experiment = tmp_path / "runs" / "evil"
    experiment.mkdir(parents=True)
    load_space(write_tiny_space(tmp_path)).save(experiment / "search_space.yaml")
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (experiment / "experiment_state-2026-11-27_10-00-00.json").write_text('{"trial_data": []}')
    resume = ["--storage", str(tmp_path / "runs"), "--name", "evil", "--resume"]
    assert search_main(resume) == 2
    err = capsys.readouterr().err
    assert f"has no {DIGESTS}" in err and err.count("\n") == 1
    assert not marker.exists()

    seal(open_location(experiment))  # signed by this user, then replaced: refused as well
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)) + b" ")
    assert search_main(resume) == 2
    assert "tuner.pkl was not written by this user's search" in capsys.readouterr().err
    assert not marker.exists()


class SignedBeforeUpload(pafs.FSSpecHandler):
    """The experiment's filesystem (a local folder) as Ray Tune uploads to it, checking each pickled file
    as it lands: its digest must already be in integrity.json, or a driver killed at that moment would
    leave a file --resume refuses."""

    def __init__(self, experiment: Path):
        import fsspec

        super().__init__(fsspec.filesystem("file"))
        self.experiment, self.uploads, self.unsigned = experiment, 0, []

    def open_output_stream(self, path: str, metadata):
        return pa.PythonFile(_Upload(path, self), mode="w")

    def landed(self, path: str, data: bytes) -> None:
        relative = PurePath(path).relative_to(self.experiment).as_posix()
        if not PICKLED.search(relative) or "-tmp-" in relative:  # Ray's own temporary files are never read
            return
        self.uploads += relative.startswith("experiment_state-")
        digests = json.loads((self.experiment / DIGESTS).read_text())["files"] if relative != "tuner.pkl" else {}
        if relative != "tuner.pkl" and _digest(secret_key(), relative, data) not in digests.get(relative, []):
            self.unsigned.append(relative)


class _Upload(io.BytesIO):
    """A file written whole at close (renamed into place), then checked."""

    def __init__(self, path: str, handler: SignedBeforeUpload):
        super().__init__()
        self.path, self.handler = path, handler

    def close(self) -> None:
        if not self.closed:
            Path(f"{self.path}.part").write_bytes(self.getvalue())
            os.replace(f"{self.path}.part", self.path)
            self.handler.landed(self.path, self.getvalue())
        super().close()


def _reports(config: dict) -> None:
    from ray import tune

    for step in range(4):
        time.sleep(0.5)
        tune.report({"loss": config["x"] / (step + 1)})


def test_a_search_killed_after_any_upload_leaves_an_experiment_that_verifies(cache, tmp_path, monkeypatch):
    import ray
    from ray import cloudpickle, tune

    from balm_tune.integrity import Sealer

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")  # Ray saves and uploads its state every second
    experiment = tmp_path / "runs" / "e"
    handler = SignedBeforeUpload(experiment)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        tuner = tune.Tuner(
            _reports,
            param_space={"x": tune.grid_search([1.0, 2.0, 3.0])},
            run_config=tune.RunConfig(
                name="e",
                storage_path=str(tmp_path / "runs"),
                storage_filesystem=pafs.PyFileSystem(handler),
                callbacks=[Sealer()],
                verbose=0,
            ),
        )
        assert not tuner.fit().errors
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
    assert handler.uploads >= 3 and handler.unsigned == []
    verify(open_location(experiment))
