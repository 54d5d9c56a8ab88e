"""Execution engines of a spiking linear layer, behind one selection function.

Every backend is a module with ``linear(layer, counts [M, in], v_th [M, 1]) -> y [M, out]``
(float32, bias not included); the integer ones also have ``accumulators(layer, counts)`` giving
the exact ``acc [M, G, out]`` that the shared :func:`~spikelm.backends.epilogue.epilogue` turns
into outputs.

========================  =========  =============================================================
name                      devices    what it does (``cpu, cuda``: any device torch runs on)
========================  =========  =============================================================
``reference``             cpu, cuda  naive integer oracle: dense spike train, int64 einsum per step
                                     (computed on the CPU); tests hold every backend to it
``torch``                 cpu, cuda  dense, time collapsed: ``(s_int @ W_hat^T) * V_th`` in float32
                                     (pseudo-spiking; equal to the reference within float rounding)
``torch_events``          cpu, cuda  event-driven: ``index_add_`` of the shifted int8 weight column
                                     of every spike event into exact integer accumulators
``numba``                 cpu        event-driven compiled kernel: adds of int8 weight columns per
                                     event into per-step int16 sums merged by shifts; parallel
                                     over rows x output blocks; cached on disk
``auto``                  cpu, cuda  see :func:`auto_backend_name`
========================  =========  =============================================================

``reference``, ``torch_events`` and ``numba`` give bit-identical accumulators and, on one device,
bit-identical outputs (one epilogue); ``torch`` agrees with them to float32 rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec

import torch

from spikelm.errors import ConfigError

LinearFn = Callable[..., torch.Tensor]

BACKENDS: dict[str, str] = {
    "reference": "spikelm.backends.reference",
    "torch": "spikelm.backends.torch_dense",
    "torch_events": "spikelm.backends.torch_events",
    "numba": "spikelm.backends.numba_events",
}
"""Backend name -> module holding its ``linear`` (imported on first use)."""

INTEGER_BACKENDS = ("reference", "torch_events", "numba")
"""Backends computing exact integer accumulators (``accumulators(layer, counts)``)."""

DEVICES: dict[str, tuple[str, ...] | None] = {
    "reference": None,  # any device torch runs on (cpu, cuda, ...): pure torch
    "torch": None,
    "torch_events": None,
    "numba": ("cpu",),
}
"""Device types a backend runs on (``None``: wherever torch does)."""

AUTO_NUMBA_MAX_ROWS = 4
"""``auto`` on the CPU uses numba for calls of at most this many rows (tokens), dense above.

Measured on a 4096 x 4096 layer, bitwise_bidirectional T=8, ~1 spike per channel, 1 thread:
numba 1.2 ms vs ``F.linear`` 2.8 ms at one row, about even at 4 rows, dense 1.5-3x faster from 8
rows up (a float GEMM reuses each weight across the rows; events re-add columns per row).
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


def auto_backend_name(device: torch.device | str | None = None, rows: int = 1) -> str:
    """The backend ``auto`` runs for a call of ``rows`` rows on ``device``.

    CUDA: ``torch`` (one dense matmul; the event backends gather and scatter per event). CPU:
    ``numba`` (event-driven) when numba is installed and ``rows <= AUTO_NUMBA_MAX_ROWS`` (token
    by token decoding), else ``torch`` (prefill and batches, where a dense float GEMM wins).
    Both agree to float32 rounding, so ``auto`` changes speed, not results beyond that.
    """
    device = resolve_device(device) or torch.device("cpu")
    if device.type == "cpu" and numba_available() and rows <= AUTO_NUMBA_MAX_ROWS:
        return "numba"
    return "torch"


def _module(name: str):
    try:
        return import_module(BACKENDS[name])
    except ImportError as error:
        if name == "numba":
            raise ConfigError(
                f"backend 'numba' needs the numba package ({error}); install numba or use "
                "backend 'torch'"
            ) from None
        raise


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")


def _check_device(name: str, device: torch.device) -> None:
    allowed = DEVICES[name]
    if allowed is not None and device.type not in allowed:
        raise ConfigError(
            f"backend {name!r} runs on {' and '.join(allowed)} only, not on {device}; "
            "use backend 'torch' or 'torch_events' there"
        )


def _auto_linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """``auto``: pick per call from the counts' device and row count (:func:`auto_backend_name`)."""
    name = auto_backend_name(counts.device, counts.shape[0])
    return _module(name).linear(layer, counts, v_th)


@functools.cache
def _device_checked(name: str) -> LinearFn:
    """``name``'s ``linear``, checking at each call that the tensors' device suits it."""
    linear = _module(name).linear
    allowed = DEVICES[name]
    if allowed is None:
        return linear

    @functools.wraps(linear)
    def checked(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
        if counts.device.type not in allowed:
            _check_device(name, counts.device)
        return linear(layer, counts, v_th)

    return checked


def get_backend(name: str, device: torch.device | str | None = None) -> LinearFn:
    """The ``linear(layer, counts, v_th)`` function of backend ``name``.

    ``name`` is one of ``reference``, ``torch``, ``torch_events``, ``numba``, ``auto``. With a
    ``device`` the choice is checked (and ``auto`` resolved) for it: a CUDA device without a GPU,
    or numba on CUDA, raise :class:`~spikelm.errors.ConfigError`. Without one, ``auto`` decides
    per call from the tensors it gets, and other backends refuse a device they cannot run on
    when called.
    """
    _check_name(name)
    device = resolve_device(device)
    if name == "auto":
        if device is None or device.type == "cpu":
            return _auto_linear  # row count decides on the CPU
        name = auto_backend_name(device)
    if device is not None:
        _check_device(name, device)
    return _device_checked(name)


def fused_backend(name: str, x: torch.Tensor) -> Callable[..., torch.Tensor] | None:
    """``spiking_linear(layer, x) -> (y, counts)`` of the backend ``name`` resolves to for ``x``,
    when it has that one-call path (numba on the CPU), else ``None``.

    The one-call path computes the spike counts itself, in the same float32 operations as
    :func:`spikelm.neurons.spike_counts`, so it changes per-call overhead, not the numbers.
    """
    if x.device.type != "cpu" or name not in ("numba", "auto"):
        return None
    if name == "auto" and auto_backend_name(x.device, x.shape[0]) != "numba":
        return None
    return _module("numba").spiking_linear


def accumulator_backend(name: str) -> Callable[..., torch.Tensor]:
    """``accumulators(layer, counts) -> acc [M, G, out]`` of an integer backend."""
    _check_name(name)
    if name not in INTEGER_BACKENDS:
        raise ConfigError(
            f"backend {name!r} has no integer accumulators; integer backends: "
            f"{', '.join(INTEGER_BACKENDS)}"
        )
    return _module(name).accumulators


__all__ = [
    "AUTO_NUMBA_MAX_ROWS",
    "BACKENDS",
    "INTEGER_BACKENDS",
    "NAMES",
    "accumulator_backend",
    "auto_backend_name",
    "fused_backend",
    "get_backend",
    "numba_available",
    "resolve_device",
]
