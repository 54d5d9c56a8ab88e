"""Adaptive-threshold spiking neurons and the soft-reset integrate-and-fire neuron they collapse from.

Functional first (pure functions of input, state and parameters), with thin ``nn.Module`` wrappers.

**Adaptive threshold (one step).** For an activation ``x`` whose last dim is the channel dim:

    V_th   = mean_c(|x|) / k                       (dynamic: per token)     or a calibrated constant
             (the mean's sum in a fixed pairwise order, so that every runtime gets the same bits)
    s_int  = clamp(sign(x) * ceil(|x| / V_th - 1/2), lo, hi)             (round, ties toward 0)
    x_hat  = V_out * s_int,     V_out = g * V_th   (one float32 product; g = 1 by default)

The decode gain ``g`` lets the amplitude a spike stands for differ from the threshold that
counts it (a recipe learns it per layer: rounding that saves spikes is biased, and a gain
re-centres it); ``g = 1`` leaves ``V_out = V_th`` bit for bit.

A static threshold is a tensor that broadcasts against ``x`` (a scalar per tensor, or ``[C]``
per channel), fixed after calibration so that hardware can hold it as a constant.

**Integrate-and-fire with soft reset (T steps).** Ternary IF with symmetric firing levels,
strict ``u > V_th / 2`` (``rounding="round"``) or inclusive ``u >= V_th`` (``rounding="floor"``):

    u_t = v_{t-1} + x_t
    s_t = +1 if u_t > V_th/2;  -1 if signed and u_t < -V_th/2;  0 otherwise        (round)
    s_t = +1 if u_t >= V_th;   -1 if signed and u_t <= -V_th;   0 otherwise        (floor)
    v_t = u_t - V_th * s_t,        v_{-1} = 0

The strict comparison at ``V_th / 2`` matters: after a tie (``|x| / V_th = n + 1/2``) the residual
is exactly ``-+V_th / 2``, and an inclusive level would fire it back as a spike of the other sign.

Firing at ``V_th / 2`` is the same neuron as one whose membrane starts at ``V_th / 2`` and fires
at ``V_th``. Driven by an impulse (``x_0 = x``, later inputs 0) it fires, over enough steps,

    round:  sign(x) * ceil(|x| / V_th - 1/2)    -- exactly the one-step ``s_int`` above
    floor:  sign(x) * floor(|x| / V_th)         -- truncation, what a membrane starting at 0 gives

so the one-step form is the T-step simulation collapsed in time. The two differ only where
floating point makes ``|x|/V_th`` and the repeated subtraction ``x - j V_th`` fall on different
sides of a half-integer (inputs within a few ulps of a tie), and when ``T`` is smaller than the
count (the simulation then saturates at ``T`` spikes). ``torch.round`` rounds ties to even; this
module rounds them toward zero, as the neuron does (fewer spikes; NIR's thresholds are strict too).

NaN or inf inputs raise :class:`~spikelm.errors.NonFiniteError`: a spike count cannot represent them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spikelm.errors import ConfigError, NonFiniteError

Rounding = Literal["round", "floor"]


def check_finite(x: torch.Tensor, where: str = "activation") -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or inf."""
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise NonFiniteError(f"{bad} in {where}: spiking neurons need finite inputs")


def fixed_order_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over the last dim, ``[..., 1]``, in one fixed order: halves added elementwise until
    one column is left, an odd width padded with one zero first. Each add is one IEEE float32 op,
    so every runtime (torch on any device, numba, onnxruntime) gets the same bits; a library
    reduction's order is its own."""
    while x.shape[-1] > 1:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x


def dynamic_threshold(x: torch.Tensor, k: float = 3.0) -> torch.Tensor:
    """Per-token threshold ``V_th = sum(|x|) / n / k`` over the last (channel) dim of ``n``,
    kept as ``[..., 1]``; the sum in :func:`fixed_order_sum`'s order (the same bits everywhere)."""
    if not k > 0:
        raise ConfigError(f"k must be positive, got {k}")
    return fixed_order_sum(x.abs()) / x.shape[-1] / k


def decode_level(v_th: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """``V_out = g * V_th``, the amplitude one unit of count decodes to: one float32 product per
    token (the same bits in every runtime); ``v_th`` itself when ``g = 1``."""
    if gain == 1.0:
        return v_th
    return v_th * torch.tensor(gain, dtype=v_th.dtype, device=v_th.device)


@functools.lru_cache(maxsize=128)
def exact_count_range(count_range: tuple[int, int], dtype: torch.dtype) -> tuple[float, float]:
    """The bounds ``(lo, hi)`` as values of the float ``dtype``, rounded toward zero if needed.

    float32 holds every integer only up to 2^24; a bitwise range over more steps (hi = 2^T - 1)
    would round *up* to 2^T, one past the range. Clamping to these bounds keeps every count
    inside it.
    """
    bounds = []
    for bound in count_range:
        value = torch.tensor(float(bound), dtype=dtype)
        if abs(int(value.item())) > abs(bound):
            value = torch.nextafter(value, torch.zeros_like(value))
        bounds.append(value.item())
    return bounds[0], bounds[1]


def spike_counts(
    x: torch.Tensor,
    threshold: torch.Tensor,
    count_range: tuple[int, int] | None = None,
    *,
    where: str = "activation",
) -> torch.Tensor:
    """Integer spike counts ``clamp(sign(x) ceil(|x|/V_th - 1/2), lo, hi)`` as a float tensor.

    A zero threshold (an all-zero token) gives zero counts. ``count_range`` is the coder's
    ``(lo, hi)``; ``None`` leaves the counts unclamped.
    """
    check_finite(x, where)
    safe = torch.where(threshold > 0, threshold, torch.ones_like(threshold))
    counts = torch.sign(x) * torch.ceil(x.abs() / safe - 0.5)
    counts = torch.where(threshold > 0, counts, torch.zeros_like(counts))
    if count_range is not None:
        counts = counts.clamp(*exact_count_range(tuple(count_range), counts.dtype))
    return counts


def error_aware_counts(
    magnitude: torch.Tensor,
    spike_cost: float,
    events: Callable[[torch.Tensor], torch.Tensor],
    high: int,
) -> torch.Tensor:
    """Counts for ``a = |x| / V_th`` that trade rounding error against spikes.

    Among the candidates ``c``: the nearest count ``n``, ``n`` with its lowest set bit dropped or
    carried up, the powers of two just below and above ``a``, and 0 (all within ``[0, high]``),
    it picks the one minimising

        (a - c)^2 + spike_cost * events(c)

    where ``events(c)`` is the number of spikes the coding fires for ``c`` (popcount for bitwise
    codes). ``spike_cost = 0`` is nearest rounding. Ties keep the earlier candidate.
    """
    nearest = torch.ceil(magnitude - 0.5).clamp(0, high).to(torch.int64)
    # powers of two around a from its binary exponent (exact; a float log2 can round up just
    # below a power of two): a = m 2^e with m in [1/2, 1), so 2^(e-1) <= a < 2^e
    mantissa, exponent = torch.frexp(magnitude)
    below = torch.ldexp(torch.full_like(magnitude, 0.5), exponent)
    below = torch.where(magnitude >= 1, below, torch.zeros_like(below))
    above = torch.where(mantissa == 0.5, below, 2 * below).clamp_min(1.0)
    candidates = torch.stack(
        [
            nearest,
            nearest & (nearest - 1),  # lowest set bit dropped
            (nearest + (nearest & -nearest)).clamp(max=high),  # lowest set bit carried up
            below.clamp(max=high).to(torch.int64),
            above.clamp(max=high).to(torch.int64),
            torch.zeros_like(nearest),
        ]
    )
    spikes = events(candidates).to(magnitude.dtype)
    candidates = candidates.to(magnitude.dtype)
    cost = (magnitude.unsqueeze(0) - candidates) ** 2 + spike_cost * spikes
    return candidates.gather(0, cost.argmin(0, keepdim=True)).squeeze(0)


def adaptive_threshold_spikes(
    x: torch.Tensor,
    *,
    k: float = 3.0,
    threshold: torch.Tensor | None = None,
    count_range: tuple[int, int] | None = None,
    where: str = "activation",
    spike_cost: float = 0.0,
    events: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive-threshold neuron, one step: ``(s_int, V_th)``; ``x_hat = V_th * s_int``.

    With ``threshold=None`` the threshold is dynamic (:func:`dynamic_threshold`); otherwise the
    given static threshold (broadcast against ``x``) is used and ``k`` is ignored. A positive
    ``spike_cost`` replaces nearest rounding by :func:`error_aware_counts` (an encoder choice, no
    longer the collapsed IF neuron).
    """
    v_th = dynamic_threshold(x, k) if threshold is None else threshold
    if spike_cost == 0.0:
        return spike_counts(x, v_th, count_range, where=where), v_th
    if events is None or count_range is None:
        raise ConfigError("error-aware rounding needs the coding's events function and range")
    check_finite(x, where)
    safe = torch.where(v_th > 0, v_th, torch.ones_like(v_th))
    magnitude = torch.where(v_th > 0, x.abs() / safe, torch.zeros_like(x))
    lo, hi = count_range
    counts = error_aware_counts(magnitude, spike_cost, events, max(hi, -lo))
    counts = torch.sign(x) * counts
    return counts.clamp(*exact_count_range(tuple(count_range), counts.dtype)), v_th


class IFState(NamedTuple):
    """Membrane potential of an integrate-and-fire layer."""

    v: torch.Tensor


def if_step(
    x: torch.Tensor,
    state: IFState,
    threshold: torch.Tensor | float,
    *,
    rounding: Rounding = "round",
    signed: bool = True,
) -> tuple[torch.Tensor, IFState]:
    """One step of the soft-reset IF neuron; returns ``(spikes int8 in {-1,0,1}, new state)``."""
    if rounding not in ("round", "floor"):
        raise ConfigError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    threshold = torch.as_tensor(threshold, dtype=x.dtype, device=x.device)
    u = state.v + x
    if rounding == "round":
        up, down = u > threshold / 2, u < -threshold / 2
    else:
        up, down = u >= threshold, u <= -threshold
    spikes = up.to(torch.int8)
    if signed:
        spikes = spikes - down.to(torch.int8)
    return spikes, IFState(u - threshold * spikes.to(x.dtype))


def if_run(
    inputs: torch.Tensor,
    threshold: torch.Tensor | float,
    *,
    rounding: Rounding = "round",
    signed: bool = True,
) -> torch.Tensor:
    """Run :func:`if_step` over ``inputs[T, ...]`` from ``v = 0``; spikes ``[T, ...]`` (int8)."""
    check_finite(inputs, "IF neuron input")
    state = IFState(torch.zeros_like(inputs[0]))
    spikes = []
    for x_t in inputs:
        s_t, state = if_step(x_t, state, threshold, rounding=rounding, signed=signed)
        spikes.append(s_t)
    return torch.stack(spikes)


def impulse(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``[T, ...]`` input that delivers ``x`` at step 0 and nothing after (the collapsed drive)."""
    drive = torch.zeros((steps, *x.shape), dtype=x.dtype, device=x.device)
    drive[0] = x
    return drive


class AdaptiveThresholdNeuron(nn.Module):
    """Module wrapper of :func:`adaptive_threshold_spikes`; ``forward(x) -> (s_int, V_th)``.

    ``threshold`` (optional buffer) makes it static; leave it ``None`` for the dynamic rule.
    """

    def __init__(
        self,
        k: float = 3.0,
        count_range: tuple[int, int] | None = None,
        threshold: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.k = k
        self.count_range = count_range
        self.register_buffer("threshold", threshold)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return adaptive_threshold_spikes(
            x, k=self.k, threshold=self.threshold, count_range=self.count_range
        )


class IFNeuron(nn.Module):
    """Module wrapper of :func:`if_run`: multi-step soft-reset IF over ``inputs[T, ...]``."""

    def __init__(self, threshold: float, rounding: Rounding = "round", signed: bool = True) -> None:
        super().__init__()
        self.threshold = threshold
        self.rounding = rounding
        self.signed = signed

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return if_run(inputs, self.threshold, rounding=self.rounding, signed=self.signed)
