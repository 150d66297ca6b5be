"""Search overhead: the same fixed configs trained directly with `core` and through Ray Tune as `balm_tune` runs them.

Run from the repository root (2 CPU cores: about 10 minutes; take the lock so other jobs stay off the CPUs):

    flock /tmp/bench.lock python bench/search_overhead.py | tee /work/notes/search_overhead_output.txt
    python bench/search_overhead.py --quick            # smoke run, about 2 minutes
    python bench/search_overhead.py --configs 4 --repeats 1 --max-epochs 2

Both sides train the same K configs of the default search space (fixed values of its searched keys), one
trial at a time with the same number of torch threads (--cpus-per-trial; 2 = the whole machine here):

  direct  load the backbone and build the prompt token ids once (core.backbones.load_backbone,
          core.train.build_prompts), then core.train.Trainer(config, data, backbone, prompts).fit() for each
          config in turn, in this process
  search  balm_tune.trainable.build_shared (the same inputs, once), a private local Ray started as
          balm_tune.search does (init_ray), then the search's own Tuner (balm_tune.tuner.make_tuner: resources,
          checkpoints, failure policy, callbacks, the Optuna study) with the fixed configs enqueued, the
          random searcher and the FIFO scheduler, so every config runs all its epochs (no pruning) and exactly
          these configs run. Timed: inputs + Ray start + Tuner.fit() + Ray shutdown.

Each repeat runs both sides (the order alternates between repeats so that drift hits both); the headline
figures come from each side's fastest repeat (other jobs on the machine only ever add time; medians are
printed too). It prints the wall times, their ratio, the overhead per trial in seconds and as a share of the
mean direct trial time (the project's target: under 10% for trials of 30 s or more), and the backbone loads:
in this process for each side (`Trainer.built`, `SharedInputs.built`) and inside the trial processes
(the `backbone_loads` metric each trial reports). It also checks that both sides reached the same best val MSE
for each config, i.e. that they really trained the same thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from balm_tune.cluster import init_ray  # noqa: E402
from balm_tune.experiment import JOURNAL  # noqa: E402
from balm_tune.space import SearchSpace, load_space  # noqa: E402
from balm_tune.storage import open_location  # noqa: E402
from balm_tune.strategies import Strategy  # noqa: E402
from balm_tune.trainable import build_shared  # noqa: E402
from balm_tune.tuner import make_tuner  # noqa: E402
from core import backbones  # noqa: E402
from core.data import ForecastData  # noqa: E402
from core.train import Trainer, build_prompts, preflight  # noqa: E402

# fixed values of the default space's searched keys (prompt_len, contrastive_weight, scale_factor, learning_rate)
CONFIGS = [
    {"prompt_len": 6, "contrastive_weight": 1.0, "scale_factor": 1.0, "learning_rate": 0.002},
    {"prompt_len": 12, "contrastive_weight": 0.25, "scale_factor": 2.0, "learning_rate": 0.005},
    {"prompt_len": 2, "contrastive_weight": 1.75, "scale_factor": 0.5, "learning_rate": 0.0005},
    {"prompt_len": 9, "contrastive_weight": 0.0, "scale_factor": 3.0, "learning_rate": 0.001},
]


@dataclass
class Side:
    """One side's timings in one repeat."""

    wall_s: float  # everything, shared inputs included
    parts: dict[str, float]  # named components of wall_s
    trial_s: list[float]  # per config: the training itself (direct: fit(); search: the trial's time_total_s)
    best_val_mse: list[float]  # per config, in CONFIGS order
    driver_loads: int  # backbones loaded in this process by this side
    trial_loads: list[int] = field(default_factory=list)  # backbones loaded inside trial processes (search only)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configs",
        type=int,
        default=3,
        choices=range(1, len(CONFIGS) + 1),
        help="how many of the fixed configs to train (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="repeats of both sides; fastest and median printed (default: %(default)s)",
    )
    p.add_argument("--max-epochs", type=int, default=3, help="epochs per config (default: %(default)s)")
    p.add_argument(
        "--max-train-batches",
        type=int,
        default=80,
        help="training batches per epoch, sets the trial length (default: %(default)s)",
    )
    p.add_argument("--max-eval-batches", type=int, default=16, help="validation batches (default: %(default)s)")
    p.add_argument(
        "--cpus-per-trial",
        type=int,
        default=2,
        help="CPUs of a trial = torch threads on both sides (default: %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 configs, 1 repeat, 1 epoch of 5 batches (too short for the 10%% target)",
    )
    args = p.parse_args()
    if args.quick:
        args.configs, args.repeats, args.max_epochs, args.max_train_batches, args.max_eval_batches = 2, 1, 1, 5, 4
    return args


def make_space(args: argparse.Namespace) -> SearchSpace:
    """The default space with this benchmark's trial length and resources."""
    space = load_space().with_base_overrides(
        {"max_train_batches": args.max_train_batches, "max_eval_batches": args.max_eval_batches}
    )
    return space.with_overrides(
        num_samples=args.configs, max_epochs=args.max_epochs, cpus_per_trial=float(args.cpus_per_trial)
    )


# --- the two sides -----------------------------------------------------------------------------------
def run_direct(space: SearchSpace, data: ForecastData, configs: list[dict], threads: int) -> Side:
    """Inputs once, then Trainer.fit() for each config in turn: what a loop over core would do."""
    started = time.perf_counter()
    deepest = max(int(c.get("llm_layers", space.base.llm_layers)) for c in configs)
    backbone = backbones.load_backbone(space.base.backbone, deepest, space.base.attn_implementation)
    prompts = build_prompts(space.base, data, backbone)
    inputs_s = time.perf_counter() - started
    trial_s, best, loads = [], [], 1
    for params in configs:
        config = space.base.with_overrides({**params, "epochs": space.max_epochs, "num_threads": threads})
        fit_started = time.perf_counter()
        trainer = Trainer(
            config, data=data, backbone=backbone.cut(config.llm_layers), prompts=prompts, show_progress=False
        )
        loads += trainer.built["backbone_loads"]  # 0: given the backbone
        result = trainer.fit()
        trial_s.append(time.perf_counter() - fit_started)
        best.append(result.best_val_mse)
    wall = time.perf_counter() - started
    return Side(wall, {"inputs": inputs_s, "trials": sum(trial_s)}, trial_s, best, loads)


def run_search(space: SearchSpace, data: ForecastData, configs: list[dict], storage: Path, name: str) -> Side:
    """build_shared, Ray start, a Tuner over the fixed configs (FIFO, one at a time), Ray shutdown."""
    import ray

    started = time.perf_counter()
    shared = build_shared(space, data)
    inputs_s = time.perf_counter() - started
    init_ray(None, open_location(storage))  # a private local Ray, as balm_tune.search starts it
    ray_start_s = time.perf_counter() - started - inputs_s
    # the search's own Tuner; the fixed configs enqueued, FIFO: exactly these configs, every epoch
    fixed = dataclasses.replace(
        space, searcher=Strategy("random"), scheduler=Strategy("fifo"), enqueue=[dict(c) for c in configs]
    )
    tuner = make_tuner(fixed, shared, open_location(storage / name), 1, False, storage / name / JOURNAL)
    fit_started = time.perf_counter()
    results = tuner.fit()
    fit_s = time.perf_counter() - fit_started
    ray.shutdown()
    wall = time.perf_counter() - started
    shutdown_s = wall - inputs_s - ray_start_s - fit_s

    by_config = {}
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"trial {result.path} failed: {result.error}")
        key = tuple(result.config[k] for k in configs[0])
        by_config[key] = result.metrics
    ran = [by_config.get(tuple(c.values())) for c in configs]
    if any(m is None for m in ran) or len(by_config) != len(configs):
        raise RuntimeError(f"Tune ran other configs than the fixed ones: {sorted(by_config)}")
    parts = {"inputs": inputs_s, "ray start": ray_start_s, "Tuner.fit": fit_s, "ray shutdown": shutdown_s}
    return Side(
        wall,
        parts,
        [m["time_total_s"] for m in ran],
        [m["best_val_mse"] for m in ran],
        shared.built["backbone_loads"],
        [int(m["backbone_loads"]) for m in ran],
    )


# --- report ----------------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values)


def print_report(direct: list[Side], tuned: list[Side], space: SearchSpace, configs: list[dict]) -> None:
    """Headline: each side's fastest repeat (other jobs on the machine only ever add time); medians below."""
    k = len(configs)
    d, t = min(direct, key=lambda s: s.wall_s), min(tuned, key=lambda s: s.wall_s)
    print(
        f"\n=== search overhead: {k} configs x {space.max_epochs} epochs, one trial at a time, "
        f"{space.cpus_per_trial:g} CPUs/threads per trial, fastest of {len(direct)} repeat(s) per side ==="
    )
    for side, best, runs in (("direct", d, direct), ("search", t, tuned)):
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in best.parts.items())
        walls = ", ".join(f"{r.wall_s:.1f}" for r in runs)
        print(f"{side:7s} wall {best.wall_s:7.1f}s  ({parts}; every repeat: {walls})")
    direct_trial = statistics.fmean(d.trial_s)
    overhead = (t.wall_s - d.wall_s) / k
    share = overhead / direct_trial
    print(f"ratio search / direct wall:       {t.wall_s / d.wall_s:.3f}")
    print(
        f"mean trial time (direct fit()):   {direct_trial:.1f}s   (inside Ray, trial's time_total_s: "
        f"{statistics.fmean(t.trial_s):.1f}s)"
    )
    verdict = "met" if share < 0.10 else "NOT met"
    length = "" if direct_trial >= 30 else " (trials are shorter than 30 s: the target does not apply)"
    print(
        f"search overhead per trial:        {overhead:.1f}s = {100 * share:.1f}% of the mean trial time; "
        f"target < 10%: {verdict}{length}"
    )
    fixed = t.parts["inputs"] + t.parts["ray start"] + t.parts["ray shutdown"]
    print(
        f"  of which once per search:       {fixed:.1f}s (inputs, Ray start and shutdown; direct inputs: "
        f"{d.parts['inputs']:.1f}s)"
    )
    print(
        f"  and per trial inside fit():     {(t.parts['Tuner.fit'] - d.parts['trials']) / k:.1f}s "
        f"(Tuner.fit() / K - direct fit() / K: worker start, inputs from the object store, checkpoints, reporting)"
    )
    median_ratio = median([s.wall_s for s in tuned]) / median([s.wall_s for s in direct])
    median_overhead = (median([s.wall_s for s in tuned]) - median([s.wall_s for s in direct])) / k
    median_trial = median([statistics.fmean(s.trial_s) for s in direct])
    print(
        f"medians over repeats:             ratio {median_ratio:.3f}, overhead per trial {median_overhead:.1f}s = "
        f"{100 * median_overhead / median_trial:.1f}% of {median_trial:.1f}s"
    )
    print(
        f"backbone loads per repeat:        direct {direct[-1].driver_loads} (this process); search "
        f"{tuned[-1].driver_loads} in the driver + {sum(tuned[-1].trial_loads)} in {k} trial processes "
        f"(per trial: {tuned[-1].trial_loads})"
    )
    gaps = [
        abs(a - b)
        for dr, tr in zip(direct, tuned, strict=True)
        for a, b in zip(dr.best_val_mse, tr.best_val_mse, strict=True)
    ]
    print(
        "best val mse per config (direct | search, last repeat): "
        + "; ".join(f"{a:.6f} | {b:.6f}" for a, b in zip(direct[-1].best_val_mse, tuned[-1].best_val_mse, strict=True))
    )
    print(f"same training on both sides: max |difference| of best val mse = {max(gaps):.2e}")


def main() -> int:
    args = parse_args()
    space = make_space(args)
    configs = CONFIGS[: args.configs]
    for params in configs:  # every fixed value must be inside the space it is said to come from
        for key, value in params.items():
            dist = space.search[key]
            inside = value in dist.values if dist.kind == "choice" else dist.low <= value <= dist.high
            assert inside, f"{key}={value} is outside the default space's {dist}"
    data = preflight(space.base)
    print(
        f"default space {space.path.name}: {args.configs} configs x {args.max_epochs} epochs of "
        f"{args.max_train_batches} batches (+ {args.max_eval_batches} validation batches), "
        f"{args.cpus_per_trial} threads, {args.repeats} repeat(s)",
        flush=True,
    )
    # warm-up outside both sides: the OS file cache of the weights and the disk cache of the prompt token ids
    build_prompts(space.base, data, backbones.load_backbone(space.base.backbone, space.base.llm_layers))
    direct, tuned = [], []
    with tempfile.TemporaryDirectory(prefix="search_overhead-") as storage:
        for repeat in range(args.repeats):
            order = ("direct", "search") if repeat % 2 == 0 else ("search", "direct")
            for side in order:
                print(f"repeat {repeat + 1}/{args.repeats}: {side} ...", flush=True)
                if side == "direct":
                    direct.append(run_direct(space, data, configs, args.cpus_per_trial))
                    print(f"  direct {direct[-1].wall_s:.1f}s", flush=True)
                else:
                    tuned.append(run_search(space, data, configs, Path(storage), f"repeat{repeat}"))
                    print(f"  search {tuned[-1].wall_s:.1f}s", flush=True)
    print_report(direct, tuned, space, configs)
    print(
        f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs (other jobs on the machine inflate the times)"
    )
    return 0 if all(math.isfinite(v) for s in direct + tuned for v in s.best_val_mse) else 1


if __name__ == "__main__":
    raise SystemExit(main())
