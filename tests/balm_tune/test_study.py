"""The experiment's study file: one opener, and a damaged journal named in one line before Ray starts."""

import optuna
import pytest

from balm_tune.api import prepare_search
from balm_tune.space import load_space
from balm_tune.study import StudyError, check_journal, drop_torn_record, open_study
from tests.conftest import write_tiny_space


def _journal_with_garbage(path):
    study = open_study(path, "damaged", create=True, sampler=optuna.samplers.RandomSampler(0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with open(path, "a") as handle:
        handle.write("garbage{{\n")  # Optuna reads past it; the next record written after it breaks every read


def test_a_damaged_journal_line_is_named_and_a_sound_journal_passes(tmp_path):
    sound = tmp_path / "sound.journal"
    open_study(sound, "s", create=True).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    check_journal(sound)
    _journal_with_garbage(tmp_path / "damaged.journal")
    with pytest.raises(StudyError, match=r"damaged.journal: line \d+ is not an Optuna journal record \(b'garbage"):
        check_journal(tmp_path / "damaged.journal")


def test_resuming_an_experiment_with_a_damaged_study_is_one_line_before_anything_starts(tmp_path):
    experiment = tmp_path / "runs" / "damaged"
    experiment.mkdir(parents=True)
    load_space(write_tiny_space(tmp_path)).save(experiment / "search_space.yaml")
    _journal_with_garbage(experiment / "optuna.journal")
    before = sorted(p.name for p in experiment.iterdir())
    with pytest.raises(StudyError, match=r"optuna.journal: line \d+ is not an Optuna journal record .* damaged"):
        prepare_search(name="damaged", storage=tmp_path / "runs", resume=True)
    assert sorted(p.name for p in experiment.iterdir()) == before  # nothing changed


def test_a_record_cut_off_by_a_full_disk_is_removed_before_the_resumed_study_writes_again(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    study = open_study(journal, "torn", create=True, sampler=optuna.samplers.RandomSampler(0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    whole = journal.read_bytes()
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code": 4, "worker_id": "2d22f7ba-ba1')  # the write that ran out of space
    check_journal(journal)  # not damage: a record no reader ever saw
    assert drop_torn_record(journal) and journal.read_bytes() == whole
    assert "ended in a record whose write was cut off" in capsys.readouterr().out
    open_study(journal, "torn").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # appends cleanly
    check_journal(journal)
    assert len(open_study(journal, "torn").trials) == 3 and not drop_torn_record(journal)
