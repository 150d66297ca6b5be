"""Experiment storage at a URI, against a real S3 protocol endpoint (moto in server mode on 127.0.0.1)."""

import pytest

from balm_tune.api import prepare_search
from balm_tune.experiment import SPACE as SPACE_COPY
from balm_tune.space import SpaceError, load_space
from balm_tune.storage import StorageError, open_location
from core.paths import PathError
from tests.conftest import write_tiny_space


def test_a_location_on_s3_writes_reads_lists_and_downloads_files(s3_endpoint, tmp_path):
    experiment = open_location("s3://balm/store").child("exp")
    assert experiment.uri == "s3://balm/store/exp" and not experiment.exists()
    experiment.child("trial_1", "events.out.tfevents.1").write_bytes(b"curves")
    experiment.child("summary.json").write_bytes(b"{}")
    assert experiment.exists() and experiment.child("summary.json").read_bytes() == b"{}"
    assert experiment.files("events.out.tfevents") == ["trial_1/events.out.tfevents.1"]
    local = experiment.child("trial_1", "events.out.tfevents.1").download(tmp_path / "t" / "ev")
    assert local.read_bytes() == b"curves"
    (tmp_path / "best.yaml").write_text("a: 1\n")
    experiment.child("best.yaml").upload(tmp_path / "best.yaml")
    assert experiment.child("best.yaml").read_bytes() == b"a: 1\n"


def test_a_missing_bucket_is_one_line_naming_the_uri(s3_endpoint):
    with pytest.raises(StorageError, match="--storage s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        open_location("s3://no-such-bucket/x")


def test_prepare_search_refuses_an_experiment_that_already_exists_at_a_uri(s3_endpoint, tmp_path):
    open_location("s3://balm/taken/x").child(SPACE_COPY).write_bytes(b"x")
    space = write_tiny_space(tmp_path)
    with pytest.raises(SpaceError, match="s3://balm/taken/x exists; continue it with --resume"):
        prepare_search(space, storage="s3://balm/taken", name="x", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_resume_reads_the_space_saved_at_a_uri_and_keeps_a_local_copy(s3_endpoint, tmp_path):
    saved = load_space(write_tiny_space(tmp_path, budget={"num_samples": 5}))
    saved.save(tmp_path / SPACE_COPY)
    open_location("s3://balm/resumable/x").child(SPACE_COPY).upload(tmp_path / SPACE_COPY)
    plan = prepare_search(storage="s3://balm/resumable", name="x", resume=True, out=tmp_path / "out")
    assert plan.space.num_samples == 5 and plan.experiment.uri == "s3://balm/resumable/x"
    assert plan.experiment.folder == tmp_path / "out" / "x" and plan.experiment.space_file.is_file()


@pytest.mark.parametrize("flag", ["storage", "out"])
def test_a_storage_or_out_path_that_cannot_be_a_writable_folder_is_refused_up_front(tmp_path, flag):
    (tmp_path / "file").write_text("not a folder")
    space = write_tiny_space(tmp_path)
    with pytest.raises(PathError, match=f"--{flag} {tmp_path / 'file' / 'runs'}: {tmp_path / 'file'} is not a folder"):
        prepare_search(space, name="x", **{flag: tmp_path / "file" / "runs"})
