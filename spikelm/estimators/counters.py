"""Firing statistics of a spiking layer, accumulated over the tokens it has seen.

For counts ``s_int[m, c]`` over ``M`` tokens and ``C`` channels, coded over ``T`` steps:

    events            = sum_{m,c} e(s_int[m, c])        (e: spikes the coder fires for a count)
    spikes / channel  = events / (M C)
    firing rate       = events / (M C T),      sparsity = 1 - firing rate
    (pooled layers of different T: firing rate = events / sum_l M_l C_l T_l; T = the largest)
    silent share      = #{s_int = 0} / (M C)
    clipped share     = #{s_int at the coding range's edge} / (M C)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from spikelm.encoders import SpikeCoder, get_coder

HISTOGRAM_BINS = 65  # |s_int| = 0 .. 63, and 64+ in the last bin
TABLE_VALUES = 1 << 16  # count ranges up to this many values are counted through a table


@functools.lru_cache(maxsize=64)
def value_table(coding: str, steps: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """``(lo, events, steps_needed)`` of every count in the coding's range (int64 ``[hi-lo+1]``,
    index ``n - lo``), or ``None`` for ranges of more than :data:`TABLE_VALUES` values."""
    coder = get_coder(coding)
    lo, hi = coder.count_range(steps)
    if hi - lo + 1 > TABLE_VALUES:
        return None
    values = torch.arange(lo, hi + 1, dtype=torch.int64)
    return lo, coder.events(values, steps), coder.steps_needed(values)


def events_per_row(counts: torch.Tensor, coder: SpikeCoder, steps: int) -> torch.Tensor:
    """Spike events of each row of integer counts ``[M, C]`` (int64 ``[M]``, on the CPU)."""
    ints = counts.detach().to("cpu", torch.int64)
    table = value_table(coder.name, steps)
    if table is None:
        return coder.events(ints, steps).sum(dim=1)
    lo, events, _ = table
    return events[ints - lo].sum(dim=1)


@dataclass
class SpikeStats:
    """Running spike counts of one layer (or of several, pooled with :meth:`merge`)."""

    steps: int
    tokens: int = 0
    slots: int = 0  # token-channel pairs seen, M * C
    events: int = 0
    silent: int = 0
    clipped: int = 0
    steps_used: int = 0
    slot_steps: int = 0  # sum of slots x T: the firing rate's denominator when T differs
    histogram: torch.Tensor = field(
        default_factory=lambda: torch.zeros(HISTOGRAM_BINS, dtype=torch.int64)
    )

    def update(self, counts: torch.Tensor, coder: SpikeCoder) -> None:
        """Add a batch of integer-valued counts ``[M, C]`` (on any device; counted on the CPU)."""
        ints = counts.detach().to("cpu", torch.int64)
        lo, hi = coder.count_range(self.steps)
        self.tokens += ints.shape[0]
        self.slots += ints.numel()
        self.slot_steps += ints.numel() * self.steps
        table = value_table(coder.name, self.steps)
        if table is not None and ints.numel():
            self._update_from_table(ints, table, hi)
            return
        self.events += int(coder.events(ints, self.steps).sum())
        self.silent += int((ints == 0).sum())
        self.clipped += int((ints == hi).sum()) + (int((ints == lo).sum()) if lo < 0 else 0)
        if ints.numel():
            self.steps_used = max(self.steps_used, int(coder.steps_needed(ints).max()))
        magnitude = ints.abs().clamp(max=HISTOGRAM_BINS - 1).flatten()
        self.histogram += torch.bincount(magnitude, minlength=HISTOGRAM_BINS)

    def _update_from_table(self, ints: torch.Tensor, table: tuple, hi: int) -> None:
        """:meth:`update` through one histogram of the values (same numbers, one pass)."""
        lo, events, steps_needed = table
        values = torch.bincount((ints - lo).flatten(), minlength=events.shape[0])
        self.events += int((values * events).sum())
        self.silent += int(values[-lo]) if lo <= 0 else 0
        self.clipped += int(values[hi - lo]) + (int(values[0]) if lo < 0 else 0)
        self.steps_used = max(self.steps_used, int(steps_needed[values > 0].max()))
        magnitude = torch.arange(lo, hi + 1).abs().clamp(max=HISTOGRAM_BINS - 1)
        self.histogram += torch.zeros(HISTOGRAM_BINS, dtype=torch.int64).index_add_(
            0, magnitude, values
        )

    def merge(self, other: SpikeStats) -> SpikeStats:
        """Pooled statistics of two layers (or two runs); ``steps`` is the larger of the two."""
        return SpikeStats(
            steps=max(self.steps, other.steps),
            tokens=max(self.tokens, other.tokens),
            slots=self.slots + other.slots,
            events=self.events + other.events,
            silent=self.silent + other.silent,
            clipped=self.clipped + other.clipped,
            steps_used=max(self.steps_used, other.steps_used),
            slot_steps=self.slot_steps + other.slot_steps,
            histogram=self.histogram + other.histogram,
        )

    @property
    def spikes_per_channel(self) -> float:
        return self.events / self.slots if self.slots else 0.0

    @property
    def firing_rate(self) -> float:
        """Spike events per (token, channel, step) slot."""
        if self.slot_steps:
            return self.events / self.slot_steps
        return self.spikes_per_channel / self.steps

    @property
    def sparsity(self) -> float:
        return 1.0 - self.firing_rate

    @property
    def silent_share(self) -> float:
        return self.silent / self.slots if self.slots else 0.0

    @property
    def clipped_share(self) -> float:
        return self.clipped / self.slots if self.slots else 0.0


def summarize(stats: Iterable[SpikeStats]) -> SpikeStats:
    """All layers pooled, weighting each by its token-channel slots."""
    total: SpikeStats | None = None
    for item in stats:
        total = item if total is None else total.merge(item)
    if total is None:
        raise ValueError("no spiking layers recorded any statistics")
    return total
