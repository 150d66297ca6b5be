"""Train one BALM config and print its validation and test metrics beside two baselines (no Ray needed).

Test metrics are taken over every test window (as the paper scores); validation over the config's
evenly spaced subset (max_eval_batches) when it sets one. The repeat-last value and the closed-form
linear model are scored on exactly the same windows (core/baselines.py).

python -m balm_tune.train                                   # the embedded CPU quick start
python -m balm_tune.train --config runs/<name>/config.yaml
python -m balm_tune.train --config paper.yaml --set learning_rate=0.01 --set epochs=20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from balm_tune.experiment import CHECKPOINT, CONFIG, SUMMARY
from core.atomic import write_atomic
from core.cli import Parser, exit_with
from core.config import BalmConfig, parse_set_args, quickstart
from core.errors import BalmError, fault_line, storage_fault
from core.paths import PathError, check_name

if TYPE_CHECKING:
    from core.train import EpochReport

OUTPUTS = (CONFIG, CHECKPOINT, SUMMARY)  # what a run writes in its folder: the names a search exports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        prog="python -m balm_tune.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML/JSON config file (default: the embedded CPU quick start)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value syntax), repeatable",
    )
    parser.add_argument("--out", default="runs", help="folder for run outputs (default: runs/)")
    parser.add_argument("--name", help="run folder name under --out (default: train-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an existing run folder --name")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def load_config(path: str | None, overrides: list[str]) -> BalmConfig:
    config = BalmConfig.load(path) if path else quickstart()
    return config.with_overrides(parse_set_args(overrides), source="--set") if overrides else config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before torch and transformers are imported: --help answers at once
    from core.train import preflight

    try:
        out = Path(args.out) / check_name(args.name or time.strftime("train-%Y%m%d-%H%M%S"))
        config = load_config(args.config, args.set)
        preflight(config, output=(out, "--out/--name"))  # every cheap check before the backbone is loaded
        if out.exists() and not args.overwrite:
            raise PathError(f"--name {out.name}: run folder {out} exists; choose another --name or add --overwrite")
    except BalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return train(config, out, args.quiet)
    except Exception as err:  # a full disk, a quota, a read-only --out: one line, not a traceback
        fault = storage_fault(err)
        if fault is None:
            raise
        print(f"error: {fault_line(fault, str(out))}: training stopped; what it wrote is intact", file=sys.stderr)
        return 2


def train(config: BalmConfig, out: Path, quiet: bool) -> int:
    """Train `config`, score it and the baselines, and write the run's files to `out`."""
    from core.baselines import BASELINES, comparison, run_baselines, significance
    from core.train import Trainer, provenance

    for old in OUTPUTS:  # --overwrite: no file of the earlier run is left beside the new ones
        (out / old).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG)
    print(
        f"training {config.backbone} ({config.llm_layers} layers) on {config.data_path}, "
        f"T={config.seq_len} H={config.pred_len}; outputs in {out}"
    )
    trainer = Trainer(config, show_progress=not quiet)

    def on_epoch(r: EpochReport) -> None:
        print(
            f"epoch {r.epoch:3d}  loss {r.train_loss:.4f} (mse {r.train_mse:.4f} + contrastive "
            f"{r.train_contrastive:.4f})  val mse {r.val_mse:.4f} mae {r.val_mae:.4f}  lr {r.learning_rate:.2e}  "
            f"{r.epoch_seconds:.1f}s{'  *' if r.is_best else ''}",
            flush=True,
        )

    fit = trainer.fit(on_epoch=on_epoch, checkpoint_path=out / CHECKPOINT)
    scores = {"val": trainer.evaluate("val", config.max_eval_batches), "test": trainer.evaluate("test")}
    baselines = run_baselines(trainer.data, config)
    tests = {name: {"test": significance(scores["test"], b["test"], config.pred_len)} for name, b in baselines.items()}
    totals = {split: len(trainer.windows[split]) for split in scores}
    results = {
        "val_mse": fit.best_val_mse,
        "val_mae": fit.best_val_mae,
        "val_windows": scores["val"].windows,
        "test_mse": scores["test"].mse,
        "test_mae": scores["test"].mae,
        "test_windows": scores["test"].windows,
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "baselines": {
            name: {split: m.to_dict() for split, m in by_split.items()}
            | {f"beats_on_{split}": scores[split].mse < m.mse for split, m in by_split.items()}
            | {"significance_on_test": tests[name]["test"].to_dict()}
            for name, by_split in baselines.items()
        },
        **provenance(trainer),
    }
    write_atomic(out / SUMMARY, json.dumps(results, indent=2) + "\n")
    print(f"best epoch {fit.best_epoch}: val {scores['val'].describe(totals['val'])}")
    print(f"test {scores['test'].describe(totals['test'])}")
    for name in BASELINES:
        print(comparison(name, scores, baselines[name], tests=tests[name]))
    print("wrote " + ", ".join(str(out / name) for name in OUTPUTS))
    return 0


if __name__ == "__main__":
    exit_with(main)
