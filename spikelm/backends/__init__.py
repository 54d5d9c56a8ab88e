"""Execution engines of a spiking linear layer, behind one selection layer.

Every backend is one :class:`~spikelm.backends.base.Backend` object in its own module, declaring
its name, devices, whether it is exact, its ``linear`` and ``accumulators`` functions, an
optional one-call ``forward`` (neuron and matmul together) and its warm-up. This module knows
them only through :data:`BACKENDS` (name -> module) and what they declare:

========================  =========  =============================================================
name                      devices    what it does
========================  =========  =============================================================
``reference``             any        naive integer oracle (int64 einsum per step, on the CPU)
``torch``                 any        dense, time collapsed, float32 (pseudo-spiking)
``torch_events``          any        event-driven ``index_add_`` per event: a CUDA path (on the
                                     CPU an exact cross-check, ~0.1 s per 4096x4096 token)
``numba``                 cpu        compiled; per row the count-domain path ``W_q n`` or the
                                     event-driven path, by measured crossover; one call per layer
``auto``                  any        see :func:`auto_backend_name`
========================  =========  =============================================================

Exact backends (``reference``, ``torch_events``, ``numba``) give bit-identical accumulators and,
through the one epilogue, bit-identical outputs on one device; ``torch`` agrees with them to
float32 rounding. :func:`~spikelm.backends.base.counting_paths` counts which paths ran.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec

import torch

from spikelm.backends.base import Backend, counting_paths
from spikelm.errors import ConfigError

BACKENDS: dict[str, str] = {
    "reference": "spikelm.backends.reference",
    "torch": "spikelm.backends.torch_dense",
    "torch_events": "spikelm.backends.torch_events",
    "numba": "spikelm.backends.numba",
}
"""Backend name -> module holding its ``BACKEND`` object (imported on first use)."""

AUTO_NUMBA_MAX_ROWS = 4
"""``auto`` on the CPU uses numba for calls of at most this many rows (tokens), dense above.

Measured on a 4096 x 4096 layer, bitwise_bidirectional T=8, ~1 spike per channel, 1 thread:
numba faster than ``F.linear`` at one row, about even at 4 rows, dense 1.5-3x faster from 8 rows
up (a float GEMM reuses each weight across the rows; the spiking kernels re-read it per row).
"""

NAMES = (*BACKENDS, "auto")


def resolve_device(device: torch.device | str | None) -> torch.device | None:
    """``device`` as a ``torch.device``, refusing CUDA when this torch has no usable GPU."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"invalid device {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA requested but torch.cuda.is_available() is False")
    return device


@functools.cache
def numba_available() -> bool:
    """Whether numba can be imported (without importing it)."""
    return find_spec("numba") is not None


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")


@functools.cache
def backend(name: str) -> Backend:
    """The :class:`Backend` object registered as ``name`` (not ``auto``)."""
    _check_name(name)
    if name == "auto":
        raise ConfigError("'auto' is a choice among backends: see auto_backend_name()")
    try:
        return import_module(BACKENDS[name]).BACKEND
    except ImportError as error:
        raise ConfigError(
            f"backend {name!r} is not available here ({error}); use backend 'torch'"
        ) from None


def exact_backends() -> tuple[str, ...]:
    """Names of the backends that declare exact integer accumulators (and import here)."""
    names = []
    for name in BACKENDS:
        try:
            if backend(name).exact:
                names.append(name)
        except ConfigError:
            continue
    return tuple(names)


def auto_backend_name(device: torch.device | str | None = None, rows: int = 1) -> str:
    """The backend ``auto`` runs for a call of ``rows`` rows on ``device``.

    CUDA: ``torch`` (one dense matmul; the event backend gathers and scatters per event). CPU:
    ``numba`` when numba is installed and ``rows <= AUTO_NUMBA_MAX_ROWS`` (token by token
    decoding), else ``torch`` (prefill and batches, where a dense float GEMM wins). Both agree to
    float32 rounding, so ``auto`` changes speed, not results beyond that.
    """
    device = resolve_device(device) or torch.device("cpu")
    if device.type == "cpu" and numba_available() and rows <= AUTO_NUMBA_MAX_ROWS:
        return "numba"
    return "torch"


def exact_backend_name(device: torch.device | str | None = None) -> str:
    """The fastest exact backend on ``device``: ``numba`` on the CPU when installed,
    ``torch_events`` elsewhere (on a CPU without numba it is ``reference``)."""
    device = resolve_device(device) or torch.device("cpu")
    if device.type != "cpu":
        return "torch_events"
    return "numba" if numba_available() else "reference"


def _check_device(chosen: Backend, device: torch.device) -> None:
    if not chosen.runs_on(device):
        raise ConfigError(
            f"backend {chosen.name!r} runs on {' and '.join(chosen.devices or ())} only, not on "
            f"{device}; use backend 'torch' or 'torch_events' there"
        )


def select(name: str, x: torch.Tensor) -> Backend:
    """The backend a call of ``name`` runs for the input ``x [..., in]`` (``auto`` resolved by
    device and row count, the rows being all but the last dimension); refuses a backend that
    does not run on ``x``'s device."""
    if name == "auto":
        name = auto_backend_name(x.device, math.prod(x.shape[:-1]))
    chosen = backend(name)
    if chosen.devices is not None and ("cpu" if x.is_cpu else x.device.type) not in chosen.devices:
        _check_device(chosen, x.device)
    return chosen


def get_backend(name: str, device: torch.device | str | None = None) -> Callable[..., torch.Tensor]:
    """The ``linear(layer, counts, v_th)`` function of backend ``name``.

    With a ``device`` the choice is checked (and ``auto`` resolved) for it: a CUDA device without
    a GPU, or numba on CUDA, raise :class:`~spikelm.errors.ConfigError`. Without one, ``auto``
    decides per call from the tensors it gets, and other backends refuse a device they cannot
    run on when called.
    """
    _check_name(name)
    device = resolve_device(device)
    if name == "auto" and (device is None or device.type == "cpu"):
        return _auto_linear  # row count decides on the CPU
    if name == "auto":
        name = auto_backend_name(device)
    chosen = backend(name)
    if device is not None:
        _check_device(chosen, device)
    return functools.partial(_checked_linear, chosen)


def _checked_linear(chosen: Backend, layer, counts: torch.Tensor, v_th: torch.Tensor):
    if chosen.devices is not None and counts.device.type not in chosen.devices:
        _check_device(chosen, counts.device)
    return chosen.linear(layer, counts, v_th)


def _auto_linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """``auto``: pick per call from the counts' device and row count (:func:`auto_backend_name`)."""
    return select("auto", counts).linear(layer, counts, v_th)


def accumulator_backend(name: str) -> Callable[..., torch.Tensor]:
    """``accumulators(layer, counts) -> acc [M, G, out]`` of an exact backend."""
    chosen = backend(name) if name != "auto" else None
    if chosen is None or chosen.accumulators is None:
        raise ConfigError(
            f"backend {name!r} has no integer accumulators; exact backends: "
            f"{', '.join(exact_backends())}"
        )
    return chosen.accumulators


def warmup(name: str, layers, device: torch.device | str = "cpu") -> float:
    """Compile or load what backend ``name`` (``auto`` included) needs for ``layers`` on
    ``device``, before any timing: seconds spent (0 for backends with nothing to prepare)."""
    device = resolve_device(device) or torch.device("cpu")
    names = {auto_backend_name(device, 1)} if name == "auto" else {name}
    seconds = 0.0
    for chosen in (backend(n) for n in names):
        if chosen.warmup is not None and chosen.runs_on(device):
            seconds += chosen.warmup(layers)
    return seconds


__all__ = [
    "AUTO_NUMBA_MAX_ROWS",
    "BACKENDS",
    "NAMES",
    "Backend",
    "accumulator_backend",
    "auto_backend_name",
    "backend",
    "counting_paths",
    "exact_backend_name",
    "exact_backends",
    "get_backend",
    "numba_available",
    "resolve_device",
    "select",
    "warmup",
]
