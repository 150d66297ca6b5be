"""An experiment's folder: every file name in it, where it is kept, and its summary.

A search keeps its experiment at a storage location (a local folder, or a URI every Ray node reaches:
balm_tune.storage) and exports what a person reads into a local folder, the experiment's mirror (the
same folder when the storage is local). `Experiment` is the one owner of both: the file names below
are spelled nowhere else, `publish` copies exported files to the location and `fetch` brings the
location's files down. `Summary` is summary.json as typed data: the search writes it, the printed
closing lines (balm_tune.closing), the report and bench/ read it back.

    <experiment>/
      search_space.yaml   the space as resolved when the search started (--resume reads it)
      optuna.journal      the Optuna study (JournalStorage; study name = the experiment's name)
      leaderboard.csv     one row per trial, best first        baselines.csv  the baselines, same windows
      config.yaml         the winner's full config             checkpoint.pt  the winner's weights
      summary.json        Summary                              report/        index.html and its pictures
      integrity.json      HMACs of Ray's pickles (balm_tune.integrity)
      driver.lock         while a driver runs the search: its host and pid (one driver per experiment)
      <trial>/result.json Ray's per-trial results              final_seeds/   the winner retrained
                                                               ablations/     its config without the LLM
                                                               ablation_searches/<arm>/  each arm searched
                                                               official/      the first enqueued config retrained
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import write_atomic
from core.errors import BalmError
from core.paths import writable_folder

if TYPE_CHECKING:  # imported where used: the CLIs import this module before they parse their arguments
    from balm_tune.importance import Importances
    from balm_tune.storage import Location
    from core.baselines import Metrics
    from core.significance import DieboldMariano, SeedSpread

SPACE = "search_space.yaml"
JOURNAL = "optuna.journal"
LEADERBOARD = "leaderboard.csv"
BASELINES = "baselines.csv"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
INTEGRITY = "integrity.json"
REPORT = "report"
REPORT_INDEX = "index.html"
TRIAL_RESULT = "result.json"  # Ray's, in every trial's folder
LOCK = "driver.lock"
FINAL_SEEDS = "final_seeds"
ABLATIONS = "ablations"
OFFICIAL = "official"  # the space's first enqueued config retrained on the winner's seeds (--official)
ABLATION_SEARCHES = "ablation_searches"  # <arm>/: a whole experiment per arm (ablations: {search: true})
TENSORBOARD = "events.out.tfevents"  # the prefix of Ray's TensorBoard event files
# what `python -m balm_tune.report` needs from a remote experiment: the exported files, then the trials'
EXPORTED = (LEADERBOARD, SUMMARY, SPACE, CONFIG, CHECKPOINT)
TRIAL_FILES = (TRIAL_RESULT, JOURNAL)
EARLIER_CONFIG, EARLIER_CHECKPOINT = "best_config.yaml", "best_checkpoint.pt"  # exports before config.yaml ...
WINDOWS_NOTE = "validation (selection) on an evenly spaced subset when max_eval_batches is set; test on every window"


class ExperimentError(BalmError):
    """A folder or summary that is not (or not yet) a balm_tune experiment's."""


class LockError(ExperimentError):
    """Another driver runs this experiment (its lock names the host and pid)."""


@dataclass(frozen=True)
class Experiment:
    """An experiment's storage location (where Ray keeps trials and checkpoints) and its local mirror
    `folder` (where the exported files are written; the location itself when that is local)."""

    location: Location
    folder: Path

    @classmethod
    def open(cls, storage: str | Path | Location, name: str, out: str | Path | None = None) -> Experiment:
        """Experiment `name` under `storage`; its mirror is `out`/<name> (default: under the storage
        folder when it is local, else under runs/). Opening creates nothing."""
        from balm_tune.storage import Location, open_location

        parent = storage if isinstance(storage, Location) else open_location(storage)
        location = parent.child(name)
        default = Path(parent.path) if parent.is_local else Path("runs")
        folder = writable_folder(out, "--out") / name if out is not None else default.resolve() / name
        return cls(location, folder)

    @classmethod
    def local(cls, folder: str | Path) -> Experiment:
        """The experiment whose storage is the local `folder` itself (a finished search's results)."""
        from balm_tune.storage import open_location

        folder = Path(folder).resolve()
        return cls(open_location(folder), folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def mirrored(self) -> bool:
        """Whether the location is somewhere else than `folder` (remote storage, or another local folder)."""
        return not (self.location.is_local and Path(self.location.path).resolve() == self.folder.resolve())

    # the files of the folder, as local paths in the mirror
    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)

    @property
    def space_file(self) -> Path:
        return self.path(SPACE)

    @property
    def journal(self) -> Path:
        return self.path(JOURNAL)

    @property
    def leaderboard(self) -> Path:
        return self.path(LEADERBOARD)

    @property
    def baselines(self) -> Path:
        return self.path(BASELINES)

    @property
    def summary_file(self) -> Path:
        return self.path(SUMMARY)

    @property
    def config(self) -> Path:
        return self.path(CONFIG)

    @property
    def checkpoint(self) -> Path:
        return self.path(CHECKPOINT)

    @property
    def report(self) -> Path:
        return self.path(REPORT)

    def trial_results(self) -> list[Path]:
        """Ray's result.json of every trial in the mirror."""
        return sorted(self.folder.glob(f"*/{TRIAL_RESULT}"))

    def taken(self) -> str | None:
        """Where this experiment already exists (the location or the mirror), or None."""
        return next(
            (str(w) for w, used in ((self.uri, self.location.exists()), (self.folder, self.folder.exists())) if used),
            None,
        )

    # copies between the location and the mirror (none when they are one folder)
    def publish(self, *paths: Path) -> None:
        """Copy files of the mirror to the same relative place at the location."""
        if not self.mirrored:
            return
        for path in paths:
            self.location.child(*Path(path).relative_to(self.folder).parts).upload(path)

    def fetch(self, *names: str, trials: bool = False) -> int:
        """Copy the location's files called `names` into the mirror; with `trials` also those one folder
        down (the trials' own). Returns how many were copied."""
        if not self.mirrored:
            return 0
        wanted = [
            n for n in self.location.files() if n.rsplit("/", 1)[-1] in names and n.count("/") <= (1 if trials else 0)
        ]
        for name in wanted:
            self.location.child(name).download(self.path(name))
        return len(wanted)

    def fetch_tensorboard(self) -> int:
        """Copy every trial's TensorBoard event files into the mirror (same layout); returns how many."""
        if not self.mirrored:
            return 0
        names = self.location.files(TENSORBOARD)
        for name in names:
            self.location.child(name).download(self.path(name))
        return len(names)

    def check_unlocked(self) -> dict[str, Any]:
        """LockError when a driver that may still run holds the experiment's lock; else what a lock left
        by an ended driver says ({} when there is none)."""
        lock = self.location.child(LOCK)
        held = _read_lock(lock) if lock.exists() else {}
        if lock.exists() and _alive(held):
            raise LockError(
                f"{lock.uri}: the experiment is being run by {held.get('user', '?')}@{held.get('host', '?')} "
                f"pid {held.get('pid', '?')} since {held.get('since', '?')}; wait for it to end, or pass "
                "--break-lock if that driver is gone"
            )
        return held

    @contextlib.contextmanager
    def locked(self, break_lock: bool = False) -> Iterator[None]:
        """Hold the experiment's driver lock while inside: a second driver of the same experiment gets a
        LockError naming the holder. A lock left by a driver that died on this host (its pid no longer
        runs that process) is taken over; `break_lock` takes over any lock (a driver gone on another host).
        Local folders: an exclusive create; URI storage: a lease object written and read back."""
        lock = self.location.child(LOCK)
        holder = _holder()
        if lock.exists() and not break_lock:
            held = self.check_unlocked()
            print(f"note: taking over the lock of pid {held.get('pid')} on {held.get('host')}, which has ended")
            lock.delete()
        folder = Path(lock.path).parent
        made = [p for p in (folder, *folder.parents) if not p.exists()] if lock.is_local else []
        if lock.is_local and not break_lock:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise LockError(f"{lock.uri}: another driver took the experiment's lock a moment ago") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(holder))
        else:
            lock.write_bytes(json.dumps(holder).encode())
            if _read_lock(lock).get("token") != holder["token"]:  # a lease another driver wrote after ours
                raise LockError(f"{lock.uri}: another driver took the experiment's lock a moment ago")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if _read_lock(lock).get("token") == holder["token"]:
                    lock.delete()
                for path in made:  # a search refused before it wrote anything leaves no folder behind
                    path.rmdir()  # only if empty (OSError otherwise: the experiment's files stay)

    def write_summary(self, summary: Summary) -> Path:
        return write_atomic(self.summary_file, json.dumps(summary.to_dict(), indent=2, default=str) + "\n")

    def read_summary(self) -> Summary:
        """summary.json as a Summary; ExperimentError when it is missing or from an earlier balm_tune."""
        if not self.summary_file.is_file():
            raise ExperimentError(f"{self.summary_file}: missing (the search has not finished)")
        try:
            data = json.loads(self.summary_file.read_bytes())
        except ValueError as err:  # not UTF-8, or not JSON: damaged (a truncated copy, a full disk)
            raise ExperimentError(
                f"{self.summary_file}: not JSON ({err}; damaged?); rebuild it with --resume"
            ) from None
        if not isinstance(data, dict):
            raise ExperimentError(f"{self.summary_file}: not a summary (a JSON object was expected; damaged?)")
        return Summary.from_dict(data, self.summary_file)


def _holder() -> dict[str, Any]:
    import getpass
    import secrets
    import socket
    import time

    import psutil

    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "started": psutil.Process(pid).create_time(),  # with the pid: the same process, not a reused pid
        "user": getpass.getuser(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": secrets.token_hex(8),
    }


def _read_lock(lock: Location) -> dict[str, Any]:
    try:
        held = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated as a lock whose holder cannot be told alive
    return held if isinstance(held, dict) else {}


def _alive(held: dict[str, Any]) -> bool:
    """Whether the lock's holder may still run: always for another host (it cannot be told from here)."""
    import socket

    import psutil

    if held.get("host") != socket.gethostname():
        return True
    try:
        return abs(psutil.Process(int(held["pid"])).create_time() - float(held["started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


# --- summary.json ------------------------------------------------------------------------------------


@dataclass
class Windows:
    """How many windows each score was taken over: validation (the trials' subset and all), test (all)."""

    val: int
    val_total: int
    test: int
    note: str = WINDOWS_NOTE


@dataclass
class Winner:
    """The trial with the lowest best validation MSE, and over how many windows that was taken."""

    trial_id: str
    best_val_mse: float
    best_val_mae: float
    epochs_run: int
    val_windows: int


@dataclass
class Summary:
    """summary.json. Every search has the fields up to `importances`; a search with a winner also has
    `winner` .. `wall_seconds` (`base`: the space's first enqueued config's trial, for "what the search
    gained"; `final_seeds`: with --final-seeds). `baselines`: name -> {"val": Metrics, "test": Metrics,
    "beats_on_val", "beats_on_test", "significance_on_test"} as dicts (core.baselines; the last a
    core.significance.DieboldMariano of the winner against it), scored on the trials' windows."""

    experiment: str  # the storage URI
    results: str  # the local folder
    trials: int
    outcomes: dict[str, int]
    strategy: dict[str, Any]
    study: dict[str, str]
    warm_start: dict[str, Any] | None
    built_in_driver: dict[str, int]  # backbone loads and prompt builds in the driver (1 and 1 when shared)
    built_in_trials: dict[str, int]  # ... and in the trials' processes (0 and 0 when shared)
    windows: Windows
    baselines: dict[str, dict[str, Any]]
    stalled: str | None  # why the search ended before its budget, or None
    importances: Importances
    winner: Winner | None = None
    base: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    final_seeds: dict[str, Any] | None = None
    ablations: dict[str, Any] | None = None  # arm -> its runs, means and test against the winner (--ablations)
    official: dict[str, Any] | None = None  # the first enqueued config's params, runs, means, test (--official)
    wall_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object; fields of a winner are left out when there is none."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["windows"], data["importances"] = dataclasses.asdict(self.windows), self.importances.to_dict()
        data["winner"] = dataclasses.asdict(self.winner) if self.winner else None
        return {k: v for k, v in data.items() if not (k in WINNER_FIELDS and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | str = SUMMARY) -> Summary:
        from balm_tune.importance import Importances

        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in data.items() if k in fields}
            values["windows"] = Windows(**data["windows"])
            values["importances"] = Importances(**data["importances"])
            values["winner"] = Winner(**data["winner"]) if data.get("winner") else None
            return cls(**values)
        except KeyError as err:
            what = {"windows": "window counts"}.get(err.args[0], repr(err.args[0]))
            raise ExperimentError(
                f"{source}: no {what} (missing, or written by an earlier balm_tune); "
                "rerun the search to build its report"
            ) from None
        except TypeError as err:
            raise ExperimentError(f"{source}: not a summary of this balm_tune ({err}); rerun the search") from None

    @property
    def has_winner(self) -> bool:
        return self.winner is not None and self.test is not None

    def scores(self) -> dict[str, Metrics]:
        """The winner's validation and test scores (a search with a winner), as the verdicts compare them."""
        from core.baselines import Metrics

        w, test = self.winner, self.test
        return {
            "val": Metrics(w.best_val_mse, w.best_val_mae, w.val_windows),
            "test": Metrics(test["test_mse"], test["test_mae"], test["test_windows"]),
        }

    def significance(self) -> dict[str, dict[str, DieboldMariano]]:
        """Each baseline's Diebold-Mariano test against the winner, by split (test only; none in a summary
        written before the test existed), as core.baselines.comparison takes them."""
        from core.significance import DieboldMariano

        return {
            name: {"test": DieboldMariano(**scores["significance_on_test"])}
            for name, scores in self.baselines.items()
            if scores.get("significance_on_test")
        }

    def seed_spread(self) -> SeedSpread | None:
        """The winner's test MSE over its own seed and the --final-seeds seeds; None without final seeds."""
        from core.significance import SeedSpread

        if not (self.has_winner and self.final_seeds):
            return None
        return SeedSpread.of(self.seed_values("test_mse"))

    def seed_values(self, key: str) -> list[float]:
        """The winner's `test_mse` or `test_mae` on its own seed, then on each --final-seeds seed."""
        return [self.test[key], *(run[key] for run in (self.final_seeds or {}).get("runs", []))]

    def baseline_scores(self) -> dict[str, dict[str, Metrics]]:
        """Each baseline's validation and test scores, in core.baselines' order."""
        from core.baselines import BASELINES, Metrics

        return {
            name: {split: Metrics(**self.baselines[name][split]) for split in ("val", "test")}
            for name in BASELINES
            if name in self.baselines
        }


WINNER_FIELDS = (
    "winner",
    "base",
    "params",
    "test",
    "provenance",
    "final_seeds",
    "ablations",
    "official",
    "wall_seconds",
)
