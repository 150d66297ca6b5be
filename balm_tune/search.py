"""Hyperparameter search for BALM-TSF: Ray Tune runs the trials, Optuna (TPE) proposes, ASHA prunes
(other Optuna samplers and Ray schedulers from the space file's `searcher:` and `scheduler:`).

    python -m balm_tune.search                                   # embedded default: ETTh1, CPU, offline
    python -m balm_tune.search --space search_spaces/paper_etth1.yaml --address auto   # a Ray cluster
    python -m balm_tune.search --name my-search --resume         # continue an interrupted search
    python -m balm_tune.search --enqueue configs.yaml            # evaluate these configs first
    python -m balm_tune.search --warm-start runs/old-search      # seed the sampler with a finished study
    tensorboard --logdir runs/<name>                             # curves and HParams of every trial
    optuna-dashboard runs/<name>/optuna.journal                  # the Optuna study of the search

Where results land: Ray keeps trials, checkpoints and TensorBoard files at --storage/<name> (a folder,
or a URI such as s3://bucket/prefix that every node of a cluster reaches). At the end leaderboard.csv,
config.yaml, checkpoint.pt and summary.json are written there AND to the local folder
--out/<name> (default: the storage folder when it is local, else runs/<name>), with a copy of every
trial's TensorBoard event files; it prints the command that retrains the winner. Selection uses
validation only; test metrics are computed for the winner alone, over every test window, and printed
beside the repeat-last and linear baselines scored on the same windows.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from balm_tune.space import DEFAULT_SPACE
from core.cli import Parser, exit_with
from core.config import parse_set_args
from core.errors import BalmError

if TYPE_CHECKING:
    from balm_tune.api import SearchPlan

# Ray's settings for a quiet console (without --verbose): no warning that a Tune event loop step took over
# 0.5 s (on 2 cores it often does; nothing for the user to do); the progress table is balm_tune.console's
QUIET_RAY = {"TUNE_WARN_THRESHOLD_S": "60"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return search_parser().parse_args(argv)


def search_parser() -> Parser:
    """The search's flags (balm_tune.campaign passes the ones it does not own to every search)."""
    # one add_argument per flag, in --help's order: long, but a table to read, not logic to follow
    p = Parser(
        prog="python -m balm_tune.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", help=f"search space YAML (default: {DEFAULT_SPACE}; with --resume: the experiment's own)")
    p.add_argument("--address", help="Ray cluster to join: 'auto', or HOST:PORT of a head; omit for a local Ray")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides budget.num_samples)")
    p.add_argument("--max-epochs", type=int, help="epochs of an unpruned trial (overrides budget.max_epochs)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (overrides resources.cpus_per_trial)")
    p.add_argument(
        "--gpus-per-trial",
        type=_gpus,
        help="GPUs per trial, fractions allowed: 0.25 packs 4 trials on a GPU (resources.gpus_per_trial); "
        "'auto': 0 on a cluster without GPUs, else as many trials per GPU as a probe trial's memory allows",
    )
    p.add_argument(
        "--storage",
        default="runs",
        help="where Ray keeps the experiment: a folder (default: runs/) or a URI every node reaches, "
        "e.g. s3://bucket/prefix (AWS_* variables and AWS_ENDPOINT_URL honoured); a cluster of several "
        "nodes needs a URI or a folder all of them share",
    )
    p.add_argument(
        "--out",
        help="local folder that also receives the exported results as <out>/<name> "
        "(default: the --storage folder when local, else runs/)",
    )
    p.add_argument("--name", help="experiment name (default: <space>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    p.add_argument(
        "--trust-experiment",
        action="store_true",
        help="--resume a folder that this user's searches did not sign (its pickles can run code: see README)",
    )
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="take over the experiment from a driver that is gone (one driver per experiment: driver.lock)",
    )
    p.add_argument("--seed", type=int, help="seed of the Optuna sampler (overrides the space's seed)")
    p.add_argument(
        "--enqueue",
        metavar="FILE",
        help="YAML list of configs (searched keys) evaluated first, after the space's own 'enqueue'",
    )
    p.add_argument(
        "--warm-start",
        metavar="EXPERIMENT",
        help="seed the sampler with the finished trials of another experiment (folder, or name under --storage)",
    )
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
        "--ablations",
        nargs="+",
        default=[],
        metavar="ARM",
        help="after the search, retrain the winner's config as each arm (no_llm, llm2attn, random_llm: Tan et "
        "al.'s ablations of the LLM) on its seed and the --final-seeds seeds, scored beside it on every test window",
    )
    p.add_argument(
        "--search-ablations",
        action="store_true",
        default=None,
        help="search each --ablations arm with the same space and budget (its own experiment) and retrain its "
        "winner instead of the winner's config (the space's `ablations: {search: true}`)",
    )
    p.add_argument(
        "--official",
        action="store_true",
        help="also retrain the space's first enqueued config (a preset's official configuration) on the "
        "winner's seeds, scored beside it on every test window (what balm_tune.campaign's table shows)",
    )
    p.add_argument(
        "--max-concurrent-trials",
        type=int,
        metavar="N",
        help="run at most N trials at once (default: as many as the cluster holds; a share of a shared cluster)",
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="log every trial's params and metrics to MLflow (e.g. sqlite:///mlflow.db or http://host:5000)",
    )
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="log every trial to this Weights & Biases project (WANDB_MODE=offline writes runs locally)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's full console output (its per-trial config and result boxes and its warnings)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate space, data and backbone availability, print the plan and an estimate of the search's "
        "wall time on this machine (from a few training steps measured here), start nothing",
    )
    return p


def _gpus(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs or 'auto', got {value!r}") from None


def print_plan(plan: SearchPlan) -> None:
    space, data = plan.space, plan.data
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
        f"  {space.num_samples} trials x up to {space.max_epochs} epochs; searcher {_strategy(space.searcher)} "
        f"(seed {space.seed}); scheduler {_strategy(space.scheduler)}"
    )
    if space.enqueue:
        print(f"  evaluated first: {len(space.enqueue)} enqueued config(s)")
    if plan.warm_start:
        print(f"  sampler seeded with {len(plan.warm_start.trials)} finished trials of {plan.warm_start.source}")
    budget = f"; GPU budget: {space.gpu_budget.strip()}" if space.gpu_budget.strip() else ""
    print(f"  per trial: {space.cpus_per_trial} CPU, {'auto' if plan.auto_gpus else space.gpus_per_trial} GPU{budget}")
    if plan.official:
        print("  after the search: the space's first enqueued config retrained on the winner's seeds (--official)")
    if plan.ablations and plan.ablation_search:
        print(f"  after the search: {', '.join(plan.ablations)} each searched with this space and budget (ablations)")
    elif plan.ablations:
        print(f"  after the search: the winner's config retrained as {', '.join(plan.ablations)} (ablations)")
    print(f"  experiment: {plan.experiment.uri}; results also in {plan.experiment.folder}")


def _strategy(strategy) -> str:
    return strategy.type + "".join(f" {k}={v}" for k, v in strategy.options.items())


def search_options(args: argparse.Namespace) -> dict:
    """prepare_search's keyword arguments from the parsed flags (a ConfigError on a bad --set)."""
    return dict(
        name=args.name,
        storage=args.storage,
        out=args.out,
        resume=args.resume,
        trust_experiment=args.trust_experiment,
        break_lock=args.break_lock,
        address=args.address,
        num_samples=args.num_samples,
        max_epochs=args.max_epochs,
        sampler_seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        enqueue=args.enqueue,
        warm_start=args.warm_start,
        mlflow=args.mlflow,
        wandb=args.wandb,
        ablations=args.ablations,
        ablation_search=args.search_ablations,
        official=args.official,
        max_concurrent_trials=args.max_concurrent_trials,
        **parse_set_args(args.set),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before torch, Ray and transformers are imported: --help answers at once
    if not args.verbose:  # read when Ray Tune is imported, so set before it (a variable already set wins)
        for key, value in QUIET_RAY.items():
            os.environ.setdefault(key, value)
    from balm_tune.api import check_cluster, check_final_seeds, execute, prepare_search
    from balm_tune.cluster import check_address

    try:
        check_address(args.address)  # seconds, before the space, data and backbone checks
        check_final_seeds(args.final_seeds)
        plan = prepare_search(args.space, **search_options(args))
        print_plan(plan)
        if args.dry_run:
            concurrent = check_cluster(plan, args.address)
            if args.address in (None, "local"):  # a cluster's steps cannot be measured from here
                from balm_tune.estimate import measure, retrains

                searches = 1 + len(plan.ablations) * plan.ablation_search
                print(measure(plan.space, plan.data, concurrent, retrains(plan, args.final_seeds), searches).line())
            print(f"dry run: everything checked (the cluster holds {concurrent} trials at once), nothing started")
            return 0
        result = execute(plan, address=args.address, final_seeds=args.final_seeds, verbose=args.verbose)
    except BalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted before the trials started; continue with --name {plan.experiment.name} --resume")
        return 130
    if result.interrupted:  # execute printed the closing lines (SearchResult.text) in every case
        return 130
    if not result.summary.has_winner or result.summary.stalled:
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main)
