"""Scoring speed against `eval_batch_size`: the same model scores the same windows at several batch
sizes (no gradients); the scores must not change, only the time.

    python bench/eval_batch.py                     # the embedded quick start (SmolLM2, 1 layer), ~1 min
    python bench/eval_batch.py --set backbone=tiny-gpt2 --set llm_layers=2   # a tiny model: overhead-bound

It scores an evenly spaced subset of `--windows` test windows of the quick start config `--repeats`
times per batch size, interleaved (a noisy moment hits every size alike), and prints the median time,
its ratio to batch_size's and the MSE each size gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from core.config import parse_set_args, quickstart
from core.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=1280, help="test windows scored per pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a quick start key")
    args = p.parse_args()
    config = quickstart().with_overrides({**parse_set_args(args.set), "max_train_batches": 1, "epochs": 1})
    trainer = Trainer(config, show_progress=False)
    batches = -(-args.windows // config.batch_size)  # evaluate's subset: max_batches of batch_size windows
    sizes = [config.batch_size, *args.sizes]
    times, scores = {s: [] for s in sizes}, {}
    trainer.evaluate("test", max_batches=1)  # warm-up: first-call costs are not a batch size's
    for _ in range(args.repeats):
        for size in sizes:
            trainer.config = dataclasses.replace(config, eval_batch_size=size)
            started = time.perf_counter()
            scores[size] = trainer.evaluate("test", max_batches=batches)
            times[size].append(time.perf_counter() - started)
    base = statistics.median(times[config.batch_size])
    windows = scores[config.batch_size].windows
    print(f"{config.backbone} x {config.llm_layers} layer, T={config.seq_len} H={config.pred_len}, device cpu; ")
    print(f"{windows} of {len(trainer.windows['test']):,} test windows per pass, median of {args.repeats} passes")
    print(f"{'eval_batch_size':>15} {'median s':>9} {'vs batch_size':>14} {'test mse':>12}")
    for size in sizes:
        median = statistics.median(times[size])
        label = f"{size} (batch_size)" if size == config.batch_size else str(size)
        print(f"{label:>15} {median:9.2f} {base / median:13.2f}x {scores[size].mse:12.6f}")


if __name__ == "__main__":
    main()
