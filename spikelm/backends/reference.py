"""The naive reference of a spiking linear layer: the specification every backend is held to.

It expands the counts into the coded spike train and accumulates weight codes per time step and
per weight-scale group in int64, exactly as an event-driven chip would add them:

    acc[m, o, g] = sum_t c_t sum_{i in g} W_q[o, i] s_t[m, i]          (integers, exact)
    y[m, o]      = V_th[m] * sum_g scale[o, g] * acc[m, o, g]

It is slow by design (memory ``T x M x out x groups``); use it on small layers and in tests.
"""

from __future__ import annotations

import torch

from spikelm.encoders import get_coder


def integer_accumulators(
    counts: torch.Tensor, weight_q: torch.Tensor, groups: int, coding: str, steps: int
) -> torch.Tensor:
    """``acc[m, o, g]`` (int64) from counts ``[M, in]`` by summing over the coded spike train."""
    coder = get_coder(coding)
    spikes = coder.encode(counts.to(torch.int64), steps)  # [T, M, in]
    weights = coder.step_weights(steps).to(counts.device)
    out_features, in_features = weight_q.shape
    w = weight_q.to(torch.int64).reshape(out_features, groups, in_features // groups)
    s = spikes.to(torch.int64).reshape(steps, spikes.shape[1], groups, in_features // groups)
    per_step = torch.einsum("tmgi,ogi->tmog", s, w)
    return (per_step * weights.view(-1, 1, 1, 1)).sum(0)


def linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, out]`` (float32) of ``layer`` for counts ``[M, in]`` and thresholds ``[M, 1]``."""
    acc = integer_accumulators(
        counts, layer.weight_q, layer.weight_scale.shape[1], layer.coding, layer.steps
    )
    scaled = (acc.to(torch.float64) * layer.weight_scale.to(torch.float64)).sum(-1)
    return (scaled * v_th.to(torch.float64)).to(torch.float32)
