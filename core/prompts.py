"""The statistics prompt (docs/model.md step 3), computed for every window of a split at once.

Statistics depend only on the input window, never on trainable weights, so they are computed and
tokenised once per (split, tokenizer, number format) and cached on disk: later epochs, trials and
Ray workers load the token ids instead of rebuilding them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.atomic import atomic_path
from core.data import WindowSet

TEMPLATES = {  # prompt_style -> text; the statistics are the same in both
    "reference": "min value {}, max value {}, median value {}, the trend of input is {}, "
    "top 5 lags are : [{}, {}, {}, {}, {}], ",
    "compact": "min {} max {} median {} trend {} lags {} {} {} {} {}",  # half the LLM tokens
}
TOP_K_LAGS = 5
NORM_EPS = 1e-5


def normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RevIN without affine over the last dim: (x - mean) / sqrt(var + 1e-5), population variance."""
    mean = x.mean(dim=-1, keepdim=True)
    std = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + NORM_EPS)
    return (x - mean) / std, mean, std


@dataclass
class WindowStats:
    minimum: torch.Tensor  # [W]
    maximum: torch.Tensor  # [W]
    median: torch.Tensor  # [W] torch's lower median, as the reference
    upward: torch.Tensor  # [W] bool: sum of first differences > 0
    lags: torch.Tensor  # [W, 5] top-5 autocorrelation lags, lag 0 included


def window_statistics(x: torch.Tensor) -> WindowStats:
    """Statistics of normalised windows x [W, T], vectorised."""
    spectrum = torch.fft.rfft(x, dim=-1)
    autocorr = torch.fft.irfft(spectrum * torch.conj(spectrum), dim=-1)  # [W, T]
    return WindowStats(
        minimum=x.min(dim=-1).values,
        maximum=x.max(dim=-1).values,
        median=x.median(dim=-1).values,
        upward=x.diff(dim=-1).sum(dim=-1) > 0,
        lags=torch.topk(autocorr, TOP_K_LAGS, dim=-1).indices,
    )


def format_numbers(values: torch.Tensor, decimals: int | None) -> list[str]:
    """Fixed decimals, or the reference's full Python repr of the float32 value when None."""
    if decimals is None:
        return [str(v) for v in values.tolist()]
    return np.char.mod(f"%.{decimals}f", values.numpy()).tolist()


def prompt_texts(stats: WindowStats, decimals: int | None, style: str = "reference") -> list[str]:
    columns = [
        format_numbers(stats.minimum, decimals),
        format_numbers(stats.maximum, decimals),
        format_numbers(stats.median, decimals),
        np.where(stats.upward.numpy(), "upward", "downward").tolist(),
        *stats.lags.T.tolist(),
    ]
    return [TEMPLATES[style].format(*row) for row in zip(*columns)]


@dataclass
class PromptTokens:
    """Token ids of every window's prompt, right-padded: ids [W, L] int32, lengths [W]. `built`: this call
    tokenised them (False when they came from the disk cache)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    built: bool = False

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, Lb], lengths [B]), cut to the longest prompt in the batch."""
        lengths = self.lengths[index]
        return self.ids[index, : int(lengths.max())].long(), lengths


def build_prompt_tokens(
    windows: WindowSet, tokenizer, decimals: int | None, style: str = "reference", chunk: int = 8192
) -> PromptTokens:
    """Statistics -> text -> token ids for all windows of a split (one tokenizer call per chunk).

    The tokenizer must pad on the right and have a pad token (core.backbones sets both).
    """
    chunks = []
    for begin in range(0, len(windows), chunk):
        x, _, _ = normalise(windows.inputs(torch.arange(begin, min(begin + chunk, len(windows)))))
        chunks.append(tokenize_windows(x, tokenizer, decimals, style))
    width = max(c.ids.shape[1] for c in chunks)
    table = torch.cat([F.pad(c.ids, (0, width - c.ids.shape[1]), value=tokenizer.pad_token_id) for c in chunks])
    return PromptTokens(table, torch.cat([c.lengths for c in chunks]), built=True)


def tokenize_windows(x: torch.Tensor, tokenizer, decimals: int | None, style: str = "reference") -> PromptTokens:
    """Normalised look-backs x [W, T] -> their prompts' token ids (one tokenizer call)."""
    encoded = tokenizer(prompt_texts(window_statistics(x), decimals, style), padding=True, return_tensors="np")
    ids, lengths = encoded["input_ids"].astype(np.int32), encoded["attention_mask"].sum(axis=1).astype(np.int32)
    return PromptTokens(torch.from_numpy(ids), torch.from_numpy(lengths), built=True)


def cache_dir() -> Path:
    return Path(os.environ.get("BALM_TUNE_CACHE", Path.home() / ".cache" / "balm_tune"))


def cached_prompt_tokens(
    windows: WindowSet, data_sha256: str, tokenizer, tokenizer_id: str, decimals: int | None, style: str
) -> PromptTokens:
    """build_prompt_tokens, memoised on disk by everything that defines the windows and the text."""
    key = json.dumps(
        [
            data_sha256,
            windows.name,
            windows.series.shape,
            float(windows.series[0, 0]),
            windows.channels,
            windows.seq_len,
            windows.pred_len,
            tokenizer_id,
            tokenizer.pad_token_id,
            decimals,
            TEMPLATES[style],
        ]
    )
    path = cache_dir() / "prompts" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if path.is_file():
        cached = _read_cache(path, len(windows))
        if cached is not None:
            return cached
    tokens = build_prompt_tokens(windows, tokenizer, decimals, style)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # Ray workers never read half a file
        torch.save({"ids": tokens.ids, "lengths": tokens.lengths}, handle)  # a full disk: OSError
    return tokens


def _read_cache(path: Path, n_windows: int) -> PromptTokens | None:
    """The cached table, or None (reported in one line) when the file is truncated or corrupt: the
    caller rebuilds it and replaces the file, so one bad file never blocks later runs."""
    try:
        saved = torch.load(path, weights_only=True)
        tokens = PromptTokens(saved["ids"], saved["lengths"])
        if tokens.ids.ndim != 2 or len(tokens.ids) != n_windows or tokens.lengths.shape != (n_windows,):
            raise ValueError(f"{tuple(tokens.ids.shape)} ids for {n_windows} windows")
        return tokens
    except Exception as err:  # noqa: BLE001 - any unreadable cache file is rebuilt
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        print(f"prompt cache {path} is unreadable ({reason}); rebuilding it", file=sys.stderr, flush=True)
        return None
