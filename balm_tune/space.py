"""Search spaces: a YAML file with a base config, distributions, budget, strategies and resources.

    description: what this search is for
    gpu_budget: what it costs on GPUs (free text, shown by --dry-run)
    base:      {any core config key: value}            # every trial starts from this
    search:    {key: {type: int|float|log_float|choice, low: .., high: .. | values: [..]}}
    budget:    {num_samples: 12, max_epochs: 5}
    searcher:  {type: tpe, ...}                          # an Optuna sampler (balm_tune.strategies)
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # a Ray scheduler; no type: asha
    enqueue:   [{key: value, ...}, ...]                  # configs evaluated first (e.g. the paper's own)
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}
    seed: 0                                              # the Optuna sampler's seed
    ablations: [no_llm, llm2attn, random_llm]            # optional: the winner retrained as each arm (--ablations)
    #   or {arms: [no_llm, ...], search: true}           # ... each arm searched with this space and budget instead
    horizons:  {96: {learning_rate: .., epochs: ..}, 336: {..}}   # optional, per pred_len

`horizons` (the paper presets) holds each horizon's own values: the entry of the base's pred_len
is applied over `base`, and `--set pred_len=336` switches to that entry's values (keys given with
--set still win). An entry's `epochs` is also the search's budget.max_epochs (the official
train_epochs). Every entry must set the same keys; a pred_len without an entry is an error.

Everything is checked before Ray starts; errors name the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from balm_tune.strategies import (
    DEFAULT_SCHEDULER,
    DEFAULT_SEARCHER,
    SCHEDULERS,
    SEARCHERS,
    Strategy,
    StrategyError,
    check_buildable,
    create_scheduler,
    parse_strategy,
    try_sampler,
)
from core.config import ABLATIONS, UNUSED_BY_ARM, BalmConfig, ConfigError
from core.errors import BalmError, shown
from core.yamlio import read_yaml

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"
SECTIONS = {
    "description": None,
    "gpu_budget": None,
    "base": None,
    "search": None,
    "seed": None,
    "horizons": None,
    "budget": {"num_samples", "max_epochs"},
    "searcher": None,  # checked against the sampler's keywords (balm_tune.strategies)
    "scheduler": None,  # checked against the scheduler's keywords
    "enqueue": None,
    "resources": {"cpus_per_trial", "gpus_per_trial"},
    "ablations": None,
    "paper": None,  # pred_len -> {mse, mae}: the paper's published figure (the campaign's table shows it)
}
# keys that change the data, the prompts or the backbone shared by every trial: one search each
NOT_SEARCHABLE = {
    "data_path",
    "split",
    "features",
    "target",
    "seq_len",
    "pred_len",
    "percent",
    "backbone",
    "prompt_decimals",
    "prompt_style",
    "device",
    "precision",
    "epochs",
    "num_threads",
    "extras",
    "max_eval_batches",
}
KINDS = ("int", "float", "log_float", "choice")


class SpaceError(BalmError, ValueError):
    """A bad search space; the message names the file and the key."""


@dataclass
class Distribution:
    kind: str  # int | float | log_float | choice
    low: float | None = None
    high: float | None = None
    values: list | None = None

    def extremes(self) -> list:
        """The values a trial can take at the edges (checked against the config before Ray starts)."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    def to_spec(self) -> dict:
        """The YAML form of this distribution."""
        if self.kind == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": self.kind, "low": self.low, "high": self.high}

    def to_tune(self):
        from ray import tune

        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # Ray's upper bound is exclusive
        if self.kind == "float":
            return tune.uniform(self.low, self.high)
        if self.kind == "log_float":
            return tune.loguniform(self.low, self.high)
        return tune.choice(list(self.values))

    def to_optuna(self):
        import optuna.distributions as d

        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high))
        if self.kind in ("float", "log_float"):
            return d.FloatDistribution(self.low, self.high, log=self.kind == "log_float")
        return d.CategoricalDistribution(list(self.values))

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.values
        number = isinstance(value, int if self.kind == "int" else int | float) and not isinstance(value, bool)
        return number and self.low <= value <= self.high


@dataclass
class SearchSpace:
    path: Path
    base: BalmConfig
    search: dict[str, Distribution]
    num_samples: int = 12
    max_epochs: int = 5
    searcher: Strategy = DEFAULT_SEARCHER
    scheduler: Strategy = DEFAULT_SCHEDULER
    enqueue: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    seed: int = 0
    description: str = ""
    gpu_budget: str = ""
    horizons: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    ablations: list[str] = dataclasses.field(default_factory=list)  # core.config.ABLATIONS arms (--ablations)
    ablation_search: bool = False  # each arm searched (this space, its keys that apply; this budget), not retrained
    paper: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)  # pred_len -> published mse, mae

    def trial_config(self, params: dict[str, Any]) -> BalmConfig:
        """The full core config of a trial: base + its sampled params, trained for max_epochs."""
        return self.base.with_overrides({**params, "epochs": self.max_epochs}, source=f"{self.path} trial")

    def edge_configs(self) -> list[BalmConfig]:
        """The base with each searched key at each of its edges (checked against the backbone up front)."""
        return [self.base.with_overrides({k: v}) for k, d in self.search.items() for v in d.extremes()]

    def param_space(self) -> dict[str, Any]:
        return {key: dist.to_tune() for key, dist in self.search.items()}

    def mutations(self) -> dict[str, Any]:
        """PBT's hyperparam_mutations: the float keys (they change no parameter shape)."""
        return {key: dist.to_tune() for key, dist in self.search.items() if dist.kind in ("float", "log_float")}

    def with_base_overrides(self, overrides: dict[str, Any]) -> SearchSpace:
        """`--set key=value` on the base config; every distribution is re-checked against it."""
        horizon = self.horizon_values(overrides.get("pred_len", self.base.pred_len))
        try:
            base = self.base.with_overrides({**horizon, **overrides}, source="--set")
        except ConfigError as err:
            raise SpaceError(str(err)) from None
        search = {k: _distribution(self.path, k, d.to_spec(), base) for k, d in self.search.items()}
        max_epochs = horizon.get("epochs", self.max_epochs) if "epochs" not in overrides else self.max_epochs
        space = dataclasses.replace(self, base=base, search=search, max_epochs=max_epochs)
        _check_budget(space)
        return space

    def horizon_values(self, pred_len: int) -> dict[str, Any]:
        """The `horizons` entry of pred_len ({} for a space without horizons)."""
        if not self.horizons:
            return {}
        if pred_len not in self.horizons:
            raise _fail(
                self.path, "horizons", f"no entry for pred_len {pred_len}; expected one of {sorted(self.horizons)}"
            )
        return dict(self.horizons[pred_len])

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of the resolved space (overrides applied)."""
        return {
            "description": self.description,
            "gpu_budget": self.gpu_budget,
            "base": self.base.to_dict(),
            "search": {k: d.to_spec() for k, d in self.search.items()},
            "budget": {"num_samples": self.num_samples, "max_epochs": self.max_epochs},
            "searcher": self.searcher.to_spec(),
            "scheduler": self.scheduler.to_spec(),
            "enqueue": self.enqueue,
            "resources": {"cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial},
            "seed": self.seed,
            "ablations": {"arms": self.ablations, "search": True} if self.ablation_search else self.ablations,
            "paper": self.paper,
        }

    def for_arm(self, arm: str) -> SearchSpace:
        """This space searching ablation `arm` (core.config.ABLATIONS): its base with `text_branch: arm`, the
        searched and enqueued keys the arm does not use dropped (core.config.UNUSED_BY_ARM), no ablations."""
        unused = UNUSED_BY_ARM.get(arm, ())
        keep = {k: d for k, d in self.search.items() if k not in unused}
        enqueue = [{k: v for k, v in point.items() if k in keep} for point in self.enqueue]
        return dataclasses.replace(
            self,
            base=self.base.with_overrides({"text_branch": arm}, source=f"ablation {arm}"),
            search=keep,
            enqueue=[point for point in enqueue if point],
            ablations=[],
            ablation_search=False,
        )

    def save(self, path: Path) -> None:
        """Write the resolved space (overrides and the horizon's values applied) so that `--resume` needs no flags."""
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def differences(self, other: SearchSpace) -> list[str]:
        """Keys (`budget.max_epochs`, `base.learning_rate`, ...) whose values differ, as 'key: ours vs theirs'."""
        ours, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        skip = {"description", "gpu_budget"}
        return [
            f"{key}: {ours.get(key)!r} vs {theirs.get(key)!r}"
            for key in sorted(set(ours) | set(theirs))
            if key not in skip and ours.get(key) != theirs.get(key)
        ]

    def with_overrides(self, **values: Any) -> SearchSpace:
        """CLI flags over the file's values (None: keep); re-validated."""
        space = dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})
        _check_budget(space)
        return space


def _fail(path: Path, key: str, message: str) -> SpaceError:
    return SpaceError(f"search space {path}: '{key}': {message}")


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "extras" and not {"type"} & set(value):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _number(path: Path, key: str, value: Any, minimum: float, integer: bool = False) -> float:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise _fail(path, key, f"got {shown(value)}, expected {kind} >= {minimum}")
    return value


def _distribution(path: Path, key: str, spec: Any, base: BalmConfig) -> Distribution:
    where = f"search.{key}"
    if key not in base.to_dict():
        raise _fail(
            path,
            where,
            f"the config has no key {key!r}; searchable keys: {sorted(set(base.to_dict()) - NOT_SEARCHABLE)}",
        )
    if key in NOT_SEARCHABLE:
        raise _fail(
            path,
            where,
            "changes the data, prompts or backbone shared by all trials (or is set by "
            "the budget); set it in 'base' and run one search per value",
        )
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise _fail(path, where, f"expected a mapping with 'type' one of {KINDS}, got {shown(spec)}")
    allowed = {"type", "values"} if spec["type"] == "choice" else {"type", "low", "high"}
    if set(spec) - allowed:
        raise _fail(path, where, f"unknown key(s) {sorted(set(spec) - allowed)}, expected {sorted(allowed)}")
    if spec["type"] == "choice":
        if not isinstance(spec.get("values"), list) or not spec["values"]:
            raise _fail(path, where, "a choice needs a non-empty list 'values'")
        dist = Distribution("choice", values=spec["values"])
    else:
        if "low" not in spec or "high" not in spec:
            raise _fail(path, where, f"a {spec['type']} distribution needs 'low' and 'high'")
        low = _number(path, f"{where}.low", spec["low"], float("-inf"), integer=spec["type"] == "int")
        high = _number(path, f"{where}.high", spec["high"], float("-inf"), integer=spec["type"] == "int")
        if low > high:
            raise _fail(path, where, f"low ({low}) > high ({high})")
        if spec["type"] == "log_float" and low <= 0:
            raise _fail(path, where, f"log_float needs low > 0, got low={low}")
        dist = Distribution(spec["type"], low=low, high=high)
    for value in dist.extremes():  # every edge of the space must be a valid config
        try:
            base.with_overrides({key: value})
        except ConfigError as err:
            raise _fail(
                path, where, f"value {shown(value)} is invalid for the base config: {str(err).split(': ', 1)[-1]}"
            ) from None
    return dist


def _check_budget(space: SearchSpace) -> None:
    p = space.path
    _number(p, "budget.num_samples", space.num_samples, 1, integer=True)
    _number(p, "budget.max_epochs", space.max_epochs, 1, integer=True)
    grace = space.scheduler.options.get("grace_period")
    if grace is not None:
        _number(p, "scheduler.grace_period", grace, 1, integer=True)
        if grace > space.max_epochs:
            raise _fail(p, "scheduler.grace_period", f"got {grace}, expected <= max_epochs ({space.max_epochs})")
    if space.scheduler.type == "pbt" and space.searcher.type != "random":
        raise _fail(p, "searcher.type", f"got {space.searcher.type!r}: pbt samples its own population; use 'random'")
    if space.scheduler.type == "pbt" and not space.mutations():
        raise _fail(p, "scheduler.type", "pbt perturbs float keys; the space searches none")
    try:
        distributions = {key: dist.to_optuna() for key, dist in space.search.items()}
        check_buildable("searcher", try_sampler, space.searcher, space.seed, distributions)
        check_buildable(
            "scheduler", create_scheduler, space.scheduler, max_epochs=space.max_epochs, mutations=space.mutations()
        )
    except StrategyError as err:
        raise SpaceError(f"search space {p}: {err}") from None
    if not _number(p, "resources.cpus_per_trial", space.cpus_per_trial, 0) > 0:
        raise _fail(p, "resources.cpus_per_trial", "expected > 0")
    _number(p, "resources.gpus_per_trial", space.gpus_per_trial, 0)
    _number(p, "seed", space.seed, 0, integer=True)


def load_space(path: str | Path = DEFAULT_SPACE) -> SearchSpace:
    """Read and fully validate a search space file."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} not found")
    raw = read_yaml(path, f"search space {path}", SpaceError)
    if not isinstance(raw, dict):
        raise SpaceError(f"search space {path}: expected a mapping with sections {sorted(SECTIONS)}")
    for section, value in raw.items():
        if section not in SECTIONS:
            raise _fail(path, section, f"unknown section, expected one of {sorted(SECTIONS)}")
        keys = SECTIONS[section]
        if keys is not None:
            if not isinstance(value, dict):
                raise _fail(path, section, f"expected a mapping with keys {sorted(keys)}")
            if set(value) - keys:
                unknown = sorted(set(value) - keys)
                raise _fail(path, f"{section}.{unknown[0]}", f"unknown key, expected one of {sorted(keys)}")
        elif section in ("description", "gpu_budget") and not isinstance(value, str):
            raise _fail(path, section, f"got {shown(value)}, expected text (leave the key out if there is none)")
    try:
        base = BalmConfig.from_dict(raw.get("base") or {}, source="base")
    except ConfigError as err:
        raise SpaceError(f"search space {path}: {err}") from None
    search = raw.get("search") or {}
    if not isinstance(search, dict) or not search:
        raise _fail(path, "search", "expected a non-empty mapping of config keys to distributions")
    horizons = _horizons(path, raw.get("horizons") or {}, base)
    distributions = {k: _distribution(path, k, v, base) for k, v in search.items()}
    try:
        searcher = parse_strategy("searcher", raw.get("searcher"), SEARCHERS, DEFAULT_SEARCHER)
        scheduler = parse_strategy("scheduler", raw.get("scheduler"), SCHEDULERS, DEFAULT_SCHEDULER)
    except StrategyError as err:
        raise SpaceError(f"search space {path}: {err}") from None
    space = SearchSpace(
        path=path,
        base=base,
        search=distributions,
        searcher=searcher,
        scheduler=scheduler,
        enqueue=check_points(f"search space {path}", raw.get("enqueue") or [], distributions),
        **raw.get("budget", {}),
        **raw.get("resources", {}),
        seed=raw.get("seed", 0),
        description=raw.get("description", ""),
        gpu_budget=raw.get("gpu_budget", ""),
        horizons=horizons,
        **_ablations(path, raw.get("ablations") or []),
        paper=_paper(path, raw.get("paper") or {}),
    )
    if horizons:
        return space.with_base_overrides({})
    _check_budget(space)
    return space


def check_ablations(arms: Any, where: str = "--ablations") -> list[str]:
    """A list of core.config.ABLATIONS arms (the space's `ablations` or the flag), or one SpaceError line."""
    if not isinstance(arms, list | tuple):
        raise SpaceError(f"{where}: got {shown(arms)}, expected a list of some of {', '.join(ABLATIONS)}")
    for arm in arms:
        if arm not in ABLATIONS:
            raise SpaceError(f"{where}: got {shown(arm)}, expected some of {', '.join(ABLATIONS)}")
    return list(arms)


def _ablations(path: Path, raw: Any) -> dict[str, Any]:
    """The `ablations` section: a list of arms, or {arms: [...], search: true|false}."""
    where = f"search space {path}: 'ablations'"
    if not isinstance(raw, dict):
        return {"ablations": check_ablations(raw, where)}
    for key in raw:
        if key not in ("arms", "search"):
            raise SpaceError(f"{where}: unknown key {shown(key)}, expected arms and search")
    search = raw.get("search", False)
    if not isinstance(search, bool):
        raise SpaceError(f"{where}.search: got {shown(search)}, expected true or false")
    return {"ablations": check_ablations(raw.get("arms") or [], f"{where}.arms"), "ablation_search": search}


def _paper(path: Path, raw: Any) -> dict[int, dict[str, float]]:
    """The `paper` section: pred_len -> {mse: x, mae: y}, the published test figures (either may be left out)."""
    if not isinstance(raw, dict):
        raise _fail(path, "paper", "expected a mapping of pred_len to {mse: ..., mae: ...}")
    for pred_len, figures in raw.items():
        where = f"paper.{pred_len}"
        if not isinstance(pred_len, int) or isinstance(pred_len, bool) or pred_len < 1:
            raise _fail(path, where, f"expected an integer pred_len >= 1, got {shown(pred_len)}")
        if not isinstance(figures, dict) or not figures or set(figures) - {"mse", "mae"}:
            raise _fail(path, where, f"got {shown(figures)}, expected a mapping with mse and/or mae")
        for key, value in figures.items():
            _number(path, f"{where}.{key}", value, 0.0)
    return {h: {k: float(v) for k, v in figures.items()} for h, figures in raw.items()}


def _horizons(path: Path, raw: Any, base: BalmConfig) -> dict[int, dict[str, Any]]:
    """Check the `horizons` section: pred_len -> a mapping of config keys, the same keys in every entry."""
    if not isinstance(raw, dict):
        raise _fail(path, "horizons", "expected a mapping of pred_len to config values")
    keys = None
    for pred_len, values in raw.items():
        where = f"horizons.{pred_len}"
        if not isinstance(pred_len, int) or isinstance(pred_len, bool) or pred_len < 1:
            raise _fail(path, where, f"expected an integer pred_len >= 1, got {shown(pred_len)}")
        if not isinstance(values, dict) or "pred_len" in values:
            raise _fail(path, where, "expected a mapping of config keys (other than pred_len)")
        if keys is not None and set(values) != keys:
            raise _fail(path, where, f"sets {sorted(values)}, expected the same keys as the others: {sorted(keys)}")
        keys = set(values)
        try:
            base.with_overrides({**values, "pred_len": pred_len}, source=where)
        except ConfigError as err:
            raise SpaceError(f"search space {path}: {err}") from None
    return dict(raw)


def check_points(source: str, points: Any, search: dict[str, Distribution]) -> list[dict[str, Any]]:
    """Configs to evaluate first: a list of mappings from searched keys to values inside their ranges;
    `source` ('search space FILE' or '--enqueue FILE') starts every error."""
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise SpaceError(
            f"{source}: 'enqueue': expected a list of mappings from searched keys to values, got {shown(points)}"
        )
    for i, point in enumerate(points):
        for key, value in point.items():
            dist = search.get(key)
            if dist is None:
                raise SpaceError(f"{source}: 'enqueue[{i}].{key}': not a searched key; searched: {sorted(search)}")
            if not dist.contains(value):
                allowed = dist.values if dist.kind == "choice" else f"[{dist.low}, {dist.high}]"
                raise SpaceError(
                    f"{source}: 'enqueue[{i}].{key}': got {shown(value)}, expected {dist.kind} in {allowed}"
                )
    return points


def load_points(path: str | Path, search: dict[str, Distribution]) -> list[dict[str, Any]]:
    """`--enqueue FILE`: a YAML list of configs (searched keys only), checked against the space."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"--enqueue {path}: file not found")
    try:
        points = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"--enqueue {path}: not valid YAML ({err})") from None
    return check_points(f"--enqueue {path}", points, search)
