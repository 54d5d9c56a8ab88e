"""What spikelm needs to know about a model family, and the adapter for plain modules.

An adapter is the one place that knows a family: how to load it and rebuild its skeleton, which
``nn.Linear`` layers are candidates for conversion, the keyword arguments of a calibration
forward, what config a checkpoint saves, and how to step one token with explicit state:

    state = adapter.init_state(model, batch)            # flat mapping of named tensors
    logits, state = adapter.step(model, token, state)   # token [B] -> logits [B, V]

State names follow onnxruntime-genai / optimum (``past_key_values.{i}.key``, ``.value``,
``.conv_state``, ``.recurrent_state``, ...) plus ``position``: the tokens consumed so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.errors import ConfigError

State = dict[str, torch.Tensor]


class Adapter:
    """Base adapter: any ``nn.Module``; every ``nn.Linear`` is a candidate; no stepping."""

    name = "module"
    """The family's name, as listed to users."""
    checkpoint_source = "module"
    """The ``source`` a spiking checkpoint's manifest records for this adapter."""
    model_types: tuple[str, ...] = ()
    """``config.json`` ``model_type`` values this adapter handles."""
    steps = False
    """Whether :meth:`step` is implemented (token-by-token simulation)."""
    streams = False
    """Whether its checkpoints convert tensor by tensor (:mod:`spikelm.streaming`): the stored
    tensors are the inference weights under the model's own names (no load-time fix-ups)."""

    def handles(self, model: nn.Module) -> bool:
        """Whether ``model`` is of this family."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model_type in self.model_types

    # --- loading and saving -------------------------------------------------------------------

    def load(self, path: Path) -> tuple[nn.Module, Any]:
        """``(model in eval mode, tokenizer or None)`` from a source checkpoint directory."""
        raise ConfigError(f"{path}: a plain nn.Module cannot be loaded from a directory")

    def skeleton(self, path: Path) -> nn.Module:
        """The model built from ``path/config.json`` (eval mode), weights not loaded."""
        raise ConfigError(
            f"{path}: the checkpoint holds a plain nn.Module; pass the architecture: "
            "load(dir, model=...)"
        )

    def tokenizer(self, path: Path) -> Any:
        """The tokenizer saved in ``path``, or ``None``."""
        return None

    def save_config(self, model: nn.Module, directory: Path) -> None:
        """Write what :meth:`skeleton` needs into ``directory`` (nothing for a plain module)."""

    def loaded(self, model: nn.Module) -> None:
        """Called on a freshly loaded or built (eval-mode) source model: put it in inference form."""

    def converted(self, model: nn.Module) -> None:
        """Called after conversion or loading of a spiking ``model``: family fix-ups."""

    # --- conversion and calibration -----------------------------------------------------------

    def linear_layers(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Every ``nn.Linear`` a converter may spike, by qualified name, in module order.

        The output head (the model's output embeddings) is never a candidate.
        """
        head = self.output_head(model)
        return {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head
        }

    def output_head(self, model: nn.Module) -> nn.Module | None:
        """The layer producing the logits, if the family has one."""
        getter = getattr(model, "get_output_embeddings", None)
        return getter() if callable(getter) else None

    def calibration_kwargs(self, model: nn.Module, *, all_logits: bool) -> dict[str, Any]:
        """Keyword arguments of a calibration forward ``model(ids, **kwargs)``."""
        return {}

    def blocks(self, model: nn.Module) -> nn.ModuleList | None:
        """The model's decoder blocks in forward order, for block-by-block calibration: each is
        called by the model with the hidden states as its first argument and returns the next
        hidden states, and every other argument is computed before the first block runs.
        ``None`` where the family has no such list."""
        return None

    def compute_buffers(self, model: nn.Module, module: nn.Module) -> None:
        """Fill ``module``'s non-persistent buffers (allocated but not written, after building on
        the ``meta`` device) as the model's constructor computes them (rotary frequencies)."""
        raise ConfigError(f"{type(module).__name__}: no known way to compute its buffers")

    def logits(self, model: nn.Module, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The parallel forward's logits ``[B, L, V]`` of token ids ``[B, L]``."""
        out = model(ids, **kwargs)
        return out.logits if hasattr(out, "logits") else out

    # --- one token at a time ------------------------------------------------------------------

    def init_state(self, model: nn.Module, batch: int = 1) -> State:
        """The empty state (no token consumed) for ``batch`` sequences."""
        raise self._no_stepping(model)

    def step(
        self, model: nn.Module, token: torch.Tensor, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, State]:
        """Feed ``token [B]``: ``(next-token logits [B, V], new state)``; ``state`` is not changed."""
        raise self._no_stepping(model)

    def _no_stepping(self, model: nn.Module) -> ConfigError:
        from spikelm.adapters import known_families

        return ConfigError(
            f"cannot step a {type(model).__name__} token by token: no adapter knows its family; "
            f"known families: {', '.join(known_families())}"
        )
