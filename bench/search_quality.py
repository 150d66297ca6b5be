"""Search quality: how the default search (Optuna TPE + ASHA) should tell Optuna about the trials ASHA stops,
against random search without pruning, for the same trained-epoch budget, over several seeds.

Run from the repository root (2 CPU cores; take the lock so other jobs stay off the CPUs):

    flock /tmp/bench.lock python bench/search_quality.py | tee search_quality_output.txt
    python bench/search_quality.py --quick                  # smoke run, a few minutes
    python bench/search_quality.py --seeds 0 1 2 3 4 --num-samples 16 --max-train-batches 20

Three arms per seed, each built by balm_tune.tuner.make_tuner (the search's own Tuner) on the default space
(distributions, ASHA grace period and reduction factor, base config) with the trial length set by the flags:
  pruned     the default: TPE (seeded) inside StudySearch; ASHA-stopped trials are PRUNED in the Optuna study,
             with every epoch's validation MSE as an intermediate value (`searcher: {type: tpe}`)
  complete   what Ray's OptunaSearch does: ASHA-stopped trials are COMPLETE with their partial value
             (`searcher: {type: tpe, pruned_trials: complete}`)
  random     Optuna's RandomSampler (seeded), FIFO (no pruning: every trial trains all --max-epochs epochs unless
             early-stopped by the base config's patience), round(B / max_epochs) trials, where B is the mean
             number of epochs the two ASHA arms trained for this seed: the same trained-epoch budget
--num-samples trials for each ASHA arm. Every arm trains each config from the same model seed, reads the same data,
backbone and prompt ids (built once) and selects its winner on validation MSE only. For each winner it then computes
the test MSE over every test window (not the capped subset used for validation). It prints, per seed and as
mean +- std over seeds, each arm's winner validation MSE, the winner's test MSE, the epochs and trials it used,
and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from balm_tune.cluster import init_ray
from balm_tune.experiment import JOURNAL
from balm_tune.export import leaderboard
from balm_tune.outcome import Outcome
from balm_tune.space import SearchSpace, load_space
from balm_tune.storage import open_location
from balm_tune.strategies import Strategy
from balm_tune.trainable import CHECKPOINT_FILE, SharedInputs, build_shared
from balm_tune.tuner import make_tuner
from core.train import eval_index, preflight

ARMS = {  # searcher (its TPE options get --tpe-startup-trials), scheduler (None: the space's ASHA)
    "pruned": (Strategy("tpe", {"pruned_trials": "pruned"}), None),
    "complete": (Strategy("tpe", {"pruned_trials": "complete"}), None),
    "random": (Strategy("random"), Strategy("fifo")),
}


@dataclass
class ArmResult:
    val_mse: float  # the winner's best validation MSE (inf: every trial failed)
    test_mse: float  # the winner's test MSE over every test window
    epochs: int  # epochs trained by all its trials together
    trials: int
    stopped_early: int  # trials that trained fewer than max_epochs
    wall_s: float


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds (default: 0 1 2)")
    p.add_argument("--num-samples", type=int, default=12, help="trials of each ASHA arm (default: %(default)s)")
    p.add_argument("--max-epochs", type=int, default=4, help="epochs of an unpruned trial (default: %(default)s)")
    p.add_argument(
        "--max-train-batches", type=int, default=10, help="training batches per epoch (default: %(default)s)"
    )
    p.add_argument("--max-eval-batches", type=int, default=8, help="validation batches (default: %(default)s)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: %(default)s)")
    p.add_argument(
        "--tpe-startup-trials",
        type=int,
        help="TPE's random start-up trials (Optuna's default 10: with fewer trials than that both TPE arms "
        "sample exactly the configs of Optuna's RandomSampler with the same seed, and nothing is compared)",
    )
    p.add_argument(
        "--test-batches",
        type=int,
        help="test the winners on this many evenly spaced batches instead of every test window (CPU time)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: seed 0, 4 trials of up to 2 epochs of 3 batches")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.num_samples, args.max_epochs, args.max_train_batches, args.max_eval_batches = [0], 4, 2, 3, 2
    return args


def make_space(args: argparse.Namespace) -> SearchSpace:
    """The default space (distributions, searcher, scheduler) with this benchmark's budget and trial length."""
    space = load_space().with_base_overrides(
        {"max_train_batches": args.max_train_batches, "max_eval_batches": args.max_eval_batches}
    )
    return space.with_overrides(
        num_samples=args.num_samples, max_epochs=args.max_epochs, cpus_per_trial=args.cpus_per_trial
    )


def run_arm(
    space: SearchSpace, shared: SharedInputs, folder: Path, concurrent: int, test_batches: int | None
) -> ArmResult:
    """One search with the search's own Tuner; the winner's test MSE over every test window (or
    `test_batches` evenly spaced batches)."""
    started = time.perf_counter()
    experiment = open_location(folder)
    results = make_tuner(space, shared, experiment, concurrent, False, folder / JOURNAL).fit()
    wall = time.perf_counter() - started
    rows = leaderboard(results, space)
    epochs = sum(r.epochs_run for r in rows)
    early = sum(r.epochs_run < space.max_epochs for r in rows)
    winner = rows[0]
    if winner.outcome is Outcome.FAILED or not winner.checkpoint:
        return ArmResult(math.inf, math.inf, epochs, len(rows), early, wall)
    trainer = shared.trainer(winner.params)
    torch.set_num_threads(os.cpu_count() or 1)  # the driver is idle between searches: all cores for the test
    with winner.checkpoint.as_directory() as checkpoint:
        trainer.load(Path(checkpoint) / CHECKPOINT_FILE)
    trainer.use_best_weights()
    test = trainer.evaluate("test", test_batches)
    return ArmResult(winner.best_val_mse, test.mse, epochs, len(rows), early, wall)


def repeat_last_test_mse(shared: SharedInputs, test_batches: int | None) -> float:
    """The naive baseline on the same test windows: every future value = the window's last input value."""
    windows, squared = shared.data.test, 0.0
    tested = eval_index(len(windows), shared.space.base.batch_size, test_batches)
    for index in tested.split(4096):
        x, y = windows.inputs(index), windows.targets(index)
        squared += (y - x[:, -1:]).double().square().sum().item()
    return squared / (len(tested) * shared.space.base.pred_len)


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} +- {std:.4f}"


def print_report(
    seeds: list[int],
    runs: dict[str, list[ArmResult]],
    space: SearchSpace,
    test_windows: int,
    naive: float,
    args: argparse.Namespace,
) -> None:
    every = "all" if args.test_batches is None else "evenly spaced"
    print(
        f"\n=== search quality on the default space: {args.num_samples} trials per ASHA arm of up to "
        f"{space.max_epochs} epochs x {space.base.max_train_batches} batches, validation on "
        f"{space.base.max_eval_batches} batches of {space.base.batch_size} windows, test on {every} "
        f"{test_windows} test windows; ASHA {space.scheduler.options}; TPE start-up trials "
        f"{args.tpe_startup_trials or 'default (10)'}; seeds {seeds} ==="
    )
    print(f"{'arm':>9s} {'seed':>5s} {'winner val mse':>15s} {'winner test mse':>16s} {'epochs':>7s} {'trials':>12s}")
    for arm, results in runs.items():
        for seed, r in zip(seeds, results, strict=True):
            print(
                f"{arm:>9s} {seed:5d} {r.val_mse:15.4f} {r.test_mse:16.4f} {r.epochs:7d} "
                f"{r.trials:4d} ({r.stopped_early:2d} early) {r.wall_s:6.0f}s"
            )
    print(f"\n{'arm':>9s} {'winner val mse (mean +- std)':>30s} {'winner test mse':>22s} {'epochs':>8s}")
    for arm, results in runs.items():
        print(
            f"{arm:>9s} {mean_std([r.val_mse for r in results]):>30s} "
            f"{mean_std([r.test_mse for r in results]):>22s} {statistics.fmean(r.epochs for r in results):8.1f}"
        )
    print(f"{'repeat last value (baseline)':>40s} {naive:22.4f}  (test, the same windows)")
    means = {arm: statistics.fmean(r.val_mse for r in results) for arm, results in runs.items()}
    lowest = [arm for arm, mean in means.items() if mean == min(means.values())]
    print(f"lowest mean winner val mse: {' = '.join(lowest)}")


def main() -> int:
    import ray

    args = parse_args()
    space = make_space(args)
    data = preflight(space.base)
    print(
        f"default space {space.path.name}: seeds {args.seeds}; {args.num_samples} trials of up to {args.max_epochs} "
        f"epochs x {args.max_train_batches} batches per ASHA arm; {args.cpus_per_trial:g} CPU per trial",
        flush=True,
    )
    shared = build_shared(space, data)
    runs: dict[str, list[ArmResult]] = {arm: [] for arm in ARMS}
    try:
        with tempfile.TemporaryDirectory(prefix="search_quality-") as folder:
            cluster = init_ray(None, open_location(folder))  # a private local Ray, as the search starts it
            concurrent = cluster.trials_at_once(space.cpus_per_trial, space.gpus_per_trial)
            for seed in args.seeds:
                budgets = []
                for arm, (searcher, scheduler) in ARMS.items():
                    if searcher.type == "tpe" and args.tpe_startup_trials is not None:
                        searcher = Strategy("tpe", {**searcher.options, "n_startup_trials": args.tpe_startup_trials})
                    arm_space = dataclasses.replace(
                        space, seed=seed, searcher=searcher, scheduler=scheduler or space.scheduler
                    )
                    if arm == "random":
                        trials = max(1, math.floor(statistics.fmean(budgets) / space.max_epochs + 0.5))
                        arm_space = dataclasses.replace(arm_space, num_samples=trials)
                    print(f"seed {seed}: {arm} ({arm_space.num_samples} trials) ...", flush=True)
                    result = run_arm(
                        arm_space, shared, Path(folder) / f"{arm}-seed{seed}", concurrent, args.test_batches
                    )
                    budgets.append(result.epochs)
                    runs[arm].append(result)
                    print(
                        f"seed {seed}: {arm}: winner val mse {result.val_mse:.4f}, test mse {result.test_mse:.4f}, "
                        f"{result.epochs} epochs, {result.wall_s:.0f}s",
                        flush=True,
                    )
    finally:
        ray.shutdown()
    tested = len(eval_index(len(shared.data.test), space.base.batch_size, args.test_batches))
    print_report(args.seeds, runs, space, tested, repeat_last_test_mse(shared, args.test_batches), args)
    print(
        f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs (other jobs on the machine inflate the times)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
