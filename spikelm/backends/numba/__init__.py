"""The numba backend: exact spiking linear layers on the CPU, compiled, one call per layer.

Two exact paths compute the same integer accumulators (and, through the one epilogue, the same
outputs bit for bit), chosen per row by its measured sparsity (:mod:`.tuning`):

- event-driven (:mod:`.events`): every spike event adds its int8 weight column into an int16
  plane per time step; the planes are merged by shifts. Exact event-by-event execution, what the
  event measurements describe.
- count-domain (:mod:`.counts`): ``W_q n``, each active channel's column multiplied by its count
  once; cheaper whenever a channel fires more than about one spike.

The weights are held in the layout of :mod:`.layout`; :mod:`.driver` runs the neuron, the path
choice and the tasks in one compiled call. numba is imported by this package only; ``import
spikelm`` does not import it.
"""

from __future__ import annotations

import time
from functools import partial
from typing import NamedTuple

import numpy as np
import torch

from spikelm.backends.base import Backend
from spikelm.backends.events import accumulator_dtype
from spikelm.backends.numba import driver
from spikelm.backends.numba.driver import (
    cache_stats,
    compile_seconds,
    parallel_choices,
    path_crossovers,
)
from spikelm.backends.numba.layout import Layout, block_width, event_blocks
from spikelm.backends.numba.layout import layout as _layout
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError, CountRangeError
from spikelm.neurons import check_finite, exact_count_range


def _check_counts(layer, counts: torch.Tensor) -> np.ndarray:
    if counts.device.type != "cpu":
        raise ConfigError(
            f"backend 'numba' runs on the CPU only, but layer {layer.name!r} got tensors on "
            f"{counts.device}; use backend 'torch' or 'torch_events' there, or move the model "
            "to the CPU"
        )
    as_int = counts.detach().to(torch.int64).contiguous()
    if counts.is_floating_point() and not torch.equal(as_int.to(counts.dtype), counts):
        raise CountRangeError(
            f"layer {layer.name!r}: spike counts must be whole numbers (and finite)"
        )
    array = as_int.numpy()
    if array.size:
        lo, hi = layer.count_range
        if int(array.min()) < lo or int(array.max()) > hi:
            raise CountRangeError(
                f"layer {layer.name!r}: {layer.coding} coding with T={layer.steps} holds counts "
                f"in [{lo}, {hi}], got values in [{int(array.min())}, {int(array.max())}]"
            )
    return array


def _thresholds(v_th: torch.Tensor, rows: int) -> np.ndarray:
    v = v_th.detach().reshape(-1).to(torch.float64).contiguous().numpy()
    return v if v.shape[0] == rows else np.ascontiguousarray(np.broadcast_to(v, (rows,)))


def accumulators(layer, counts: torch.Tensor) -> torch.Tensor:
    """The layer's exact accumulators ``[M, G, out]`` (int32 or int64) for counts ``[M, in]``."""
    array = _check_counts(layer, counts)
    v = np.zeros(array.shape[0])
    return torch.from_numpy(
        driver.run(_layout(layer), partial(event_blocks, layer), array, v, accumulators=True)
    )


def linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, out]`` (float32, no bias) for counts ``[M, in]`` and thresholds ``[M, 1]``:
    ``epilogue(accumulators(layer, counts), ...)`` bit for bit (the epilogue runs fused)."""
    array = _check_counts(layer, counts)
    return torch.from_numpy(
        driver.run(
            _layout(layer), partial(event_blocks, layer), array, _thresholds(v_th, array.shape[0])
        )
    )


def _versions(buffers: tuple) -> list | None:
    """The in-place versions of the buffers, or ``None`` when one is an inference tensor (which
    keeps no version counter: the call is then rebuilt every time)."""
    try:
        return [t._version for t in buffers]
    except RuntimeError:
        return None


class _Call(NamedTuple):
    """What a forward needs besides the input, derived once per parameter version."""

    buffers: tuple  # the parameter buffers it was derived from (kept: identity, not address)
    present: tuple  # those that are not None
    versions: list | None  # and their versions then
    k: float
    steps: int
    spike_cost: float
    gain: float
    bound: driver.Bound  # the compiled call, layout, neuron and bias bound
    float32: bool  # the neuron's buffers are float32, as the compiled neuron computes


_PARAMETERS = ("weight_q", "weight_scale", "input_divisor", "threshold", "bias")


def _call(layer) -> _Call:
    """The layer's :class:`_Call`, rebuilt when a parameter buffer is replaced or changed in
    place, or ``k``, ``steps``, ``spike_cost`` or ``gain`` changes."""
    cached = layer.__dict__.get("_numba_call")
    b = layer._buffers
    if cached is not None:
        held = cached.buffers
        if (
            b["weight_q"] is held[0] and b["weight_scale"] is held[1]
            and b["input_divisor"] is held[2] and b["threshold"] is held[3]
            and b["bias"] is held[4] and layer.k == cached.k and layer.steps == cached.steps
            and layer.spike_cost == cached.spike_cost and layer.gain == cached.gain
            and cached.versions is not None and _versions(cached.present) == cached.versions
        ):  # fmt: skip
            return cached
    buffers = tuple(b[name] for name in _PARAMETERS)
    lo, hi = exact_count_range(layer.count_range, torch.float32)
    threshold = 0.0 if layer.threshold is None else float(layer.threshold.to(torch.float32))
    rounding = driver.NEAREST
    if layer.spike_cost:
        low, high = layer.count_range
        unary = get_coder(layer.coding).decoding == "unary"
        rounding = (np.float32(layer.spike_cost), max(high, -low), unary)
    neuron = driver.Neuron(
        layer.input_divisor.detach().to(torch.float32).contiguous().numpy(),
        layer.dynamic, np.float32(layer.k), np.float32(threshold), np.float32(lo), np.float32(hi),
        rounding, np.float32(layer.gain),
    )  # fmt: skip
    bias = driver.EMPTY_F32 if layer.bias is None else layer.bias.detach().contiguous().numpy()
    bound = driver.Bound(_layout(layer), partial(event_blocks, layer), neuron, bias)
    present = tuple(t for t in buffers if t is not None)
    float32 = all(t.dtype == torch.float32 for t in present[2:] if t.is_floating_point())
    call = _Call(
        buffers, present, _versions(present), layer.k, layer.steps, layer.spike_cost, layer.gain,
        bound, float32,
    )  # fmt: skip
    layer.__dict__["_numba_call"] = call
    return call


def forward(
    layer, x: torch.Tensor, *, counts: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(y [..., out], counts [M, in])``: the layer's outputs with bias (float32) straight from
    its inputs ``x [..., in]`` (``M`` rows), and the spike counts it fired (int64; ``None`` with
    ``counts=False``), in one compiled call.

    The counts are those of :meth:`SpikingLinear.spike_counts` bit for bit (the same float32
    operations, :mod:`.neuron`). NaN or inf inputs raise
    :class:`~spikelm.errors.NonFiniteError` with the message ``spike_counts`` gives. Returns
    ``None`` (the layer then runs its torch neuron and :func:`linear`) when the layer's divisor,
    threshold or bias is not float32 (a ``.double()`` model), where the torch neuron computes
    in float64.
    """
    call = _call(layer)
    if not call.float32:
        return None
    if x.requires_grad:
        x = x.detach()
    if x.dtype is not torch.float32 or not x.is_contiguous():
        x = x.to(torch.float32).contiguous()
    bound = call.bound
    rows = x.numpy()
    if rows.ndim != 2:
        rows = rows.reshape(-1, layer.in_features)
    spikes = np.empty(rows.shape, dtype=np.int64) if counts else driver.EMPTY_COUNTS
    y = bound(spikes, x=rows)
    if y is None:
        check_finite(x / layer.input_divisor, f"input of layer {layer.name!r}")
    if x.ndim != 2:
        y = y.reshape(*x.shape[:-1], layer.out_features)
    return torch.from_numpy(y), torch.from_numpy(spikes) if counts else None


def warmup(layers=()) -> float:
    """Compile (or load) the kernels the ``layers`` need (int32 accumulators at least) and
    measure each layer shape's count/event crossover: seconds spent."""
    layers = list(layers)
    start = time.perf_counter()
    driver.warmup(tuple({torch.int32, *(accumulator_dtype(layer) for layer in layers)}))
    for layer in layers:
        if layer.out_features:
            driver.measure_crossover(_layout(layer))
    return time.perf_counter() - start


BACKEND = Backend(
    name="numba",
    devices=("cpu",),
    exact=True,
    linear=linear,
    accumulators=accumulators,
    forward=forward,
    warmup=warmup,
    note="compiled, one call per layer: neuron + per-row choice of the count-domain or the "
    "event-driven path (measured crossover) + fused epilogue; parallel over rows x output blocks",
)

__all__ = [
    "BACKEND",
    "Layout",
    "accumulators",
    "block_width",
    "cache_stats",
    "compile_seconds",
    "forward",
    "linear",
    "parallel_choices",
    "path_crossovers",
    "warmup",
]
