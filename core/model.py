"""The BALM-TSF model (arXiv 2509.00622; docs/model.md), one file top to bottom.

Shapes: B rows (one variable of one window each: channel independence), look-back T, horizon H,
patches n = (T - p) // s + 2, learnable prompt length P, LLM width D.

    x [B, T] --RevIN--> x_norm --patches--> Conv1d --> Linear --> P_ts [B, n, D]
    prompt ids [B, L] --embed--> [V; text] --frozen LLM--> last P states E [B, P, D]
    E~ = alpha * E * std(P_ts) / std(E)                       (balanced scaling, per feature)
    [E~[..., :d_ff]; P_ts[..., :d_ff]] --flatten--> Linear --> forecast [B, H] --> de-normalise
    loss = MSE + lambda * InfoNCE(mean_n P_ts, mean_P E~)    (training only)
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Model

from core.backbones import ARCHITECTURES, Backbone
from core.config import BalmConfig
from core.last_block import keep_last_rows
from core.prompts import normalise

STD_EPS = 1e-8
# recent transformers renamed `past_key_values` to `cache` (argument and output)
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


def info_nce(
    query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor, reference: bool = False
) -> torch.Tensor:
    """InfoNCE over the batch: row i's positive is key i, the other rows' keys are its negatives.

    query, key: [B, D], L2-normalised. `reference=True` reproduces the official code, whose
    negatives are all B keys (torch.roll of the keys), so each row's own key is also a negative.
    """
    logits = query @ key.T / temperature  # [B, B]
    if reference:
        positive = (query * key).sum(dim=-1, keepdim=True) / temperature  # [B, 1]
        logits = torch.cat([positive, logits], dim=1)  # [B, 1 + B], the positive in column 0
        labels = torch.zeros(len(query), dtype=torch.long, device=query.device)
    else:
        labels = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits, labels)


def position_std(x: torch.Tensor) -> torch.Tensor:
    """Population std over positions, [B, n, D] -> [B, 1, D], in two passes: the same value as
    `x.std(dim=1, unbiased=False)`, whose CPU kernel is 15-30x slower on these shapes (docs/benchmarks.md)."""
    centred = x - x.mean(dim=1, keepdim=True)
    return centred.square().mean(dim=1, keepdim=True).sqrt()


def balanced_scaling(text: torch.Tensor, ts: torch.Tensor, alpha: float) -> torch.Tensor:
    """E~ = alpha * E * std_ts / std_text; stds per row and feature over positions (population)."""
    return alpha * text * (position_std(ts) + STD_EPS) / (position_std(text) + STD_EPS)


@dataclass
class BalmOutput:
    forecast: torch.Tensor  # [B, H], in the data's (standardised) scale
    contrastive: torch.Tensor | None  # scalar InfoNCE, training only


class BalmModel(nn.Module):
    """BALM-TSF, or one of Tan et al.'s ablations of its LLM (NeurIPS 2024; config key `text_branch`):
    `no_llm` drops the text branch (no prompt, no LLM, no contrastive term: the head reads the patches),
    `llm2attn` replaces the frozen LLM by one trainable multi-head self-attention layer of its width over
    the same (frozen) input embeddings (their layer: residual and LayerNorm after it), `random_llm` keeps
    the LLM's architecture with random frozen weights."""

    def __init__(self, config: BalmConfig, backbone: Backbone):
        super().__init__()
        self.config = config
        branch = config.text_branch
        self.llm = backbone.model  # frozen: requires_grad False on every weight
        if branch == "random_llm":  # same architecture and depth, freshly initialised (torch's RNG), frozen
            self.llm = type(self.llm)(self.llm.config).requires_grad_(False)
        if branch in ("no_llm", "llm2attn"):
            self.llm = None
        elif config.trim_last_block and not config.llm_dropout:  # the same E, fewer rows (core/last_block.py)
            blocks = ARCHITECTURES[type(self.llm).__name__].blocks
            self.llm = keep_last_rows(self.llm, config.resolved_prompt_len, blocks)
        self.pad_id = backbone.tokenizer.pad_token_id
        d_llm, p, n, prompt_len = backbone.hidden_size, config.patch_len, config.n_patches, config.resolved_prompt_len
        if config.d_ff > d_llm:  # the fusion keeps the first d_ff of D features
            raise ValueError(f"config key 'd_ff': got {config.d_ff}, expected <= the LLM width {d_llm}")
        self.prompt_len = 0 if branch == "no_llm" else prompt_len
        if branch == "llm2attn":  # LLM2Attn: the LLM's frozen embedding table, one trainable attention layer
            self.embeddings = backbone.model.get_input_embeddings()
            heads = backbone.model.config.num_attention_heads
            # Tan et al.'s layer: projections without bias, dropout, residual, post-LayerNorm (eps 1e-6)
            self.attention = nn.MultiheadAttention(d_llm, heads, bias=False, batch_first=True)
            self.attention_dropout = nn.Dropout(config.dropout)
            self.attention_norm = nn.LayerNorm(d_llm, eps=1e-6)
        # text branch: the learnable prompt V [P, D]
        if branch != "no_llm":
            self.soft_prompt = nn.Parameter(torch.randn(prompt_len, d_llm))
        # time-series branch
        self.patch_conv = nn.Conv1d(p, config.d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.patch_conv.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.patch_dropout = nn.Dropout(config.dropout)
        self.patch_proj = nn.Linear(config.d_model, d_llm)
        # fusion head
        self.head = nn.Linear(config.d_ff * (self.prompt_len + n), config.pred_len)
        self.head_dropout = nn.Dropout(config.dropout)
        if self.prompt_len:  # InfoNCE's learnable temperature (no text branch: no contrastive term)
            self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature_init)))
        self.train()

    def train(self, mode: bool = True) -> BalmModel:
        """The frozen LLM stays in eval mode (no dropout) unless config.llm_dropout (the reference)."""
        super().train(mode)
        if self.llm is not None:
            self.llm.train(mode and self.config.llm_dropout)
        return self

    @property
    def temperature(self) -> torch.Tensor | None:
        return self.log_temperature.exp() if self.prompt_len else None  # no_llm: no contrastive term

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- branches -----------------------------------------------------------
    def encode_series(self, x_norm: torch.Tensor) -> torch.Tensor:
        """x_norm [B, T] -> P_ts [B, n, D]."""
        s, p = self.config.stride, self.config.patch_len
        padded = torch.cat([x_norm, x_norm[:, -1:].expand(-1, s)], dim=1)  # replication pad: [B, T + s]
        patches = padded.unfold(-1, p, s)  # [B, n, p]
        h = self.patch_conv(patches.transpose(1, 2)).transpose(1, 2)  # [B, n, d_model]
        return self.patch_proj(self.patch_dropout(h))  # [B, n, D]

    def encode_prompt(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded prompt ids [B, L] -> hidden states of the last P positions E [B, P, D].

        padding="left": the sequence is [pad..., V, text] with an attention mask and position ids
        counted from V, so each row computes exactly as if it were alone. padding="right" (the
        reference): [V, text, pad...] with no mask, so the kept positions may be padding.
        """
        batch, width = ids.shape
        shift = width - lengths.to(ids.device).long()  # [B] padding per row
        if self.shares_prefix(lengths):
            return self.encode_prompt_after_shared_prefix(ids, shift)
        embed = self.embeddings if self.llm is None else self.llm.get_input_embeddings()
        text = embed(ids)  # [B, L, D]
        seq = torch.cat([self.soft_prompt.expand(batch, -1, -1).to(text.dtype), text], dim=1)  # [B, P + L, D]
        mask = positions = None
        if self.config.padding == "left" and bool(shift.any()):
            columns = torch.arange(seq.shape[1], device=ids.device)
            source = (columns[None] - shift[:, None]) % seq.shape[1]  # roll each row right by its padding
            seq = seq.gather(1, source[..., None].expand(-1, -1, seq.shape[-1]))
            mask = (columns[None] >= shift[:, None]).long()  # [B, P + L]
            positions = (columns[None] - shift[:, None]).clamp(min=0)
        if self.llm is None:  # llm2attn: bidirectional attention over [pad..., V, text], pads masked
            padding = None if mask is None else mask == 0
            attended, _ = self.attention(seq, seq, seq, key_padding_mask=padding, need_weights=False)
            hidden = self.attention_norm(seq + self.attention_dropout(attended))
        else:
            hidden = self.llm(inputs_embeds=seq, attention_mask=mask, position_ids=positions).last_hidden_state
        return hidden[:, -self.prompt_len :, :]  # [B, P, D]

    def shares_prefix(self, lengths: torch.Tensor) -> bool:
        """share_prefix applies to causal LLMs with left padding, no LLM dropout, and prompts of >= P tokens."""
        c = self.config
        return (
            c.share_prefix
            and self.llm is not None
            and c.padding == "left"
            and not c.llm_dropout
            and ARCHITECTURES[type(self.llm).__name__].causal
            and int(lengths.min()) >= self.prompt_len
        )

    def encode_prompt_after_shared_prefix(self, ids: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The same E, computing V's states once per batch: in a causal LLM they do not depend on the text.

        V runs alone (batch 1) and its key/value cache is repeated over the batch; the text then runs
        as [pad..., text] after it, pads masked, positions continuing from P.
        """
        batch, width = ids.shape
        prefix = self.llm(inputs_embeds=self.soft_prompt[None], use_cache=True)[CACHE_ARGUMENT]
        prefix.batch_repeat_interleave(batch)
        columns = torch.arange(width, device=ids.device)
        source = (columns[None] - shift[:, None]) % width  # roll each row right by its padding
        text = self.llm.get_input_embeddings()(ids.gather(1, source))  # [B, L, D]
        text_mask = (columns[None] >= shift[:, None]).long()
        mask = torch.cat([torch.ones_like(text_mask[:, : self.prompt_len]), text_mask], dim=1)  # [B, P + L]
        positions = self.prompt_len + (columns[None] - shift[:, None]).clamp(min=0)  # [B, L]
        hidden = self.llm(
            inputs_embeds=text, attention_mask=mask, position_ids=positions, **{CACHE_ARGUMENT: prefix}
        ).last_hidden_state
        return hidden[:, -self.prompt_len :, :]  # [B, P, D]

    # --- forward --------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, contrastive: bool = False
    ) -> BalmOutput:
        """x [B, T] look-back windows, ids/lengths their prompts -> forecast [B, H] (+ InfoNCE)."""
        x_norm, mean, std = normalise(x)
        ts = self.encode_series(x_norm)  # [B, n, D]
        d_ff = self.config.d_ff
        if self.prompt_len == 0:  # no_llm: the head reads the patch features alone
            y = self.head_dropout(self.head(ts[..., :d_ff].transpose(1, 2).flatten(1)))  # [B, H]
            return BalmOutput(y.float() * std + mean, None)
        text = balanced_scaling(self.encode_prompt(ids, lengths), ts, self.config.scale_factor)  # [B, P, D]
        fused = torch.cat([text[..., :d_ff], ts[..., :d_ff]], dim=1)  # [B, P + n, d_ff]
        y = self.head_dropout(self.head(fused.transpose(1, 2).flatten(1)))  # [B, H]
        forecast = y.float() * std + mean
        loss = None
        if contrastive:
            query = F.normalize(ts.mean(dim=1).float(), dim=-1)  # [B, D]
            key = F.normalize(text.mean(dim=1).float(), dim=-1)  # [B, D]
            loss = info_nce(query, key, self.temperature, reference=self.config.infonce == "reference")
        return BalmOutput(forecast, loss)
