"""No code runs from an experiment folder this user did not write.

`--resume` hands the experiment to Ray's `Tuner.restore`, which unpickles `tuner.pkl`, the experiment
state (`experiment_state-*.json` holds cloudpickled trials), the searcher and callback states
(`searcher-state-*.pkl`, `callback-states-*.pkl`, `search_gen_state-*.json`) and, for failed trials,
`error.pkl`. Unpickling runs code, and experiment folders are shared and synced from clusters. So
the search signs every such file with HMAC-SHA256 under a secret key kept in the user's cache folder
(`$BALM_TUNE_CACHE/experiment.key`, created 0600), in `<experiment>/integrity.json`, while it runs;
`verify` checks them before the restore and refuses a folder with an unsigned or changed file.
`--trust-experiment` accepts a folder written elsewhere (another user or machine) on purpose.
The experiment is a balm_tune.storage.Location: a local folder or a URI (`s3://...`) alike.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time

import pyarrow.fs as pafs
from ray import tune

from balm_tune.storage import Location
from core.errors import BalmError
from core.prompts import cache_dir

DIGESTS = "integrity.json"
KEY_FILE = "experiment.key"
# what Ray unpickles on restore: any *.pkl, and its *state*.json files (cloudpickle inside)
PICKLED = re.compile(r"(^|/)[^/]+\.pkl$|^[^/]*state[^/]*\.json$")
HINT = "resume only folders your own searches wrote, or pass --trust-experiment if you trust its origin"


class IntegrityError(BalmError):
    """An experiment folder whose pickles this user's key did not sign."""


def secret_key() -> bytes:
    """This user's signing key; created on first use, readable by the user only (0600)."""
    path = cache_dir() / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_hex(32).encode())
    return path.read_bytes().strip()


def pickled_files(experiment: Location) -> list[str]:
    """The files of `experiment` (relative paths) that Ray unpickles when it restores the search."""
    return [p for p in experiment.files() if PICKLED.search(p)]


def _digest(key: bytes, relative: str, data: bytes) -> str:
    return hmac.new(key, relative.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def seal(experiment: Location) -> None:
    """Sign every pickled file of `experiment` now (rewrites integrity.json atomically)."""
    key, files = secret_key(), {}
    for relative in pickled_files(experiment):
        try:
            files[relative] = _digest(key, relative, experiment.child(relative).read_bytes())
        except FileNotFoundError:  # Ray deleted an old checkpoint meanwhile
            continue
    experiment.child(DIGESTS).write_bytes(json.dumps({"algorithm": "hmac-sha256", "files": files}, indent=1).encode())


def verify(experiment: Location) -> None:
    """Raise IntegrityError unless every pickled file of `experiment` carries this user's signature."""
    try:
        signed = json.loads(experiment.child(DIGESTS).read_bytes())["files"]
    except FileNotFoundError:
        raise IntegrityError(
            f"--resume: {experiment.uri} has no {DIGESTS} (not written by this user's search); {HINT}"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"--resume: {experiment.child(DIGESTS).uri} is not a digest file; {HINT}") from None
    key = secret_key()
    for relative in pickled_files(experiment):
        expected = signed.get(relative) if isinstance(signed, dict) else None
        data = experiment.child(relative).read_bytes()
        if not expected or not hmac.compare_digest(expected, _digest(key, relative, data)):
            raise IntegrityError(
                f"--resume: {experiment.child(relative).uri} was not written by this user's search "
                f"(no matching HMAC in {DIGESTS}); refusing to unpickle it; {HINT}"
            )


class Sealer(tune.Callback):
    """Re-signs the experiment's pickles (at most once per `every_s`) whenever Ray has rewritten them,
    so that a search killed at any moment can still be resumed."""

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self.seen, self.checked = None, 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if trials and time.monotonic() - self.checked >= self.every_s:
            self.refresh(trials[0].storage)

    def on_experiment_end(self, trials: list, **info) -> None:
        if trials:
            self.refresh(trials[0].storage)

    def refresh(self, storage) -> None:
        """`storage`: a trial's ray.train StorageContext (its filesystem and experiment path)."""
        self.checked = time.monotonic()
        path = storage.experiment_fs_path.rstrip("/")
        folder = Location(path, storage.storage_filesystem, path)
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        stamp = sorted(
            (info.path, info.mtime_ns, info.size)
            for info in folder.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and PICKLED.search(info.path[len(path) + 1 :])
        )
        if stamp != self.seen:
            seal(folder)
            self.seen = stamp

    def __getstate__(self) -> dict:
        return {"every_s": self.every_s, "seen": None, "checked": 0.0}
