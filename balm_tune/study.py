"""The Optuna study file of an experiment: one JournalStorage file (`Experiment.journal`), one study in
it named after the experiment. Every reader and writer opens it here (the searcher, importances, the
warm start, optuna-dashboard reads the same file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from core.errors import BalmError, shown


class StudyError(BalmError):
    """The experiment's Optuna study file cannot be read as this experiment's study."""


def check_journal(journal: Path) -> None:
    """StudyError naming the first line of `journal` that is not a journal record (Optuna reads past a
    damaged last line, then fails inside the search once another record follows it). A last line without
    its newline is a record whose write was cut off (a full disk, a kill): `drop_torn_record` removes it."""
    with open(journal, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                return  # torn: never a record any reader saw
            try:
                json.loads(line)
            except ValueError:
                raise StudyError(
                    f"{journal}: line {number} is not an Optuna journal record ({shown(line[:60])}); the file is "
                    "damaged: restore it from a copy, or delete that line and those after it"
                ) from None


def drop_torn_record(journal: Path) -> bool:
    """Before a resumed search writes to `journal`: cut a last record whose write was cut off, which Optuna
    skips when reading but would join to the next record it appends (a damaged line in the middle)."""
    if not journal.exists():
        return False
    data = journal.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    os.truncate(journal, data.rfind(b"\n") + 1)
    print(f"note: {journal} ended in a record whose write was cut off (a full disk or a kill); removed it")
    return True


def open_study(journal: Path, name: str, *, create: bool = False, sampler=None) -> optuna.Study:
    """The study `name` in the JournalStorage file `journal` (created if `create`)."""
    storage = JournalStorage(JournalFileBackend(str(journal)))
    if create:
        return optuna.create_study(
            storage=storage, study_name=name, sampler=sampler, direction="minimize", load_if_exists=True
        )
    return optuna.load_study(storage=storage, study_name=name, sampler=sampler)


def study_names(journal: Path) -> list[str]:
    """The names of the studies in `journal` (an existing file)."""
    return optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(journal))))


def existing_study(journal: Path, name: str) -> optuna.Study | None:
    """The study `name` in `journal`, or None (no file, or no study of that name in it)."""
    if not Path(journal).is_file() or name not in study_names(journal):
        return None
    return open_study(journal, name)
