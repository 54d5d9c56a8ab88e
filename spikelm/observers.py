"""Observers: the statistics of a layer's input seen in calibration, and the threshold rules
that turn them into per-channel divisors and static thresholds.

An observer keeps, per input channel ``j`` of a layer: the number of rows seen, ``sum |x_j|``,
``max |x_j|``, a seeded bottom-k reservoir of whole rows (for percentiles) and, when the config
asks for loss-aware thresholds, ``sum (dL/dx_j)^2`` from a backward pass of the next-token loss
(the diagonal Fisher ``F_j``). From those:

    d_j   = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)        (outlier migration; geo-mean 1)
    d_j  *= F_j^-p / geomean(F^-p)                           (Fisher shaping, fisher_power = p)
    u     = x / d
    static_tensor:   V = mean|u| / k  |  P_p(|u|) / hi  |  max|u| / hi          (rule)
                     V = c geomean(F^-p) / k,  c = geomean over all layers' channels of
                         mean|x_j| F_j^p                                         (Fisher)
    static_channel:  V_j likewise per channel, folded into d (d_j <- d_j V_j, then V = 1)

Quantization noise of step ``V_j`` on channel ``j`` raises the loss by about ``F_j V_j^2 / 24``;
with bitwise codes the spikes grow like ``log2(|x| / V)``, so ``p = 1/2`` (equal ``F_j V_j^2``
everywhere) is the spike-optimal split of a loss budget under that model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.neurons import check_finite

FISHER_FLOOR_QUANTILE = 0.01  # channels below this quantile of a layer's Fisher are lifted to it


class ActivationObserver:
    """Running statistics of one layer's input, gathered by a forward pre-hook."""

    def __init__(self, name: str, channels: int, max_rows: int, seed: int) -> None:
        """``max_rows = 0`` keeps no row sample (only percentiles need one)."""
        self.name = name
        self.rows = 0
        self.sum_abs = torch.zeros(channels, dtype=torch.float64)
        self.max_abs = torch.zeros(channels, dtype=torch.float64)
        self.max_rows = max_rows
        self.grad_rows = 0
        self.sum_grad_sq = torch.zeros(channels, dtype=torch.float64)
        self.sample = torch.zeros(0, channels)
        self._keys = torch.zeros(0)
        self._generator = torch.Generator().manual_seed(seed)

    def observe(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).cpu()
        check_finite(rows, f"calibration activations of layer {self.name!r}")
        magnitude = rows.abs()
        self.rows += rows.shape[0]
        self.sum_abs += magnitude.sum(0, dtype=torch.float64)
        self.max_abs = torch.maximum(self.max_abs, magnitude.amax(0).to(torch.float64))
        if self.max_rows == 0:
            return
        keys = torch.cat([self._keys, torch.rand(rows.shape[0], generator=self._generator)])
        sample = torch.cat([self.sample, magnitude])
        if keys.numel() > self.max_rows:
            keys, order = torch.topk(keys, self.max_rows, largest=False, sorted=False)
            sample = sample[order]
        self._keys, self.sample = keys, sample

    def observe_gradient(self, grad: torch.Tensor) -> None:
        """Add ``(dL/dx)^2`` of a backward pass, summed over rows."""
        rows = grad.detach().reshape(-1, grad.shape[-1]).to(torch.float64).cpu()
        check_finite(rows, f"loss gradient at the input of layer {self.name!r}")
        self.grad_rows += rows.shape[0]
        self.sum_grad_sq += (rows**2).sum(0)

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.sum_abs / max(self.rows, 1)).to(torch.float32)

    @property
    def fisher(self) -> torch.Tensor:
        """Diagonal Fisher ``F_j = mean (dL/dx_j)^2`` (float32 ``[in]``; zeros before a backward)."""
        return (self.sum_grad_sq / max(self.grad_rows, 1)).to(torch.float32)

    def fisher_weights(self, power: float) -> torch.Tensor:
        """``F_j^-p``, ``F`` floored at the 1% quantile of its positive values (a channel the loss
        never reached would get an infinite threshold); ``ConfigError`` for a layer with no gradient."""
        fisher = self.fisher
        if self.grad_rows == 0 or not bool((fisher > 0).any()):
            raise ConfigError(
                f"layer {self.name!r} got no loss gradient in calibration: fisher_power needs "
                "layers that the next-token loss depends on"
            )
        floor = torch.quantile(fisher[fisher > 0], FISHER_FLOOR_QUANTILE)
        return fisher.clamp_min(floor) ** -power


def channel_divisor(
    observer: ActivationObserver | None,
    weight: torch.Tensor,
    config: SpikeConfig,
    fisher_level: float | None = None,
) -> torch.Tensor:
    """Per-channel divisor ``d`` (outlier migration, Fisher shaping and per-channel thresholds),
    float32 ``[in]``; ``fisher_level`` as in :func:`static_threshold`."""
    channels = weight.shape[1]
    divisor = torch.ones(channels)
    if config.needs_calibration and (observer is None or observer.rows == 0):
        name = observer.name if observer is not None else "?"
        raise ConfigError(f"layer {name!r} saw no calibration data; run calibrate() first")
    if config.smooth_alpha is not None:
        alpha = config.smooth_alpha
        x_max = observer.max_abs.to(torch.float32).clamp_min(1e-8)
        w_max = weight.detach().abs().amax(0).to(torch.float32).clamp_min(1e-8)
        divisor = x_max**alpha / w_max ** (1 - alpha)
        divisor = divisor / divisor.log().mean().exp()
    if config.fisher_power is not None:
        divisor = divisor * _geo_normalised(observer.fisher_weights(config.fisher_power))
    if config.threshold == "static_channel":
        divisor = divisor * static_threshold(
            observer, divisor, config, per_channel=True, fisher_level=fisher_level
        )
    return divisor


def _geo_normalised(values: torch.Tensor) -> torch.Tensor:
    return values / values.log().mean().exp()


def fisher_scale(observers: Iterable[ActivationObserver], power: float) -> float:
    """The model-wide constant ``c = geomean(mean|x_{l,i}| F_{l,i}^p)`` over every channel of every
    layer, so that ``V_{l,i} = c F_{l,i}^-p / k`` is ``mean|x| / k`` for a typical channel."""
    logs = [(o.mean_abs.clamp_min(1e-12) / o.fisher_weights(power)).log() for o in observers]
    return float(torch.cat(logs).mean().exp())


def static_threshold(
    observer: ActivationObserver,
    divisor: torch.Tensor,
    config: SpikeConfig,
    *,
    per_channel: bool,
    fisher_level: float | None = None,
) -> torch.Tensor:
    """Threshold of ``u = x / divisor`` by ``config.rule``: a scalar, or ``[in]`` per channel.

    With ``fisher_power`` it is ``c geomean(F^-p) / k`` (``fisher_level`` = ``c``, from
    :func:`fisher_scale`): the divisor already holds the channel shape ``F_i^-p / geomean``.
    """
    hi = config.count_range[1]
    if config.fisher_power is not None:
        if fisher_level is None:
            raise ConfigError("fisher_power static thresholds need the model-wide fisher_scale")
        level = observer.fisher_weights(config.fisher_power).log().mean().exp()
        value = fisher_level * level / config.k * torch.ones(divisor.shape if per_channel else ())
    elif config.rule == "mean_abs":
        mean = observer.mean_abs / divisor
        value = mean if per_channel else mean.mean()
        value = value / config.k
    elif config.rule == "max":
        peak = observer.max_abs.to(torch.float32) / divisor
        value = (peak if per_channel else peak.max()) / hi
    else:
        sample = observer.sample / divisor
        q = config.percentile / 100
        value = (torch.quantile(sample, q, dim=0) if per_channel else _quantile(sample, q)) / hi
    return torch.where(value > 0, value, torch.ones_like(value)).to(torch.float32)


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile of all entries (``torch.quantile`` refuses inputs over 16M elements)."""
    flat = values.flatten()
    index = min(int(round(q * (flat.numel() - 1))), flat.numel() - 1)
    return flat.kthvalue(index + 1).values
