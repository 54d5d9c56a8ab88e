"""The interface every exact spike coder implements.

An exact coder turns an integer spike count ``n`` (one per neuron) into a spike train of ``T``
virtual time steps, ``s[t] in {-1, 0, 1}``, and back, with no loss:

    n = sum_t c_t * s_t                     (decode; c_t are the coder's step weights)

A linear layer driven by the train computes ``y = V_th * sum_t c_t * (W s_t)``, so the step
weights are all a backend needs to know about the coding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch

from spikelm.errors import ConfigError, CountRangeError

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_counts(counts: torch.Tensor) -> torch.Tensor:
    """Return ``counts`` as an int64 tensor, refusing floats that are not whole numbers."""
    counts = torch.as_tensor(counts)
    if counts.dtype in _INTEGER_DTYPES:
        return counts.to(torch.int64)
    if counts.is_floating_point():
        if not bool(torch.isfinite(counts).all()):
            raise CountRangeError("spike counts contain NaN or inf")
        if not bool((counts == counts.round()).all()):
            raise CountRangeError("spike counts must be whole numbers")
        return counts.to(torch.int64)
    raise CountRangeError(f"spike counts must be integers, got dtype {counts.dtype}")


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1 or steps > 62:
        raise ConfigError(f"number of time steps must be an integer in [1, 62], got {steps!r}")
    return steps


def popcount(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Set bits among the lowest ``bits`` of each non-negative integer (int64), elementwise."""
    values = values.to(torch.int64)
    total = torch.zeros_like(values)
    for bit in range(bits):
        total += (values >> bit) & 1
    return total


def bit_length(values: torch.Tensor) -> torch.Tensor:
    """Number of bits of each non-negative integer (0 -> 0, 1 -> 1, 5 -> 3), elementwise."""
    values = values.to(torch.int64).clone()
    length = torch.zeros_like(values)
    while bool((values > 0).any()):
        length += (values > 0).to(torch.int64)
        values >>= 1
    return length


Decoding = Literal["unary", "magnitude_bits", "twos_complement"]
"""Which steps a count ``n`` fires, for kernels that expand counts into events inline:

- ``unary``: ``|n|`` spikes at steps ``0 .. |n|-1``, each ``sign(n)``;
- ``magnitude_bits``: one spike per set bit ``t`` of ``|n|``, each ``sign(n)``;
- ``twos_complement``: one spike per set bit of the ``T``-bit pattern of ``n``, each ``+1``.
"""


class SpikeCoder(ABC):
    """An exact, invertible mapping between integer counts and spike trains ``[T, ...]``."""

    #: Registry name, e.g. ``"bitwise_bidirectional"``.
    name: str
    #: Whether spikes may be negative (-1).
    signed: bool
    #: How a kernel decodes a count into its events (with :meth:`step_weights` for their weights).
    decoding: Decoding

    @abstractmethod
    def count_range(self, steps: int) -> tuple[int, int]:
        """Smallest and largest count representable in ``steps`` time steps."""

    @abstractmethod
    def step_weights(self, steps: int) -> torch.Tensor:
        """The weights ``c_t`` (int64, shape ``[T]``) with ``n = sum_t c_t s_t``."""

    @abstractmethod
    def _encode(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        """Encode in-range int64 counts to an int8 train ``[T, *counts.shape]``."""

    @abstractmethod
    def _steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        """Fewest steps that represent each in-domain int64 count."""

    def encode(self, counts: torch.Tensor, steps: int, *, saturate: bool = False) -> torch.Tensor:
        """Spike train ``[T, *counts.shape]`` (int8 values in {-1, 0, 1}) for integer ``counts``.

        Counts outside :meth:`count_range` raise :class:`CountRangeError`, or are clamped to the
        range when ``saturate=True``.
        """
        steps = _check_steps(steps)
        counts = _as_counts(counts)
        if saturate:
            counts = counts.clamp(*self.count_range(steps))
        return self._encode(self._in_range(counts, steps), steps)

    def _in_range(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        """``counts`` unchanged, or :class:`CountRangeError` if any lies outside the range."""
        lo, hi = self.count_range(steps)
        if counts.numel() and (int(counts.min()) < lo or int(counts.max()) > hi):
            raise CountRangeError(
                f"{self.name} coding with T={steps} holds counts in [{lo}, {hi}], got values in "
                f"[{int(counts.min())}, {int(counts.max())}]; raise T or pass saturate=True"
            )
        return counts

    def decode(self, spikes: torch.Tensor) -> torch.Tensor:
        """Counts (int64) from a spike train ``[T, ...]``: ``n = sum_t c_t s_t``."""
        spikes = torch.as_tensor(spikes)
        if spikes.dim() < 1:
            raise CountRangeError("a spike train needs a leading time dimension")
        weights = self.step_weights(_check_steps(spikes.shape[0])).to(spikes.device)
        weights = weights.view(-1, *([1] * (spikes.dim() - 1)))
        return (spikes.to(torch.int64) * weights).sum(0)

    def steps_needed(self, counts: torch.Tensor) -> torch.Tensor:
        """Fewest time steps ``T`` for which each count lies in :meth:`count_range` (int64)."""
        counts = _as_counts(counts)
        lo, _ = self.count_range(1)
        if lo >= 0 and counts.numel() and int(counts.min()) < 0:
            raise CountRangeError(f"{self.name} coding holds no negative counts")
        return self._steps_needed(counts)

    def events(self, counts: torch.Tensor, steps: int) -> torch.Tensor:
        """Number of spike events (non-zero steps) each count produces in ``steps`` steps."""
        return self.encode(counts, steps).ne(0).sum(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def time_index(steps: int, counts: torch.Tensor) -> torch.Tensor:
    """``arange(T)`` shaped ``[T, 1, ..., 1]`` to broadcast against ``counts``."""
    return torch.arange(steps, device=counts.device).view(-1, *([1] * counts.dim()))
