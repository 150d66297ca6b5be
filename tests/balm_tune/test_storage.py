"""Experiment storage at a URI, against a real S3 protocol endpoint (moto in server mode on 127.0.0.1)."""

import subprocess

import pytest

from balm_tune.api import prepare_search
from balm_tune.experiment import SPACE as SPACE_COPY
from balm_tune.space import SpaceError, load_space
from balm_tune.storage import FaultWatch, StorageError, open_location
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


def test_storage_on_a_read_only_file_system_is_refused_up_front(small_disk, tmp_path):
    mount, _ = small_disk
    disk = mount("1m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(PathError, match=f"--storage {disk / 'runs'}: {disk} is on a read-only file system"):
        prepare_search(write_tiny_space(tmp_path), name="x", storage=disk / "runs")


def test_the_first_fault_ray_logs_stops_tune_as_ctrl_c_and_its_records_are_not_printed():
    import errno
    import logging
    import signal

    class Printed(logging.Handler):  # beside Ray's own handler: what reaches the console
        def __init__(self):
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    printed, ray_log = Printed(), logging.getLogger("ray")
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    signals = []
    handler = signal.signal(signal.SIGINT, lambda *_: signals.append("SIGINT"))  # as Tune's own handler would
    ray_log.addHandler(printed)
    try:
        with FaultWatch() as watch:
            tune_log.warning("a warning before any fault")
            full = OSError(errno.ENOSPC, "No space left on device")
            tune_log.error("Trial task failed for trial t1", exc_info=full)
            tune_log.warning("Trial controller checkpointing failed: [Errno 28] No space left on device")
            tune_log.warning("Trials did not complete: [t1]")  # a consequence, after the fault
        tune_log.warning("after the watch")
    finally:
        signal.signal(signal.SIGINT, handler)
        ray_log.removeHandler(printed)
    assert watch.fault is full and signals == ["SIGINT"]  # one stop, for the first fault
    assert printed.lines == ["a warning before any fault", "after the watch"]
