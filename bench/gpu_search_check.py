"""Step 4 of the GPU check: the real search through Ray with `--gpus-per-trial auto` on one machine.

Runs `python -m balm_tune.search` (private local Ray) on the paper's ETTh1 space with gpt2-random, a
handful of trials of 1 epoch and few batches, and reports: the probe line that
balm_tune.cluster.auto_gpus_per_trial printed, the trials packed per GPU, the wall time, the most
trials that ran at once (from the trials' own result timestamps), and every trial's device, precision
and CUDA_VISIBLE_DEVICES as the trial itself reported them.

    python bench/gpu_search_check.py --out $OUT             # on the GPU machine (~2 minutes)
    python bench/gpu_search_check.py --quick --out /tmp/x   # CPU smoke run: tiny-gpt2, auto gives 0 GPUs

Writes search.log (the search's own output) and search_summary.json into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpu_check import gpu_memory_used_mib  # bench/ is the script's folder, first on sys.path

PROBE = re.compile(r"--gpus-per-trial auto: a probe trial held ([\d.]+) GiB of ([\d.]+) GiB: (\d+) trials per GPU")
TINY = ["backbone=tiny-gpt2", "seq_len=192", "llm_layers=2", "d_model=16", "d_ff=32", "batch_size=8"]


def search_command(storage: Path, name: str, trials: int, batches: int, quick: bool) -> list[str]:
    sets = TINY if quick else ["backbone=gpt2-random"]
    sets += [f"max_train_batches={batches}", "max_eval_batches=4"]
    command = [sys.executable, "-m", "balm_tune.search", "--space", "search_spaces/paper_etth1.yaml"]
    command += ["--num-samples", str(trials), "--max-epochs", "2", "--gpus-per-trial", "auto", "--cpus-per-trial", "1"]
    command += ["--storage", str(storage), "--name", name]
    for item in sets:
        command += ["--set", item]
    return command


def trial_results(experiment: Path) -> list[dict]:
    """Each trial's last reported result (Ray Tune's result.json, one JSON object per line)."""
    rows = []
    for path in sorted(experiment.glob("*/result.json")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            rows.append(json.loads(lines[-1]))
    return rows


def most_at_once(rows: list[dict]) -> int:
    """The most trials whose [start, end] intervals overlap (start = timestamp - time_total_s)."""
    events = []
    for r in rows:
        if "timestamp" in r and "time_total_s" in r:
            events += [(r["timestamp"] - r["time_total_s"], 1), (r["timestamp"], -1)]
    running = best = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        best = max(best, running)
    return best


class MemorySampler(threading.Thread):
    """nvidia-smi's memory.used of GPU 0 every second while the search runs (none without nvidia-smi)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.used: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            used = gpu_memory_used_mib()
            if used is None:
                return
            self.used.append(used)


def kill_group(process: subprocess.Popen, summary: dict, timeout: float) -> None:
    """Kill the search and every process under it: its process group, and the local Ray's workers,
    which Ray starts in sessions of their own under the raylet (found before anything is killed)."""
    import psutil

    summary["timed_out"] = timeout
    descendants = []
    with contextlib.suppress(psutil.Error):
        descendants = psutil.Process(process.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()


def run_search(out: Path, trials: int, batches: int, timeout: float, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="gpucheck-runs-"))
    name = "gpucheck"
    command = search_command(storage, name, trials, batches, quick)
    print(f"[search] {' '.join(command)}", flush=True)
    summary: dict = {"command": command}
    lines = []
    started = time.perf_counter()
    with open(out / "search.log", "w") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        watchdog = threading.Timer(timeout, kill_group, (process, summary, timeout))
        watchdog.start()
        memory = MemorySampler()
        memory.start()
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                lines.append(line.rstrip("\n"))
                if "probe trial" in line or "Traceback" in line or "Error" in line:
                    print(f"[search] {line.rstrip()}", flush=True)
            process.wait(timeout=30)
        finally:
            watchdog.cancel()
            memory.done.set()
            if process.poll() is None:
                kill_group(process, summary, timeout)
    summary["exit_code"] = process.returncode
    summary["wall_s"] = time.perf_counter() - started
    summary["nvidia_smi_used_mib_max"] = max(memory.used, default=None)
    probe = next((m for m in map(PROBE.search, lines) if m), None)
    summary["probe_line"] = probe.group(0) if probe else None
    summary["ray_line"] = next((line for line in lines if line.startswith("Ray: ")), None)  # trials at once
    summary["probe_held_gib"] = float(probe.group(1)) if probe else None
    summary["trials_per_gpu"] = int(probe.group(3)) if probe else None
    rows = trial_results(storage / name)
    keys = ("device", "precision", "cuda_visible_devices", "best_val_mse", "epoch", "time_total_s", "node_id")
    summary["trials"] = [{k: r.get(k) for k in keys} for r in rows]
    summary["trials_finished"] = len(rows)
    summary["most_trials_at_once"] = most_at_once(rows)
    summary["devices"] = sorted({str(r.get("device")) for r in rows})
    summary["precisions"] = sorted({str(r.get("precision")) for r in rows})
    summary["last_lines"] = lines[-25:]
    (out / "search_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"\n=== step 4: python -m balm_tune.search, {trials} trials x 2 epochs (the space's ASHA grace period) x "
        f"{batches} batches, --gpus-per-trial auto ===\n"
        f"probe: {summary['probe_line'] or 'NO PROBE LINE (see search.log)'}\n"
        f"{summary['ray_line'] or 'NO Ray: LINE (see search.log)'}\n"
        f"exit code {summary['exit_code']}, wall {summary['wall_s']:.0f} s (Ray start, probe, trials, export); "
        f"{len(rows)} trials reported; at most {summary['most_trials_at_once']} ran at once; "
        f"devices {summary['devices']}; precisions {summary['precisions']}; nvidia-smi memory.used max "
        f"{summary['nvidia_smi_used_mib_max']} MiB (sampled every second)"
    )
    for row in summary["trials"]:
        print(f"  {row}")
    if summary["exit_code"] != 0:
        print("[search] last lines of its output:\n  " + "\n  ".join(summary["last_lines"]))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="trials (default 8)")
    p.add_argument("--batches", type=int, default=12, help="training batches per trial and epoch (default 12)")
    p.add_argument("--timeout", type=float, default=240, help="seconds before the search is killed (default 240)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny-gpt2, T=96, 2 trials x 2 batches")
    p.add_argument("--out", default="gpu_search_check", help="folder for search.log and search_summary.json")
    args = p.parse_args()
    if args.quick:
        args.trials, args.batches = 2, 2
    summary = run_search(Path(args.out), args.trials, args.batches, args.timeout, args.quick)
    sys.exit(0 if summary["exit_code"] == 0 and summary["trials_finished"] == args.trials else 1)


if __name__ == "__main__":
    main()
