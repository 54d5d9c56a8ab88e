"""Execution engines of a spiking linear layer, behind one selection function.

Every backend is a module with ``linear(layer, counts [M, in], v_th [M, 1]) -> y [M, out]``;
``reference`` is the naive integer oracle that tests hold the others to.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

import torch

from spikelm.errors import ConfigError

LinearFn = Callable[..., torch.Tensor]

BACKENDS: dict[str, str] = {
    "reference": "spikelm.backends.reference",
    "torch": "spikelm.backends.torch_dense",
}


def get_backend(name: str) -> LinearFn:
    """The ``linear`` function of backend ``name`` (imported on first use)."""
    try:
        module = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None
    return import_module(module).linear


__all__ = ["BACKENDS", "get_backend"]
