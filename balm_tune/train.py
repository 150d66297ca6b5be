"""Train one BALM config and print its validation and test metrics (no Ray needed).

python -m balm_tune.train                                   # the embedded CPU quick start
python -m balm_tune.train --config runs/<name>/best_config.yaml
python -m balm_tune.train --config paper.yaml --set learning_rate=0.01 --set epochs=20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core.config import BalmConfig, parse_set_args, quickstart
from core.errors import BalmError
from core.paths import PathError, check_name
from core.train import EpochReport, Trainer, eval_index, naive_metrics, preflight, provenance

OUTPUTS = ("config.yaml", "checkpoint.pt", "results.json")  # what a run writes in its folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
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


def describe_eval(trainer: Trainer, split: str) -> str:
    n = len(trainer.windows[split])
    used = len(eval_index(n, trainer.config.batch_size, trainer.config.max_eval_batches))
    return f"all {n:,} windows" if used == n else f"{used:,} evenly spaced of {n:,} windows (max_eval_batches)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = Path(args.out) / check_name(args.name or time.strftime("train-%Y%m%d-%H%M%S"))
        config = load_config(args.config, args.set)
        preflight(config, output=(out, "--out/--name"))  # every cheap check before the backbone is loaded
        if out.exists() and not args.overwrite:
            raise PathError(f"--name {out.name}: run folder {out} exists; choose another --name or add --overwrite")
    except BalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for old in OUTPUTS:  # --overwrite: no file of the earlier run is left beside the new ones
        (out / old).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.yaml")
    print(
        f"training {config.backbone} ({config.llm_layers} layers) on {config.data_path}, "
        f"T={config.seq_len} H={config.pred_len}; outputs in {out}"
    )
    trainer = Trainer(config, show_progress=not args.quiet)

    def on_epoch(r: EpochReport) -> None:
        print(
            f"epoch {r.epoch:3d}  loss {r.train_loss:.4f} (mse {r.train_mse:.4f} + contrastive "
            f"{r.train_contrastive:.4f})  val mse {r.val_mse:.4f} mae {r.val_mae:.4f}  lr {r.learning_rate:.2e}  "
            f"{r.epoch_seconds:.1f}s{'  *' if r.is_best else ''}",
            flush=True,
        )

    fit = trainer.fit(on_epoch=on_epoch, checkpoint_path=out / "checkpoint.pt")
    test = trainer.evaluate("test", config.max_eval_batches)
    val_index = eval_index(len(trainer.windows["val"]), config.batch_size, config.max_eval_batches)
    naive = naive_metrics(trainer.windows["val"], val_index.to(trainer.device))
    results = {
        "val_mse": fit.best_val_mse,
        "val_mae": fit.best_val_mae,
        "test_mse": test.mse,
        "test_mae": test.mae,
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "naive_val_mse": naive.mse,
        "val_windows": describe_eval(trainer, "val"),
        "test_windows": describe_eval(trainer, "test"),
        **provenance(trainer),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"best epoch {fit.best_epoch}: val mse {fit.best_val_mse:.6f} mae {fit.best_val_mae:.6f} "
        f"({results['val_windows']}; repeat-last-value baseline mse {naive.mse:.4f})"
    )
    print(f"test mse {test.mse:.6f} mae {test.mae:.6f} ({results['test_windows']})")
    print("wrote " + ", ".join(str(out / name) for name in OUTPUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
