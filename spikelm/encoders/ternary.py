"""Ternary (signed unary) spike coding.

A count ``n in [-T, T]`` fires ``|n|`` spikes that carry its sign:

    s_t = sign(n) if t < |n| else 0,      n = sum_t s_t,      steps needed = |n|
"""

from __future__ import annotations

import torch

from spikelm.encoders.base import SpikeCoder, time_index


class TernaryCoder(SpikeCoder):
    """Unary code with spikes in {-1, 0, 1}; counts in ``[-T, T]``."""

    name = "ternary"
    signed = True
    decoding = "unary"

    def count_range(self, steps: int) -> tuple[int, int]:
        return -steps, steps

    def step_weights(self, steps: int) -> torch.Tensor:
        return torch.ones(steps, dtype=torch.int64)

    def _encode(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        fires = time_index(steps, counts) < counts.abs()
        return (fires.to(torch.int64) * counts.sign()).to(torch.int8)

    def _steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        return counts.abs()
