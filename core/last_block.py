"""The final LLM block computed only for the rows that leave the LLM (DESIGN section 6; docs/model.md).

BALM reads the hidden states of the last P positions only. The final block needs keys and values of
every position, but queries, attention output, residual and MLP only for those P rows, so computing
them alone gives the same E and the same gradients and skips (L - P) / L of the block's projections and
MLP. With one block (the embedded default) that is most of the LLM's cost.

`keep_last_rows(model, P, blocks)` returns a shallow copy of a frozen base model (the same weights)
whose final block is a `LastRows`. It returns all L rows so that the model's own reshapes and final
norm work unchanged, but only the last P are the block's output; the others are its input passed
through, and nothing reads them. `ROWS` says how each architecture's block computes its last rows,
taking the arguments its model passes to the block; an architecture without an entry (BERT) keeps its
full block.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from core.backbones import with_blocks


def _rows_mask(mask: torch.Tensor | None, query: torch.Tensor, keys: int) -> torch.Tensor:
    """The model's 4D mask [B, 1, L, K] cut to the kept query rows; causal (bottom-right) where it gave none.

    A cut mask stays boolean or additive as the model built it; a built one is additive (0 or the
    dtype's minimum), which SDPA and eager attention both read.
    """
    keep = query.shape[2]
    if mask is not None:
        return mask[..., -keep:, :]
    rows = torch.arange(keys - keep, keys, device=query.device)[:, None]  # the kept queries' positions
    later = torch.arange(keys, device=query.device)[None] > rows  # [keep, K]
    additive = torch.zeros(later.shape, dtype=query.dtype, device=query.device)
    return additive.masked_fill(later, torch.finfo(query.dtype).min)[None, None]


def _attend(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, dropout: float):
    """Heads [B, h, keep, d] x [B, h_kv, K, d] -> [B, keep, h * d], with the kernel the model would use."""
    eager = sys.modules[type(attn).__module__].eager_attention_forward  # the architecture's own
    kernel = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
    mask = _rows_mask(mask, query, key.shape[2])
    out, _ = kernel(attn, query, key, value, mask, dropout=dropout, scaling=attn.scaling, is_causal=False)
    return out.reshape(*out.shape[:2], -1)  # kernels return [B, keep, h, d]


def llama_rows(
    block: nn.Module,
    keep: int,
    hidden_states: torch.Tensor,
    attention_mask=None,
    cache=None,
    position_embeddings=None,
    **kwargs,
) -> torch.Tensor:
    """LlamaDecoderLayer (called as LlamaModel calls it) for the last `keep` rows: [B, L, D] -> [B, keep, D]."""
    attn, hidden = block.self_attn, hidden_states
    normed = block.input_layernorm(hidden)  # [B, L, D]
    heads = (*hidden.shape[:2], -1, attn.head_dim)
    key = attn.k_proj(normed).view(heads).transpose(1, 2)  # [B, h_kv, L, d]
    value = attn.v_proj(normed).view(heads).transpose(1, 2)
    query = attn.q_proj(normed[:, -keep:]).view(hidden.shape[0], keep, -1, attn.head_dim).transpose(1, 2)
    cos, sin = position_embeddings  # [B or 1, L, d]
    query, _ = apply_rotary_pos_emb(query, query, cos[:, -keep:], sin[:, -keep:])
    key, _ = apply_rotary_pos_emb(key, key, cos, sin)
    if cache is not None:  # a shared prefix's keys and values come first
        key, value = cache.update(key, value, attn.layer_idx)
    dropout = attn.attention_dropout if attn.training else 0.0
    out = hidden[:, -keep:] + attn.o_proj(_attend(attn, query, key, value, attention_mask, dropout))
    return out + block.mlp(block.post_attention_layernorm(out))  # [B, keep, D]


def gpt2_rows(
    block: nn.Module, keep: int, hidden_states: torch.Tensor, cache=None, attention_mask=None, *args, **kwargs
) -> torch.Tensor:
    """GPT2Block (called as GPT2Model calls it) for the last `keep` rows: [B, L, D] -> [B, keep, D]."""
    attn, hidden = block.attn, hidden_states
    width = attn.embed_dim
    normed = block.ln_1(hidden)  # [B, L, D]
    weight, bias = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: x @ weight + bias; weight [D, 3D] = [q | k | v]
    key, value = (normed @ weight[:, width:] + bias[width:]).split(width, dim=2)  # [B, L, D] each
    query = normed[:, -keep:] @ weight[:, :width] + bias[:width]  # [B, keep, D]
    query, key, value = (t.view(*t.shape[:2], -1, attn.head_dim).transpose(1, 2) for t in (query, key, value))
    if cache is not None:
        key, value = cache.update(key, value, attn.layer_idx)
    dropout = attn.attn_dropout.p if attn.training else 0.0
    out = hidden[:, -keep:] + attn.resid_dropout(attn.c_proj(_attend(attn, query, key, value, attention_mask, dropout)))
    return out + block.mlp(block.ln_2(out))  # [B, keep, D]


# transformers base model -> its final block for the last rows (where the blocks live: core.backbones)
ROWS: dict[str, Callable[..., torch.Tensor]] = {"LlamaModel": llama_rows, "GPT2Model": gpt2_rows}


class LastRows(nn.Module):
    """A final block that computes only its last `keep` rows; the rows before them pass through."""

    def __init__(self, block: nn.Module, keep: int, rows: Callable[..., torch.Tensor]):
        super().__init__()
        self.block, self.keep, self.rows = block, keep, rows

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        keep = min(self.keep, hidden_states.shape[1])
        kept = self.rows(self.block, keep, hidden_states, *args, **kwargs)  # [B, keep, D]
        return torch.cat([hidden_states[:, : hidden_states.shape[1] - keep], kept], dim=1)  # [B, L, D]


def keep_last_rows(model: nn.Module, keep: int, blocks: str) -> nn.Module:
    """`model` (not copied) if its architecture has no `ROWS` entry, else a copy whose final block is a
    LastRows of `keep` rows; `blocks` is the attribute path of the model's block list."""
    rows = ROWS.get(type(model).__name__)
    if rows is None:
        return model
    return with_blocks(model, blocks, lambda body: [*body[:-1], LastRows(body[-1], keep, rows)])
