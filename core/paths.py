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


def check_output_folder(folder: str | Path, flag: str) -> None:
    """The folder (or the nearest folder above it that exists) is a writable directory; creates nothing.

    Remote storage URIs (`s3://...`) are left to the storage layer.
    """
    if "://" in str(folder):
        return
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise PathError(f"{flag} {folder}: is a file, expected a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PathError(f"{flag} {folder}: {existing} is a file, expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {folder}: {existing} is not writable by this user")
