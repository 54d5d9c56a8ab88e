"""spikelm's own gated-linear-attention + sliding-window hybrid (:class:`~spikelm.models.HybridLM`).

State: ``position``, and per layer ``past_key_values.{i}.recurrent_state`` (GLA's ``S``, [B, H,
dk, dv]) or ``past_key_values.{i}.key`` / ``.value`` (the sliding window's ring buffers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.adapters.base import Adapter, State
from spikelm.errors import CheckpointError


class HybridAdapter(Adapter):
    name = "spikelm_hybrid"
    checkpoint_source = "spikelm_hybrid"
    model_types = ("spikelm_hybrid",)
    steps = True

    def handles(self, model: nn.Module) -> bool:
        from spikelm.models import HybridLM

        return isinstance(model, HybridLM)

    def load(self, path: Path) -> tuple[nn.Module, Any]:
        from spikelm.models import ByteTokenizer, HybridLM

        return HybridLM.from_pretrained(path).eval(), ByteTokenizer()

    def skeleton(self, path: Path) -> nn.Module:
        from spikelm.models import HybridConfig, HybridLM

        config_file = path / "config.json"
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{config_file}: unreadable model config ({error})") from error
        return HybridLM(HybridConfig.from_dict(data)).eval()

    def tokenizer(self, path: Path) -> Any:
        from spikelm.models import ByteTokenizer

        return ByteTokenizer()

    def save_config(self, model: nn.Module, directory: Path) -> None:
        (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))

    def output_head(self, model: nn.Module) -> nn.Module | None:
        return model.lm_head

    def init_state(self, model: nn.Module, batch: int = 1) -> State:
        return self._flatten(model.init_state(batch))

    def step(
        self, model: nn.Module, token: torch.Tensor, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, State]:
        logits, new = model.step(token, self._unflatten(model, state))
        return logits, self._flatten(new)

    @staticmethod
    def _flatten(state: Any) -> State:
        flat = {"position": state.pos}
        for i, layer in enumerate(state.layers):
            for field, tensor in zip(layer._fields, layer, strict=True):
                flat[f"past_key_values.{i}.{_NAMES[field]}"] = tensor
        return flat

    @staticmethod
    def _unflatten(model: nn.Module, flat: Mapping[str, torch.Tensor]) -> Any:
        from spikelm.models.hybrid import HybridState

        template = model.init_state(1)
        layers = tuple(
            type(layer)(*(flat[f"past_key_values.{i}.{_NAMES[f]}"] for f in layer._fields))
            for i, layer in enumerate(template.layers)
        )
        return HybridState(flat["position"], layers)


_NAMES = {"S": "recurrent_state", "k": "key", "v": "value"}
