"""Work a spiking model leaves dense, per token, for the energy accounting.

Counted exactly from shapes: every ``nn.Linear`` that stays floating point (the output head,
layers kept dense), ``in * out`` MACs per token. Estimated from the named recurrent state after
each step (``spikelm.adapters``' names), per token:

    past_key_values.{i}.key [B, kv_heads, S, d]   2 * q_heads * S * d   (scores and weighted sum)
    past_key_values.{i}.recurrent_state            2 * numel            (state update and readout)
    any other state tensor (conv states, ...)     numel

with ``q_heads = kv_heads * (config heads / kv_heads)`` for grouped-query attention. Norms,
activations, gating products and the softmax are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def dense_linears(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``name -> (in, out)`` of every ``nn.Linear`` still floating point in ``model``."""
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
    }


def state_macs(state: Mapping[str, torch.Tensor], query_heads: int | None = None) -> int:
    """Estimated MACs of one token's attention scores and recurrences, from the state after it."""
    total = 0
    for name, tensor in state.items():
        if not name.startswith("past_key_values."):
            continue
        if name.endswith(".key") and tensor.dim() == 4:
            _, kv_heads, seq, dim = tensor.shape
            heads = query_heads if query_heads and query_heads % max(kv_heads, 1) == 0 else kv_heads
            total += 2 * heads * seq * dim
        elif name.endswith(".value"):
            continue  # counted with its keys
        elif name.endswith(".recurrent_state"):
            total += 2 * tensor[:1].numel()
        else:
            total += tensor[:1].numel()
    return total


def query_heads(model: nn.Module) -> int | None:
    """The attention heads per layer its config declares, if any."""
    config = getattr(model, "config", None)
    for key in ("num_attention_heads", "n_heads"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
