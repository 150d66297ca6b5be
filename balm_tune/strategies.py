"""Search strategies by name, as the space file's `searcher:` and `scheduler:` sections give them.

    searcher:  {type: tpe | random | cmaes | gp | qmc | nsga2, <keyword arguments of the Optuna sampler>}
    scheduler: {type: asha | hyperband | median | pbt | fifo, <keyword arguments of the Ray scheduler>}

Shaped like Ray's own `ray.tune.search.create_searcher` / `ray.tune.schedulers.create_scheduler`
tables (name -> class, imported when used), with two differences: an unknown keyword is an error, not
silently dropped, and what the search itself decides is set here, not in the file: the sampler's seed
(the space's top-level `seed`), the scheduler's metric, mode, time unit (epochs) and max_t (max_epochs),
and PBT's mutations (the space's float keys: they change no parameter shape, so a trial can continue
from another trial's checkpoint). Every sampler runs inside `StudySearch` (the experiment's persistent
Optuna study); PBT samples its own population (Ray allows no searcher beside it), from the same
distributions, and `StudyRecorder` writes its trials to the study.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from core.errors import BalmError


class StrategyError(BalmError, ValueError):
    """An unknown searcher or scheduler, or a keyword its class does not take."""


@dataclass(frozen=True)
class Strategy:
    """A `searcher:` or `scheduler:` section: the table entry's name and its keyword arguments."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_spec(self) -> dict:
        return {"type": self.type, **self.options}


@dataclass(frozen=True)
class Entry:
    """One table row: where the class lives; for schedulers, the verb of a trial it ends early."""

    module: str
    name: str
    verb: str = ""

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.name)


SEARCHERS: dict[str, Entry] = {
    "tpe": Entry("optuna.samplers", "TPESampler"),
    "random": Entry("optuna.samplers", "RandomSampler"),
    "cmaes": Entry("optuna.samplers", "CmaEsSampler"),
    "gp": Entry("optuna.samplers", "GPSampler"),
    "qmc": Entry("optuna.samplers", "QMCSampler"),
    "nsga2": Entry("optuna.samplers", "NSGAIISampler"),
}
SCHEDULERS: dict[str, Entry] = {
    "asha": Entry("ray.tune.schedulers", "ASHAScheduler", "pruned"),
    "hyperband": Entry("ray.tune.schedulers", "HyperBandScheduler", "pruned"),
    "median": Entry("ray.tune.schedulers", "MedianStoppingRule", "stopped"),
    "pbt": Entry("ray.tune.schedulers", "PopulationBasedTraining", "perturbed"),
    "fifo": Entry("ray.tune.schedulers", "FIFOScheduler", "stopped"),
}
DEFAULT_SEARCHER = Strategy("tpe")
DEFAULT_SCHEDULER = Strategy("asha", {"grace_period": 1, "reduction_factor": 2})
# set by the search, never by the space file
SET_BY_SEARCH = {
    "seed",
    "metric",
    "mode",
    "time_attr",
    "max_t",
    "hyperparam_mutations",
    "stop_last_trials",
    "custom_explore_fn",
}
# StudySearch's own options beside the sampler's keywords: how scheduler-stopped trials are told to Optuna
STUDY_OPTIONS = {"pruned_trials": ("pruned", "complete")}


def parse_strategy(where: str, raw: Any, table: dict[str, Entry], default: Strategy) -> Strategy:
    """A section of the space file -> Strategy; `where` is the section's name, errors quote its keys."""
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise StrategyError(f"'{where}': expected a mapping with 'type' one of {sorted(table)}, got {raw!r}")
    options = dict(raw)
    kind = options.pop("type", default.type)
    if kind not in table:
        raise StrategyError(f"'{where}.type': got {kind!r}, expected one of {sorted(table)}")
    if kind == default.type:
        options = {**default.options, **options}  # the old `scheduler: {grace_period, reduction_factor}`
    reserved = sorted(set(options) & SET_BY_SEARCH)
    if reserved:
        raise StrategyError(f"'{where}.{reserved[0]}': set by the search (the top-level 'seed', epochs, max_epochs)")
    allowed = _keywords(table[kind].load()) | (set(STUDY_OPTIONS) if table is SEARCHERS else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise StrategyError(f"'{where}.{unknown[0]}': unknown keyword of {kind}; expected one of {sorted(allowed)}")
    for key, values in STUDY_OPTIONS.items():
        if key in options and options[key] not in values:
            raise StrategyError(f"'{where}.{key}': got {options[key]!r}, expected one of {list(values)}")
    return Strategy(kind, options)


def create_sampler(strategy: Strategy, seed: int):
    """The Optuna sampler of a `searcher:` section, seeded with the space's seed."""
    options = {k: v for k, v in strategy.options.items() if k not in STUDY_OPTIONS}
    return SEARCHERS[strategy.type].load()(seed=seed, **options)


def create_scheduler(strategy: Strategy, *, max_epochs: int, mutations: dict[str, Any] | None = None):
    """The Ray scheduler of a `scheduler:` section, with epochs (`training_iteration`) as its time unit."""
    cls = SCHEDULERS[strategy.type].load()
    options = dict(strategy.options)
    accepted = _keywords(cls)
    if "time_attr" in accepted:
        options["time_attr"] = "training_iteration"
    if "max_t" in accepted:
        options["max_t"] = max_epochs
    if strategy.type == "pbt":
        options.setdefault("perturbation_interval", 1)
        options["hyperparam_mutations"] = mutations or {}
        bounds = {key: (domain.lower, domain.upper) for key, domain in (mutations or {}).items()}
        options["custom_explore_fn"] = functools.partial(_inside, bounds)
    return cls(**options)


def _inside(bounds: dict[str, tuple[float, float]], config: dict) -> dict:
    """PBT multiplies a value by 0.8 or 1.2: keep it inside the space's range."""
    for key, (low, high) in bounds.items():
        config[key] = min(max(config[key], low), high)
    return config


def try_sampler(strategy: Strategy, seed: int, distributions: dict, trials: int = 4) -> None:
    """Build the sampler and let it propose `trials` trials of an in-memory study over `distributions`:
    a keyword value of the right name but the wrong type or range (n_startup_trials: "ten") fails here, as
    it would at the search's first trial, not after Ray started."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=create_sampler(strategy, seed))
    for value in range(trials):
        study.tell(study.ask(distributions), float(value))


def check_buildable(where: str, build, *args, **kwargs) -> None:
    """Build a strategy once (cheap) so that a bad value fails, naming `where`, before anything starts."""
    try:
        build(*args, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise StrategyError(f"'{where}': {str(err)[:200] or type(err).__name__}") from None


def _keywords(cls: type) -> set[str]:
    return {
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    } - SET_BY_SEARCH
