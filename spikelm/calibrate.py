"""Calibration: observers on the inputs of linear layers, and the rules that turn what they saw
into per-channel divisors and static thresholds.

An observer keeps, per input channel ``j`` of a layer: the number of rows seen, ``sum |x_j|``,
``max |x_j|``, and a seeded bottom-k reservoir of whole rows (for percentiles). From those:

    d_j   = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)        (outlier migration; geo-mean 1)
    u     = x / d
    static_tensor:   V = mean|u| / k  |  P_p(|u|) / hi  |  max|u| / hi          (rule)
    static_channel:  V_j likewise per channel, folded into d (d_j <- d_j V_j, then V = 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.neurons import check_finite


class ActivationObserver:
    """Running statistics of one layer's input, gathered by a forward pre-hook."""

    def __init__(self, name: str, channels: int, max_rows: int, seed: int) -> None:
        """``max_rows = 0`` keeps no row sample (only percentiles need one)."""
        self.name = name
        self.rows = 0
        self.sum_abs = torch.zeros(channels, dtype=torch.float64)
        self.max_abs = torch.zeros(channels, dtype=torch.float64)
        self.max_rows = max_rows
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

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.sum_abs / max(self.rows, 1)).to(torch.float32)


def _attach(model: nn.Module) -> dict[str, ActivationObserver]:
    return getattr(model, "_spikelm_observers", {})


def prepare(model: nn.Module, config: SpikeConfig) -> nn.Module:
    """Attach an observer to the input of every layer ``config`` converts; returns ``model``."""
    from spikelm.convert import target_linears

    targets = target_linears(model, config)
    if not targets:
        raise ConfigError(
            "no nn.Linear layer matches the include/keep_dense patterns "
            f"(include={list(config.include)}, keep_dense={list(config.keep_dense)})"
        )
    observers: dict[str, ActivationObserver] = {}
    handles = []
    needs_sample = config.threshold != "dynamic" and config.rule == "percentile"
    rows = config.max_calib_rows if needs_sample else 0
    for name, linear in targets.items():
        observer = ActivationObserver(name, linear.in_features, rows, config.seed)
        observers[name] = observer
        handles.append(linear.register_forward_pre_hook(lambda _m, a, o=observer: o.observe(a[0])))
    model._spikelm_observers = observers
    model._spikelm_hooks = handles
    model._spikelm_config = config
    return model


def _default_run(model: nn.Module, batch: Any) -> None:
    model(batch, **_calibration_kwargs(model))


def _calibration_kwargs(model: nn.Module) -> dict[str, Any]:
    """For transformers causal LMs: no KV cache, and only the last position's logits unless the
    output projection itself is calibrated (``[B, L, vocab]`` float logits are often the largest
    tensor of a calibration forward)."""
    if not type(model).__module__.startswith("transformers."):
        return {}
    import inspect

    accepted = inspect.signature(model.forward).parameters
    kwargs: dict[str, Any] = {}
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    observed = {id(model.get_submodule(name)) for name in _attach(model)}
    if "logits_to_keep" in accepted and head is not None and id(head) not in observed:
        kwargs["logits_to_keep"] = 1
    return kwargs


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any] = _default_run,
    *,
    progress: bool = True,
) -> nn.Module:
    """Run ``run(model, batch)`` on each calibration batch (token ids) with a progress bar."""
    if not _attach(model):
        raise ConfigError("calibrate() needs a model returned by prepare()")
    batches = list(batches)
    if not batches:
        raise ConfigError("the calibration set is empty: give at least one text or token batch")
    was_training = model.training
    model.eval()
    # disable=None draws the bar only on a terminal, so logs and pipes get no bar lines
    bar = tqdm(batches, desc="calibrating", unit="batch", disable=None if progress else True)
    for batch in bar:
        run(model, batch)
    model.train(was_training)
    return model


def detach_observers(model: nn.Module) -> dict[str, ActivationObserver]:
    """Remove the hooks ``prepare`` added and return the observers."""
    for handle in getattr(model, "_spikelm_hooks", []):
        handle.remove()
    observers = _attach(model)
    for attribute in ("_spikelm_observers", "_spikelm_hooks"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    return observers


def channel_divisor(
    observer: ActivationObserver | None, weight: torch.Tensor, config: SpikeConfig
) -> torch.Tensor:
    """Per-channel divisor ``d`` (outlier migration and per-channel thresholds), float32 ``[in]``."""
    channels = weight.shape[1]
    divisor = torch.ones(channels)
    needs_data = config.smooth_alpha is not None or config.threshold != "dynamic"
    if needs_data and (observer is None or observer.rows == 0):
        name = observer.name if observer is not None else "?"
        raise ConfigError(f"layer {name!r} saw no calibration data; run calibrate() first")
    if config.smooth_alpha is not None:
        alpha = config.smooth_alpha
        x_max = observer.max_abs.to(torch.float32).clamp_min(1e-8)
        w_max = weight.detach().abs().amax(0).to(torch.float32).clamp_min(1e-8)
        divisor = x_max**alpha / w_max ** (1 - alpha)
        divisor = divisor / divisor.log().mean().exp()
    if config.threshold == "static_channel":
        divisor = divisor * static_threshold(observer, divisor, config, per_channel=True)
    return divisor


def static_threshold(
    observer: ActivationObserver,
    divisor: torch.Tensor,
    config: SpikeConfig,
    *,
    per_channel: bool,
) -> torch.Tensor:
    """Threshold of ``u = x / divisor`` by ``config.rule``: a scalar, or ``[in]`` per channel."""
    hi = config.count_range[1]
    if config.rule == "mean_abs":
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
