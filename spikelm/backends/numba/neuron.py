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
    NaN or inf (nothing else is then written). The loops run over 1-D views without early exits
    or branches, so that LLVM vectorises them."""
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
    half = np.float32(0.5)
    for i in range(n):  # u = 0 gives ceil(-1/2) = -0: no spike
        u = scratch[i]
        c = np.ceil(abs(u) / v - half)
        out[i] = np.int64(min(max(-c if u < 0 else c, lo), hi))
    return v
