import pytest
import torch

from core.backbones import NAMED, BackboneError, backbone_shape, backbone_source, load_backbone


@pytest.mark.parametrize(("name", "architecture"), [("tiny-gpt2", "GPT2Model"), ("tiny-bert", "BertModel")])
def test_tiny_backbones_are_real_frozen_models_with_real_tokenizers(name, architecture):
    backbone = load_backbone(name, llm_layers=1)
    assert type(backbone.model).__name__ == architecture
    assert backbone.model.config.num_hidden_layers == 1
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.tokenizer.pad_token_id is not None and backbone.tokenizer.padding_side == "right"
    assert len(backbone.tokenizer("min value -0.12, the trend of input is upward")["input_ids"]) > 5


def test_random_backbones_are_identical_in_every_process():
    a, b = load_backbone("tiny-gpt2", 2), load_backbone("tiny-gpt2", 2)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))


def test_minilm_loads_its_shipped_weights_cut_to_the_requested_layers():
    backbone = load_backbone("minilm-l6", llm_layers=2)
    assert backbone.hidden_size == 384 and len(backbone.model.encoder.layer) == 2


def test_unavailable_backbones_say_how_to_get_them():
    with pytest.raises(BackboneError, match="not in the Hugging Face cache.*hf download no-such-org/no-model"):
        backbone_source("no-such-org/no-model")
    with pytest.raises(BackboneError, match="'llm_layers': got 9, backbone 'tiny-gpt2' has only 4 layers"):
        load_backbone("tiny-gpt2", llm_layers=9)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "minilm-l6"])
def test_cutting_a_loaded_backbone_equals_loading_it_cut(name):
    deep, shallow = load_backbone(name, 3), load_backbone(name, 1)
    cut = deep.cut(1)
    x = torch.randn(2, 5, deep.hidden_size)
    torch.testing.assert_close(
        cut.model(inputs_embeds=x).last_hidden_state,
        shallow.model(inputs_embeds=x).last_hidden_state,
        rtol=1e-5,
        atol=1e-5,
    )
    assert deep.model.config.num_hidden_layers == 3  # the original is untouched
    assert not torch.allclose(
        deep.model(inputs_embeds=x).last_hidden_state, cut.model(inputs_embeds=x).last_hidden_state
    )


def test_switching_attention_reaches_every_block_of_a_cut_backbone():
    backbone = load_backbone("tiny-gpt2", 2)  # built whole (4 blocks), then cut
    for implementation in ("eager", "sdpa"):
        backbone.set_attention(implementation)
        seen = {m.config._attn_implementation for m in backbone.model.modules() if hasattr(m, "config")}
        assert seen == {implementation}


@pytest.mark.parametrize("name", sorted(set(NAMED) - {"gpt2"}))  # gpt2: the HF cache, absent offline
def test_every_named_backbone_has_a_known_architecture_and_its_shape_is_read_without_weights(name):
    width, depth = backbone_shape(name)
    assert width > 0 and depth > 0


def test_an_architecture_without_an_entry_is_a_one_line_error_before_any_weight_is_read(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )  # a model folder holding only its config: nothing else is read before the check
    for load in (backbone_shape, lambda name: load_backbone(name, 1)):
        with pytest.raises(BackboneError) as err:
            load(str(tmp_path))
        message = str(err.value)
        assert "architecture Qwen2Model is not supported" in message and "ARCHITECTURES" in message
        assert "\n" not in message
