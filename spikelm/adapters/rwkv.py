"""RWKV (``rwkv``, v4): time-mixing and channel-mixing blocks; the state is five tensors
``[B, hidden, layers]`` that transformers passes as ``state``. Named per layer ``i``:

    past_key_values.{i}.ffn_shift        channel mixing's previous token
    past_key_values.{i}.attention_shift  time mixing's previous token
    past_key_values.{i}.wkv_numerator / .wkv_denominator / .wkv_max   the WKV recurrence

RWKV divides some output weights by ``2 ** (i // rescale_every)`` on its first eval forward;
that is done at load, so the converter quantizes the weights the forward uses. Undoing it
(training mode) would need float weights, so a converted RWKV refuses training mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spikelm.adapters.base import State
from spikelm.adapters.transformers import TransformersAdapter, _device
from spikelm.errors import ConfigError

STATE_NAMES = ("ffn_shift", "attention_shift", "wkv_numerator", "wkv_denominator", "wkv_max")


class RwkvAdapter(TransformersAdapter):
    name = "rwkv"
    model_types = ("rwkv",)
    streams = False  # its blocks' weights are rescaled when it loads (see loaded)

    def output_head(self, model: nn.Module) -> nn.Module | None:
        return model.head

    def loaded(self, model: nn.Module) -> None:
        model.rwkv._rescale_layers()  # in eval mode: rescale now, not on the first forward

    def converted(self, model: nn.Module) -> None:
        base = model.rwkv
        rescale = base._rescale_layers

        def refuse_training() -> None:
            if base.training:
                raise ConfigError(
                    "a converted RWKV runs in eval mode only: its int8 weights hold RWKV's "
                    "inference-time rescaling, which training mode would undo; call model.eval()"
                )
            rescale()

        base._rescale_layers = refuse_training

    def init_state(self, model: nn.Module, batch: int = 1) -> State:
        config, device = model.config, _device(model)
        dtype = model.rwkv.embeddings.weight.dtype
        flat: State = {"position": torch.zeros((), dtype=torch.long, device=device)}
        for i in range(config.num_hidden_layers):
            for k, name in enumerate(STATE_NAMES):
                kind = dtype if k <= 1 else torch.float32
                fill = -1e30 if name == "wkv_max" else 0.0
                flat[f"past_key_values.{i}.{name}"] = torch.full(
                    (batch, config.hidden_size), fill, dtype=kind, device=device
                )
        return flat

    def to_cache(self, model: nn.Module, state: Mapping[str, torch.Tensor], position: int) -> Any:
        layers = range(model.config.num_hidden_layers)
        return [
            torch.stack([state[f"past_key_values.{i}.{name}"] for i in layers], dim=-1)
            for name in STATE_NAMES
        ]

    def from_cache(self, model: nn.Module, cache: Any, position: int) -> State:
        return {
            f"past_key_values.{i}.{name}": tensor[:, :, i]
            for name, tensor in zip(STATE_NAMES, cache, strict=True)
            for i in range(model.config.num_hidden_layers)
        }
