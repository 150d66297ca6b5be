"""YAML as people write it: `1e-3` is a number, no Python tags, and every error fits on one line.

PyYAML follows YAML 1.1, where a float needs a dot (`1e-3` is read as the string "1e-3"); config
files, search spaces and `--set` values all go through `parse_yaml`, which reads it as YAML 1.2 does.
Only the safe loader is used: `!!python/...` tags are an error, never code. Aliases let a few lines
expand to billions of values (an "anchor bomb"); a file that expands to more than MAX_VALUES is refused
as it is read, before anything walks it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core.errors import BalmError

MAX_VALUES = 100_000  # values a file may expand to, aliases followed (the paper presets: under 200)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-3, 2E+5) as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str, error: type[BalmError]) -> Any:
    """Parse `text`; a syntax error or an unsafe tag raises `error` with one line naming `source`."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise error(f"{source}: not valid YAML ({_one_line(err)})") from None
    if (size := expanded_size(data)) > MAX_VALUES:
        raise error(f"{source}: expands to {size:,} values through YAML aliases (at most {MAX_VALUES:,} allowed)")
    return data


def expanded_size(data: Any) -> int:
    """How many values `data` holds with every shared (aliased) list or mapping counted each time it is
    used, computed once per distinct object: linear in the file, however far it would expand."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, list | dict):
            return 1
        if id(value) not in sizes:
            sizes[id(value)] = 0  # a self-reference counts once
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            sizes[id(value)] = 1 + sum(size(child) for child in children)
        return sizes[id(value)]

    return size(data)


def read_yaml(path: Path, source: str, error: type[BalmError]) -> Any:
    """Read and parse a YAML (or JSON) file; a binary or unreadable file is one line too."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{source}: not a text file, expected YAML or JSON") from None
    except OSError as err:
        raise error(f"{source}: cannot be read ({err.strerror})") from None
    if "\x00" in text:
        raise error(f"{source}: not a text file, expected YAML or JSON")
    return parse_yaml(text, source, error)


def _one_line(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        what = " ".join(part for part in (err.context, err.problem) if part)
        return f"{what} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())
