"""YAML as the project reads it: an alias bomb is refused as it is read, in one line, in milliseconds."""

import time

import pytest

from core.config import ConfigError
from core.yamlio import MAX_VALUES, expanded_size, parse_yaml


def test_an_alias_bomb_is_refused_before_anything_walks_it():
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 11)]
    started = time.perf_counter()
    expected = rf"bomb.yaml: expands to 8,335,593,969 values through YAML aliases \(at most {MAX_VALUES:,} allowed\)"
    with pytest.raises(ConfigError, match=expected):
        parse_yaml("\n".join(lines), "bomb.yaml", ConfigError)
    assert time.perf_counter() - started < 2


def test_aliases_within_the_bound_are_read_as_usual():
    data = parse_yaml("base: &b {lr: 1e-3}\nagain: *b\n", "ok.yaml", ConfigError)
    assert data == {"base": {"lr": 0.001}, "again": {"lr": 0.001}}
    assert expanded_size(data) == 9  # the top, its 2 keys, 2 x (a mapping, its key, its value)
