"""The adaptive-threshold neuron of :func:`spikelm.neurons.adaptive_threshold_spikes`, compiled.

Per row, in the float32 operations of the torch code (the same spikes, bit for bit):

    u     = x / d
    V_th  = fixed_order_sum(|u|) / n / k       (dynamic; halves added elementwise, odd widths
                                                padded with one zero: :func:`fixed_order_sum`)
            or the calibrated constant          (static)
    s_int = clamp(sign(u) ceil(|u| / V_th - 1/2), lo, hi)          (0 where V_th <= 0)
"""

from __future__ import annotations

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


@njit(inline="always", fastmath=False)
def neuron_row(x, r, divisor, dynamic, k, threshold, lo, hi, counts, scratch):
    """Row ``r``: counts into ``counts[r]``; returns ``V_th`` (float32), or NaN if ``x[r]`` holds
    NaN or inf (nothing else is then written)."""
    n = x.shape[1]
    for i in range(n):
        u = x[r, i] / divisor[i]
        if not np.isfinite(u):
            return np.float32(np.nan)
        scratch[i] = u
    if dynamic:
        for i in range(n):
            scratch[n + 1 + i] = abs(scratch[i])
        v = fixed_order_sum(scratch[n + 1 :], n) / np.float32(n) / k
    else:
        v = threshold
    half = np.float32(0.5)
    for i in range(n):
        u = scratch[i]
        if v > 0 and u != 0:
            c = np.ceil(abs(u) / v - half)
            c = -c if u < 0 else c
            counts[r, i] = np.int64(min(max(c, lo), hi))
        else:
            counts[r, i] = 0
    return v
