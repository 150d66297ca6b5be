"""The project's one way to write a file: a reader never sees half of it, and a crash leaves the old one.

Every writer of a file that another process may read at the same time (Ray workers sharing the prompt
cache, a driver killed while it exports) goes through `write_atomic` or `atomic_path`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` (unique to this process) to write a file or folder to; it replaces
    `path` when the block ends without an error, and is removed otherwise. A folder only replaces a
    `path` that does not exist yet (another process finished first: its copy is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        if temporary.is_dir() and path.exists():
            return
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write the whole of `data` to `path` (text as UTF-8) through `atomic_path`; returns `path`."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
