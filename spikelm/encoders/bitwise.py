"""Bitwise spike coding: step ``t`` carries bit ``t`` of the count (weight ``2^t``, t from 0).

Unsigned, counts in ``[0, 2^T - 1]``:

    s_t = (n >> t) & 1,                 n = sum_t 2^t s_t,      steps needed = bit_length(n)

Bidirectional (signed magnitude), counts in ``[-(2^T - 1), 2^T - 1]``; every bit carries sign(n):

    s_t = sign(n) * ((|n| >> t) & 1),   n = sum_t 2^t s_t,      steps needed = bit_length(|n|)

Two's complement, counts in ``[-2^(T-1), 2^(T-1) - 1]``; spikes in {0, 1}, the top step weighs
``-2^(T-1)``:

    s_t = ((n mod 2^T) >> t) & 1,       n = sum_{t<T-1} 2^t s_t - 2^(T-1) s_{T-1}

A count fires ``popcount`` spikes: of ``n``, of ``|n|``, and of the T-bit pattern respectively.
"""

from __future__ import annotations

import torch

from spikelm.encoders.base import SpikeCoder, _as_counts, bit_length, popcount, time_index


def _powers(steps: int) -> torch.Tensor:
    return torch.ones(steps, dtype=torch.int64) << torch.arange(steps, dtype=torch.int64)


def _bits(values: torch.Tensor, steps: int) -> torch.Tensor:
    """Bit planes ``[T, ...]`` (int64 0/1) of non-negative ``values``."""
    return (values.unsqueeze(0) >> time_index(steps, values)) & 1


class BitwiseCoder(SpikeCoder):
    """Unsigned binary number, least significant bit first; spikes in {0, 1}."""

    name = "bitwise"
    signed = False
    decoding = "magnitude_bits"

    def count_range(self, steps: int) -> tuple[int, int]:
        return 0, (1 << steps) - 1

    def step_weights(self, steps: int) -> torch.Tensor:
        return _powers(steps)

    def _encode(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        return _bits(counts, steps).to(torch.int8)

    def _steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        return bit_length(counts)

    def events(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        return popcount(self._in_range(_as_counts(counts), steps), steps)


class BitwiseBidirectionalCoder(SpikeCoder):
    """Sign and magnitude: the bits of ``|n|``, each spike carrying ``sign(n)``."""

    name = "bitwise_bidirectional"
    signed = True
    decoding = "magnitude_bits"

    def count_range(self, steps: int) -> tuple[int, int]:
        return -((1 << steps) - 1), (1 << steps) - 1

    def step_weights(self, steps: int) -> torch.Tensor:
        return _powers(steps)

    def _encode(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        return (_bits(counts.abs(), steps) * counts.sign()).to(torch.int8)

    def _steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        return bit_length(counts.abs())

    def events(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        return popcount(self._in_range(_as_counts(counts), steps).abs(), steps)


class BitwiseTwosComplementCoder(SpikeCoder):
    """Two's complement over exactly T bits; spikes in {0, 1}, the last step weighs -2^(T-1)."""

    name = "bitwise_twos_complement"
    signed = False  # spikes are {0, 1}; the sign lives in the last step's negative weight
    decoding = "twos_complement"

    def count_range(self, steps: int) -> tuple[int, int]:
        return -(1 << (steps - 1)), (1 << (steps - 1)) - 1

    def step_weights(self, steps: int) -> torch.Tensor:
        weights = _powers(steps)
        weights[-1] = -weights[-1]
        return weights

    def _encode(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        return _bits(counts & ((1 << steps) - 1), steps).to(torch.int8)

    def _steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        magnitude = torch.where(counts < 0, -counts - 1, counts)
        return bit_length(magnitude) + 1
