"""Event-driven PyTorch backend: one index-add of a shifted weight column per spike event.

The counts become explicit events (``spikelm.backends.events.count_events``); an event
``(m, i, t, p)`` adds ``p * sign(c_t) * (W_q^T[i] << log2|c_t|)`` into the integer accumulator
row ``acc[m, group(i)]`` with ``index_add_`` (bitwise codings shift by ``t``, the two's-complement
top step subtracts; unary codings add the column as is, once per event). Events are processed in
chunks so memory stays bounded; the accumulators are exact (int32, or int64 for codings whose sums
could overflow int32) and the shared :func:`~spikelm.backends.epilogue.epilogue` turns them into
outputs. Runs wherever the tensors are (CPU or CUDA); integer ``index_add_`` is deterministic.
"""

from __future__ import annotations

import torch

from spikelm.backends.base import Backend
from spikelm.backends.epilogue import exact_linear
from spikelm.backends.events import accumulator_dtype, count_events, step_shifts

#: Elements of ``[events, out]`` gathered per chunk (32 Mi int32 = 128 MiB at most).
CHUNK_ELEMENTS = 1 << 25


def accumulators(layer, counts: torch.Tensor) -> torch.Tensor:
    """The layer's exact accumulators ``[M, G, out]`` (int32 or int64) for counts ``[M, in]``."""
    rows, in_features = counts.shape
    groups, out_features = layer.weight_scale.shape[1], layer.out_features
    width = in_features // groups
    dtype = accumulator_dtype(layer)
    acc = torch.zeros(rows * groups, out_features, dtype=dtype, device=counts.device)
    events = count_events(counts, layer.coding, layer.steps)
    if len(events):
        shift_t, negative_t = (s.to(counts.device) for s in step_shifts(layer.coding, layer.steps))
        target = events.row * groups + torch.div(events.channel, width, rounding_mode="floor")
        shift = shift_t[events.step]
        negative = negative_t[events.step] ^ (events.polarity < 0)
        columns = layer.transposed_weight_q()  # [in, out] int8, one channel's column per row
        chunk = max(1, CHUNK_ELEMENTS // max(out_features, 1))
        for start in range(0, len(events), chunk):
            part = slice(start, start + chunk)
            added = columns[events.channel[part]].to(dtype) << shift[part].unsqueeze(1).to(dtype)
            added = torch.where(negative[part].unsqueeze(1), -added, added)
            acc.index_add_(0, target[part], added)
    return acc.reshape(rows, groups, out_features)


linear = exact_linear("torch_events", accumulators)


BACKEND = Backend(
    name="torch_events",
    devices=None,
    exact=True,
    linear=linear,
    accumulators=accumulators,
    note="event-driven index_add_ of shifted int8 columns; a CUDA path (on the CPU an exact "
    "cross-check, ~0.1 s for one 4096x4096 token: auto never picks it there)",
)
