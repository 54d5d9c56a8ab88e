"""Model families: one adapter per family, and the lookup that every other module goes through.

Adding a family is one module here (a subclass of :class:`TransformersAdapter` naming its
``model_type``, plus whatever its cache needs) and one line in :data:`ADAPTERS`; see README.
"""

from __future__ import annotations

from torch import nn

from spikelm.adapters.base import Adapter, State
from spikelm.adapters.hybrid import HybridAdapter
from spikelm.adapters.llama import LlamaAdapter
from spikelm.adapters.mamba2 import Mamba2Adapter
from spikelm.adapters.minimax import MiniMaxAdapter
from spikelm.adapters.qwen2 import Qwen2Adapter
from spikelm.adapters.qwen3_next import Qwen3NextAdapter
from spikelm.adapters.recurrent_gemma import RecurrentGemmaAdapter
from spikelm.adapters.rwkv import RwkvAdapter
from spikelm.adapters.transformers import TransformersAdapter
from spikelm.errors import UnsupportedModelError

ADAPTERS: tuple[Adapter, ...] = (
    HybridAdapter(),
    LlamaAdapter(),
    Qwen2Adapter(),
    Qwen3NextAdapter(),
    MiniMaxAdapter(),
    RwkvAdapter(),
    Mamba2Adapter(),
    RecurrentGemmaAdapter(),
)
"""Every known family; plain modules fall back to :data:`MODULE`."""

MODULE = Adapter()
"""Any other ``nn.Module``: every ``nn.Linear`` converts; no token-by-token stepping."""


def known_families() -> tuple[str, ...]:
    return tuple(adapter.name for adapter in ADAPTERS)


def transformers_model_types() -> tuple[str, ...]:
    """``model_type`` values of the ``transformers`` families spikelm supports."""
    return tuple(t for a in ADAPTERS if isinstance(a, TransformersAdapter) for t in a.model_types)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family, or :data:`MODULE` for any other module."""
    for adapter in ADAPTERS:
        if adapter.handles(model):
            return adapter
    return MODULE


def adapter_for_type(model_type: object, where: str) -> Adapter:
    """The adapter of a ``config.json`` ``model_type``; :class:`UnsupportedModelError` listing
    the known ones otherwise."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(
        f"{where}: model_type {model_type!r} is not supported; "
        f"supported: {', '.join(t for a in ADAPTERS for t in a.model_types)}"
    )


def adapter_for_source(source: object, model_type: object, where: str) -> Adapter:
    """The adapter of a spiking checkpoint from its manifest's ``source`` and ``model_type``."""
    if source == MODULE.checkpoint_source:
        return MODULE
    return adapter_for_type(model_type, where)


__all__ = [
    "ADAPTERS",
    "MODULE",
    "Adapter",
    "State",
    "TransformersAdapter",
    "adapter_for",
    "adapter_for_source",
    "adapter_for_type",
    "known_families",
    "transformers_model_types",
]
