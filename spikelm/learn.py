"""Learned post-training thresholds (and decode gains) per spiking layer, fitted against spikes.

After conversion every :class:`~spikelm.layers.SpikingLinear` ``l`` keeps one scalar that sets
its threshold: ``k_l`` of the dynamic rule ``V_l = mean|u| / k_l`` (per token), or the constant
``V_l`` of a static layer. :func:`learn_thresholds` fits ``theta_l = log k_l`` (or
``-log V_l``) on calibration token windows ``w`` by minimising

    J(theta) = E_w [ KL(p_ann(. | w) || p_snn(. | w; theta)) ]  +  lambda * S(theta)

    S(theta) = sum_l sum_{m, c} e~(|u_{l,m,c}| / V_l) / sum_l M_l C_l

the mean next-token KL divergence from the float model plus ``lambda`` (``spike_weight``) times
a smooth count of spikes per channel, pooled over layers as :class:`SpikeStats` pools them.
``e~(a)`` is the expected number of spikes the layer's neuron fires for ``a + eps``,
``eps ~ U(-1/2, 1/2)``: its own rounding (nearest, or error-aware with the layer's
``spike_cost``), then the coder's event count (popcount for bitwise codes); tabulated once per
neuron and interpolated linearly, so it is differentiable in ``V``.

Beside ``theta_l``, each layer learns its decode gain ``g_l`` (``gamma_l = log g_l``): the
amplitude a count decodes to, ``x_hat = g_l V_l n``, where the threshold that counts it stays
``V_l``. Rounding that saves spikes (error-aware counts, large ``V``) is biased toward smaller
counts, and the gain re-centres what the next layer receives; it fires no spike.

Gradients go through the neuron's rounding with the LSQ straight-through rule,
``x_hat = g V (a_c + stop_grad(n - a_c))`` with ``a_c = clamp(u / V, lo, hi)`` and ``n`` the
layer's own counts (nearest or error-aware rounding), so ``d x_hat / d V = g (n - u / V)``
inside the range and ``g n`` at its edges (``estimator="ste"``, the default); or, with
``estimator="noise"``, the rounding error is replaced by seeded uniform noise,
``x_hat = g V (a_c + eps)``, the dithered quantizer whose expected spikes ``e~`` counts. While
learning, error-aware counts come from a table of the rule on a grid of ``1/32`` in ``a``.
Only the threshold and gain scalars move: the weight buffers (``weight_q``, ``weight_scale``,
``input_divisor``, ``bias``) are never written.

The learned values live in ``layer.k`` (dynamic layers, a plain attribute) and the
``layer.threshold`` buffer (static layers), the gains in ``layer.gain``. The teacher's
log-probabilities are computed once; each step is one spiking forward and backward on one batch,
linear in the model's size (the weights frozen, activations kept for the backward as in
training).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spikelm.encoders import get_coder
from spikelm.errors import ConfigError
from spikelm.fidelity import logits_of
from spikelm.layers import SpikingLinear, spiking_layers
from spikelm.neurons import adaptive_threshold_spikes, check_finite, exact_count_range


@dataclass
class LearnReport:
    """What :func:`learn_thresholds` did.

    Attributes:
        values: the learned ``k`` (dynamic layers) or threshold (static layers), by layer name.
        initial: the values before learning, by layer name.
        gains: each layer's decode gain after learning (unchanged without ``gains``).
        kl: mean next-token KL (nats per token) of the first and the last epoch of steps.
        spikes: smooth spikes per channel ``S`` of the first and the last epoch of steps.
        steps: optimiser steps taken.
    """

    values: dict[str, float]
    initial: dict[str, float]
    gains: dict[str, float]
    kl: tuple[float, float]
    spikes: tuple[float, float]
    steps: int
    history: list[tuple[float, float]] = field(default_factory=list, repr=False)


GAIN_RANGE = (0.5, 2.0)
"""Where a learned decode gain is kept."""

GRID = 32
"""Samples per unit of ``a = |u| / V`` in the table of smoothed spike counts."""


@functools.lru_cache(maxsize=32)
def event_table(coding: str, steps: int, spike_cost: float) -> torch.Tensor:
    """``e~`` on the grid ``a = j / GRID``, ``j = 0 .. (top + 1) GRID``: the spikes the neuron
    fires for ``|u| / V`` in ``a + [-1/2, 1/2)`` on average (its own rounding, nearest or
    error-aware, then the coder's event count)."""
    coder = get_coder(coding)
    lo, hi = coder.count_range(steps)
    top = max(hi, -lo)
    fine = torch.arange(-GRID // 2, (top + 2) * GRID + GRID // 2, dtype=torch.float64) / GRID
    counts, _ = adaptive_threshold_spikes(
        fine.abs().to(torch.float32),
        threshold=torch.ones(()),
        count_range=(0, top),
        spike_cost=spike_cost,
        events=lambda c: coder.events(c, steps),
    )
    events = coder.events(counts.to(torch.int64), steps).to(torch.float64)
    window = torch.ones(1, 1, GRID, dtype=torch.float64) / GRID
    smooth = F.conv1d(events.reshape(1, 1, -1), window).flatten()  # mean over a + [-1/2, 1/2)
    return smooth[: (top + 1) * GRID + 2].to(torch.float32)


@functools.lru_cache(maxsize=32)
def count_table(coding: str, steps: int, spike_cost: float) -> torch.Tensor:
    """Counts of error-aware rounding for ``a = j / GRID``, ``j = 0 .. (top + 1) GRID``."""
    coder = get_coder(coding)
    lo, hi = coder.count_range(steps)
    top = max(hi, -lo)
    grid = torch.arange(0, (top + 1) * GRID + 1, dtype=torch.float32) / GRID
    counts, _ = adaptive_threshold_spikes(
        grid,
        threshold=torch.ones(()),
        count_range=(0, top),
        spike_cost=spike_cost,
        events=lambda c: coder.events(c, steps),
    )
    return counts


def smooth_events(magnitude: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``e~(a)`` for ``a >= 0``: :func:`event_table` interpolated linearly (differentiable)."""
    position = (magnitude * GRID).clamp(max=table.numel() - 2)
    base = position.detach().floor().to(torch.int64)
    low, high = table[base], table[base + 1]
    return low + (position - base) * (high - low)


class _Learner:
    """The differentiable forward of one layer with a log-threshold parameter."""

    def __init__(
        self,
        layer: SpikingLinear,
        theta: nn.Parameter,
        totals: list,
        noise: torch.Generator | None = None,
        gamma: nn.Parameter | None = None,
    ) -> None:
        self.layer, self.theta, self.totals, self.noise = layer, theta, totals, noise
        self.gamma = gamma  # log of the decode gain; None: the layer's own gain, fixed
        self.table = event_table(layer.coding, layer.steps, float(layer.spike_cost))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        rows = x.reshape(-1, layer.in_features).to(torch.float32)
        u = rows / layer.input_divisor
        if layer.dynamic:
            v_th = u.abs().mean(dim=-1, keepdim=True) * torch.exp(-self.theta)
        else:
            v_th = torch.exp(-self.theta).reshape(1, 1).expand(u.shape[0], 1)
        with torch.no_grad():
            if layer.spike_cost:  # the error-aware rule, tabulated (exact up to 1/GRID in a)
                check_finite(u, f"input of layer {layer.name!r}")
                table = count_table(layer.coding, layer.steps, float(layer.spike_cost))
                ratio = u.abs() / torch.where(v_th > 0, v_th, torch.ones_like(v_th))
                index = (ratio * GRID).round().clamp(max=table.numel() - 1).to(torch.int64)
                counts = torch.where(v_th > 0, torch.sign(u) * table[index], torch.zeros_like(u))
            else:
                counts, _ = adaptive_threshold_spikes(
                    u.detach(),
                    threshold=v_th.detach(),
                    count_range=layer.count_range,
                    where=f"input of layer {layer.name!r}",
                )
        safe = torch.where(v_th > 0, v_th, torch.ones_like(v_th))
        lo, hi = exact_count_range(tuple(layer.count_range), torch.float32)
        scaled = (u / safe).clamp(lo, hi)
        scaled = torch.where(v_th > 0, scaled, torch.zeros_like(scaled))
        if self.noise is None:  # LSQ: d n / d V = 0 inside the range
            n = scaled + (counts - scaled).detach()
        else:  # dithered: the rounding error as uniform noise, so d x_hat / d V = eps
            eps = torch.rand(scaled.shape, generator=self.noise) - 0.5
            n = scaled + torch.where(scaled.abs() < hi, eps, torch.zeros_like(eps))
        level = v_th * (torch.exp(self.gamma) if self.gamma is not None else layer.gain)
        y = (n * level) @ layer.dequantized_weight().t()
        if layer.bias is not None:
            y = y + layer.bias
        self.totals[0] = self.totals[0] + smooth_events(scaled.abs(), self.table).sum()
        self.totals[1] += scaled.numel()
        y = y.reshape(*x.shape[:-1], layer.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)


@contextlib.contextmanager
def _learning(
    layers: dict[str, SpikingLinear],
    thetas: dict[str, nn.Parameter],
    totals: list,
    noise: torch.Generator | None,
    gammas: dict[str, nn.Parameter] | None = None,
) -> Iterator[None]:
    """Each layer's forward replaced by its differentiable one for the block (restored after)."""
    try:
        for name, layer in layers.items():
            gamma = None if gammas is None else gammas[name]
            layer.forward = _Learner(layer, thetas[name], totals, noise, gamma)  # shadows it
        yield
    finally:
        for layer in layers.values():
            layer.__dict__.pop("forward", None)


@contextlib.contextmanager
def frozen(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode with every parameter frozen for the block (restored after)."""
    flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
    modes = [(m, m.training) for m in models]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        for model, _ in modes:
            model.eval()
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for model, mode in modes:
            model.train(mode)


BUDGET_RATE = 0.5
"""How fast the spike weight follows the budget: ``exp(0.5)`` per step at twice the budget."""

Distortion = Callable[[int], torch.Tensor]
"""``distortion(index)``: runs the student on calibration item ``index`` (its spiking layers'
learners in place) and returns the fidelity term of the objective, a scalar tensor."""


@dataclass(frozen=True)
class LearnOptions:
    """How :func:`fit_neurons` learns, checked when built (see :func:`learn_thresholds`)."""

    spike_weight: float
    steps: int = 150
    lr: float = 0.05
    seed: int = 0
    k_range: tuple[float, float] = (0.25, 16.0)
    estimator: str = "ste"
    spike_budget: float | None = None
    gains: bool = True
    gain_range: tuple[float, float] = GAIN_RANGE

    def __post_init__(self) -> None:
        weight = self.spike_weight
        if not (isinstance(weight, (int, float)) and math.isfinite(weight)):
            raise ConfigError(f"spike_weight must be a finite number >= 0, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"spike_weight must be >= 0, got {weight}")
        steps = self.steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        low, high = self.k_range
        if not (0 < low <= high < math.inf):
            raise ConfigError(f"k_range must be 0 < low <= high < inf, got {self.k_range!r}")
        low, high = self.gain_range
        if not 0 < low <= 1.0 <= high < math.inf:
            raise ConfigError(
                f"gain_range must be 0 < low <= 1 <= high < inf, got {self.gain_range!r}"
            )
        if self.estimator not in ("ste", "noise"):
            raise ConfigError(f"estimator must be 'ste' or 'noise', got {self.estimator!r}")
        budget = self.spike_budget
        if budget is not None and not (
            isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0
        ):
            raise ConfigError(f"spike_budget must be a positive number, got {budget!r}")


@torch.no_grad()
def _check_budget(
    budget: float,
    found: dict[str, SpikingLinear],
    bounds: dict[str, tuple[float, float]],
    distortion: Distortion,
) -> None:
    """Refuse a budget that every threshold at its coarsest end still exceeds on item 0."""
    coarsest = {name: nn.Parameter(torch.tensor(bounds[name][0])) for name in found}
    totals: list = [torch.zeros(()), 0]
    with _learning(found, coarsest, totals, None):
        distortion(0)
    fewest = float(totals[0]) / max(totals[1], 1)
    if fewest > budget:
        raise ConfigError(
            f"a spike budget of {budget:g} spikes per channel cannot be met: the coarsest "
            f"thresholds the learning may reach still fire {fewest:.3f}"
        )


def kl_divergence(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``KL(p || q)``, with ``target = log p`` and ``q = softmax(logits)``."""
    student = F.log_softmax(logits, dim=-1)
    return (target.exp() * (target - student)).sum(-1).mean()


def fit_neurons(
    found: dict[str, SpikingLinear],
    count: int,
    distortion: Distortion,
    options: LearnOptions,
    *,
    tie: Iterable[Sequence[str]] = (),
    share: float = 1.0,
) -> LearnReport:
    """Fit the threshold scalar (and decode gain) of each layer of ``found``: Adam on
    ``distortion(index) + spike_weight * share * S`` over ``options.steps`` steps, the items
    ``0 .. count - 1`` in an order drawn from ``options.seed``, ``S`` the smooth spikes per channel
    of these layers. ``share``: their part of the channels the model's spike count pools (1 when
    they are all of them). Sets the values in place and returns the :class:`LearnReport`."""
    initial = {n: float(m.k) if m.dynamic else float(m.threshold) for n, m in found.items()}
    thetas = {
        name: nn.Parameter(
            torch.tensor(math.log(value) if found[name].dynamic else -math.log(value))
        )
        for name, value in initial.items()
    }
    for group in tie:
        group = list(group)
        missing = [name for name in group if name not in found]
        if missing:
            raise ConfigError(f"tie names layers that are not learned: {', '.join(missing)}")
        modes = {(found[n].dynamic, initial[n]) for n in group}
        if len(modes) > 1:
            raise ConfigError(f"tie group {group} mixes thresholds: {sorted(modes)}")
        for name in group[1:]:
            thetas[name] = thetas[group[0]]
    gain_low, gain_high = options.gain_range
    gammas: dict[str, nn.Parameter] | None = None
    if options.gains:  # log-gains from the layers' own, tied as the thresholds are
        gammas, shared = {}, {}
        for name, theta in thetas.items():
            gain = min(max(found[name].gain, gain_low), gain_high)
            gammas[name] = shared.setdefault(id(theta), nn.Parameter(torch.tensor(math.log(gain))))
    low, high = math.log(options.k_range[0]), math.log(options.k_range[1])
    bounds = {  # dynamic: k in k_range; static: V in [V0 k0 / k_high, V0 k0 / k_low], k0 = layer.k
        name: (low, high)
        if layer.dynamic
        else (
            thetas[name].item() + low - math.log(layer.k),
            thetas[name].item() + high - math.log(layer.k),
        )
        for name, layer in found.items()
    }
    generator = torch.Generator().manual_seed(options.seed)
    noise = None
    if options.estimator == "noise":
        noise = torch.Generator().manual_seed(options.seed + 1)
    unique = list({id(t): t for t in [*thetas.values(), *(gammas or {}).values()]}.values())
    optimizer = torch.optim.Adam(unique, lr=options.lr)
    history: list[tuple[float, float]] = []
    spike_weight, budget = options.spike_weight, options.spike_budget
    if budget is not None:
        _check_budget(budget, found, bounds, distortion)
    order: list[int] = []
    for _ in range(options.steps):
        if not order:
            order = torch.randperm(count, generator=generator).tolist()
        index = order.pop()
        totals: list = [torch.zeros(()), 0]
        with _learning(found, thetas, totals, noise, gammas):
            error = distortion(index)
        spikes = totals[0] / max(totals[1], 1)
        loss = error + spike_weight * share * spikes
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, theta in thetas.items():
                theta.clamp_(*bounds[name])
            for gamma in (gammas or {}).values():
                gamma.clamp_(math.log(gain_low), math.log(gain_high))
        history.append((float(error.detach()), float(spikes.detach())))
        if budget is not None:
            ratio = float(spikes.detach()) / budget - 1
            spike_weight = min(max(spike_weight * math.exp(BUDGET_RATE * ratio), 1e-4), 10.0)
    for name, layer in found.items():
        value = math.exp(float(thetas[name].detach()))
        if layer.dynamic:
            layer.set_neuron(k=value)
        else:
            layer.threshold.copy_(torch.tensor(1.0 / value, dtype=layer.threshold.dtype))
        if gammas is not None:
            layer.set_neuron(gain=math.exp(float(gammas[name].detach())))
    epoch = max(1, min(count, len(history) // 2 or 1))
    first, last = history[:epoch], history[-epoch:]

    def mean(rows: list[tuple[float, float]], i: int) -> float:
        return sum(r[i] for r in rows) / len(rows) if rows else math.nan

    return LearnReport(
        values={n: float(m.k) if m.dynamic else float(m.threshold) for n, m in found.items()},
        initial=initial,
        gains={n: m.gain for n, m in found.items()},
        kl=(mean(first, 0), mean(last, 0)),
        spikes=(mean(first, 1), mean(last, 1)),
        steps=options.steps,
        history=history,
    )


def learn_thresholds(
    reference: nn.Module,
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    spike_weight: float,
    steps: int = 150,
    lr: float = 0.05,
    seed: int = 0,
    k_range: tuple[float, float] = (0.25, 16.0),
    layers: Sequence[str] | None = None,
    tie: Iterable[Sequence[str]] = (),
    estimator: str = "ste",
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    spike_budget: float | None = None,
    gains: bool = True,
    gain_range: tuple[float, float] = GAIN_RANGE,
) -> LearnReport:
    """Fit one threshold scalar (and one decode gain) per spiking layer of ``model`` (converted
    from ``reference``).

    Minimises ``KL(p_ann || p_snn) + spike_weight * spikes/channel`` (see the module docstring)
    with Adam on ``theta_l = log k_l`` (dynamic) or ``-log V_l`` (static), ``steps`` steps over
    the calibration ``batches`` (token ids ``[B, L]``, never the evaluation text) in an order
    drawn from ``seed``. Dynamic ``k`` is kept in ``k_range``; a static threshold ``V0``
    (calibrated with ``k0 = layer.k``) within ``[V0 k0 / k_high, V0 k0 / k_low]``. Sets
    ``layer.k`` / ``layer.threshold`` (and ``layer.gain``) in place (the weight buffers are
    untouched) and returns a :class:`LearnReport`.

    ``spike_weight = 0`` only fits fidelity; larger values buy fewer spikes with more KL (on the
    demo model 0.02 .. 0.06 spans +0.5% .. +2% perplexity). ``layers`` (names) restricts learning
    to those layers. ``tie``: groups of layer names that share one parameter (siblings reading one
    input, so that :func:`spikelm.fusion.fuse` can still fuse them; all dynamic, or all static
    with one threshold). ``estimator``: ``"ste"`` (LSQ straight-through) or ``"noise"``
    (dithered). ``run`` maps ``(model, ids)`` to logits (default:
    :func:`spikelm.fidelity.logits_of`). A fused layer (:mod:`spikelm.fusion`) learns one ``k``
    for all its members, as ``tie`` does for unfused siblings.

    ``gains``: also learn each layer's decode gain ``g_l`` (``V_out = g_l V_th``, tied as the
    thresholds are, kept in ``gain_range``), beside its threshold: it does not change which
    spikes fire, only what they decode to.

    ``spike_budget`` (spikes per channel): the weight then adapts every step, starting from
    ``spike_weight``, ``lambda <- lambda exp(BUDGET_RATE (S / budget - 1))`` (dual ascent), so that
    the learned thresholds spend about the budget; a budget below what the smallest ``k`` of
    ``k_range`` fires on the first batch is refused before anything is learned.

    Raises :class:`ConfigError` for an empty calibration set, a model without spiking layers, a
    ``layers`` or ``tie`` name that is not one, a budget no threshold can meet, or a bad option.
    """
    options = LearnOptions(
        spike_weight, steps, lr, seed, k_range, estimator, spike_budget, gains, gain_range
    )
    run = run or logits_of
    data = [torch.as_tensor(b) for b in batches]
    if not data or any(b.dim() != 2 or b.shape[1] < 2 or b.shape[0] == 0 for b in data):
        raise ConfigError(
            "learn_thresholds needs calibration batches of token ids [B, L] with L >= 2; "
            f"got {len(data)} batch(es)"
        )
    found = spiking_layers(model)
    if not found:
        raise ConfigError("learn_thresholds needs a converted model: it has no spiking layer")
    if layers is not None:
        missing = [name for name in layers if name not in found]
        if missing:
            raise ConfigError(f"not spiking layers of the model: {', '.join(missing)}")
        found = {name: found[name] for name in layers}
    teacher: dict[int, torch.Tensor] = {}  # the ANN's log-probabilities, each batch's once

    def distortion(index: int) -> torch.Tensor:
        if index not in teacher:
            with torch.no_grad():
                logits = run(reference, data[index])[:, :-1].float()
                teacher[index] = F.log_softmax(logits, dim=-1)
        return kl_divergence(teacher[index], run(model, data[index])[:, :-1].float())

    with frozen(reference, model):
        return fit_neurons(found, len(data), distortion, options, tie=tie)


__all__ = [
    "Distortion",
    "LearnOptions",
    "LearnReport",
    "fit_neurons",
    "frozen",
    "kl_divergence",
    "learn_thresholds",
]
