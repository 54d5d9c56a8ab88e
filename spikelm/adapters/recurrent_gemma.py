"""RecurrentGemma (``recurrent_gemma``): RG-LRU recurrent blocks + local (sliding-window)
attention. transformers keeps the recurrent blocks' states inside the modules
(``temporal_block.conv1d_state``, ``temporal_block.rg_lru.recurrent_states``) and the
attention's keys and values in a ``DynamicCache`` that the forward does not return; a step sets
the module states from the named tensors, passes the cache and explicit positions, and reads
both back:

    past_key_values.{i}.conv_state / .recurrent_state   recurrent blocks
    past_key_values.{i}.key / .value                    attention blocks (last window - 1 tokens)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spikelm.adapters.base import State
from spikelm.adapters.transformers import TransformersAdapter, _device


class RecurrentGemmaAdapter(TransformersAdapter):
    name = "recurrent_gemma"
    model_types = ("recurrent_gemma",)

    def init_state(self, model: nn.Module, batch: int = 1) -> State:
        device = _device(model)
        dtype = model.model.embed_tokens.weight.dtype
        model._setup_cache(model.config, batch, device, dtype)  # zero states in the blocks
        flat = super().init_state(model, batch)
        flat.update(_module_states(model))
        return flat

    def step_inputs(self, model: nn.Module, token: torch.Tensor, position: int) -> dict[str, Any]:
        # the blocks tell decoding from prefill by the positions' length: pass them explicitly
        return {"position_ids": torch.full((token.numel(), 1), position, device=token.device)}

    def to_cache(self, model: nn.Module, state: Mapping[str, torch.Tensor], position: int) -> Any:
        for i, block in _recurrent_blocks(model):
            block.conv1d_state = state[f"past_key_values.{i}.conv_state"]
            block.rg_lru.recurrent_states = state[f"past_key_values.{i}.recurrent_state"]
        attention = {name: t for name, t in state.items() if name.endswith((".key", ".value"))}
        attention["position"] = state["position"]
        return super().to_cache(model, attention, position)

    def from_cache(self, model: nn.Module, cache: Any, position: int) -> State:
        flat = super().from_cache(model, cache, position)
        flat.update(_module_states(model))
        return flat


def _recurrent_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    return [
        (i, layer.temporal_block)
        for i, layer in enumerate(model.model.layers)
        if hasattr(layer.temporal_block, "rg_lru")
    ]


def _module_states(model: nn.Module) -> State:
    flat: State = {}
    for i, block in _recurrent_blocks(model):
        flat[f"past_key_values.{i}.conv_state"] = block.conv1d_state
        flat[f"past_key_values.{i}.recurrent_state"] = block.rg_lru.recurrent_states
    return flat
