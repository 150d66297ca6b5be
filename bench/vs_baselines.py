"""Does the default search's winner beat simple baselines? Test MSE over every test window.

Runs the search exactly as `python -m balm_tune.search` does (balm_tune.api.run_search on a search
space, default: search_spaces/default.yaml) on ETTh1 and on the exchange-rate file, then prints the
winner's validation and test figures beside the repeat-last value and the closed-form linear model
(core/baselines.py), all scored on the same windows: validation on the space's evenly spaced subset
(the windows the trials were selected on), test on every window.

    python bench/vs_baselines.py --exchange ../shared/data/exchange_rate.csv | tee vs_baselines.txt
    python bench/vs_baselines.py --datasets etth1 --set seq_len=336      # one variant of the space
    python bench/vs_baselines.py --quick                                 # smoke run: 2 trials x 1 epoch of 2 batches
    python bench/vs_baselines.py --ablations no_llm llm2attn random_llm --final-seeds 3    # does the LLM help?

The budget is stated as work, not wall time (machines are shared): trials x epochs x batches of the
space (an upper bound; ASHA stops weak trials early) and the batches the trials actually trained.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from balm_tune.api import run_search
from balm_tune.experiment import Experiment
from balm_tune.space import DEFAULT_SPACE, load_space
from core.baselines import BASELINES, verdict
from core.config import parse_set_args
from core.significance import DieboldMariano

DATASETS = {"etth1": "embedded:ETTh1", "exchange": None}  # exchange: --exchange PATH


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="search space (default: %(default)s)")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    p.add_argument("--exchange", default="../shared/data/exchange_rate.csv", help="exchange-rate CSV")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base config override")
    p.add_argument("--storage", help="folder for the experiments (default: a temporary folder)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 trials x 1 epoch of 2 batches")
    p.add_argument("--ablations", nargs="*", default=[], metavar="ARM", help="retrain the winner as these arms")
    p.add_argument("--final-seeds", type=int, default=0, metavar="N", help="retrain the winner on N more seeds")
    return p.parse_args(argv)


def budget(space, leaderboard) -> dict:
    """The search's work: its upper bound and the training batches its trials actually ran."""
    trials = leaderboard
    batches = space.base.max_train_batches
    return {
        "trials": len(trials),
        "max_epochs": space.max_epochs,
        "batches_per_epoch": batches,
        "batch_size": space.base.batch_size,
        "batch_groups": space.base.batch_groups,
        "upper_bound_batches": space.num_samples * space.max_epochs * batches if batches else None,
        "trained_batches": int(trials["epochs_run"].sum()) * batches if batches else None,
        "trained_epochs": int(trials["epochs_run"].sum()),
    }


def run_one(name: str, data_path: str, args: argparse.Namespace, storage: Path) -> dict:
    overrides = {"data_path": data_path, **parse_set_args(args.set)}
    options = {"num_samples": 2, "max_epochs": 1, "max_train_batches": 2, "max_eval_batches": 2} if args.quick else {}
    options = {**options, **overrides}
    started = time.perf_counter()
    result = run_search(
        args.space,
        name=f"vs-baselines-{name}",
        storage=storage,
        ablations=args.ablations,
        final_seeds=args.final_seeds,
        **options,
    )
    summary = result.summary.to_dict()
    space = load_space(Experiment.local(result.experiment).space_file)
    row = {
        "dataset": name,
        "data_path": data_path,
        "seq_len": space.base.seq_len,
        "pred_len": space.base.pred_len,
        "budget": budget(space, result.leaderboard),
        "windows": summary["windows"],
        "winner": summary.get("winner"),
        "params": summary.get("params"),
        "test": summary.get("test"),
        "baselines": summary["baselines"],
        "final_seeds": summary.get("final_seeds"),
        "ablations": summary.get("ablations"),
        "wall_seconds": time.perf_counter() - started,
    }
    print_row(row)
    return row


def print_row(row: dict) -> None:
    b, w, windows = row["budget"], row["winner"], row["windows"]
    print(
        f"\n== {row['dataset']} (T={row['seq_len']}, H={row['pred_len']}): {b['trials']} trials x up to "
        f"{b['max_epochs']} epochs x {b['batches_per_epoch']} batches of {b['batch_size']} "
        f"(upper bound {b['upper_bound_batches']} batches; trained {b['trained_batches']}) "
        f"in {row['wall_seconds']:.0f}s wall on this machine"
    )
    if w is None:
        print("   no trial finished")
        return
    t, seeds = row["test"], row["final_seeds"]
    print(f"   {'':34s} {'val mse':>9s} {'test mse':>9s} {'test mae':>9s}  vs the winner on test")
    print(f"   {'BALM (search winner)':34s} {w['best_val_mse']:9.4f} {t['test_mse']:9.4f} {t['test_mae']:9.4f}")
    if seeds:
        print(
            f"   {'  winner on ' + str(len(seeds['runs'])) + ' further seeds':34s} {'':9s} "
            f"{seeds['test_mse_mean']:9.4f} {seeds['test_mae_mean']:9.4f}  (test mse std {seeds['test_mse_std']:.4f})"
        )
    for arm, a in (row["ablations"] or {}).items():
        tested = DieboldMariano(**a["significance_on_test"])
        run = a["tested_run"]  # the arm's run on the winner's seed, which the test pairs with the winner
        word = verdict(t["test_mse"], run["test_mse"], tested).replace("does NOT beat", "loses to")
        print(
            f"   {'ablation ' + arm + ' (' + str(len(a['runs'])) + ' seeds)':34s} {a['best_val_mse_mean']:9.4f} "
            f"{a['test_mse_mean']:9.4f} {a['test_mae_mean']:9.4f}  winner {word} its seed-{run['seed']} run "
            f"({run['test_mse']:.4f}, {tested.p_text()}); "
            f"test mse std {a['test_mse_std']:.4f}, {a['parameters']:,} params, {a['step_seconds_mean']:.3f}s/step"
        )
    for name, label in BASELINES.items():
        s = row["baselines"][name]
        print(f"   {label:34.34s} {s['val']['mse']:9.4f} {s['test']['mse']:9.4f} {s['test']['mae']:9.4f}")
    print(
        f"   validation over {windows['val']:,} of {windows['val_total']:,} windows, "
        f"test over all {windows['test']:,} windows"
    )
    for name, label in BASELINES.items():
        s = row["baselines"][name]
        tested = DieboldMariano(**s["significance_on_test"])
        print(
            f"   winner vs {label}: {'beats' if s['beats_on_val'] else 'loses'} on validation, "
            f"{verdict(t['test_mse'], s['test']['mse'], tested).replace('does NOT beat', 'loses')} on test "
            f"({tested.p_text()})"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = {**DATASETS, "exchange": str(Path(args.exchange).resolve())}
    with tempfile.TemporaryDirectory() as scratch:
        storage = Path(args.storage or scratch) / time.strftime("%Y%m%d-%H%M%S")
        rows = [run_one(name, paths[name], args, storage) for name in args.datasets]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
