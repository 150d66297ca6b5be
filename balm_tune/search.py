"""Hyperparameter search for BALM-TSF: Ray Tune runs the trials, Optuna (TPE) proposes, ASHA prunes.

    python -m balm_tune.search                                   # embedded default: ETTh1, CPU, offline
    python -m balm_tune.search --space search_spaces/paper_etth1.yaml --address auto   # a Ray cluster
    python -m balm_tune.search --name my-search --resume         # continue an interrupted search
    tensorboard --logdir runs/<name>                             # curves and HParams of every trial

At the end it writes leaderboard.csv, best_config.yaml, best_checkpoint.pt and summary.json under
<storage>/<name>/ and prints the command that retrains the winner. Selection uses validation only;
test metrics are computed for the winner alone.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment snapshots for --resume: at most 5 s behind

from balm_tune.space import DEFAULT_SPACE, SearchSpace, SpaceError, load_space  # noqa: E402
from core.backbones import BackboneError  # noqa: E402
from core.config import ConfigError, parse_set_args  # noqa: E402
from core.data import DataError  # noqa: E402
from core.train import preflight  # noqa: E402

SPACE_COPY = "search_space.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m balm_tune.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="search space YAML (default: %(default)s)")
    p.add_argument("--address", help="Ray cluster to join: 'auto', or HOST:PORT of a head; omit for a local Ray")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides budget.num_samples)")
    p.add_argument("--max-epochs", type=int, help="epochs of an unpruned trial (overrides budget.max_epochs)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (overrides resources.cpus_per_trial)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed: 0.25 packs 4 trials on a GPU (resources.gpus_per_trial)",
    )
    p.add_argument("--storage", default="runs", help="folder for experiments (default: runs/)")
    p.add_argument("--name", help="experiment name (default: <space>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    p.add_argument("--seed", type=int, help="seed of the Optuna sampler (overrides the space's seed)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the base config, e.g. --set max_train_batches=10 (repeatable)",
    )
    p.add_argument(
        "--final-seeds",
        type=int,
        default=0,
        metavar="N",
        help="retrain the winner on N further seeds and report test MSE/MAE as mean +- std",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate space, data and backbone availability, print the plan, start nothing",
    )
    return p.parse_args(argv)


def resolve_space(args: argparse.Namespace, experiment: Path) -> SearchSpace:
    """The space file (or, with --resume, the copy saved in the experiment) with CLI overrides applied."""
    path = experiment / SPACE_COPY if args.resume else Path(args.space)
    if args.resume and not path.is_file():
        raise SpaceError(f"--resume: no experiment at {experiment} (missing {SPACE_COPY}); check --storage/--name")
    space = load_space(path)
    if args.set:
        space = space.with_base_overrides(parse_set_args(args.set))
    return space.with_overrides(
        num_samples=args.num_samples,
        max_epochs=args.max_epochs,
        seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
    )


def print_plan(space: SearchSpace, experiment: Path, data) -> None:
    print(f"search space {space.path}: {space.description.strip()}")
    print(
        f"  data {data.path.name} ({data.split_kind}; {len(data.train):,} train / {len(data.val):,} val windows), "
        f"backbone {space.base.backbone} x {space.base.llm_layers} layers, T={space.base.seq_len} "
        f"H={space.base.pred_len}"
    )
    for key, dist in space.search.items():
        shown = dist.values if dist.kind == "choice" else f"[{dist.low}, {dist.high}]"
        print(f"  search {key}: {dist.kind} {shown}")
    print(
        f"  {space.num_samples} trials x up to {space.max_epochs} epochs; Optuna TPE (seed {space.seed}); "
        f"ASHA grace {space.grace_period}, reduction {space.reduction_factor}"
    )
    print(
        f"  per trial: {space.cpus_per_trial} CPU, {space.gpus_per_trial} GPU; GPU budget: {space.gpu_budget.strip()}"
    )
    print(f"  outputs: {experiment}")


def init_ray(address: str | None, space: SearchSpace) -> int:
    """Join a cluster or start a local Ray; returns how many trials fit at once."""
    import ray

    if address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray >= 2.59 clusters use token authentication
        ray.init(address=address, log_to_driver=False)
    else:
        # a private local Ray; its trial workers at normal priority (Ray's default niceness 15 lets the
        # driver and Ray's own daemons take CPU from the trials on a small machine)
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    fits = resources.get("CPU", 0) / space.cpus_per_trial
    if space.gpus_per_trial:
        if resources.get("GPU", 0) < space.gpus_per_trial:
            raise SystemExit(
                f"error: --gpus-per-trial {space.gpus_per_trial} but the Ray cluster has {resources.get('GPU', 0)} GPUs"
            )
        fits = min(fits, resources["GPU"] / space.gpus_per_trial)
    if fits < 1:
        raise SystemExit(f"error: one trial needs {space.cpus_per_trial} CPUs; the cluster has {resources.get('CPU')}")
    return max(1, math.floor(fits + 1e-9))


def make_tuner(space: SearchSpace, shared, experiment: Path, concurrent: int, resume: bool):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from balm_tune.callbacks import TensorBoard, TrialLines
    from balm_tune.trainable import trial_trainable

    trainable = trial_trainable(shared)
    if resume:
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=space.seed)),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=space.max_epochs,
                grace_period=space.grace_period,
                reduction_factor=space.reduction_factor,
            ),
            metric="best_val_mse",
            mode="min",
            num_samples=space.num_samples,
            max_concurrent_trials=min(concurrent, space.num_samples),
            reuse_actors=True,  # one worker process runs trial after trial: no per-trial import and start-up
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[TensorBoard(), TrialLines(space.max_epochs, space.base.patience)],
        ),
    )


def run_final_seeds(space: SearchSpace, shared, experiment: Path, params: dict, n: int, concurrent: int) -> list:
    """Retrain the winner on n further seeds (in parallel trials) and collect their test metrics."""
    import dataclasses

    from ray import tune

    from balm_tune.trainable import trial_trainable

    seeds = [space.base.seed + i for i in range(1, n + 1)]
    shared = dataclasses.replace(shared, evaluate_test=True)
    trainable = trial_trainable(shared)
    grid = tune.Tuner(
        trainable,
        param_space={**params, "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=min(concurrent, n)),
        run_config=tune.RunConfig(name="final_seeds", storage_path=str(experiment), verbose=0),
    )
    results = grid.fit()
    return [
        {"seed": r.config["seed"], "test_mse": r.metrics.get("test_mse"), "test_mae": r.metrics.get("test_mae")}
        for r in results
    ]


def versions() -> dict:
    import optuna
    import ray
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.name or f"{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = Path(args.storage).resolve() / name
    try:
        if args.resume and not args.name:
            raise SpaceError("--resume needs --name of the experiment to continue")
        space = resolve_space(args, experiment)
        data = preflight(space.base)  # data file, backbone availability: before anything starts
    except (SpaceError, ConfigError, DataError, BackboneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_plan(space, experiment, data)
    if args.dry_run:
        print("dry run: everything checked, nothing started")
        return 0
    if experiment.exists() and not args.resume:
        print(f"error: {experiment} exists; continue it with --resume or choose another --name", file=sys.stderr)
        return 2
    try:
        return run(space, data, experiment, args)
    finally:
        import ray

        ray.shutdown()


def run(space: SearchSpace, data, experiment: Path, args: argparse.Namespace) -> int:
    import ray

    from balm_tune.export import export_winner, leaderboard, write_leaderboard, write_summary
    from balm_tune.trainable import build_shared, evaluate_checkpoint
    from core import backbones, prompts

    started = time.perf_counter()
    print("loading the backbone and building prompt token ids (once for all trials) ...", flush=True)
    shared = build_shared(space, data)
    concurrent = init_ray(args.address, space)
    experiment.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        space.save(experiment / SPACE_COPY)
    print(
        f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs; "
        f"up to {concurrent} trials at once",
        flush=True,
    )
    results = make_tuner(space, shared, experiment, concurrent, args.resume).fit()

    rows = leaderboard(results, space)
    write_leaderboard(rows, experiment / "leaderboard.csv")
    winners = [r for r in rows if r["status"] != "failed" and r["checkpoint"]]
    summary = {
        "experiment": str(experiment),
        "trials": len(rows),
        "outcomes": {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped by ASHA", "failed")},
        "built_in_driver": {"backbone_loads": backbones.LOADS, "prompt_builds": prompts.BUILDS},
        "built_in_trials": {
            "backbone_loads": sum(r["backbone_loads"] for r in rows),
            "prompt_builds": sum(r["prompt_builds"] for r in rows),
        },
    }
    if not winners:
        write_summary(summary, experiment / "summary.json")
        print(f"no trial finished successfully; see {experiment / 'leaderboard.csv'}", file=sys.stderr)
        return 1
    best = winners[0]
    config = shared.trial_config(best["params"])
    provenance = {
        **versions(),
        "device": best["device"],
        "precision": best["precision"],
        "seed": config.seed,
        "data_file": data.path.name,
        "data_sha256": data.sha256,
    }
    config_path, checkpoint_path = export_winner(best, config, provenance, experiment)
    evaluate = ray.remote(num_cpus=space.cpus_per_trial, num_gpus=space.gpus_per_trial)(evaluate_checkpoint)
    test = ray.get(evaluate.remote(shared, best["params"], str(checkpoint_path)))
    summary.update(
        winner={k: best[k] for k in ("trial_id", "best_val_mse", "best_val_mae", "epochs_run")},
        params=best["params"],
        test=test,
        provenance=provenance,
    )
    if args.final_seeds:
        runs = run_final_seeds(space, shared, experiment, best["params"], args.final_seeds, concurrent)
        summary["final_seeds"] = {
            "runs": runs,
            **{
                f"{m}_{s}": f(r[m] for r in runs)
                for m in ("test_mse", "test_mae")
                for s, f in (("mean", _mean), ("std", _std))
            },
        }
    summary["wall_seconds"] = time.perf_counter() - started
    write_summary(summary, experiment / "summary.json")
    print_summary(summary, experiment, config_path, checkpoint_path, rows)
    return 0


def _mean(values) -> float:
    return statistics.fmean(values)


def _std(values) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def print_summary(summary: dict, experiment: Path, config_path: Path, checkpoint_path: Path, rows: list) -> None:
    outcomes = ", ".join(f"{n} {s}" for s, n in summary["outcomes"].items())
    winner, test = summary["winner"], summary["test"]
    print(f"\n{summary['trials']} trials ({outcomes}) in {summary['wall_seconds']:.0f}s")
    print(
        f"best trial {winner['trial_id']}: val mse {winner['best_val_mse']:.6f} mae {winner['best_val_mae']:.6f} "
        f"after {winner['epochs_run']} epochs; "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["params"].items())
    )
    print(f"winner's test mse {test['test_mse']:.6f} mae {test['test_mae']:.6f} (test data used for the winner only)")
    if "final_seeds" in summary:
        f = summary["final_seeds"]
        print(
            f"winner on {len(f['runs'])} further seeds: test mse {f['test_mse_mean']:.6f} +- {f['test_mse_std']:.6f}, "
            f"mae {f['test_mae_mean']:.6f} +- {f['test_mae_std']:.6f}"
        )
    print(f"leaderboard:   {experiment / 'leaderboard.csv'}")
    print(f"best config:   {config_path}")
    print(f"checkpoint:    {checkpoint_path}")
    print(f"summary:       {experiment / 'summary.json'}")
    print(f"tensorboard:   tensorboard --logdir {experiment}")
    print(f"retrain:       python -m balm_tune.train --config {config_path}")


if __name__ == "__main__":
    sys.exit(main())
