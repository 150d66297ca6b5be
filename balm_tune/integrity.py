"""No code runs from an experiment folder this user did not write.

`--resume` hands the experiment to Ray's `Tuner.restore`, which unpickles `tuner.pkl`, the experiment
state (`experiment_state-*.json` holds cloudpickled trials), the searcher and callback states
(`searcher-state-*.pkl`, `callback-states-*.pkl`, `search_gen_state-*.json`) and, for failed trials,
`error.pkl`. Unpickling runs code, and experiment folders are shared and synced from clusters. So
the search signs every such file with HMAC-SHA256 under a secret key kept in the user's cache folder
(`$BALM_TUNE_CACHE/experiment.key`, created 0600), in `<experiment>/integrity.json`, as Ray writes it:
Tune writes to the experiment through `signing_filesystem` (Ray's public `RunConfig(storage_filesystem=)`),
which adds a file's digest to integrity.json before the file lands, so a driver killed at any moment
leaves a folder that verifies. `verify` checks them before the restore and refuses a folder with an
unsigned or changed file.
`--trust-experiment` accepts a folder written elsewhere (another user or machine) on purpose.
The experiment is a balm_tune.storage.Location: a local folder or a URI (`s3://...`) alike.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import secrets
import threading

import pyarrow as pa
import pyarrow.fs as pafs

from balm_tune.experiment import INTEGRITY
from balm_tune.storage import Location
from core.errors import BalmError
from core.prompts import cache_dir

DIGESTS = INTEGRITY
KEY_FILE = "experiment.key"
# what Ray unpickles on restore: any *.pkl, and its *state*.json files (cloudpickle inside)
PICKLED = re.compile(r"(^|/)[^/]+\.pkl$|^[^/]*state[^/]*\.json$")
KEEP = 4  # digests kept per file: its versions of the last few checkpoints
_SIGNING = threading.Lock()  # one driver's uploads run in threads: integrity.json is rewritten by one at a time
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


def digests(folder: Location) -> dict[str, str]:
    """This user's HMAC of each pickled file of `folder`, by relative path."""
    key, found = secret_key(), {}
    for relative in pickled_files(folder):
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


def signing_filesystem(experiment: Location) -> pafs.FileSystem:
    """`experiment`'s filesystem for Ray Tune (`RunConfig(storage_filesystem=...)`, `Tuner.restore`): every
    pickled file this driver writes through it is signed in integrity.json before it lands (the earlier
    version's digest is kept: KEEP per file), so a driver killed at any moment, even during an upload,
    leaves a folder that verifies. Other files, and every file a Ray worker writes (it holds no key), pass
    straight through."""
    return pafs.PyFileSystem(SigningHandler(experiment, os.getpid()))


class SigningHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem handler over the experiment's own filesystem that signs what lands (see
    `signing_filesystem`); everything else is the inner filesystem's."""

    def __init__(self, experiment: Location, driver_pid: int):
        self.experiment, self.driver_pid = experiment, driver_pid
        self.inner, self.root = experiment.fs, experiment.path.rstrip("/")

    def signed_name(self, path: str) -> str | None:
        """The name inside the experiment of a pickled file that this (the driver's) process must sign."""
        if os.getpid() != self.driver_pid or not path.startswith(self.root + "/"):
            return None
        relative = path[len(self.root) + 1 :]
        return relative if PICKLED.search(relative) else None

    def sign(self, relative: str, data: bytes) -> None:
        """Add `data`'s digest for `relative` to integrity.json (read, extended, rewritten atomically)."""
        with _SIGNING:
            try:
                signed = json.loads(self.experiment.child(DIGESTS).read_bytes())["files"]
            except FileNotFoundError:
                signed = {}
            write_digests(self.experiment, signed_with(signed, {relative: _digest(secret_key(), relative, data)}))

    # --- written: signed first -------------------------------------------------------------------------
    def open_output_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        relative = self.signed_name(path)
        if relative is None:
            return self.inner.open_output_stream(path, metadata=metadata)
        return pa.PythonFile(_SignedFile(self, path, relative), mode="w")

    def move(self, src: str, dest: str) -> None:
        if (relative := self.signed_name(dest)) is not None:
            self.sign(relative, self._read(src))
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        if (relative := self.signed_name(dest)) is not None:
            self.sign(relative, self._read(src))
        self.inner.copy_file(src, dest)

    def open_append_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return self.inner.open_append_stream(path, metadata=metadata)  # Ray appends only to result logs

    def _read(self, path: str) -> bytes:
        with self.inner.open_input_stream(path) as stream:
            return stream.read()

    # --- the inner filesystem's own ----------------------------------------------------------------------
    def get_type_name(self) -> str:
        return f"balm-signed+{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.inner.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.inner.open_input_file(path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningHandler) and (self.experiment.uri, self.driver_pid) == (
            other.experiment.uri,
            other.driver_pid,
        )


class _SignedFile(io.BytesIO):
    """A pickled file on its way to the experiment: kept in memory, signed at close, then written whole
    (atomically on a local disk; an object store's PUT is atomic)."""

    def __init__(self, handler: SigningHandler, path: str, relative: str):
        super().__init__()
        self.handler, self.path, self.relative = handler, path, relative

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            self.handler.sign(self.relative, data)  # before it lands: a kill in between leaves the old version
            Location(self.path, self.handler.inner, self.path).write_bytes(data)
        super().close()
