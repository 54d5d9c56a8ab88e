"""The one float step every integer backend shares: exact accumulators -> layer outputs.

Integer backends (``reference``, ``torch_events``, ``numba``) produce the same exact
accumulators ``acc[m, g, o]`` (one per row, weight-scale group and output):

    acc[m, g, o] = sum over events (m, channel i in group g, step t, polarity p) of p c_t W_q[o, i]

and all of them turn those into outputs with :func:`epilogue`, in one fixed order of float
operations, in float64:

    y[m, o] = float32( (((acc[m, 0, o] s[o, 0]) + acc[m, 1, o] s[o, 1]) + ... ) * V_th[m] )

Each step is one elementwise IEEE float64 operation (no reduction kernels, whose order depends on
the device and the shape), so equal accumulators give bit-identical outputs, on one device and in
practice across CPU and CUDA too. float64 holds every int32 accumulator exactly.

This function is the definition. The numba backend fuses a compiled copy of it into its kernel
(same operations, same order, no FMA contraction), which the tests hold to it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spikelm.backends.base import Linear, ran
from spikelm.errors import ShapeError


def epilogue(acc: torch.Tensor, scale: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """Outputs ``y [M, out]`` (float32) from ``acc [M, G, out]`` (any integer dtype).

    ``scale`` is the layer's ``weight_scale [out, G]``, ``v_th`` the thresholds ``[M, 1]``; the
    result lies on ``acc``'s device. The bias is left to the caller (the layer adds it).
    """
    rows, groups, out_features = acc.shape
    if scale.shape != (out_features, groups):
        raise ShapeError(
            f"epilogue: scale of shape {tuple(scale.shape)} does not fit accumulators "
            f"{tuple(acc.shape)}"
        )
    device = acc.device
    scale64 = scale.to(device=device, dtype=torch.float64).t()  # [G, out]
    products = acc.to(torch.float64) * scale64  # [M, G, out], each product rounded once
    y = products[:, 0].clone()
    for g in range(1, groups):  # g ascending, one elementwise add each: a fixed order
        y += products[:, g]
    y *= v_th.to(device=device, dtype=torch.float64).reshape(rows, 1)
    return y.to(torch.float32)


def exact_linear(name: str, accumulators: Callable[..., torch.Tensor]) -> Linear:
    """The ``linear`` of an exact backend named ``name``: its ``accumulators(layer, counts)``
    through :func:`epilogue`, the rows noted as that backend's path."""

    def linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
        ran(name, counts.shape[0])
        return epilogue(accumulators(layer, counts), layer.weight_scale, v_th)

    linear.__doc__ = (
        f"Outputs ``[M, out]`` (float32) of ``layer`` on the {name} backend for counts "
        "``[M, in]`` and thresholds ``[M, 1]``."
    )
    return linear


__all__ = ["epilogue", "exact_linear"]
