"""Binary (unary, unsigned) spike coding.

A count ``n in [0, T]`` fires one spike per step for its first ``n`` steps:

    s_t = 1 if t < n else 0,       n = sum_t s_t,       steps needed = n
"""

from __future__ import annotations

import torch

from spikelm.encoders.base import SpikeCoder, time_index


class BinaryCoder(SpikeCoder):
    """Unary code with spikes in {0, 1}; counts in ``[0, T]``."""

    name = "binary"
    signed = False
    decoding = "unary"

    def count_range(self, steps: int) -> tuple[int, int]:
        return 0, steps

    def step_weights(self, steps: int) -> torch.Tensor:
        return torch.ones(steps, dtype=torch.int64)

    def _encode(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        return (time_index(steps, counts) < counts).to(torch.int8)

    def _steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        return counts.clone()
