"""The Ray Tune trainable: one trial = core's Trainer on the trial's config, reporting every epoch.

The heavy inputs (data windows, the frozen backbone, every window's prompt token ids) are built
once in the driver (`build_shared`) and reach each trial through Ray's object store
(`tune.with_parameters`), so no trial loads a backbone or tokenises a prompt.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from balm_tune.outcome import DIVERGED_FACTOR
from balm_tune.space import SearchSpace
from core.backbones import Backbone, load_backbone
from core.baselines import Metrics
from core.data import ForecastData
from core.prompts import PromptTokens
from core.train import DivergedError, EpochReport, Trainer, build_prompts

CHECKPOINT_FILE = "trainer.pt"
LINEAGE_FILE = "lineage.json"  # the params that wrote a checkpoint and how often PBT replaced them before


@dataclass
class SharedInputs:
    """Built once per search in the driver; every trial reads it from the object store."""

    space: SearchSpace
    data: ForecastData
    backbone: Backbone  # loaded with the most llm_layers any trial can ask for
    prompts: dict[str, PromptTokens]
    evaluate_test: bool = False  # final-seed retraining only; the search itself never sees test data
    diverged_above: float = math.inf  # best val MSE that labels a trial diverged (balm_tune.outcome.trial_status)

    @property
    def built(self) -> dict[str, int]:
        """What the driver built for every trial: one backbone, and the prompt tables not read from the cache."""
        return {"backbone_loads": 1, "prompt_builds": sum(p.built for p in self.prompts.values())}

    @property
    def num_threads(self) -> int:
        return max(1, round(self.space.cpus_per_trial))

    def trial_config(self, params: dict):
        return self.space.trial_config({**params, "num_threads": self.num_threads})

    def trainer(self, params: dict) -> Trainer:
        config = self.trial_config(params)
        return Trainer(
            config,
            data=self.data,
            backbone=self.backbone.cut(config.llm_layers),
            prompts=self.prompts,
            show_progress=False,
        )


def build_shared(space: SearchSpace, data: ForecastData) -> SharedInputs:
    """Load the backbone (deepest llm_layers of the space) and build every split's prompt token ids."""
    layers = space.search.get("llm_layers")
    deepest = max(int(v) for v in layers.extremes()) if layers else space.base.llm_layers
    backbone = load_backbone(space.base.backbone, deepest, space.base.attn_implementation)
    prompts = build_prompts(space.base, data, backbone)
    return SharedInputs(space, data, backbone, prompts)


def trial_trainable(shared: SharedInputs):
    """`train_balm` with the shared inputs bound (object store) and the space's per-trial resources."""
    resources = {"cpu": shared.space.cpus_per_trial, "gpu": shared.space.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_balm, shared=shared), resources)


def train_balm(params: dict, shared: SharedInputs) -> None:
    """Train one trial; resumes from Tune's checkpoint after a crash; reports after every epoch."""
    trainer = shared.trainer(params)
    checkpoint, perturbations = tune.get_checkpoint(), 0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
            perturbations = perturbations_of(Path(folder), params)
    context = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": str(trainer.device),
        "precision": trainer.precision,
        **trainer.built,  # backbone loads and prompt builds of this trial: 0 and 0 with the shared inputs
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }

    def report(epoch: EpochReport) -> None:
        metrics = {
            **epoch.to_dict(),
            # the scheduled rate as `lr`: `learning_rate` is a searched key (config/learning_rate in Tune's table)
            "lr": epoch.learning_rate,
            "diverged": _diverged(trainer.best["val_mse"], shared.diverged_above),
            "best_val_mae": trainer.best["val_mae"],
            "bad_epochs": trainer.best["bad_epochs"],
            "perturbations": perturbations,
            **context,
        }
        del metrics["learning_rate"]
        with tempfile.TemporaryDirectory() as folder:
            trainer.save(Path(folder) / CHECKPOINT_FILE)
            (Path(folder) / LINEAGE_FILE).write_text(
                json.dumps({"params": params, "perturbations": perturbations}, default=_item)
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        trainer.fit(on_epoch=report)
    except DivergedError as err:  # a finished trial, recorded as failed with its reason; no retry
        failed = {"failed": str(err), "diverged": str(err)}
        tune.report({"val_mse": math.inf, "best_val_mse": math.inf, **failed, "epoch": trainer.epoch, **context})
        return
    if shared.evaluate_test:  # a retraining (final seeds, ablations): the figures the summary compares
        test = trainer.evaluate("test")  # every test window, as the paper scores
        epoch_seconds = [h["epoch_seconds"] for h in trainer.history]
        tune.report(
            {
                "best_val_mse": trainer.best["val_mse"],
                "best_val_mae": trainer.best["val_mae"],
                "test_mse": test.mse,
                "test_mae": test.mae,
                "test_windows": test.windows,
                "test_window_mse": test.window_mse.tolist(),  # for the Diebold-Mariano test against the winner
                "parameters": sum(p.numel() for p in trainer.model.trainable_parameters()),
                "step_seconds": sum(epoch_seconds) / max(len(epoch_seconds) * trainer.batches_per_epoch, 1),
                "epoch": trainer.epoch,
                **context,
            }
        )


def _diverged(best_val_mse: float, above: float) -> str:
    """Why a trial counts as diverged ('' when it does not)."""
    if best_val_mse <= above:
        return ""
    baseline = above / DIVERGED_FACTOR
    return f"best val mse {best_val_mse:.4g} > {DIVERGED_FACTOR:g} x the repeat-last baseline's {baseline:.4g}"


def perturbations_of(folder: Path, params: dict) -> int:
    """How often the trial's config was replaced (PBT): the checkpoint's count, plus one if the params
    that wrote it differ from this trial's (a crash restart resumes its own checkpoint: no change)."""
    lineage = folder / LINEAGE_FILE
    if not lineage.is_file():
        return 0
    written = json.loads(lineage.read_text())
    return written["perturbations"] + (written["params"] != json.loads(json.dumps(params, default=_item)))


def _item(value):
    """numpy scalars (Tune's samplers) -> Python numbers for JSON."""
    return value.item()


def evaluate_checkpoint(shared: SharedInputs, params: dict, checkpoint: tune.Checkpoint, threads: int = 0) -> Metrics:
    """Test Metrics (with each window's MSE) of a trial's best weights over every test window: in the
    driver, or as a Ray task on any node (the checkpoint is read from the experiment's storage, local or
    remote); `threads`: torch's CPU threads (the trials have ended, so it may use a whole node's CPUs;
    0: the trial's own). The calling process's torch threads and RNG state are left as they were."""
    import torch

    saved_threads, saved_rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        trainer = shared.trainer(params)
        if threads:
            torch.set_num_threads(threads)
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
        trainer.use_best_weights()
        test = trainer.evaluate("test")
    finally:
        torch.set_num_threads(saved_threads)
        torch.set_rng_state(saved_rng)
    return test


def probe_gpu_memory(shared: SharedInputs) -> tuple[int, int]:
    """(bytes a trial holds on its GPU, GPU bytes) after one epoch of 3 training batches and one scoring
    batch (eval_batch_size windows) at the space's largest settings (a Ray task holding a whole GPU, alone
    on it); `--gpus-per-trial auto` packs trials by it. What the process holds (its CUDA context and the
    allocator's cache included, read from the driver's free-memory figure) is counted, not only the
    peak of live tensors, since packed trials are separate processes that each hold all of it."""
    import torch

    params = {k: max(d.extremes()) if d.kind != "choice" else d.values[0] for k, d in shared.space.search.items()}
    for key in ("batch_size", "d_model", "d_ff", "llm_layers", "prompt_len"):
        if key in shared.space.search and shared.space.search[key].kind == "choice":
            params[key] = max(shared.space.search[key].values)
    trainer = shared.trainer({**params, "max_train_batches": 3, "max_eval_batches": 1})
    torch.cuda.reset_peak_memory_stats()
    trainer.train_epoch()
    config = trainer.config  # one whole scoring pass: as many windows as one eval batch holds
    trainer.evaluate("val", max_batches=-(-config.resolved_eval_batch_size // config.batch_size))
    free, total = torch.cuda.mem_get_info()
    return max(total - free, torch.cuda.max_memory_reserved()), total
