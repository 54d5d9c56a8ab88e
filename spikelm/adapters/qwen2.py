"""Qwen2 (``qwen2``): attention with q/k/v biases and a growing KV cache."""

from spikelm.adapters.transformers import TransformersAdapter


class Qwen2Adapter(TransformersAdapter):
    name = "qwen2"
    model_types = ("qwen2",)
