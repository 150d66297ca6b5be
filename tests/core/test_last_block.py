"""The final LLM block computed for the kept rows only gives today's E, forecast and gradients (DESIGN §6)."""

import pytest
import torch

from core.backbones import load_backbone
from core.config import BalmConfig
from core.last_block import LastRows, _rows_mask
from core.model import BalmModel, position_std


def _pair(name: str, **keys) -> tuple[BalmModel, BalmModel]:
    """The same model (same initial weights) with the final block trimmed and whole."""
    config = dict(backbone=name, llm_layers=2, seq_len=96, pred_len=24, d_model=16, d_ff=32, dropout=0.0, **keys)
    backbone = load_backbone(name, 2)
    models = []
    for trim in (True, False):
        torch.manual_seed(0)
        models.append(BalmModel(BalmConfig(**config, trim_last_block=trim), backbone).train())
    return models[0], models[1]


def _forecast_and_gradients(model: BalmModel, x, ids, lengths) -> list[torch.Tensor]:
    model.zero_grad()
    out = model(x, ids, lengths, contrastive=True)
    (out.forecast.square().mean() + out.contrastive).backward()
    grads = [p.grad.clone() for p in (model.soft_prompt, model.patch_proj.weight, model.head.weight)]
    return [model.encode_prompt(ids, lengths).detach(), out.forecast.detach(), *grads]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize(
    "layout",
    [
        {"share_prefix": True},  # V's cache once per batch, then the padded text
        {"share_prefix": False},  # [pad..., V, text] with a mask
        {"share_prefix": False, "padding": "right"},  # the reference layout: no mask
    ],
)
@pytest.mark.parametrize("lengths", [[18, 30, 25], [30, 30, 30]], ids=["padded", "unpadded"])
def test_a_trimmed_final_block_gives_the_same_prompt_states_forecast_and_gradients(name, layout, lengths):
    trimmed, whole = _pair(name, prompt_len=5, **layout)
    assert isinstance(trimmed.llm.layers[-1] if name == "tiny-llama" else trimmed.llm.h[-1], LastRows)
    torch.manual_seed(1)
    x, ids, lengths = torch.randn(3, 96), torch.randint(0, 40000, (3, 30)), torch.tensor(lengths)
    for got, expected in zip(
        _forecast_and_gradients(trimmed, x, ids, lengths), _forecast_and_gradients(whole, x, ids, lengths), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_trimming_leaves_the_shared_backbone_whole_and_its_other_blocks_shared():
    backbone = load_backbone("tiny-llama", 2)
    model = BalmModel(BalmConfig(backbone="tiny-llama", llm_layers=2, seq_len=96, pred_len=24, d_ff=32), backbone)
    assert not any(isinstance(block, LastRows) for block in backbone.model.layers)  # other trials' models
    assert model.llm.layers[0] is backbone.model.layers[0] and model.llm.layers[1].block is backbone.model.layers[1]
    assert model.llm.embed_tokens is backbone.model.embed_tokens  # no weight is copied


def test_the_final_block_stays_whole_where_trimming_does_not_apply():
    bert = BalmModel(
        BalmConfig(backbone="tiny-bert", llm_layers=2, seq_len=96, pred_len=24, d_ff=32), load_backbone("tiny-bert", 2)
    )
    assert not any(isinstance(m, LastRows) for m in bert.modules())  # no row function for BERT's block
    dropout = BalmModel(
        BalmConfig(backbone="tiny-gpt2", llm_layers=2, seq_len=96, pred_len=24, d_ff=32, llm_dropout=True),
        load_backbone("tiny-gpt2", 2),
    )
    assert not any(isinstance(m, LastRows) for m in dropout.modules())  # the reference's dropout masks every row


def test_without_a_mask_the_kept_rows_see_every_earlier_position_and_none_after():
    query = torch.zeros(1, 1, 2, 4)
    mask = _rows_mask(None, query, keys=5)  # rows at positions 3 and 4 of 5
    assert (mask[0, 0] == 0).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    given = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    assert _rows_mask(given, query, keys=6).shape == (2, 1, 2, 6)  # the model's own mask, last rows


def test_the_two_pass_position_std_equals_torchs_population_std():
    x = torch.randn(8, 12, 64) * 5 + 3
    torch.testing.assert_close(position_std(x), x.std(dim=1, unbiased=False, keepdim=True), rtol=1e-5, atol=1e-6)
