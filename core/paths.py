"""Where runs are written: run names that stay inside their folder, and output folders checked
before any work (both CLIs create nothing until every check has passed)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from core.errors import BalmError


class PathError(BalmError, ValueError):
    """A run name or output folder that cannot be used; the message names the flag and the value."""


def check_name(name: str, flag: str = "--name") -> str:
    """A single folder name: no separators, not '.' or '..', not absolute (it must stay under its folder)."""
    parts = PureWindowsPath(name).parts + PurePosixPath(name).parts
    if (
        not name
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or PurePosixPath(name).is_absolute()
        or len(set(parts)) != 1
    ):
        raise PathError(f"{flag} {name!r}: expected a single folder name (no '/' or '\\', not '.' or '..')")
    return name


def writable_folder(folder: str | Path, flag: str) -> Path:
    """`folder` made absolute, if it is (or can be created as) a folder this user may write: it, or the
    nearest folder above it that exists, is a writable directory. Creates nothing."""
    path = Path(folder).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise PathError(f"{flag} {path}: {existing} is not a folder")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise PathError(f"{flag} {path}: {existing} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: {existing} is not writable by this user")
    return path
