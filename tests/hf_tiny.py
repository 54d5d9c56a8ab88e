"""Tiny random Hugging Face causal LMs, one per supported family, for the ``spikelm.hf`` tests.

Each model has hidden size 32, two layers and a vocabulary of 320 tokens; hybrid families get one
layer of each kind (qwen3_next: gated-delta-net linear attention + full attention; minimax:
full attention + lightning linear attention; recurrent_gemma: RG-LRU recurrent + local attention).
Weights are random (seeded), so the models are only good for plumbing and equivalence tests. A
saved checkpoint (``save_tiny``) is well under 1 MB, with an optional byte-level tokenizer built in
code, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    Mamba2Config,
    MiniMaxConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3NextConfig,
    RecurrentGemmaConfig,
    RwkvConfig,
)

VOCAB_SIZE = 320
HIDDEN = 32
LAYERS = 2
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

_IDS = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


def _llama() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **_IDS,
    )


def _qwen2() -> PretrainedConfig:
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **_IDS,
    )


def _qwen3_next() -> PretrainedConfig:
    return Qwen3NextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        layer_types=["linear_attention", "full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        max_position_embeddings=256,
        **_IDS,
    )


def _minimax() -> PretrainedConfig:
    return MiniMaxConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        layer_types=["full_attention", "linear_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        block_size=16,
        max_position_embeddings=256,
        **_IDS,
    )


def _rwkv() -> PretrainedConfig:
    return RwkvConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        attention_hidden_size=HIDDEN,
        intermediate_size=64,
        context_length=256,
        rescale_every=1,
        **_IDS,
    )


def _mamba2() -> PretrainedConfig:
    return Mamba2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        expand=2,
        num_heads=8,
        head_dim=8,
        n_groups=2,
        state_size=16,
        conv_kernel=4,
        chunk_size=16,
        **_IDS,
    )


def _recurrent_gemma() -> PretrainedConfig:
    return RecurrentGemmaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        block_types=("recurrent", "attention"),
        num_attention_heads=4,
        num_key_value_heads=1,
        lru_width=HIDDEN,
        attention_window_size=16,
        conv1d_width=4,
        **_IDS,
    )


CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3_next": _qwen3_next,
    "minimax": _minimax,
    "rwkv": _rwkv,
    "mamba2": _mamba2,
    "recurrent_gemma": _recurrent_gemma,
}
FAMILIES: tuple[str, ...] = tuple(CONFIGS)


def tiny_config(family: str) -> PretrainedConfig:
    """Return the tiny config of ``family`` (one of :data:`FAMILIES`)."""
    if family not in CONFIGS:
        raise KeyError(f"no tiny config for {family!r}; known: {', '.join(FAMILIES)}")
    return CONFIGS[family]()


def build_tiny(family: str, seed: int = 0) -> tuple[PreTrainedModel, PretrainedConfig]:
    """Build a tiny random causal LM of ``family`` in eval mode, float32, seeded by ``seed``."""
    config = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model, config


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (4 special tokens + 256 byte tokens, no merges) built in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def save_tiny(family: str, directory: str | Path, *, tokenizer: bool = True, seed: int = 0) -> Path:
    """Save a tiny ``family`` model (safetensors) and, if ``tokenizer``, a byte-level tokenizer.

    Returns the checkpoint directory.
    """
    out = Path(directory)
    model, _ = build_tiny(family, seed)
    model.save_pretrained(out)
    if tokenizer:
        build_tokenizer().save_pretrained(out)
    return out
