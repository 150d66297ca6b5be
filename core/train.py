"""Train and evaluate one BALM config: Adam, the official learning-rate schedules, early stopping.

The heavy inputs (data, frozen backbone, prompt token ids) can be passed in so that callers that
train many configs (the search) build them once. `Trainer.fit` calls `on_epoch` after every epoch
with that epoch's metrics; checkpoints hold everything needed to continue bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.atomic import atomic_path
from core.backbones import Backbone, backbone_shape, load_backbone
from core.baselines import ErrorSum, Metrics, eval_index
from core.config import BalmConfig, ConfigError
from core.data import SPLITS, ForecastData, WindowSet, load_data
from core.model import BalmModel
from core.paths import writable_folder
from core.prompts import PromptTokens, cached_prompt_tokens
from core.schedules import Schedule


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint); the message names it."""


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint's state (weights_only: no code is unpickled), or one CheckpointError line."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: not found") from None
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, not torch's: all mean "cannot be read"
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({(str(err).splitlines() or [type(err).__name__])[0][:160]})"
        ) from None
    if not isinstance(state, dict) or not {"model", "best_model", "config"} <= set(state):
        raise CheckpointError(f"checkpoint {path}: not a balm checkpoint (expected model, best_model and config)")
    return state


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochReport:
    epoch: int  # 1-based, epochs finished so far
    train_loss: float
    train_mse: float
    train_contrastive: float
    val_mse: float
    val_mae: float
    learning_rate: float  # the rate of the epoch's first optimizer step
    temperature: float | None  # InfoNCE's; None without a text branch (text_branch no_llm)
    epoch_seconds: float
    best_val_mse: float
    is_best: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FitResult:
    best_val_mse: float
    best_val_mae: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config key 'device': got {name!r} but CUDA is not available here")
    return device


def preflight(
    config: BalmConfig,
    output: tuple[str | Path, str] | None = None,
    variants: Iterable[BalmConfig] = (),
    local: bool = True,
) -> ForecastData:
    """Every check that needs no model, in seconds, creating nothing; raises a core.errors.BalmError.

    Config values, `output` (folder, flag) writable, the data file (finite values, dates), and the
    backbone's width and depth from its config (no weights) against `d_ff` and `llm_layers` of
    `config` and of `variants` (a search's edge configs). `local`: the run uses this machine's
    device and CPUs. Returns the data.
    """
    config.validate()
    if local:
        check_device(config.device)
        check_threads(config.num_threads)
    if output is not None:
        writable_folder(*output)
    data = load_data(config)
    width, depth = backbone_shape(config.backbone)
    for c in (config, *variants):
        if c.d_ff > width:
            raise ConfigError(
                f"config key 'd_ff': got {c.d_ff}, expected <= the width {width} of backbone {c.backbone!r}"
            )
        if c.llm_layers > depth:
            raise ConfigError(
                f"config key 'llm_layers': got {c.llm_layers}, expected <= the {depth} layers "
                f"of backbone {c.backbone!r}"
            )
    return data


def check_device(name: str) -> None:
    """`cuda`/`cuda:N` only where CUDA and that GPU exist (ConfigError)."""
    if not name.startswith("cuda"):
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'device': got {name!r}, expected auto, cpu, cuda or cuda:N") from None
    if not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': got {name!r}, but CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"config key 'device': got {name!r}, but this machine has {torch.cuda.device_count()} GPU(s)")


def check_threads(num_threads: int | None) -> None:
    cpus = os.cpu_count() or 1
    if num_threads is not None and num_threads > cpus:
        raise ConfigError(f"config key 'num_threads': got {num_threads}, expected <= {cpus} (the CPUs of this machine)")


class PromptLengthWarning(UserWarning):
    """P exceeds the shortest prompt: some kept hidden states never see the window's statistics."""


def prompt_length_warning(prompt_len: int, prompts: dict[str, PromptTokens]) -> str | None:
    """One line when P exceeds the shortest prompt of the data (in tokens), else None.

    The model keeps the last P hidden states of [V; prompt]. When P > the prompt's token count,
    the first kept states are the learnable prompt V's own, which in a causal LLM never attend to
    the statistics. A warning, not an error: the paper's default P at long horizons can exceed it.
    """
    shortest = min(int(p.lengths.min()) for p in prompts.values())
    if prompt_len <= shortest:
        return None
    return (
        f"prompt_len P={prompt_len} exceeds the shortest prompt ({shortest} tokens): up to {prompt_len - shortest} "
        f"of the {prompt_len} kept hidden states belong to the learnable prompt alone and, in a causal LLM, "
        f"never see the window's statistics; choose prompt_len <= {shortest} for input-aware text features"
    )


def build_prompts(config: BalmConfig, data: ForecastData, backbone: Backbone) -> dict[str, PromptTokens]:
    """Prompt token ids of every window of every split (disk-cached, see core.prompts)."""
    return {
        name: cached_prompt_tokens(
            data.split(name),
            data.sha256,
            backbone.tokenizer,
            backbone.tokenizer_id,
            config.prompt_decimals,
            config.prompt_style,
        )
        for name in SPLITS
    }


class Trainer:
    """One config, one model. Build once, then `fit()`, `evaluate("test")`, `save()`/`load()`."""

    def __init__(
        self,
        config: BalmConfig,
        data: ForecastData | None = None,
        backbone: Backbone | None = None,
        prompts: dict[str, PromptTokens] | None = None,
        show_progress: bool = True,
    ):
        self.config = config.validate()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        self.data = data or load_data(config)
        # what this trainer built itself, rather than being given (a search's trials: 0 and 0)
        self.built = {"backbone_loads": int(backbone is None), "prompt_builds": 0}
        backbone = backbone or load_backbone(config.backbone, config.llm_layers, config.attn_implementation)
        backbone.set_attention(config.attn_implementation)
        if prompts is None:
            prompts = build_prompts(config, self.data, backbone)
            self.built["prompt_builds"] = sum(p.built for p in prompts.values())
        message = prompt_length_warning(config.resolved_prompt_len, prompts)
        if message:
            warnings.warn(message, PromptLengthWarning, stacklevel=2)
        self.windows = {
            name: dataclasses.replace(self.data.split(name), series=self.data.split(name).series.to(self.device))
            for name in SPLITS
        }
        self.prompts = {
            name: PromptTokens(p.ids.to(self.device), p.lengths.to(self.device)) for name, p in prompts.items()
        }
        torch.manual_seed(config.seed)
        self.model = BalmModel(config, backbone).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=config.learning_rate)
        self.schedule = Schedule(self.optimizer, config, self.batches_per_epoch)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.show_progress = show_progress
        self.epoch = 0
        self.history: list[dict] = []
        self.best = {"val_mse": math.inf, "val_mae": math.inf, "epoch": 0, "bad_epochs": 0}
        self.best_weights = self.trainable_state()

    @property
    def batches_per_epoch(self) -> int:
        """Batches of batch_size trained per epoch (full ones only, at most max_train_batches)."""
        full = len(self.windows["train"]) // self.config.batch_size
        batches = max(full, 1)  # a split smaller than one batch trains on that one short batch
        return min(batches, self.config.max_train_batches or batches)

    @property
    def precision(self) -> str:
        """bf16 (autocast) or fp32: `auto` means bf16 on CUDA, fp32 on CPU."""
        bf16 = self.config.precision == "bf16" or (self.config.precision == "auto" and self.device.type == "cuda")
        return "bf16" if bf16 else "fp32"

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # --- steps ------------------------------------------------------------------
    def batch(self, split: str, index: torch.Tensor):
        windows: WindowSet = self.windows[split]
        index = index.to(self.device)
        ids, lengths = self.prompts[split].batch(index)
        return windows.inputs(index), windows.targets(index), ids, lengths

    def group_losses(self, index: torch.Tensor) -> torch.Tensor:
        """[loss, mse, contrastive] of one group of windows; InfoNCE negatives come from this group only."""
        x, y, ids, lengths = self.batch("train", index)
        weight = self.config.contrastive_weight
        with self.autocast():
            out = self.model(x, ids, lengths, contrastive=weight > 0)
        mse = F.mse_loss(out.forecast, y)
        contrastive = out.contrastive if out.contrastive is not None else torch.zeros((), device=self.device)
        return torch.stack([mse + weight * contrastive, mse, contrastive])

    def accumulate_gradients(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """Gradients of the mean of the groups' losses, as len(groups) data-parallel processes average them.

        Each group runs forward and backward alone (its own InfoNCE negatives, its own padding);
        returns the mean [loss, mse, contrastive] over the groups.
        """
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, device=self.device)
        for index in groups:
            losses = self.group_losses(index)
            if not torch.isfinite(losses[0]):
                raise DivergedError(
                    f"training loss became {losses[0].item()} at epoch {self.epoch + 1} "
                    f"(learning_rate={self.config.learning_rate:g})"
                )
            (losses[0] / len(groups)).backward()
            totals += losses.detach()
        return totals / len(groups)

    def train_epoch(self) -> dict[str, float]:
        """One pass over (batches_per_epoch batches of) the shuffled training windows.

        One optimizer step takes batch_groups batches of batch_size (the last step of an epoch may
        take fewer); the schedule steps where the official code steps it (core/schedules.py).
        """
        self.model.train()
        n, size, k = len(self.windows["train"]), self.config.batch_size, self.config.batch_groups
        order = torch.randperm(n, generator=self.shuffle)
        batches = list(order.split(size))[: self.batches_per_epoch]  # drop_last, as the reference loader
        steps = [batches[i : i + k] for i in range(0, len(batches), k)]
        totals = torch.zeros(3, device=self.device)
        progress = tqdm(
            steps,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            leave=False,
            disable=not self.show_progress,
            unit="step",
        )
        for groups in progress:
            losses = self.accumulate_gradients(groups)
            self.optimizer.step()
            self.schedule.after_step()
            totals += losses
            if self.show_progress:
                progress.set_postfix(loss=f"{losses[0].item():.4f}")
        mean = (totals / max(len(steps), 1)).tolist()
        return {"train_loss": mean[0], "train_mse": mean[1], "train_contrastive": mean[2]}

    @torch.no_grad()
    def evaluate(self, split: str, max_batches: int | None = None) -> Metrics:
        """MSE and MAE over every window of a split (or the evenly spaced subset of max_batches batches)."""
        self.model.eval()
        index = eval_index(len(self.windows[split]), self.config.batch_size, max_batches)  # the subset: batch_size
        errors = ErrorSum()
        for chunk in index.split(self.config.resolved_eval_batch_size):
            x, y, ids, lengths = self.batch(split, chunk)
            with self.autocast():
                forecast = self.model(x, ids, lengths).forecast
            errors.add(forecast.float(), y)
        return errors.metrics(self.windows[split].locate(index)[0])  # with each window start's MSE

    # --- the loop -----------------------------------------------------------------
    def fit(
        self, on_epoch: Callable[[EpochReport], None] | None = None, checkpoint_path: str | Path | None = None
    ) -> FitResult:
        """Train until `epochs` or early stopping; continues from the current epoch after `load()`.

        After each epoch: save the checkpoint (if a path is given), then call `on_epoch`. Ends with
        the best validation weights loaded into the model.
        """
        while self.epoch < self.config.epochs and self.best["bad_epochs"] < self.config.patience:
            started = time.perf_counter()
            learning_rate = self.schedule.learning_rate
            train = self.train_epoch()
            val = self.evaluate("val", self.config.max_eval_batches)
            self.epoch += 1
            self.schedule.after_epoch()
            is_best = val.mse < self.best["val_mse"]
            if is_best:
                self.best = {"val_mse": val.mse, "val_mae": val.mae, "epoch": self.epoch, "bad_epochs": 0}
                self.best_weights = self.trainable_state()
            else:
                self.best["bad_epochs"] += 1
            report = EpochReport(
                epoch=self.epoch,
                **train,
                val_mse=val.mse,
                val_mae=val.mae,
                learning_rate=learning_rate,
                temperature=None if self.model.temperature is None else self.model.temperature.item(),
                epoch_seconds=time.perf_counter() - started,
                best_val_mse=self.best["val_mse"],
                is_best=is_best,
            )
            self.history.append(report.to_dict())
            if checkpoint_path is not None:
                self.save(checkpoint_path)
            if on_epoch is not None:
                on_epoch(report)
        self.use_best_weights()
        return FitResult(
            self.best["val_mse"],
            self.best["val_mae"],
            self.best["epoch"],
            self.epoch,
            stopped_early=self.epoch < self.config.epochs,
            history=list(self.history),
        )

    # --- checkpoints ----------------------------------------------------------------
    def use_best_weights(self) -> None:
        """Load the weights of the best validation epoch so far into the model."""
        missing, unexpected = self.model.load_state_dict(self.best_weights, strict=False)
        assert not unexpected and all(k.startswith("llm.") for k in missing), (missing, unexpected)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The model's own weights (the frozen LLM is not saved: it is rebuilt from its name)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if not k.startswith("llm.")}

    def save(self, path: str | Path) -> None:
        """Atomically write weights, optimizer, schedule position, RNG states, history and config."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.trainable_state(),
            "best_model": self.best_weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "epoch": self.epoch,
            "best": dict(self.best),
            "history": self.history,
            "config": self.config.to_dict(),
            "scaler": self.data.scaler.to_dict(),  # what core.forecast needs to forecast new data in its units
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a full disk: OSError (torch's own: RuntimeError)
            torch.save(state, handle)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save` (weights_only: no code is unpickled)."""
        state = read_checkpoint(path, self.device)
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.best_weights, self.best, self.history = state["best_model"], state["best"], state["history"]
        self.epoch = state["epoch"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.shuffle.set_state(state["rng"]["shuffle"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])


def provenance(trainer: Trainer) -> dict:
    """What a reader needs to reproduce a run: versions, device, precision, seed, data checksum."""
    import platform

    import transformers

    device = trainer.device
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "precision": trainer.precision,
        "seed": trainer.config.seed,
        "data_file": trainer.data.path.name,
        "data_sha256": trainer.data.sha256,
    }


def load_checkpoint_config(path: str | Path) -> BalmConfig:
    """The config stored in a checkpoint."""
    state = read_checkpoint(path)
    return BalmConfig.from_dict(state["config"], source=str(path))
