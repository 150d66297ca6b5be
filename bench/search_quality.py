"""Search quality: best val MSE of Optuna TPE + ASHA (balm_tune.search) vs random search without pruning,
for the same epoch budget, on the default search space, over several seeds.

Run from the repository root (2 CPU cores: about 12 minutes; take the lock so other jobs stay off the CPUs):

    flock /tmp/bench.lock python bench/search_quality.py | tee /work/notes/search_quality_output.txt
    python bench/search_quality.py --quick                  # smoke run, about 2 minutes
    python bench/search_quality.py --seeds 0 1 2 3 4 --num-samples 16 --max-train-batches 20

For each seed:
  optuna+asha  the search exactly as balm_tune.search builds it (balm_tune.tuner.make_tuner: OptunaSearch with
               TPESampler(seed), ASHAScheduler with the space's grace period and reduction factor), --num-samples
               trials of up to --max-epochs epochs. Its budget B = the epochs its trials actually trained
               (ASHA stops most trials early).
  random       the same space, trainable, resources and concurrency, sampled at random by Tune's
               BasicVariantGenerator(random_state=seed) and scheduled FIFO (no pruning: every trial trains all
               --max-epochs epochs, unless early stopping by the base config's patience): round(B / max_epochs)
               trials, so it trains about the same B epochs (the printed epoch counts show by how much they differ).

Both arms train every config from the same model seed (the base config's `seed`), read the same data, backbone
and prompt ids (balm_tune.trainable.build_shared, built once) and select on validation MSE only. It prints, per
seed and as the mean over seeds, each arm's best val MSE, the epochs and trials it used, and its wall time.
The trial length is set with --set-style flags (--max-train-batches, --max-eval-batches): the default space's
full trials (30 batches, 5 epochs, 12 trials) would take about an hour per seed on 2 CPUs.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import balm_tune.api  # noqa: F401  (sets the search's Tune environment defaults on import)
from balm_tune.callbacks import TrialLines
from balm_tune.cluster import init_ray
from balm_tune.space import SearchSpace, load_space
from balm_tune.trainable import SharedInputs, build_shared, trial_trainable
from balm_tune.tuner import make_tuner
from core.train import preflight


@dataclass
class ArmResult:
    best_val_mse: float  # the best trial's best validation MSE (inf: every trial failed)
    epochs: int  # epochs trained by all its trials together
    trials: int
    stopped_early: int  # trials that trained fewer than max_epochs (ASHA, early stopping or divergence)
    wall_s: float


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds (default: 0 1 2)")
    p.add_argument("--num-samples", type=int, default=12, help="trials of the Optuna+ASHA arm (default: %(default)s)")
    p.add_argument("--max-epochs", type=int, default=4, help="epochs of an unpruned trial (default: %(default)s)")
    p.add_argument("--max-train-batches", type=int, default=8, help="training batches per epoch (default: %(default)s)")
    p.add_argument("--max-eval-batches", type=int, default=6, help="validation batches (default: %(default)s)")
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        help="CPUs per trial; 1 runs 2 trials at once on 2 cores (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: seed 0, 4 trials of up to 2 epochs of 3 batches")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.num_samples, args.max_epochs, args.max_train_batches, args.max_eval_batches = [0], 4, 2, 3, 2
    return args


def make_space(args: argparse.Namespace) -> SearchSpace:
    """The default space (distributions, ASHA settings) with this benchmark's budget and trial length."""
    space = load_space().with_base_overrides(
        {"max_train_batches": args.max_train_batches, "max_eval_batches": args.max_eval_batches}
    )
    return space.with_overrides(
        num_samples=args.num_samples, max_epochs=args.max_epochs, cpus_per_trial=args.cpus_per_trial
    )


def summarise(results, max_epochs: int, wall_s: float) -> ArmResult:
    """Best val MSE and the epochs actually trained (each trial's last reported `epoch`) of a ResultGrid."""
    best, epochs, early = math.inf, 0, 0
    for result in results:
        metrics = result.metrics or {}
        trained = int(metrics.get("epoch", 0))
        epochs += trained
        early += trained < max_epochs
        if result.error is None and not metrics.get("failed"):
            best = min(best, metrics.get("best_val_mse", math.inf))
    return ArmResult(best, epochs, len(results), early, wall_s)


# --- the two arms ------------------------------------------------------------------------------------------
def run_optuna_asha(space: SearchSpace, shared: SharedInputs, storage: Path, concurrent: int) -> ArmResult:
    """balm_tune.search's own Tuner (TPE seeded with space.seed, ASHA)."""
    started = time.perf_counter()
    results = make_tuner(space, shared, storage / f"optuna-asha-seed{space.seed}", concurrent, resume=False).fit()
    return summarise(results, space.max_epochs, time.perf_counter() - started)


def run_random(space: SearchSpace, shared: SharedInputs, storage: Path, concurrent: int, trials: int) -> ArmResult:
    """Random sampling of the same space (seeded), FIFO: every trial trains all its epochs."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    started = time.perf_counter()
    trainable = trial_trainable(shared)
    tuner = tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(random_state=space.seed, max_concurrent=min(concurrent, trials)),
            metric="best_val_mse",
            mode="min",
            num_samples=trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"random-seed{space.seed}",
            storage_path=str(storage),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[TrialLines(space.max_epochs, space.base.patience)],
        ),
    )
    return summarise(tuner.fit(), space.max_epochs, time.perf_counter() - started)


# --- report ----------------------------------------------------------------------------------------------
def row(label: str, a: ArmResult, b: ArmResult) -> str:
    better = "optuna+asha" if a.best_val_mse < b.best_val_mse else "random" if b.best_val_mse < a.best_val_mse else "-"
    return (
        f"{label:>6s}  {a.best_val_mse:12.6f} {b.best_val_mse:12.6f}  {a.epochs:6d} {b.epochs:6d}  "
        f"{a.trials:3d} ({a.stopped_early:2d} early) {b.trials:3d} ({b.stopped_early:2d} early)  "
        f"{a.wall_s:6.0f} {b.wall_s:6.0f}  {better}"
    )


def print_report(seeds: list[int], arms: list[tuple[ArmResult, ArmResult]], space: SearchSpace) -> None:
    print(
        f"\n=== search quality on the default space: trials of up to {space.max_epochs} epochs x "
        f"{space.base.max_train_batches} batches, validation on {space.base.max_eval_batches} batches, "
        f"ASHA grace {space.grace_period} / reduction {space.reduction_factor:g} ==="
    )
    print(f"{'seed':>6s}  {'best val mse':>25s}  {'epochs':>13s}  {'trials':>31s}  {'wall s':>13s}  better")
    print(
        f"{'':6s}  {'optuna+asha':>12s} {'random':>12s}  {'o+a':>6s} {'random':>6s}  "
        f"{'optuna+asha':>15s} {'random':>15s}  {'o+a':>6s} {'random':>6s}"
    )
    for seed, (a, b) in zip(seeds, arms, strict=True):
        print(row(str(seed), a, b))
    mean = [
        ArmResult(
            statistics.fmean(r.best_val_mse for r in runs),
            round(statistics.fmean(r.epochs for r in runs)),
            round(statistics.fmean(r.trials for r in runs)),
            round(statistics.fmean(r.stopped_early for r in runs)),
            statistics.fmean(r.wall_s for r in runs),
        )
        for runs in zip(*arms, strict=True)
    ]
    print(row("mean", *mean))
    wins = sum(a.best_val_mse < b.best_val_mse for a, b in arms)
    print(
        f"optuna+asha better on {wins} of {len(arms)} seeds; mean best val mse {mean[0].best_val_mse:.6f} "
        f"(optuna+asha) vs {mean[1].best_val_mse:.6f} (random), difference "
        f"{100 * (mean[0].best_val_mse / mean[1].best_val_mse - 1):+.2f}%"
    )


def main() -> int:
    import ray

    args = parse_args()
    space = make_space(args)
    data = preflight(space.base)
    print(
        f"default space {space.path.name}: seeds {args.seeds}; optuna+asha {args.num_samples} trials of up to "
        f"{args.max_epochs} epochs x {args.max_train_batches} batches; {args.cpus_per_trial:g} CPU per trial",
        flush=True,
    )
    shared = build_shared(space, data)
    arms = []
    try:
        concurrent = init_ray(None, space)  # ray.init(address="local", ...): a private local Ray
        with tempfile.TemporaryDirectory(prefix="search_quality-") as folder:
            for seed in args.seeds:
                seeded = space.with_overrides(seed=seed)
                print(f"seed {seed}: optuna+asha ...", flush=True)
                tpe = run_optuna_asha(seeded, shared, Path(folder), concurrent)
                trials = max(1, math.floor(tpe.epochs / space.max_epochs + 0.5))
                print(f"seed {seed}: optuna+asha trained {tpe.epochs} epochs; random: {trials} trials ...", flush=True)
                arms.append((tpe, run_random(seeded, shared, Path(folder), concurrent, trials)))
    finally:
        ray.shutdown()
    print_report(args.seeds, arms, space)
    print(
        f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs (other jobs on the machine inflate the times)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
