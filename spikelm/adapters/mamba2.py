"""Mamba2 (``mamba2``): SSM layers, each with a short-convolution state and a recurrent state."""

from spikelm.adapters.transformers import TransformersAdapter


class Mamba2Adapter(TransformersAdapter):
    name = "mamba2"
    model_types = ("mamba2",)
