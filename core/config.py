"""One flat dataclass holds everything a BALM run needs; it is read from and written to YAML/JSON.

Flat on purpose: every field can be overridden with `--set key=value` and searched by name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.atomic import write_atomic
from core.errors import BalmError, shown
from core.yamlio import parse_yaml, read_yaml


class ConfigError(BalmError, ValueError):
    """A bad config key or value; the message names it and says what was expected."""


ABLATIONS = ("no_llm", "llm2attn", "random_llm")  # text_branch values other than llm: Tan et al.'s arms
# the searchable keys an arm does not use (no_llm: no prompt, no contrastive term, no balanced scaling of the
# text branch), dropped when an arm is searched (balm_tune.space.SearchSpace.for_arm)
UNUSED_BY_ARM = {"no_llm": ("prompt_len", "contrastive_weight", "scale_factor")}


@dataclass
class BalmConfig:
    # --- data ---
    data_path: str = "embedded:ETTh1"  # a CSV path, or "embedded:ETTh1" (ships with the package)
    split: str = "auto"  # ett_hour | ett_minute | ratio (70/10/20) | auto (from the file name)
    features: str = "M"  # M: all variables, S: target only, MS: train on all, evaluate the target
    target: str = "OT"
    seq_len: int = 512  # look-back T
    pred_len: int = 96  # horizon H
    percent: float = 100.0  # few-shot: keep the first `percent`% of training windows

    # --- backbone ---
    backbone: str = "gpt2"  # registry name, HF id or local directory (core/backbones.py)
    llm_layers: int = 6

    # --- model (docs/model.md) ---
    patch_len: int = 16
    stride: int = 8
    d_model: int = 32
    d_ff: int = 128
    dropout: float = 0.1
    prompt_len: int | None = None  # P; None: min(n_patches, n_patches * H // T)
    contrastive_weight: float = 1.0  # lambda
    scale_factor: float = 1.0  # alpha
    temperature_init: float = 0.07
    infonce: str = "in_batch"  # in_batch | reference (own key also among the negatives)
    text_branch: str = "llm"  # llm | no_llm | llm2attn | random_llm: Tan et al.'s ablations (docs/model.md)

    # --- prompt and LLM execution (project defaults; "reference" values reproduce the official code) ---
    prompt_style: str = "compact"  # compact: "min {} max {} ..." | reference: the paper's wording (core/prompts.py)
    prompt_decimals: int | None = 2  # digits printed per statistic; None: full float repr (reference)
    padding: str = "left"  # left: left padding + attention mask; right: right padding, no mask (reference)
    llm_dropout: bool = False  # True: the frozen LLM keeps its dropout active (reference)
    attn_implementation: str = "sdpa"  # sdpa | eager (reference)
    share_prefix: bool = True  # causal LLMs: V's states once per batch, not per row (exact; speed only)
    trim_last_block: bool = True  # the final LLM block computes only the P rows it outputs (exact; speed only)

    # --- training ---
    batch_size: int = 24
    learning_rate: float = 1e-3
    epochs: int = 10
    patience: int = 10
    lr_schedule: str = "type1"  # type1 | reference | tst | cos | cosine | constant (core/schedules.py)
    pct_start: float = 0.2  # tst: share of the steps spent warming up (the official default)
    batch_groups: int = 1  # k: one optimizer step on k x batch_size windows, InfoNCE within each group
    seed: int = 2021
    max_train_batches: int | None = None  # per epoch; None: all
    max_eval_batches: int | None = None  # evenly spaced fixed subset of windows; None: all
    eval_batch_size: int | None = None  # windows per forward pass when scoring (no grad); None: 256 (>= batch_size)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    num_threads: int | None = None  # torch CPU threads; None: torch's default

    extras: dict[str, Any] = field(default_factory=dict, repr=False)  # free-form provenance, not used

    # ------------------------------------------------------------------
    def validate(self) -> BalmConfig:
        """Check types and ranges that need no data or backbone; raises ConfigError."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
            _check_finite(f.name, getattr(self, f.name))
        choices = {
            "split": ("auto", "ett_hour", "ett_minute", "ratio"),
            "features": ("M", "S", "MS"),
            "infonce": ("in_batch", "reference"),
            "text_branch": ("llm", *ABLATIONS),
            "padding": ("left", "right"),
            "prompt_style": ("compact", "reference"),
            "attn_implementation": ("sdpa", "eager"),
            "lr_schedule": ("type1", "reference", "tst", "cos", "cosine", "constant"),
            "precision": ("auto", "fp32", "bf16"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key '{key}': got {shown(getattr(self, key))}, expected one of {allowed}")
        positive = ["seq_len", "pred_len", "llm_layers", "patch_len", "stride", "d_model", "d_ff"]
        positive += ["batch_size", "batch_groups", "epochs", "patience", "max_train_batches", "max_eval_batches"]
        positive += ["num_threads", "eval_batch_size"]
        for key in positive:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key '{key}': got {value}, expected an integer >= 1")
        for key in ("learning_rate", "temperature_init", "scale_factor"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key '{key}': got {getattr(self, key)}, expected a number > 0")
        if self.contrastive_weight < 0:
            raise ConfigError(f"config key 'contrastive_weight': got {self.contrastive_weight}, expected >= 0")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"config key 'pct_start': got {self.pct_start}, expected 0 < pct_start < 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"config key 'dropout': got {self.dropout}, expected 0 <= dropout < 1")
        if not 0 < self.percent <= 100:
            raise ConfigError(f"config key 'percent': got {self.percent}, expected 0 < percent <= 100")
        if self.prompt_decimals is not None and not 0 <= self.prompt_decimals <= 17:
            raise ConfigError(f"config key 'prompt_decimals': got {self.prompt_decimals}, expected 0..17 or null")
        if self.seq_len < self.patch_len:
            raise ConfigError(f"config key 'seq_len': got {self.seq_len}, expected >= patch_len ({self.patch_len})")
        if self.prompt_len is not None and self.prompt_len < 2:
            raise ConfigError(
                f"config key 'prompt_len': got {self.prompt_len}, expected an integer >= 2 (balanced scaling "
                "divides by the standard deviation over the P prompt positions, which is 0 for P=1)"
            )
        if self.prompt_len is not None and self.prompt_len > self.n_patches:
            raise ConfigError(
                f"config key 'prompt_len': got {self.prompt_len}, expected <= n_patches ({self.n_patches} "
                f"for seq_len={self.seq_len}, patch_len={self.patch_len}, stride={self.stride})"
            )
        if self.resolved_prompt_len < 2:
            raise ConfigError(
                f"config key 'prompt_len': the default min(n_patches, n_patches*H//T) is "
                f"{self.resolved_prompt_len} for seq_len={self.seq_len}, pred_len={self.pred_len}, expected >= 2; "
                "set prompt_len explicitly"
            )
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"config key 'device': got {self.device!r}, expected auto, cpu, cuda or cuda:N")
        return self

    @property
    def n_patches(self) -> int:
        """Patches after replication-padding `stride` values: (T - p) // s + 2."""
        return (self.seq_len - self.patch_len) // self.stride + 2

    @property
    def resolved_eval_batch_size(self) -> int:
        """Windows per forward pass when scoring: without gradients a larger batch costs little memory and
        runs several times faster than batch_size (bench/eval_batch.py); the scores do not depend on it."""
        return self.eval_batch_size or max(256, self.batch_size)

    @property
    def resolved_prompt_len(self) -> int:
        if self.prompt_len is not None:
            return self.prompt_len
        return min(self.n_patches, self.n_patches * self.pred_len // self.seq_len)

    # --- (de)serialisation ----------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> BalmConfig:
        """Build and validate; unknown keys are an error that names them and the source."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of config keys, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**values).validate()
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> BalmConfig:
        """Read a YAML or JSON file (a top-level mapping of config keys)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        values = read_yaml(path, f"config file {path}", ConfigError)
        return cls.from_dict({} if values is None else values, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write YAML (or JSON when the name ends in .json), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        write_atomic(path, text)

    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides") -> BalmConfig:
        return BalmConfig.from_dict({**self.to_dict(), **overrides}, source=source)


def quickstart() -> BalmConfig:
    """The embedded default: ETTh1, SmolLM2 cut to 1 layer, short look-back, capped epochs.

    Sized for 2 CPU cores (a run takes a few minutes); validation and test use an evenly spaced
    subset of windows (max_eval_batches), which the CLIs say when they print metrics.
    """
    return BalmConfig(
        data_path="embedded:ETTh1",
        seq_len=96,
        pred_len=96,
        backbone="smollm2-135m",
        llm_layers=1,
        d_model=16,
        d_ff=32,
        batch_size=32,
        learning_rate=0.002,
        epochs=5,
        patience=3,
        max_train_batches=40,
        max_eval_batches=16,
    ).validate()


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    """`["lr=1e-3", "prompt_len=null"]` -> {"lr": 0.001, "prompt_len": None}; values parsed as YAML (core.yamlio)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = parse_yaml(raw, f"--set {pair}", ConfigError) if raw.strip() else ""
    return out


# --- type checking of field values ------------------------------------------
def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{name}': got {value}, expected a finite number")


@functools.cache
def _field_types() -> dict[str, Any]:
    """BalmConfig's resolved annotations, once per process (resolving them is ~1 ms a call, and a search
    space validates hundreds of configs)."""
    return typing.get_type_hints(BalmConfig)


def _check_type(name: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)
    ok = any(
        value is None
        if a is type(None)
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if a is float
        else isinstance(value, int) and not isinstance(value, bool)
        if a is int
        else isinstance(value, a)
        for a in allowed
    )
    if not ok:
        names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
        raise ConfigError(f"config key '{name}': got {shown(value)} ({type(value).__name__}), expected {names}")
