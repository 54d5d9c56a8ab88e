"""The adaptive-threshold neuron of :func:`spikelm.neurons.adaptive_threshold_spikes`, compiled.

Per row, in the float32 operations of the torch code (the same spikes, bit for bit):

    u     = x / d
    V_th  = fixed_order_sum(|u|) / n / k       (dynamic; halves added elementwise, odd widths
                                                padded with one zero: :func:`fixed_order_sum`)
            or the calibrated constant          (static)
    s_int = clamp(sign(u) ceil(|u| / V_th - 1/2), lo, hi)          (0 where V_th <= 0)

or, with ``spike_cost > 0``, the error-aware count of :func:`spikelm.neurons.error_aware_counts`
(the same six candidates, the same float32 costs, the first of the cheapest).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(inline="always", fastmath=False)
def fixed_order_sum(values, n):
    """Sum of ``values[:n]`` (destroyed; needs one spare slot) in the order of
    :func:`spikelm.neurons.fixed_order_sum`."""
    width = n
    while width > 1:
        if width % 2:
            values[width] = np.float32(0.0)
            width += 1
        half = width // 2
        for j in range(half):
            values[j] = values[j] + values[j + half]
        width = half
    return values[0]


@njit(inline="always")
def _events(c, unary):
    """Spikes a coding fires for a count ``c >= 0``: ``c`` (unary codings) or its popcount."""
    if unary:
        return c
    spikes = 0
    while c:
        c &= c - 1
        spikes += 1
    return spikes


@njit(inline="always", fastmath=False)
def _cost(a, c, spike_cost, unary):
    miss = a - np.float32(c)
    return miss * miss + spike_cost * np.float32(_events(c, unary))


@njit(fastmath=False)
def error_aware(a, spike_cost, high, unary):
    """The count (float32) error-aware rounding picks for ``a = |u| / V_th >= 0`` (float32)."""
    top = np.float32(high)
    nearest = np.int64(min(max(np.ceil(a - np.float32(0.5)), np.float32(0.0)), top))
    mantissa, exponent = math.frexp(a)
    below = np.float32(math.ldexp(0.5, exponent)) if a >= 1 else np.float32(0.0)
    above = max(below if mantissa == 0.5 else np.float32(2.0) * below, np.float32(1.0))
    best, best_cost = nearest, _cost(a, nearest, spike_cost, unary)
    for c in (
        nearest & (nearest - 1),  # lowest set bit dropped
        min(nearest + (nearest & -nearest), high),  # lowest set bit carried up
        np.int64(min(below, top)),
        np.int64(min(above, top)),
        np.int64(0),
    ):
        cost = _cost(a, c, spike_cost, unary)
        if cost < best_cost:  # strict: a tie keeps the earlier candidate
            best, best_cost = c, cost
    return np.float32(best)


@njit(inline="always", fastmath=False)
def neuron_row(x, r, divisor, dynamic, k, threshold, lo, hi, cost, high, unary, counts, scratch):
    """Row ``r``: counts into ``counts[r]``; returns ``V_th`` (float32), or NaN if ``x[r]`` holds
    NaN or inf (nothing else is then written). Nearest rounding when ``cost`` is 0, else
    error-aware (``high``: the largest count magnitude; ``unary``: the coding fires ``|c|``).
    The nearest-rounding loops run over 1-D views without early exits or branches, so that LLVM
    vectorises them."""
    n = x.shape[1]
    row, out = x[r], counts[r]
    for i in range(n):
        scratch[i] = row[i] / divisor[i]
    for i in range(n):
        if not np.isfinite(scratch[i]):
            return np.float32(np.nan)
    if dynamic:
        magnitudes = scratch[n + 1 :]
        for i in range(n):
            magnitudes[i] = abs(scratch[i])
        v = fixed_order_sum(magnitudes, n) / np.float32(n) / k
    else:
        v = threshold
    if not v > 0:
        out[:] = 0
        return v
    if cost > 0:
        for i in range(n):
            u = scratch[i]
            c = error_aware(abs(u) / v, cost, high, unary)
            c = -c if u < 0 else c
            out[i] = np.int64(min(max(c, lo), hi))
        return v
    half = np.float32(0.5)
    for i in range(n):  # u = 0 gives ceil(-1/2) = -0: no spike
        u = scratch[i]
        c = np.ceil(abs(u) / v - half)
        out[i] = np.int64(min(max(-c if u < 0 else c, lo), hi))
    return v
