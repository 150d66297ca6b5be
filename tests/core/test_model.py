import math

import pytest
import torch

from core.backbones import load_backbone
from core.config import BalmConfig
from core.model import BalmModel, balanced_scaling, info_nce


def test_balanced_scaling_with_alpha_1_matches_the_text_std_to_the_ts_std():
    torch.manual_seed(0)
    text, ts = torch.randn(4, 12, 64) * 30, torch.randn(4, 64, 64) * 0.2
    scaled = balanced_scaling(text, ts, alpha=1.0)
    torch.testing.assert_close(scaled.std(dim=1, unbiased=False), ts.std(dim=1, unbiased=False), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(balanced_scaling(text, ts, alpha=2.0), 2 * scaled)


def test_info_nce_equals_a_hand_computation():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    k = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    tau = torch.tensor(0.5)
    sims = [[sum(a * b for a, b in zip(qi, kj, strict=True)) / 0.5 for kj in k.tolist()] for qi in q.tolist()]
    in_batch = sum(-sims[i][i] + math.log(sum(math.exp(s) for s in sims[i])) for i in range(3)) / 3
    assert info_nce(q, k, tau).item() == pytest.approx(in_batch, rel=1e-6)
    # reference: logits [positive, all keys] -> the own key appears twice
    reference = (
        sum(-sims[i][i] + math.log(math.exp(sims[i][i]) + sum(math.exp(s) for s in sims[i])) for i in range(3)) / 3
    )
    assert info_nce(q, k, tau, reference=True).item() == pytest.approx(reference, rel=1e-6)


def test_reference_info_nce_cannot_fall_below_ln2_while_in_batch_can():
    aligned = torch.eye(4)
    assert info_nce(aligned, aligned, torch.tensor(0.01)).item() < 1e-6
    assert info_nce(aligned, aligned, torch.tensor(0.01), reference=True).item() == pytest.approx(math.log(2), rel=1e-4)


def test_paper_table3_shape_has_970081_trainable_of_82882657_parameters():
    # GPT-2 small architecture (random weights, GPT-2's real vocabulary) cut to 6 layers, ETTm1 H=96
    config = BalmConfig(backbone="gpt2-random", llm_layers=6, seq_len=512, pred_len=96, d_model=32, d_ff=128)
    model = BalmModel(config, load_backbone("gpt2-random", 6))
    assert sum(p.numel() for p in model.trainable_parameters()) == 970_081
    assert sum(p.numel() for p in model.parameters()) == 82_882_657


def _model(padding: str) -> BalmModel:
    config = BalmConfig(
        backbone="tiny-gpt2", llm_layers=2, seq_len=96, pred_len=24, d_model=16, d_ff=32, padding=padding, dropout=0.0
    )
    torch.manual_seed(0)
    return BalmModel(config, load_backbone("tiny-gpt2", 2)).eval()


def test_left_padding_with_mask_makes_a_forecast_independent_of_its_batch():
    model = _model("left")
    x, ids = torch.randn(3, 96), torch.randint(0, 50000, (3, 30))
    lengths = torch.tensor([18, 30, 25])
    alone = model(x[:1], ids[:1, :18], lengths[:1]).forecast
    batched = model(x, ids, lengths).forecast[:1]
    torch.testing.assert_close(alone, batched, rtol=1e-4, atol=1e-5)
    right = _model("right")  # the reference: right padding, no mask -> the batch leaks in
    assert not torch.allclose(
        right(x[:1], ids[:1, :18], lengths[:1]).forecast, right(x, ids, lengths).forecast[:1], atol=1e-4
    )


def test_the_frozen_llm_gets_no_gradient_but_the_learnable_prompt_does():
    model = _model("left").train()
    out = model(torch.randn(4, 96), torch.randint(0, 50000, (4, 20)), torch.tensor([20, 20, 15, 12]), contrastive=True)
    (out.forecast.square().mean() + out.contrastive).backward()
    assert model.soft_prompt.grad is not None and model.soft_prompt.grad.abs().sum() > 0
    assert model.log_temperature.grad is not None
    assert all(p.grad is None for p in model.llm.parameters())
    assert not model.llm.training  # frozen LLM: no dropout unless llm_dropout=True


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_sharing_the_prefix_computes_the_same_forecast_and_prompt_gradient(name):
    config = BalmConfig(backbone=name, llm_layers=2, seq_len=96, pred_len=24, d_model=16, d_ff=32, dropout=0.0)
    torch.manual_seed(0)
    model = BalmModel(config, load_backbone(name, 2))
    x, ids, lengths = torch.randn(3, 96), torch.randint(0, 40000, (3, 30)), torch.tensor([18, 30, 25])
    assert model.shares_prefix(lengths)
    results = []
    for share in (True, False):
        model.config = BalmConfig(**{**config.to_dict(), "share_prefix": share})
        model.zero_grad()
        out = model(x, ids, lengths, contrastive=True)
        (out.forecast.square().mean() + out.contrastive).backward()
        results.append((out.forecast.detach(), model.soft_prompt.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_the_prefix_is_not_shared_where_it_would_change_the_result():
    bert = BalmModel(
        BalmConfig(backbone="tiny-bert", llm_layers=2, seq_len=96, pred_len=24, d_ff=32), load_backbone("tiny-bert", 2)
    )
    assert not bert.shares_prefix(torch.tensor([30]))  # bidirectional: V sees the text
    gpt = _model("left")
    assert gpt.prompt_len == 3 and not gpt.shares_prefix(torch.tensor([30, 2]))  # shorter than P: [pad, V, text]
    assert not _model("right").shares_prefix(torch.tensor([30]))  # the reference layout


# --- Tan et al.'s ablations of the LLM (text_branch) -------------------------------------------------------
def _arm(branch: str) -> tuple[BalmModel, BalmConfig]:
    config = BalmConfig(
        backbone="tiny-gpt2", llm_layers=2, seq_len=96, pred_len=24, d_model=16, d_ff=32, dropout=0.0,
        text_branch=branch,
    )  # fmt: skip
    torch.manual_seed(0)
    return BalmModel(config, load_backbone("tiny-gpt2", 2)), config


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def test_no_llm_is_the_patch_branch_and_a_head_over_the_patches_alone():
    model, c = _arm("no_llm")
    d, n, p = model.patch_proj.out_features, c.n_patches, c.patch_len
    patches = p * c.d_model * 3 + c.d_model * d + d  # Conv1d (no bias), Linear to the LLM width
    assert _count(model.trainable_parameters()) == patches + c.d_ff * n * c.pred_len + c.pred_len
    assert _count(model.parameters()) == _count(model.trainable_parameters())  # no LLM, no prompt, no temperature
    out = model(torch.randn(4, 96), torch.randint(0, 50000, (4, 20)), torch.full((4,), 20), contrastive=True)
    assert out.forecast.shape == (4, 24) and out.contrastive is None


def test_llm2attn_replaces_the_llm_by_one_trainable_attention_layer_over_its_frozen_embeddings():
    model, c = _arm("llm2attn")
    full, _ = _arm("llm")
    d, heads = model.patch_proj.out_features, full.llm.config.num_attention_heads
    assert model.llm is None and model.attention.num_heads == heads and model.attention.embed_dim == d
    attention = 3 * d * d + d * d + 2 * d  # q, k, v and output projections (no bias), then a LayerNorm
    assert _count(model.trainable_parameters()) == _count(full.trainable_parameters()) + attention
    assert not model.embeddings.weight.requires_grad  # the LLM's own embedding table, frozen
    assert torch.equal(model.embeddings.weight, full.llm.get_input_embeddings().weight)  # the LLM's table
    x, ids, lengths = torch.randn(3, 96), torch.randint(0, 50000, (3, 30)), torch.tensor([18, 30, 25])
    model.eval()
    alone = model(x[:1], ids[:1, :18], lengths[:1]).forecast
    torch.testing.assert_close(alone, model(x, ids, lengths).forecast[:1], rtol=1e-4, atol=1e-5)  # pads masked
    out = model.train()(x, ids, lengths, contrastive=True)
    (out.forecast.square().mean() + out.contrastive).backward()
    assert model.attention.in_proj_weight.grad is not None and model.soft_prompt.grad is not None


def test_random_llm_keeps_the_architecture_with_fresh_frozen_weights():
    model, _ = _arm("random_llm")
    full, _ = _arm("llm")
    assert type(model.llm) is type(full.llm) and model.llm.config.num_hidden_layers == 2
    assert _count(model.parameters()) == _count(full.parameters())
    assert _count(model.trainable_parameters()) == _count(full.trainable_parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    ours, theirs = model.llm.get_input_embeddings().weight, full.llm.get_input_embeddings().weight
    assert ours.shape == theirs.shape and not torch.equal(ours, theirs)
    out = model(torch.randn(2, 96), torch.randint(0, 50000, (2, 20)), torch.full((2,), 20), contrastive=True)
    assert out.forecast.shape == (2, 24) and torch.isfinite(out.contrastive)
