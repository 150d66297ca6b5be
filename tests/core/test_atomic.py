"""One way to write a file: readers see the old file or the whole new one, never half, and a failed
write leaves the old one and no temporary behind."""

import pytest

from core.atomic import atomic_path, write_atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    path = write_atomic(tmp_path / "deep" / "summary.json", "{}\n")
    assert path.read_text() == "{}\n"
    write_atomic(path, b"[1]")
    assert path.read_bytes() == b"[1]" and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "checkpoint.pt", b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as temporary:
        temporary.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_folder_written_by_another_process_first_is_kept(tmp_path):
    out = tmp_path / "smollm2-135m"
    with atomic_path(out) as folder:
        folder.mkdir()
        (folder / "config.json").write_text("first")
    with atomic_path(out) as folder:  # a second worker finished converting the same backbone later
        folder.mkdir()
        (folder / "config.json").write_text("second")
    assert (out / "config.json").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == [out.name]
