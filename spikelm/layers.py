"""``SpikingLinear``: a linear layer driven by spike trains, with integer weights.

For an input ``x[..., in]``:

    u      = x / d                                  (d: per-channel divisor from calibration)
    V_th   = mean|u| / k  (dynamic, per token)  or  a calibrated constant (static)
    s_int  = clamp(round(u / V_th), lo, hi)          (the adaptive-threshold neuron)
    V_out  = g * V_th                                (decode gain g, 1 unless a recipe set it)
    y      = V_out * sum_t c_t W_q' s_t * scale + b  (W_q' = int codes of W diag(d))

The divisor ``d`` carries outlier migration and per-channel static thresholds, folded into the
weights before they are quantized. The matmul itself is done by a backend (``spikelm.backends``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from spikelm.backends import select
from spikelm.config import SpikeConfig
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError
from spikelm.estimators import SpikeStats
from spikelm.neurons import adaptive_threshold_spikes, decode_level, dynamic_threshold
from spikelm.quant import dequantize_weight, group_count


class SpikingLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` computing from spike counts and int8 weights."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: SpikeConfig,
        *,
        bias: bool = True,
        backend: str = "torch",
        name: str = "",
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.coding, self.steps, self.k = config.coding, config.steps, config.k
        self.weight_bits = config.weight_bits
        self.count_range = config.count_range
        self.dynamic = config.threshold == "dynamic"
        self.spike_cost = config.spike_cost
        self.gain = 1.0
        self.backend = backend
        groups = group_count(in_features, config.group_size)
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("input_divisor", torch.ones(in_features))
        self.register_buffer("threshold", None if self.dynamic else torch.ones(()))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._derived: dict[str, tuple[tuple, torch.Tensor]] = {}
        self.name = name
        self.probe: Probe | None = None
        """``probe(layer, counts)`` on every forward: statistics, recording (see :func:`probed`)."""

    NEURON = ("k", "steps", "gain")
    """The neuron parameters a layer may hold apart from its config (a recipe sets them per
    layer; :meth:`neuron_overrides`). ``gain`` is not a config field: its default is 1."""

    def set_neuron(
        self, *, k: float | None = None, steps: int | None = None, gain: float | None = None
    ) -> None:
        """Set this layer's threshold divisor ``k``, its time steps ``T`` (the count range
        follows ``T``) and/or its decode gain ``g`` (rounded to float32, as it is applied);
        cached layouts are dropped. ``k`` and ``T`` are checked as ``SpikeConfig`` checks them,
        ``g`` must be a positive finite number."""
        checked = SpikeConfig(coding=self.coding, k=self.k if k is None else k,
                              steps=self.steps if steps is None else steps)  # fmt: skip
        if gain is not None:
            self.gain = checked_gain(gain)
        self.k, self.steps, self.count_range = checked.k, checked.steps, checked.count_range
        self.clear_derived()

    def neuron_overrides(self, config: SpikeConfig) -> dict[str, float | int]:
        """The neuron parameters of :data:`NEURON` in which this layer differs from ``config``
        (a gain of 1 is the default)."""
        defaults = {"k": config.k, "steps": config.steps, "gain": 1.0}
        return {key: getattr(self, key) for key in self.NEURON
                if getattr(self, key) != defaults[key]}  # fmt: skip

    def _weights_token(self) -> tuple:
        """What the derived tensors depend on: device, storage and version of the weight buffers."""
        token: list = [self.weight_q.device]
        for tensor in (self.weight_q, self.weight_scale):
            token.append(tensor.data_ptr())
            try:
                token.append(tensor._version)
            except RuntimeError:  # inference tensors keep no version counter
                token.append(None)
        return tuple(token)

    def derived(self, key: str, make: Callable[[SpikingLinear], torch.Tensor]) -> torch.Tensor:
        """A tensor computed from the weights by ``make(self)``, cached per device.

        Backends keep their weight layouts here (the dequantized float weight, the transposed int8
        codes ``W_q^T``, ...). An entry is rebuilt when the weight buffers move to another device,
        are replaced or are changed in place, and every entry is dropped by ``load_state_dict``;
        entries of another device are dropped when one for the current device is built.
        """
        token = self._weights_token()
        cache = getattr(self, "_derived", None) or {}
        entry = cache.get(key)
        if entry is not None and entry[0] == token:
            return entry[1]
        with torch.no_grad():
            value = make(self)
        device = self.weight_q.device
        self._derived = {k: v for k, v in cache.items() if v[0][0] == device}
        self._derived[key] = (token, value)
        return value

    def clear_derived(self) -> None:
        """Drop every cached derived tensor (they are rebuilt on next use)."""
        self._derived = {}

    def dequantized_weight(self) -> torch.Tensor:
        """``W_q * scale`` (float32 ``[out, in]``), computed once per device and cached."""
        return self.derived(
            "dequantized", lambda layer: dequantize_weight(layer.weight_q, layer.weight_scale)
        )

    def transposed_weight_q(self) -> torch.Tensor:
        """``W_q^T`` (int8 ``[in, out]``, contiguous: one input channel's column is one row)."""
        return self.derived("weight_q_t", lambda layer: layer.weight_q.t().contiguous())

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.clear_derived()
        super()._load_from_state_dict(*args, **kwargs)

    def neuron_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u [M, in], V_th [M, 1])``: the rows ``x [M, in]`` scaled by the channel divisor,
        and their thresholds (``mean|u| / k`` per row, or the calibrated constant)."""
        u = x.to(torch.float32) / self.input_divisor
        if self.dynamic:
            return u, dynamic_threshold(u, self.k)
        return u, self.threshold.reshape(1, 1).expand(u.shape[0], 1)

    def spike_counts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_int [M, in], V_th [M, 1])`` for the input rows ``x [M, in]``."""
        u, v_th = self.neuron_input(x)
        counts, _ = adaptive_threshold_spikes(
            u,
            threshold=v_th,
            count_range=self.count_range,
            where=f"input of layer {self.name!r}",
            spike_cost=self.spike_cost,
            events=self._events,
        )
        return counts, v_th

    def _events(self, counts: torch.Tensor) -> torch.Tensor:
        return get_coder(self.coding).events(counts, self.steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = select(self.backend, x)
        fused = None
        if (
            backend.forward is not None
            and self.out_features
            and (
                x.is_cpu
                if backend.forward_device == "cpu"
                else x.device.type == backend.forward_device
            )
        ):  # neuron and matmul in one call; the same counts, bias included
            fused = backend.forward(self, x, counts=self.probe is not None)
        if fused is not None:
            y, counts = fused
            if counts is not None:
                self.probe(self, counts.to(torch.float32))  # as spike_counts gives them
        else:
            rows = x.reshape(-1, self.in_features)
            counts, v_th = self.spike_counts(rows)
            y = backend.linear(self, counts, decode_level(v_th, self.gain))  # notes its path
            if self.probe is not None:
                self.probe(self, counts)
            if self.bias is not None:
                y = y + self.bias
            if x.dim() != 2:
                y = y.reshape(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else "static"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"coding={self.coding}, T={self.steps}, k={self.k}, threshold={mode}, "
            + (f"gain={self.gain}, " if self.gain != 1.0 else "")
            + f"backend={self.backend}"
        )


def checked_gain(gain: object) -> float:
    """A decode gain as layers hold it: a positive finite number, rounded to float32."""
    value = math.nan
    if isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(gain):
        value = float(torch.tensor(gain, dtype=torch.float32))
    if not 0 < value < math.inf:
        raise ConfigError(f"a decode gain must be a positive finite float32 number, got {gain!r}")
    return value


Probe = Callable[[SpikingLinear, torch.Tensor], None]
"""Called with a layer and the spike counts ``[M, in]`` it computed in a forward."""


def spiking_layers(model: nn.Module) -> dict[str, SpikingLinear]:
    """Every ``SpikingLinear`` of ``model`` by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SpikingLinear)}


@contextlib.contextmanager
def probed(
    layers: dict[str, SpikingLinear], probes: dict[str, Probe]
) -> Iterator[dict[str, Probe]]:
    """Attach ``probes[name]`` to each layer for the block, then detach them."""
    for name, layer in layers.items():
        layer.probe = probes[name]
    try:
        yield probes
    finally:
        for layer in layers.values():
            layer.probe = None


@contextlib.contextmanager
def collect_stats(
    model: nn.Module,
    stats: dict[str, SpikeStats] | None = None,
    rows: torch.Tensor | None = None,
) -> Iterator[dict[str, SpikeStats]]:
    """Firing statistics of every ``SpikingLinear`` in ``model`` while the block runs, added to
    ``stats`` when given (a running total over several blocks). ``rows``: a boolean mask of the
    input rows (tokens) to count, e.g. not padding; applied to every call with that many rows
    (a call with another number, such as a routed expert's, counts all its rows)."""
    layers = spiking_layers(model)
    stats = {} if stats is None else stats
    for name, layer in layers.items():
        stats.setdefault(name, SpikeStats(steps=layer.steps))
    probes = {name: _stats_probe(stats[name], rows) for name in layers}
    with probed(layers, probes):
        yield stats


def _stats_probe(stats: SpikeStats, rows: torch.Tensor | None = None) -> Probe:
    def probe(layer: SpikingLinear, counts: torch.Tensor) -> None:
        if rows is not None and counts.shape[0] == rows.numel():
            counts = counts[rows.to(counts.device)]
        stats.update(counts, get_coder(layer.coding))

    return probe
