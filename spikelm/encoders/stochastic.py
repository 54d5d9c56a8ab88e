"""Classic input encoders: rate (Bernoulli/Poisson), latency (time to first spike) and delta.

Unlike the exact coders these are stochastic or lossy, and are checked statistically.

Rate, for intensities ``x in [0, 1]``, each step an independent Bernoulli draw (the discrete-time
Poisson process):

    s_t ~ Bernoulli(x),      x_hat = (1/T) sum_t s_t,      E[x_hat] = x,  Var = x(1-x)/T

Latency (time to first spike), linear in the intensity, one spike at most:

    t* = round((1 - x) (T - 1)) if x > x_min else no spike,      x_hat = 1 - t* / (T - 1)

Delta (sigma-delta modulation of a sequence ``x[0..L)`` along dim 0), one event per step:

    e_t = sign(x_t - r_{t-1}) if |x_t - r_{t-1}| >= theta else 0,     r_t = r_{t-1} + theta e_t

with ``r_{-1} = x_0`` given to the decoder; ``x_hat_t = r_t`` is within ``theta`` of ``x_t``
whenever the signal moves by at most ``theta`` per step.
"""

from __future__ import annotations

import torch

from spikelm.errors import ConfigError, NonFiniteError


def _check_unit_interval(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32) if not torch.is_tensor(x) else x
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{what}: input contains NaN or inf")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ConfigError(f"{what}: intensities must lie in [0, 1], got [{x.min()}, {x.max()}]")
    return x


class RateCoder:
    """Bernoulli rate coding; the seed fixes the spikes bit for bit on every device."""

    name = "rate"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def encode(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Spikes ``[T, *x.shape]`` in {0, 1} (int8). Draws on the CPU, then moves to x's device."""
        x = _check_unit_interval(x, "rate encoding")
        generator = torch.Generator().manual_seed(self.seed)
        draws = torch.rand((steps, *x.shape), generator=generator, dtype=torch.float64)
        return (draws < x.detach().cpu().to(torch.float64)).to(torch.int8).to(x.device)

    def decode(self, spikes: torch.Tensor) -> torch.Tensor:
        """Firing rate per neuron, the unbiased estimate of the intensity."""
        return spikes.to(torch.float32).mean(0)


class LatencyCoder:
    """Linear time-to-first-spike coding: brighter inputs fire earlier; at most one spike."""

    name = "latency"

    def __init__(self, x_min: float = 0.0) -> None:
        self.x_min = x_min

    def encode(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        x = _check_unit_interval(x, "latency encoding")
        if steps < 2:
            raise ConfigError("latency coding needs at least 2 time steps")
        fire_time = torch.round((1.0 - x) * (steps - 1)).to(torch.int64)
        t = torch.arange(steps, device=x.device).view(-1, *([1] * x.dim()))
        return ((t == fire_time) & (x > self.x_min)).to(torch.int8)

    def decode(self, spikes: torch.Tensor) -> torch.Tensor:
        """Intensity from the first spike's time; silent neurons decode to 0."""
        steps = spikes.shape[0]
        fired = spikes.ne(0)
        first = fired.to(torch.int64).argmax(0).to(torch.float32)
        return torch.where(fired.any(0), 1.0 - first / (steps - 1), torch.zeros_like(first))


class DeltaCoder:
    """Sigma-delta events of a sequence along dim 0: +1/-1 when it moved by ``threshold``."""

    name = "delta"

    def __init__(self, threshold: float) -> None:
        if not threshold > 0:
            raise ConfigError(f"delta threshold must be positive, got {threshold}")
        self.threshold = threshold

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Events ``[L, ...]`` in {-1, 0, 1} (int8) for a sequence ``x[L, ...]``."""
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("delta encoding: input contains NaN or inf")
        reference = x[0].clone()
        events = torch.zeros(x.shape, dtype=torch.int8, device=x.device)
        for step in range(x.shape[0]):
            diff = x[step] - reference
            event = torch.where(diff.abs() >= self.threshold, diff.sign(), torch.zeros_like(diff))
            reference = reference + self.threshold * event
            events[step] = event.to(torch.int8)
        return events

    def decode(self, events: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``r_t = x_0 + theta * sum_{u<=t} e_u``."""
        return initial + self.threshold * torch.cumsum(events.to(torch.float32), 0)
