"""Training-step and inference time of BALM-TSF: the project's defaults vs a reference-faithful mode.

Run from the repository root (2 CPU cores: about 5 minutes; take the lock so other jobs stay off the CPUs):

    flock /tmp/bench.lock python bench/step_time.py | tee /work/notes/step_time_output.txt
    python bench/step_time.py --fewshot-settings paper quickstart   # + few-shot at the paper shape (+10 min)
    python bench/step_time.py --quick          # smoke run, about a minute
    python bench/step_time.py --steps 30 --no-fewshot --profile

Two settings (docs/model.md):
  paper       ETTh1, T=512, H=96, batch 24, backbone 'gpt2-random' (GPT-2-small shape, random weights,
              GPT-2's real tokenizer) cut to 6 layers, d_model 32, d_ff 128
  quickstart  core.config.quickstart(): SmolLM2-135M cut to 1 layer, T=96, batch 32

Three modes of the same code (docs/reference.md):
  default     the project defaults (compact prompt, 2 decimals, left padding + mask, LLM dropout off, sdpa,
              the learnable prefix computed once per batch)
  reference   the paper's prompt wording with full float repr, padding 'right' (no mask), llm_dropout True,
              eager attention, the prefix computed for every row (as the official code)
  whole       the defaults with the final LLM block computed for every row (trim_last_block false)

For each setting and mode it prints the median training step (forward with the contrastive term, backward,
Adam step, as Trainer.train_epoch) and inference (eval forward under no_grad) over the same random batches,
measured interleaved (default, reference, default, ...) so that machine noise hits every mode; samples/s;
LLM positions per sample (the batch's padded token length + P learnable prompt positions, divided by the
batch size where the prefix is computed once per batch); and the share of
the training step spent outside the frozen LLM's forward and backward. Then a few-shot ETTh1 check
(percent 10) trains every mode from the same seed and prints their validation MSE next to the
repeat-last-value baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones import Backbone, load_backbone
from core.baselines import eval_index, repeat_last, score
from core.config import BalmConfig, quickstart
from core.train import Trainer

MODES = {
    "default": {},  # the project's defaults, whatever core.config says they are
    "reference": {
        "prompt_style": "reference",
        "prompt_decimals": None,
        "padding": "right",
        "llm_dropout": True,
        "attn_implementation": "eager",
        "share_prefix": False,
    },
    "whole": {"trim_last_block": False},  # the defaults with the final block over every row (DESIGN §6)
}
FEWSHOT = {"percent": 10.0, "epochs": 3, "max_train_batches": 30, "max_eval_batches": 16}


def paper_config() -> BalmConfig:
    """The paper's ETTh1 shape with the benchmark backbone gpt2-random (docs/model.md, check figure)."""
    return BalmConfig(
        data_path="embedded:ETTh1",
        seq_len=512,
        pred_len=96,
        batch_size=24,
        backbone="gpt2-random",
        llm_layers=6,
        d_model=32,
        d_ff=128,
    ).validate()


SETTINGS = {"paper": paper_config, "quickstart": quickstart}


# --- timing the frozen LLM inside a training step ------------------------------------------------
class LLMClock:
    """Wall time of the frozen LLM's forward and backward within one training step, from hooks.

    Forward: a pre-hook and a hook on the LLM module. Backward: from the moment the gradient of the LLM's
    output (last_hidden_state) is ready to the moment the gradient of its input (inputs_embeds) is ready,
    via tensor hooks. The time-series branch was built before the LLM ran, so autograd (which runs the
    newest nodes first) does its backward after the LLM's; the interval holds only LLM backward work.
    """

    def __init__(self, llm: nn.Module):
        self.forward_s = self.backward_s = 0.0
        self._started = self._grad_out_at = 0.0
        self._handles = [
            llm.register_forward_pre_hook(self._before, with_kwargs=True),
            llm.register_forward_hook(self._after),
        ]

    def reset(self) -> None:
        self.forward_s = self.backward_s = 0.0

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.requires_grad:
            embeds.register_hook(self._on_grad_in)
        self._started = time.perf_counter()

    def _after(self, module: nn.Module, args: tuple, output) -> None:
        self.forward_s += time.perf_counter() - self._started
        hidden = output.last_hidden_state
        if hidden.requires_grad:
            hidden.register_hook(self._on_grad_out)

    def _on_grad_out(self, grad: torch.Tensor) -> None:
        self._grad_out_at = time.perf_counter()

    def _on_grad_in(self, grad: torch.Tensor) -> None:
        self.backward_s += time.perf_counter() - self._grad_out_at

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# --- one mode of one setting ------------------------------------------------------------------------
@dataclass
class Samples:
    step_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    llm_s: list[float] = field(default_factory=list)  # LLM forward + backward within each step
    positions: list[float] = field(default_factory=list)  # padded token length + P (or P / batch)
    prompt_tokens: list[float] = field(default_factory=list)  # mean unpadded prompt tokens of the batch


def effective_attention(llm: nn.Module) -> str:
    """The attention implementation(s) the LLM's blocks will really use (their own config objects)."""
    found = {m.config._attn_implementation for m in llm.modules() if hasattr(m, "config")}
    return "/".join(sorted(found))


def build_trainer(config: BalmConfig, backbone: Backbone) -> Trainer:
    return Trainer(config, backbone=backbone, show_progress=False)


def train_step(trainer: Trainer, index: torch.Tensor, clock: LLMClock, samples: Samples) -> None:
    """One step as Trainer.train_epoch does it, timed; the model is in training mode."""
    trainer.model.train()
    weight = trainer.config.contrastive_weight
    x, y, ids, lengths = trainer.batch("train", index)
    clock.reset()
    started = time.perf_counter()
    out = trainer.model(x, ids, lengths, contrastive=weight > 0)
    loss = F.mse_loss(out.forecast, y)
    if out.contrastive is not None:
        loss = loss + weight * out.contrastive
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    samples.step_s.append(time.perf_counter() - started)
    samples.llm_s.append(clock.total_s)
    shared = trainer.model.shares_prefix(lengths)  # then V's P positions run once for the whole batch
    samples.positions.append(ids.shape[1] + trainer.model.prompt_len / (len(index) if shared else 1))
    samples.prompt_tokens.append(lengths.float().mean().item())


@torch.no_grad()
def infer_step(trainer: Trainer, index: torch.Tensor, samples: Samples) -> None:
    trainer.model.eval()
    x, _, ids, lengths = trainer.batch("train", index)
    started = time.perf_counter()
    trainer.model(x, ids, lengths)
    samples.infer_s.append(time.perf_counter() - started)


def time_setting(base: BalmConfig, steps: int, warmup: int, seed: int) -> dict[str, tuple[Samples, int, str]]:
    """Interleaved timing of the modes on the same random training batches.

    Each mode gets its own backbone (loaded with its attention implementation) and Trainer (prompts
    differ by prompt_decimals). Returns {mode: (samples, batch size, effective attention)}.
    """
    trainers, clocks = {}, {}
    for mode, overrides in MODES.items():
        config = base.with_overrides(overrides, source=f"mode {mode}")
        backbone = load_backbone(config.backbone, config.llm_layers, config.attn_implementation)
        trainers[mode] = build_trainer(config, backbone)
        clocks[mode] = LLMClock(trainers[mode].model.llm)
    n_train = len(trainers["default"].windows["train"])
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randperm(n_train, generator=generator)[: base.batch_size] for _ in range(warmup + steps)]
    results = {mode: Samples() for mode in MODES}
    for i, index in enumerate(batches):
        for mode, trainer in trainers.items():
            target = results[mode] if i >= warmup else Samples()  # warm-up measurements are dropped
            train_step(trainer, index, clocks[mode], target)
            infer_step(trainer, index, target)
    out = {}
    for mode, trainer in trainers.items():
        clocks[mode].remove()
        out[mode] = (results[mode], base.batch_size, effective_attention(trainer.model.llm))
    return out


def profile_setting(base: BalmConfig, steps: int, seed: int, rows: int) -> None:
    """torch.profiler table of the top operators over a few training steps of each mode."""
    from torch.profiler import ProfilerActivity, profile

    for mode, overrides in MODES.items():
        config = base.with_overrides(overrides, source=f"mode {mode}")
        trainer = build_trainer(config, load_backbone(config.backbone, config.llm_layers, config.attn_implementation))
        clock = LLMClock(trainer.model.llm)
        generator = torch.Generator().manual_seed(seed)
        batches = [
            torch.randperm(len(trainer.windows["train"]), generator=generator)[: base.batch_size]
            for _ in range(steps + 1)
        ]
        train_step(trainer, batches[0], clock, Samples())  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for index in batches[1:]:
                train_step(trainer, index, clock, Samples())
        print(f"\n--- profile: {mode}, {steps} training steps, top {rows} ops by self CPU time ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))
        clock.remove()


# --- few-shot check -------------------------------------------------------------------------------------
def fewshot(base: BalmConfig) -> dict[str, float]:
    """Train every mode from the same seed on few-shot ETTh1; best validation MSE of each, and the naive one."""
    results = {}
    for mode, overrides in MODES.items():
        config = base.with_overrides({**overrides, **FEWSHOT}, source=f"few-shot {mode}")
        trainer = build_trainer(config, load_backbone(config.backbone, config.llm_layers, config.attn_implementation))
        started = time.perf_counter()
        results[mode] = trainer.fit().best_val_mse
        results[f"{mode}_s"] = time.perf_counter() - started
        if "naive" not in results:
            val = trainer.windows["val"]
            index = eval_index(len(val), config.batch_size, config.max_eval_batches)
            results["naive"] = score(partial(repeat_last, pred_len=config.pred_len), val, index).mse
    return results


# --- report ---------------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(timings: dict[str, dict[str, tuple[Samples, int, str]]]) -> None:
    header = (
        f"{'setting':<11} {'mode':<10} {'attention':<9} {'step (s)':>9} {'infer (s)':>9} {'train/s':>8} "
        f"{'infer/s':>8} {'LLM pos':>8} {'prompt tok':>10} {'outside LLM':>11}"
    )
    print(header)
    print("-" * len(header))
    for setting, modes in timings.items():
        for mode, (s, batch, attention) in modes.items():
            step, infer = median(s.step_s), median(s.infer_s)
            outside = median([1 - llm / total for llm, total in zip(s.llm_s, s.step_s, strict=True)])
            print(
                f"{setting:<11} {mode:<10} {attention:<9} {step:>9.3f} {infer:>9.3f} {batch / step:>8.1f} "
                f"{batch / infer:>8.1f} {statistics.mean(s.positions):>8.1f} "
                f"{statistics.mean(s.prompt_tokens):>10.1f} {outside:>10.1%}"
            )
        default = modes["default"][0]
        for mode in ("reference", "whole"):
            other = modes[mode][0]
            step_ratio = median(other.step_s) / median(default.step_s)
            infer_ratio = median(other.infer_s) / median(default.infer_s)
            target = "; target for the training step: >= 2.5x" if mode == "reference" else ""
            print(
                f"{setting:<11} {'ratio':<10} {'':<9} {step_ratio:>8.2f}x {infer_ratio:>8.2f}x   "
                f"({mode} / default{target})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per mode and setting (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first (default 2)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--fewshot-settings",
        nargs="*",
        choices=list(SETTINGS),
        default=["quickstart"],
        help="settings of the few-shot MSE check (default: quickstart; paper adds about 10 minutes)",
    )
    parser.add_argument("--no-fewshot", action="store_true", help="skip the few-shot check")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler top ops per mode")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 steps, 1 warm-up, few-shot with 1 epoch x 3 batches, 2 eval batches",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random timing batches")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
        FEWSHOT.update(epochs=1, max_train_batches=3, max_eval_batches=2)
    fewshot_settings = [] if args.no_fewshot else args.fewshot_settings

    print(
        f"machine: {platform.machine()}, os.cpu_count() = {os.cpu_count()}, torch threads = "
        f"{torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(f"modes: default = project defaults; reference = {MODES['reference']}; whole = {MODES['whole']}")
    print(
        f"timing: median over {args.steps} steps after {args.warmup} warm-up steps per mode, modes interleaved, "
        f"same random training batches for every mode"
    )
    print("share outside LLM: 1 - (frozen LLM forward + backward wall time, from module and tensor hooks) / step time")
    started = time.perf_counter()

    timings = {}
    for setting in args.settings:
        base = SETTINGS[setting]()
        print(
            f"\n[{setting}] T={base.seq_len} H={base.pred_len} batch={base.batch_size} backbone={base.backbone} "
            f"layers={base.llm_layers} d_model={base.d_model} d_ff={base.d_ff} P={base.resolved_prompt_len}",
            flush=True,
        )
        timings[setting] = time_setting(base, args.steps, args.warmup, args.seed)
        print(f"[{setting}] timed in {time.perf_counter() - started:.0f} s", flush=True)
        if args.profile:
            profile_setting(base, steps=3, seed=args.seed, rows=15)

    fewshot_results = {}
    for setting in fewshot_settings:
        print(f"\n[{setting}] few-shot check: {FEWSHOT} ...", flush=True)
        fewshot_results[setting] = fewshot(SETTINGS[setting]())
        print(f"[{setting}] done at {time.perf_counter() - started:.0f} s", flush=True)

    print(
        "\n=== step and inference time (medians; train/s and infer/s are samples per second; LLM pos: positions "
        "per sample = P + padded prompt tokens; prompt tok: mean unpadded prompt tokens) ==="
    )
    print_table(timings)
    if fewshot_results:
        print(
            f"\n=== few-shot ETTh1 check (percent {FEWSHOT['percent']:g}, {FEWSHOT['epochs']} epochs x "
            f"{FEWSHOT['max_train_batches']} batches, validation on {FEWSHOT['max_eval_batches']} evenly spaced "
            f"batches; best validation MSE) ==="
        )
        for setting, r in fewshot_results.items():
            print(
                f"{setting:<11} default {r['default']:.4f} ({r['default_s']:.0f} s)   reference {r['reference']:.4f} "
                f"({r['reference_s']:.0f} s)   repeat-last-value {r['naive']:.4f}"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
