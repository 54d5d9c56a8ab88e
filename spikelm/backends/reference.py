"""The naive reference of a spiking linear layer: the specification every backend is held to.

It expands the counts into the coded spike train ``s_t`` (``coder.encode``) and accumulates
weight codes per time step and per weight-scale group in int64, exactly as an event-driven chip
adds them:

    acc[m, g, o] = sum_t c_t sum_{i in group g} W_q[o, i] s_t[m, i]          (integers, exact)
    y[m, o]      = V_th[m] * sum_g scale[o, g] * acc[m, g, o]                (shared epilogue)

The integer part runs on the CPU whatever the device of the inputs (CUDA has no integer matmul);
the result is moved back. It is slow by design (memory ``T x M x G x out``): use it on small
layers and in tests.
"""

from __future__ import annotations

import torch

from spikelm.backends.base import Backend
from spikelm.backends.epilogue import exact_linear
from spikelm.encoders import get_coder


def integer_accumulators(
    counts: torch.Tensor, weight_q: torch.Tensor, groups: int, coding: str, steps: int
) -> torch.Tensor:
    """``acc[m, g, o]`` (int64 ``[M, G, out]``) from counts ``[M, in]``, summed over the train."""
    device = counts.device
    coder = get_coder(coding)
    spikes = coder.encode(counts.cpu(), steps)  # [T, M, in]; refuses non-integer counts
    weights = coder.step_weights(steps)  # c_t, int64 [T]
    out_features, in_features = weight_q.shape
    width = in_features // groups
    w = weight_q.cpu().to(torch.int64).reshape(out_features, groups, width)
    s = spikes.to(torch.int64).reshape(steps, spikes.shape[1], groups, width)
    per_step = torch.einsum("tmgi,ogi->tmgo", s, w)  # W_q s_t per step and group
    return (per_step * weights.view(-1, 1, 1, 1)).sum(0).to(device)


def accumulators(layer, counts: torch.Tensor) -> torch.Tensor:
    """The layer's exact accumulators ``[M, G, out]`` (int64) for counts ``[M, in]``."""
    return integer_accumulators(
        counts, layer.weight_q, layer.weight_scale.shape[1], layer.coding, layer.steps
    )


linear = exact_linear("reference", accumulators)


BACKEND = Backend(
    name="reference",
    devices=None,
    exact=True,
    linear=linear,
    accumulators=accumulators,
    note="naive integer oracle: dense spike train, int64 einsum per step (on the CPU); tests hold "
    "every backend to it",
)
