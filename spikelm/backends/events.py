"""Integer spike counts -> an explicit list of spike events, in compressed sparse rows.

A count ``n`` of input channel ``i`` in row (token) ``m`` is coded by the layer's coder into a
train ``s_t`` of ``T`` steps; every non-zero ``s_t`` is one event ``(m, i, t, polarity = s_t)``.
The events of row ``m`` are ``channel[row_ptr[m]:row_ptr[m + 1]]`` (and the same slice of
``step`` and ``polarity``), ordered channel-major: all events of one channel are adjacent
(ascending ``t``), so a consumer reads each active channel's weight column once. Silent channels
produce no events.

This module is the one implementation of "counts -> events" on the torch side; it runs on the
counts' device and is what the ``torch_events`` backend and spike recording consume.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from spikelm.encoders import SpikeCoder, get_coder
from spikelm.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class SpikeEvents:
    """Spike events of ``rows`` rows in CSR form; every tensor lies on one device.

    Attributes:
        row_ptr: int64 ``[rows + 1]``; row ``m``'s events are ``[row_ptr[m], row_ptr[m + 1])``.
        row: int64 ``[E]``, the row of each event (``row_ptr`` expanded).
        channel: int64 ``[E]``, the input channel of each event.
        step: int64 ``[E]``, the time step ``t`` in ``[0, steps)``.
        polarity: int8 ``[E]``, +1 or -1 (the spike's value).
        steps: ``T``.
        coding: name of the coder that produced the events.
    """

    row_ptr: torch.Tensor
    row: torch.Tensor
    channel: torch.Tensor
    step: torch.Tensor
    polarity: torch.Tensor
    steps: int
    coding: str

    @property
    def rows(self) -> int:
        return self.row_ptr.numel() - 1

    def __len__(self) -> int:
        return self.channel.numel()

    def step_weights(self) -> torch.Tensor:
        """``c_t`` (int64 ``[T]``) of the coding: an event adds ``polarity * c_t * W[:, channel]``."""
        return get_coder(self.coding).step_weights(self.steps)

    def to_dense(self, in_features: int) -> torch.Tensor:
        """The spike train ``[T, rows, in_features]`` (int8), as ``coder.encode`` gives it."""
        dense = torch.zeros(
            self.steps, self.rows, in_features, dtype=torch.int8, device=self.channel.device
        )
        dense[self.step, self.row, self.channel] = self.polarity
        return dense

    def to_spike_train(self, in_features: int, *, layer: str = "", token_offset: int = 0):
        """The events as a :class:`spikelm.spikes.SpikeTrain` (rows are tokens), for recording."""
        from spikelm.spikes import SpikeTrain

        return SpikeTrain(
            token=(self.row + token_offset).cpu().numpy(),
            t=self.step.cpu().numpy(),
            neuron=self.channel.cpu().numpy(),
            polarity=self.polarity.cpu().numpy(),
            layer=layer,
            n_neurons=in_features,
            steps=self.steps,
            tokens=range(token_offset, token_offset + self.rows),
        )


@functools.lru_cache(maxsize=256)
def accumulator_bound(coding: str | SpikeCoder, steps: int, group_width: int) -> int:
    """Largest ``|acc|`` any partial sum of one accumulator can reach, in any event order.

    ``sum_t |c_t| * 128 * group_width``: every step of every channel of the group at full weight.
    """
    weights = get_coder(coding).step_weights(steps)
    return int(weights.abs().sum()) * 128 * group_width


@functools.lru_cache(maxsize=64)
def step_shifts(coding: str | SpikeCoder, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log2|c_t|, c_t < 0)`` per step (int64, bool; CPU): an event at step ``t`` adds its
    column shifted left by ``log2|c_t|``, negated where ``c_t < 0``. Every exact coder's step
    weight is a signed power of two; anything else raises :class:`ConfigError`."""
    weights = get_coder(coding).step_weights(steps)
    magnitude = weights.abs()
    shift = torch.log2(magnitude.to(torch.float64)).round().to(torch.int64)
    if not bool(torch.equal(torch.ones_like(magnitude) << shift, magnitude)):
        raise ConfigError(f"step weights {weights.tolist()} are not signed powers of two")
    return shift, weights < 0


def accumulator_dtype(layer) -> torch.dtype:
    """int32 when the layer's accumulators cannot overflow it (the usual case), else int64."""
    width = layer.in_features // layer.weight_scale.shape[1]
    bound = accumulator_bound(layer.coding, layer.steps, width)
    return torch.int32 if bound <= torch.iinfo(torch.int32).max else torch.int64


def count_events(counts: torch.Tensor, coding: str | SpikeCoder, steps: int) -> SpikeEvents:
    """Events of the counts ``[M, in]`` (integer values, any numeric dtype) under ``coding``.

    Counts outside the coding's range raise :class:`spikelm.CountRangeError` (from the coder).
    """
    coder = get_coder(coding)
    if counts.dim() != 2:
        raise ShapeError(
            f"count_events: counts must be [rows, channels], got {tuple(counts.shape)}"
        )
    rows = counts.shape[0]
    device = counts.device
    active_row, active_channel = torch.nonzero(counts, as_tuple=True)  # row-major
    values = counts[active_row, active_channel]
    train = coder.encode(values, steps)  # [T, K]: the trains of the active channels only
    which, step = torch.nonzero(train.t(), as_tuple=True)  # channel-major, t ascending
    polarity = train[step, which]
    row = active_row[which]
    row_ptr = torch.zeros(rows + 1, dtype=torch.int64, device=device)
    if rows:
        row_ptr[1:] = torch.cumsum(torch.bincount(row, minlength=rows), 0)
    return SpikeEvents(
        row_ptr=row_ptr,
        row=row,
        channel=active_channel[which],
        step=step,
        polarity=polarity.to(torch.int8),
        steps=steps,
        coding=coder.name,
    )


__all__ = [
    "SpikeEvents",
    "accumulator_bound",
    "accumulator_dtype",
    "count_events",
    "step_shifts",
]
