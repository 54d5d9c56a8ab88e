"""Llama (``llama``): attention with a growing KV cache."""

from spikelm.adapters.transformers import TransformersAdapter


class LlamaAdapter(TransformersAdapter):
    name = "llama"
    model_types = ("llama",)
