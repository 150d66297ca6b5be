"""A bad flag or flag value is one `error:` line and exit 2 in every CLI; `--help` stays the full text."""

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
