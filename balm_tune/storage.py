"""Where a search keeps its experiment: a local folder or a URI that every Ray node reaches.

A location is any path or URI pyarrow's filesystems open (`s3://bucket/prefix`, `gs://...`,
`abfs://...`, a shared mount). S3 reads the standard AWS variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores) or an
instance profile. Ray Tune writes trials, checkpoints and TensorBoard files there itself; this module
reads and writes the few files the search needs around it and copies them to and from local folders.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from core.atomic import write_atomic
from core.errors import BalmError, fault_line, storage_fault, text_fault
from core.paths import writable_folder


class StorageError(BalmError, ValueError):
    """A storage location that cannot be opened or read; the message names the URI."""


class StorageFull(StorageError):
    """The storage (or the local folder the search exports to) filled up, went over its quota or turned
    read-only while the search wrote to it. What was written before stays as it was: --resume continues."""

    @classmethod
    def of(cls, fault: OSError, where: str) -> StorageFull:
        return cls(
            f"{fault_line(fault, where)}: the search stopped; the trials, checkpoints and study written before are "
            "intact: free space there, then continue with --resume"
        )


class FaultWatch(logging.Filter):
    """While Tune runs, on the handlers of Ray's logger: the first storage fault Ray logs (a trial that
    could not write its checkpoint, an experiment state that could not be saved) stops the search as
    Ctrl-C does, by a SIGINT to this process (Tune stops its trials and keeps their state for --resume),
    and Ray's tracebacks of it, and its records after it, are not printed: the search says it in one line
    (StorageFull) once Tune has stopped. Use it as a context manager around `Tuner.fit`."""

    def __init__(self):
        super().__init__()
        self.fault: OSError | None = None
        self._handlers: list[logging.Handler] = []
        self._signal = False  # Tune handles SIGINT only when it runs in the main thread

    def filter(self, record: logging.LogRecord) -> bool:
        fault = (storage_fault(record.exc_info[1]) if record.exc_info else None) or text_fault(record.getMessage())
        if fault is None:
            return self.fault is None or not record.name.startswith("ray.tune")  # after it: consequences
        first = self.fault is None
        if first or (fault.filename and not self.fault.filename):  # the first, or one that names the file
            self.fault = fault
        if first and self._signal:  # its handler logs at once, through this filter: the fault is set before
            signal.raise_signal(signal.SIGINT)  # Tune's own handler: stop the trials, keep what was saved
        return False

    def __enter__(self) -> FaultWatch:
        self._signal = threading.current_thread() is threading.main_thread()
        self._handlers = list(logging.getLogger("ray").handlers)
        for handler in self._handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)


@dataclass(frozen=True)
class Location:
    """A folder on a pyarrow filesystem; `uri` is what Ray Tune and the user see."""

    uri: str
    fs: pafs.FileSystem
    path: str  # the folder inside `fs` (for S3: bucket/prefix)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        base, query = _split_query(self.uri)
        return Location(base.rstrip("/").rsplit("/", 1)[0] + query, self.fs, self.path.rstrip("/").rsplit("/", 1)[0])

    def child(self, *parts: str) -> Location:
        base, query = _split_query(self.uri)
        joined = "/".join(p.strip("/") for p in parts)
        return Location(f"{base.rstrip('/')}/{joined}{query}", self.fs, f"{self.path.rstrip('/')}/{joined}")

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file (core.atomic on a local filesystem; an object store's PUT is atomic)."""
        if self.is_local:
            write_atomic(self.path, data)
            return
        self.fs.create_dir(self.parent.path, recursive=True)
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def upload(self, local_file: Path) -> None:
        """Copy a local file to this location."""
        self.write_bytes(Path(local_file).read_bytes())

    def download(self, local_file: Path) -> Path:
        """Copy this file to a local path; returns that path."""
        return write_atomic(local_file, self.read_bytes())

    def files(self, suffix_match: str = "") -> list[str]:
        """Paths (relative to this folder) of every file below it whose name contains `suffix_match`."""
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        root = self.path.rstrip("/") + "/"
        return sorted(
            info.path[len(root) :]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and suffix_match in info.base_name
        )

    def delete(self) -> None:
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as err:
            raise StorageError(f"--storage {self.uri}: cannot be read ({_first_line(err)})") from None


def is_uri(storage: str | Path) -> bool:
    return "://" in str(storage)


def open_location(storage: str | Path) -> Location:
    """The location of `storage` (a URI, or a local folder made absolute); checks a URI's bucket exists
    and a local folder is writable."""
    if not is_uri(storage):
        path = writable_folder(storage, "--storage")
        return Location(str(path), pafs.LocalFileSystem(), str(path))
    uri = str(storage)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, OSError, ValueError) as err:
        raise StorageError(f"--storage {uri}: not a storage URI pyarrow can open ({_first_line(err)})") from None
    location = Location(uri, fs, path.rstrip("/"))
    root = Location(uri, fs, path.split("/", 1)[0])  # the bucket (or container) must exist
    if not isinstance(fs, pafs.LocalFileSystem) and not root.exists():
        raise StorageError(f"--storage {uri}: bucket '{root.path}' does not exist (or these credentials cannot see it)")
    return location


def _split_query(uri: str) -> tuple[str, str]:
    base, sep, query = uri.partition("?")
    return base, sep + query


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
