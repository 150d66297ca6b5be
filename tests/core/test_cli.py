"""A bad flag or flag value is one `error:` line and exit 2 in every CLI; `--help` stays the full text."""

import subprocess
import sys

import pytest

from balm_tune import report, search, train


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (
            search.main,
            ["--seed", "abc"],
            "error: python -m balm_tune.search: argument --seed: invalid int value: 'abc'",
        ),
        (search.main, ["--gpus-per-trial", "abc"], "expected a number of GPUs or 'auto', got 'abc'"),
        (train.main, ["--nope"], "error: python -m balm_tune.train: unrecognized arguments: --nope"),
        (report.main, [], "error: python -m balm_tune.report: the following arguments are required: experiment"),
    ],
)
def test_a_bad_flag_is_one_error_line_and_exit_2(capsys, main, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err and err.endswith("(see --help)\n")


def test_help_is_still_the_full_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        search.main(["--help"])
    assert exit_.value.code == 0 and "--break-lock" in capsys.readouterr().out


def test_a_command_exits_with_its_mains_code_and_everything_it_wrote(tmp_path):
    """exit_with skips the collector at shutdown (gc.freeze); output and files left open still reach disk."""
    script = f"""
from core.cli import exit_with

def main():
    global log
    log = open({str(tmp_path / "log.txt")!r}, "w")  # left open in a module global
    log.write("kept")
    cycle = {{"file": open({str(tmp_path / "data.bin")!r}, "wb")}}  # and in a cycle only the collector frees
    cycle["self"] = cycle
    cycle["file"].write(b"bytes")
    print("done")
    return 3

exit_with(main)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (3, "done\n", "")
    assert (tmp_path / "log.txt").read_text() == "kept" and (tmp_path / "data.bin").read_bytes() == b"bytes"
