"""The part every ``transformers`` causal-LM family shares: loading through :mod:`spikelm.hf`,
the saved config, calibration keywords, and stepping with the library's own cache objects.

A step goes the way ``generate`` goes: the cache (rebuilt from the named tensors) is passed under
the keyword transformers lists for caches (``ALL_CACHE_NAMES``: ``cache`` from 5.24, before that
``past_key_values`` / ``cache_params`` / ``state``), the inputs come from the model's own
``prepare_inputs_for_generation``, and the new cache is taken back by its
``_update_model_kwargs_for_generation``. The cache is then read out into named tensors:

    past_key_values.{i}.key / .value              attention layers ([B, heads, seq, head_dim])
    past_key_values.{i}.conv_state                linear-attention / SSM short convolutions
    past_key_values.{i}.recurrent_state           linear-attention / SSM recurrent states
    position                                      tokens consumed (sliding windows need it)
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.adapters.base import Adapter, State
from spikelm.errors import ConfigError, require_extra


class TransformersAdapter(Adapter):
    """A ``transformers`` causal LM whose state is one ``Cache`` object (``DynamicCache``)."""

    checkpoint_source = "transformers"
    steps = True
    streams = True

    def load(self, path: Path) -> tuple[nn.Module, Any]:
        require_extra("hf", "transformers", f"{path}: a {self.name} checkpoint")
        from spikelm.hf import load_causal_lm

        return load_causal_lm(path)

    def skeleton(self, path: Path) -> nn.Module:
        require_extra("hf", "transformers", f"{path}: a {self.name} checkpoint")
        from spikelm.hf import model_from_config

        return model_from_config(path)

    def tokenizer(self, path: Path) -> Any:
        from spikelm.hf import load_tokenizer

        return load_tokenizer(path)

    def save_config(self, model: nn.Module, directory: Path) -> None:
        model.config.save_pretrained(directory)

    def calibration_kwargs(self, model: nn.Module, *, all_logits: bool) -> dict[str, Any]:
        """No cache; only the last position's logits unless all are needed (``[B, L, vocab]``
        float logits are often the largest tensor of a calibration forward)."""
        accepted = inspect.signature(model.forward).parameters
        kwargs: dict[str, Any] = {"use_cache": False}
        if not all_logits and "logits_to_keep" in accepted:
            kwargs["logits_to_keep"] = 1
        return kwargs

    def blocks(self, model: nn.Module) -> nn.ModuleList | None:
        """The base model's ``layers`` (``model.layers``, ``backbone.layers``)."""
        layers = getattr(model.base_model, "layers", None)
        return layers if isinstance(layers, nn.ModuleList) else None

    def compute_buffers(self, model: nn.Module, module: nn.Module) -> None:
        """transformers' own ``_init_weights``, as ``from_pretrained`` runs it on what it built on
        the ``meta`` device (it initialises the module's parameters too: load them after)."""
        with torch.no_grad():
            model._init_weights(module)

    # --- stepping -----------------------------------------------------------------------------

    def init_state(self, model: nn.Module, batch: int = 1) -> State:
        """Only ``position`` (0): the cache's tensors appear with the first token."""
        return {"position": torch.zeros((), dtype=torch.long, device=_device(model))}

    def step(
        self, model: nn.Module, token: torch.Tensor, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, State]:
        position = int(state["position"])
        cache = self.to_cache(model, state, position)
        name = cache_keyword(model)
        kwargs: dict[str, Any] = {name: cache, "use_cache": True}
        inputs = model.prepare_inputs_for_generation(token.view(-1, 1), **kwargs)
        inputs.update(self.step_inputs(model, token, position))
        out = model(**inputs)
        kwargs = model._update_model_kwargs_for_generation(out, kwargs)
        new = self.from_cache(model, kwargs[name], position + 1)
        new["position"] = torch.full_like(state["position"], position + 1)
        return out.logits[:, -1], new

    def step_inputs(self, model: nn.Module, token: torch.Tensor, position: int) -> dict[str, Any]:
        """Inputs a family needs beyond what ``prepare_inputs_for_generation`` gives."""
        return {}

    def new_cache(self, model: nn.Module) -> Any:
        """An empty cache of the kind the family's forward creates."""
        from transformers import DynamicCache

        return DynamicCache(config=model.config)

    def to_cache(self, model: nn.Module, state: Mapping[str, torch.Tensor], position: int) -> Any:
        """A cache holding ``state``'s tensors (recurrent ones copied: the forward updates them
        in place), filled through the cache's own ``update`` methods."""
        cache = self.new_cache(model)
        for i in layer_indices(state):
            prefix = f"past_key_values.{i}."
            key = state.get(prefix + "key")
            if key is not None:
                cache.update(key, state[prefix + "value"], i)
                layer = _layers(cache)[i]
                if hasattr(layer, "cumulative_length"):  # a sliding window holds its last W-1
                    layer.cumulative_length = position
            for kind in ("conv_state", "recurrent_state"):
                for index, tensor in _indexed(state, prefix + kind):
                    update = getattr(cache, f"update_{kind}")
                    extra = {"state_idx": index} if index else {}
                    update(tensor.clone(), i, **extra)
        return cache

    def from_cache(self, model: nn.Module, cache: Any, position: int) -> State:
        """The named tensors of ``cache``."""
        flat: State = {}
        for i, layer in enumerate(_layers(cache)):
            prefix = f"past_key_values.{i}."
            if getattr(layer, "is_initialized", False) and getattr(layer, "keys", None) is not None:
                flat[prefix + "key"], flat[prefix + "value"] = layer.keys, layer.values
            for kind in ("conv_state", "recurrent_state"):
                tensors = getattr(layer, kind + "s", None)
                ready = getattr(layer, f"is_{kind}s_initialized", False)
                if isinstance(tensors, dict):  # several states per layer (transformers >= 5.2x)
                    for index, tensor in tensors.items():
                        if ready[index]:
                            flat[prefix + kind + (f".{index}" if index else "")] = tensor
                elif ready:
                    flat[prefix + kind] = tensors
        return flat


def cache_keyword(model: nn.Module) -> str:
    """The keyword under which ``model.forward`` takes its cache: the first of transformers' own
    ``ALL_CACHE_NAMES`` that the forward declares."""
    from transformers.generation import utils

    declared = inspect.signature(model.forward).parameters
    for name in utils.ALL_CACHE_NAMES:
        if name in declared:
            return name
    raise ConfigError(
        f"{type(model).__name__}.forward takes none of transformers' cache keywords "
        f"({', '.join(utils.ALL_CACHE_NAMES)}); transformers {_version()} is not supported"
    )


def layer_indices(state: Mapping[str, torch.Tensor]) -> list[int]:
    """The layer numbers ``i`` of the ``past_key_values.{i}.*`` names in ``state``, sorted."""
    return sorted(
        {int(name.split(".")[1]) for name in state if name.startswith("past_key_values.")}
    )


def _layers(cache: Any) -> list:
    return list(getattr(cache, "layers", ()))


def _indexed(state: Mapping[str, torch.Tensor], name: str) -> list[tuple[int, torch.Tensor]]:
    found = [(0, state[name])] if name in state else []
    index = 1
    while f"{name}.{index}" in state:
        found.append((index, state[f"{name}.{index}"]))
        index += 1
    return found


def _device(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _version() -> str:
    import transformers

    return transformers.__version__
