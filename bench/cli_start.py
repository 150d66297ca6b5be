"""How long each CLI takes to answer `--help`: the arguments are parsed before torch, Ray and
transformers are imported (issue 19's target: under 2 s on 2 cores).

    python bench/cli_start.py             # about 10 s; --runs N for more runs per command

Each command runs as a whole process, `--runs` times, one after another; it prints the median, minimum
and maximum wall time, and beside them the time of `python -c "import balm_tune.api"` (what `--help`
cost before) as the ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "search --help": [sys.executable, "-m", "balm_tune.search", "--help"],
    "train --help": [sys.executable, "-m", "balm_tune.train", "--help"],
    "report --help": [sys.executable, "-m", "balm_tune.report", "--help"],
    "import balm_tune.api": [sys.executable, "-c", "import balm_tune.api"],
}


def wall_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    times = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved: a noisy moment hits every command alike
        for name, command in COMMANDS.items():
            times[name].append(wall_seconds(command))
    heavy = statistics.median(times["import balm_tune.api"])
    print(f"{'command':<22} {'median s':>9} {'min':>6} {'max':>6}  vs import balm_tune.api ({args.runs} runs each)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<22} {median:9.2f} {min(values):6.2f} {max(values):6.2f}  {median / heavy:.2f}x")


if __name__ == "__main__":
    main()
