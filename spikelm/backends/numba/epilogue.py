"""The shared epilogue (:func:`spikelm.backends.epilogue.epilogue`), compiled into the kernels.

The operations of the torch definition one for one, in the same order, IEEE float64 with no FMA
contraction (``fastmath=False``), so a kernel's outputs are that function's bit for bit:

    total[o] = acc_0[o] s_0[o];  total[o] += acc_g[o] s_g[o]  (g ascending; s: the layer's
    float32 scales, or float64 ones, widened exactly);
    y[o] = float32(total[o] * V_th) (+ bias[o] in float32, as the layer adds it)
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always", fastmath=False)
def group_done(merged, g, r, o0, size, acc, scale_t, total, y):
    """Group ``g``'s exact sums ``merged[:size]`` of row ``r``, outputs ``o0 ..``: stored into
    ``acc`` when it has rows, added into the float64 ``total`` when ``y`` has rows.

    The loops index 1-D slices from 0 (not ``scale_t[g, o0 + o]``): LLVM then vectorises them,
    about 3x faster, which matters where a layer has many groups."""
    if acc.shape[0]:
        stored = acc[r, g, o0 : o0 + size]
        for o in range(size):
            stored[o] = merged[o]
    if y.shape[0]:
        scale = scale_t[g, o0 : o0 + size]
        if g == 0:
            for o in range(size):
                total[o] = np.float64(merged[o]) * np.float64(scale[o])
        else:
            for o in range(size):
                total[o] += np.float64(merged[o]) * np.float64(scale[o])


@njit(inline="always", fastmath=False)
def finish(total, v, bias, y, r, o0, size):
    """``y[r, o0 + o] = float32(total[o] * v) (+ bias[o0 + o])``."""
    out = y[r, o0 : o0 + size]
    if bias.shape[0]:
        b = bias[o0 : o0 + size]
        for o in range(size):
            out[o] = np.float32(total[o] * v) + b[o]
    else:
        for o in range(size):
            out[o] = np.float32(total[o] * v)
