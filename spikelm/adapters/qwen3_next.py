"""Qwen3-Next (``qwen3_next``): gated-delta-net linear attention (conv and recurrent
states) + gated full attention (KV cache). Routed MoE experts are fused 3-D parameters, not
``nn.Linear``, and stay dense."""

from spikelm.adapters.transformers import TransformersAdapter


class Qwen3NextAdapter(TransformersAdapter):
    name = "qwen3_next"
    model_types = ("qwen3_next",)
    streams = False  # transformers stacks its experts' stored tensors when it loads
