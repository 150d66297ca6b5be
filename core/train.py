"""Train and evaluate one BALM config: Adam, an epoch learning-rate schedule, early stopping.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.backbones import Backbone, backbone_shape, load_backbone
from core.config import BalmConfig, ConfigError
from core.data import SPLITS, ForecastData, WindowSet, load_data
from core.model import BalmModel
from core.paths import check_output_folder
from core.prompts import PromptTokens, cached_prompt_tokens


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Metrics:
    mse: float
    mae: float


@dataclass
class EpochReport:
    epoch: int  # 1-based, epochs finished so far
    train_loss: float
    train_mse: float
    train_contrastive: float
    val_mse: float
    val_mae: float
    learning_rate: float
    temperature: float
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


def naive_metrics(windows: WindowSet, index: torch.Tensor) -> Metrics:
    """The repeat-last-value forecast: the baseline any trained model must beat."""
    x, y = windows.inputs(index), windows.targets(index)
    error = (x[:, -1:] - y).double()
    return Metrics(mse=error.square().mean().item(), mae=error.abs().mean().item())


def eval_index(n: int, batch_size: int, max_batches: int | None) -> torch.Tensor:
    """All n windows, or max_batches batches of evenly spaced ones (fixed across epochs and trials)."""
    if max_batches is None or max_batches * batch_size >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, max_batches * batch_size).round().long().unique()


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
        check_output_folder(*output)
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
        backbone = backbone or load_backbone(config.backbone, config.llm_layers, config.attn_implementation)
        backbone.set_attention(config.attn_implementation)
        prompts = prompts or build_prompts(config, self.data, backbone)
        self.windows = {
            name: dataclasses.replace(self.data.split(name), series=self.data.split(name).series.to(self.device))
            for name in SPLITS
        }
        self.prompts = {
            name: PromptTokens(p.ids.to(self.device), p.lengths.to(self.device)) for name, p in prompts.items()
        }
        torch.manual_seed(config.seed)
        self.model = BalmModel(config, backbone).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=self.learning_rate(0))
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.show_progress = show_progress
        self.epoch = 0
        self.history: list[dict] = []
        self.best = {"val_mse": math.inf, "val_mae": math.inf, "epoch": 0, "bad_epochs": 0}
        self.best_weights = self.trainable_state()

    # --- schedule -------------------------------------------------------------
    def learning_rate(self, epoch: int) -> float:
        """Rate of 0-based `epoch`. `reference`: the official script's OneCycleLR start (lr/25), then halving."""
        lr, schedule = self.config.learning_rate, self.config.lr_schedule
        if schedule == "type1":
            return lr * 0.5**epoch
        if schedule == "reference":
            return lr / 25 * 0.5**epoch
        if schedule == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * epoch / self.config.epochs))
        return lr

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

    def train_epoch(self) -> dict[str, float]:
        """One pass over (at most max_train_batches of) the shuffled training windows."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.epoch)
        self.model.train()
        n, size = len(self.windows["train"]), self.config.batch_size
        order = torch.randperm(n, generator=self.shuffle)
        batches = list(order.split(size))
        if len(batches) > 1 and len(batches[-1]) < size:
            batches.pop()  # drop_last, as the reference loader
        batches = batches[: self.config.max_train_batches]
        weight = self.config.contrastive_weight
        totals = torch.zeros(3, device=self.device)
        progress = tqdm(
            batches,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            leave=False,
            disable=not self.show_progress,
            unit="batch",
        )
        for index in progress:
            x, y, ids, lengths = self.batch("train", index)
            with self.autocast():
                out = self.model(x, ids, lengths, contrastive=weight > 0)
            mse = F.mse_loss(out.forecast, y)
            contrastive = out.contrastive if out.contrastive is not None else torch.zeros((), device=self.device)
            loss = mse + weight * contrastive
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"training loss became {loss.item()} at epoch {self.epoch + 1} "
                    f"(learning_rate={self.config.learning_rate:g})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals += torch.stack([loss.detach(), mse.detach(), contrastive.detach()])
            if self.show_progress:
                progress.set_postfix(loss=f"{loss.item():.4f}")
        mean = (totals / max(len(batches), 1)).tolist()
        return {"train_loss": mean[0], "train_mse": mean[1], "train_contrastive": mean[2]}

    @torch.no_grad()
    def evaluate(self, split: str, max_batches: int | None = None) -> Metrics:
        """MSE and MAE over all windows of a split (or an evenly spaced subset of max_batches batches)."""
        self.model.eval()
        index = eval_index(len(self.windows[split]), self.config.batch_size, max_batches)
        squared = absolute = torch.zeros((), dtype=torch.float64, device=self.device)
        for chunk in index.split(self.config.batch_size):
            x, y, ids, lengths = self.batch(split, chunk)
            with self.autocast():
                forecast = self.model(x, ids, lengths).forecast
            error = (forecast.float() - y).double()
            squared = squared + error.square().sum()
            absolute = absolute + error.abs().sum()
        count = len(index) * self.config.pred_len
        return Metrics(mse=squared.item() / count, mae=absolute.item() / count)

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
            train = self.train_epoch()
            val = self.evaluate("val", self.config.max_eval_batches)
            self.epoch += 1
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
                learning_rate=self.optimizer.param_groups[0]["lr"],
                temperature=self.model.temperature.item(),
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
            "scheduler": {"name": self.config.lr_schedule, "next_learning_rate": self.learning_rate(self.epoch)},
            "epoch": self.epoch,
            "best": dict(self.best),
            "history": self.history,
            "config": self.config.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save` (weights_only: no code is unpickled)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
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
    state = torch.load(path, map_location="cpu", weights_only=True)
    return BalmConfig.from_dict(state["config"], source=str(path))
