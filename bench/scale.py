"""The driver's cost as a search grows: 10, 100 and 1,000 trials through the search's own Tuner.

Run from the repository root (2 CPU cores: about 10 minutes; nothing else running):

    python bench/scale.py                        # 10, 100, 1000 trials on a local folder; S3 at 10 and 100
    python bench/scale.py --trials 10 100 --s3-trials

Each search is balm_tune.tuner.make_tuner as the search builds it (the Optuna TPE sampler inside
StudySearch with its journal, ASHA, StudyStopper, TuneView, the loggers, the console table, the Sealer)
over a trainable that does no model work but reports like train_balm: one result per epoch with
train_balm's metric keys and a checkpoint folder (a 1 KB file), up to 4 epochs, a val MSE that depends on
the params so that TPE and ASHA have something to do. 4 trials run at once (a local Ray of 4 logical CPUs).

Figures per size, all measured in this run:
  results         how many epoch results Tune handled
  driver CPU/res  the driver process's CPU seconds (user + system, all its threads) between the first and
                  the last result, per result: the search loop's cost, start-up and export left out
  wall/res        wall seconds between the first and the last result, per result
  journal         the Optuna journal's size at the end
With --s3-trials, the same searches against a local S3 endpoint (moto_server), counting the requests the
endpoint saw: per experiment checkpoint (each upload of Tune's experiment_state-*.json), the median of the
requests between two consecutive ones, and of those the GETs (reads of what was written before).

The last line: `driver cost per result, 1000 vs 10 trials: X.XXx` (the target: within 2x).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import yaml  # noqa: E402
from ray.tune import Callback  # noqa: E402

EPOCHS = 4
AT_ONCE = 4
SPACE = {
    "description": "bench/scale.py: the tiny space; the trainable does no model work",
    "base": {"backbone": "tiny-gpt2", "llm_layers": 2, "seq_len": 96, "pred_len": 24, "d_model": 16, "d_ff": 32},
    "search": {
        "prompt_len": {"type": "int", "low": 2, "high": 12},
        "contrastive_weight": {"type": "float", "low": 0.0, "high": 2.0},
        "scale_factor": {"type": "log_float", "low": 0.25, "high": 4.0},
        "learning_rate": {"type": "log_float", "low": 0.0003, "high": 0.01},
    },
    "budget": {"num_samples": 10, "max_epochs": EPOCHS},
    "scheduler": {"grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


def reports_like_train_balm(params: dict) -> None:
    """train_balm's reports without its model: per epoch, its metric keys and a checkpoint folder."""
    import math

    from ray import tune

    quality = (math.log10(params["learning_rate"]) + 2.5) ** 2 + (params["scale_factor"] - 1) ** 2 / 8
    best = math.inf
    for epoch in range(1, EPOCHS + 1):
        val = 0.4 + quality + 0.3 / epoch
        best = min(best, val)
        metrics = {
            "epoch": epoch, "train_loss": val, "train_mse": val, "train_contrastive": 0.1, "val_mse": val,
            "val_mae": val / 2, "temperature": 0.07, "epoch_seconds": 0.0, "best_val_mse": best, "is_best": True,
            "lr": params["learning_rate"], "diverged": "", "best_val_mae": best / 2, "bad_epochs": 0,
            "perturbations": 0, "node_id": "", "device": "cpu", "precision": "fp32", "backbone_loads": 0,
            "prompt_builds": 0, "cuda_visible_devices": "",
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "checkpoint.pt").write_bytes(b"\0" * 1024)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@dataclass
class Figures:
    trials: int
    storage: str
    results: int
    driver_cpu_per_result: float
    wall_per_result: float
    journal_bytes: int
    wall: float
    requests_per_checkpoint: float | None = None
    gets_per_checkpoint: float | None = None
    checkpoints: int | None = None


class Clock(Callback):
    """A Tune callback noting the driver's CPU time and the wall clock at every result."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        times = os.times()  # this process: every thread of the driver
        self.marks.append((time.perf_counter(), times.user + times.system))


def run(trials: int, folder: Path, storage: str) -> Figures:
    """One search of `trials` trials at `storage` (a folder, or s3://...); its figures."""
    from balm_tune.space import load_space
    from balm_tune.storage import open_location
    from balm_tune.tuner import make_tuner

    space_file = folder / f"space-{trials}.yaml"
    space_file.write_text(yaml.safe_dump({**SPACE, "budget": {"num_samples": trials, "max_epochs": EPOCHS}}))
    space = load_space(space_file)
    name = f"scale-{trials}-{'s3' if storage.startswith('s3://') else 'local'}"
    location = open_location(storage).child(name)
    journal = folder / f"{name}.journal"
    clock = Clock()
    tuner = make_tuner(
        space,
        None,
        location,
        AT_ONCE,
        False,
        journal,
        extra_callbacks=[clock],
        trainable=_with_resources(),
    )
    started = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - started
    (first_t, first_cpu), (last_t, last_cpu) = clock.marks[0], clock.marks[-1]
    steps = max(len(clock.marks) - 1, 1)
    return Figures(
        trials,
        "s3" if storage.startswith("s3://") else "local",
        len(clock.marks),
        (last_cpu - first_cpu) / steps,
        (last_t - first_t) / steps,
        journal.stat().st_size,
        wall,
    )


def _with_resources():
    from ray import tune

    return tune.with_resources(reports_like_train_balm, {"cpu": 1})


def moto(log: Path) -> tuple[subprocess.Popen, str]:
    """A local S3 endpoint whose request log goes to `log`, with the bucket `scale`; its URL."""
    import socket

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1"
    )
    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=url).create_bucket(Bucket="scale")
            return process, url
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')


def requests_per_checkpoint(log: Path, name: str) -> tuple[float, float, int]:
    """Median requests and GETs between consecutive uploads of the experiment's state; how many uploads."""
    between, gets, counts = 0, 0, []
    for method, path in REQUEST.findall(log.read_text(errors="replace")):
        if f"/{name}/" not in path and not path.endswith(f"/{name}"):
            continue
        if method == "PUT" and "experiment_state-" in path:
            counts.append((between, gets))
            between = gets = 0
            continue
        between += 1
        gets += method == "GET"
    later = counts[len(counts) // 2 :] or [(0, 0)]  # the second half: once many trials have finished
    return statistics.median(c for c, _ in later), statistics.median(g for _, g in later), len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--s3-trials", type=int, nargs="*", default=[10, 100])
    args = parser.parse_args()
    import ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log = folder / "moto.log"
        server = moto(log)[0] if args.s3_trials else None
        try:
            ray.init(num_cpus=AT_ONCE, include_dashboard=False, log_to_driver=False)
            for trials in args.trials:
                figures.append(run(trials, folder, str(folder / "runs")))
            for trials in args.s3_trials:
                result = run(trials, folder, "s3://scale/runs")
                result.requests_per_checkpoint, result.gets_per_checkpoint, result.checkpoints = (
                    requests_per_checkpoint(log, f"scale-{trials}-s3")
                )
                figures.append(result)
        finally:
            ray.shutdown()
            if server is not None:
                server.kill()
    print_table(figures)


def print_table(figures: list[Figures]) -> None:
    print(f"\n{'trials':>7} {'storage':>7} {'results':>8} {'driver CPU/res':>15} {'wall/res':>9} {'journal':>9} "
          f"{'wall':>7} {'req/ckpt':>9} {'GET/ckpt':>9} {'ckpts':>6}")  # fmt: skip
    for f in figures:
        s3 = (
            f"{f.requests_per_checkpoint:>9.0f} {f.gets_per_checkpoint:>9.0f} {f.checkpoints:>6}"
            if f.requests_per_checkpoint is not None
            else f"{'':>9} {'':>9} {'':>6}"
        )
        print(f"{f.trials:>7} {f.storage:>7} {f.results:>8} {f.driver_cpu_per_result * 1000:>12.1f} ms "
              f"{f.wall_per_result * 1000:>6.0f} ms {f.journal_bytes / 1e6:>7.2f}MB {f.wall:>6.0f}s {s3}")  # fmt: skip
    local = {f.trials: f for f in figures if f.storage == "local"}
    if 10 in local and 1000 in local:
        ratio = local[1000].driver_cpu_per_result / local[10].driver_cpu_per_result
        print(f"driver cost per result, 1000 vs 10 trials: {ratio:.2f}x")


if __name__ == "__main__":
    main()
