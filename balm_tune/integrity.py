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

import pyarrow.fs as pafs
from ray import tune

from balm_tune.compat import staging_folder
from balm_tune.experiment import INTEGRITY
from balm_tune.storage import Location
from core.errors import BalmError
from core.prompts import cache_dir

DIGESTS = INTEGRITY
KEY_FILE = "experiment.key"
# what Ray unpickles on restore: any *.pkl, and its *state*.json files (cloudpickle inside)
PICKLED = re.compile(r"(^|/)[^/]+\.pkl$|^[^/]*state[^/]*\.json$")
KEEP = 4  # digests kept per file: its versions of the last few checkpoints
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


def digests(folder: Location, only: list[str] | None = None) -> dict[str, str]:
    """This user's HMAC of each pickled file of `folder` (or of those relative paths `only`), by relative path."""
    key, found = secret_key(), {}
    for relative in pickled_files(folder) if only is None else only:
        try:
            found[relative] = _digest(key, relative, folder.child(relative).read_bytes())
        except FileNotFoundError:  # Ray deleted an old checkpoint meanwhile
            continue
    return found


def signed_with(signed: dict[str, list[str]], *found: dict[str, str]) -> dict[str, list[str]]:
    """`signed` plus the digests `found`; the last KEEP per file stay valid (an upload launched earlier
    may land later)."""
    files = {relative: list(kept) for relative, kept in signed.items()}
    for digests_found in found:
        for relative, digest in digests_found.items():
            kept = files.setdefault(relative, [])
            if digest not in kept:
                files[relative] = [*kept, digest][-KEEP:]
    return files


def write_digests(experiment: Location, files: dict[str, list[str]]) -> None:
    experiment.child(DIGESTS).write_bytes(json.dumps({"algorithm": "hmac-sha256", "files": files}, indent=1).encode())


def seal(experiment: Location) -> None:
    """Sign every pickled file of `experiment` as it is now (rewrites integrity.json atomically)."""
    write_digests(experiment, signed_with({}, digests(experiment)))


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
        accepted = signed.get(relative) if isinstance(signed, dict) else None
        actual = _digest(key, relative, experiment.child(relative).read_bytes())
        if not isinstance(accepted, list) or not any(hmac.compare_digest(str(d), actual) for d in accepted):
            raise IntegrityError(
                f"--resume: {experiment.child(relative).uri} was not written by this user's search "
                f"(no matching HMAC in {DIGESTS}); refusing to unpickle it; {HINT}"
            )


class Sealer(tune.Callback):
    """Signs the experiment's pickles each time Ray saves them, before Ray uploads them, so that a
    search killed at any moment leaves only signed files behind and can still be resumed.

    Ray's experiment checkpoint writes the trials' state and the searcher's into the driver's staging
    folder, then asks the callbacks for their state (`get_state`, the hook used here), then launches
    the upload of the staging folder to the experiment. Every upload follows such a save. (An upload
    still running at the next save, i.e. one slower than Ray's checkpoint period of 10 s or more, can
    read a file in the milliseconds between Ray rewriting it and this signing it: a driver killed in
    that instant leaves a file that --resume refuses unless --trust-experiment is given.)"""

    def __init__(self):
        self.trials, self.stamps, self.uploaded, self.signed = [], {}, {}, {}

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        self.trials = trials  # the controller's own list: trials it adds later in this step are in it

    def get_state(self) -> None:
        self.refresh()
        return None  # no state of its own: Ray writes no callback-state file for it

    def on_experiment_end(self, trials: list, **info) -> None:
        self.trials = trials
        self.refresh()

    def refresh(self) -> None:
        """Sign the staging folder's files (local: read every time) and the experiment's (each read again
        only when its size or time in the listing changed: on S3 one GET per new or rewritten file, not
        one per file of every trial), and rewrite integrity.json if a digest is new."""
        if not self.trials:
            return  # nothing to restore yet
        path, fs, staging_path = staging_folder(self.trials[0])  # the trials' ray.train storage context
        path, staging_path = path.rstrip("/"), staging_path.rstrip("/")
        folder = Location(path, fs, path)
        staged = digests(Location(staging_path, pafs.LocalFileSystem(), staging_path))
        stamps = _stamp(folder)
        changed = [relative for relative, stamp in stamps.items() if self.stamps.get(relative) != stamp]
        if changed or len(stamps) != len(self.stamps):
            kept = {relative: d for relative, d in self.uploaded.items() if relative in stamps}
            self.uploaded, self.stamps = {**kept, **digests(folder, changed)}, stamps
        files = signed_with(self.signed, self.uploaded, staged)
        if files != self.signed:
            write_digests(folder, files)
            self.signed = files

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: nothing of this run travels
        return {"trials": [], "stamps": {}, "uploaded": {}, "signed": {}}


def _stamp(folder: Location) -> dict[str, tuple]:
    """Relative path -> (mtime, size) of the pickled files below `folder`: what changes when Ray rewrites one."""
    root = folder.path.rstrip("/")
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return {
        info.path[len(root) + 1 :]: (info.mtime_ns, info.size)
        for info in folder.fs.get_file_info(selector)
        if info.type == pafs.FileType.File and PICKLED.search(info.path[len(root) + 1 :])
    }
