"""MiniMax (``minimax``): full attention (KV cache) + lightning linear attention, whose
recurrent state lives in ``MiniMaxCache.linear_cache`` (``past_key_values.{i}.recurrent_state``).
Routed MoE experts are fused 3-D parameters, not ``nn.Linear``, and stay dense."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spikelm.adapters.base import State
from spikelm.adapters.transformers import TransformersAdapter

LINEAR = "recurrent_state"


class MiniMaxAdapter(TransformersAdapter):
    name = "minimax"
    model_types = ("minimax",)
    streams = False  # transformers stacks its experts' stored tensors when it loads

    def new_cache(self, model: nn.Module) -> Any:
        from transformers.models.minimax.modeling_minimax import MiniMaxCache

        return MiniMaxCache()

    def to_cache(self, model: nn.Module, state: Mapping[str, torch.Tensor], position: int) -> Any:
        attention = {name: t for name, t in state.items() if not name.endswith(LINEAR)}
        cache = super().to_cache(model, attention, position)
        for name, tensor in state.items():
            if name.endswith(LINEAR):
                cache.set_linear_cache(int(name.split(".")[1]), tensor.clone())
        return cache

    def from_cache(self, model: nn.Module, cache: Any, position: int) -> State:
        flat = super().from_cache(model, cache, position)
        for i, tensor in enumerate(cache.linear_cache):
            if isinstance(tensor, torch.Tensor):
                flat[f"past_key_values.{i}.{LINEAR}"] = tensor
        return flat
