"""``SpikingLinear``: a linear layer driven by spike trains, with integer weights.

For an input ``x[..., in]``:

    u      = x / d                                  (d: per-channel divisor from calibration)
    V_th   = mean|u| / k  (dynamic, per token)  or  a calibrated constant (static)
    s_int  = clamp(round(u / V_th), lo, hi)          (the adaptive-threshold neuron)
    y      = V_th * sum_t c_t W_q' s_t * scale + b   (W_q' = int codes of W diag(d))

The divisor ``d`` carries outlier migration and per-channel static thresholds, folded into the
weights before they are quantized. The matmul itself is done by a backend (``spikelm.backends``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from spikelm.backends import get_backend
from spikelm.config import SpikeConfig
from spikelm.encoders import get_coder
from spikelm.estimators import SpikeStats
from spikelm.neurons import adaptive_threshold_spikes
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
        self.count_range = config.count_range
        self.dynamic = config.threshold == "dynamic"
        self.backend = backend
        groups = group_count(in_features, config.group_size)
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("input_divisor", torch.ones(in_features))
        self.register_buffer("threshold", None if self.dynamic else torch.ones(()))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._dequantized: torch.Tensor | None = None
        self.name = name
        self.stats: SpikeStats | None = None

    def dequantized_weight(self) -> torch.Tensor:
        """``W_q * scale`` (float32), computed once and cached for dense backends."""
        cached = self._dequantized
        if cached is None or cached.device != self.weight_q.device:
            cached = dequantize_weight(self.weight_q, self.weight_scale)
            self._dequantized = cached
        return cached

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._dequantized = None
        super()._load_from_state_dict(*args, **kwargs)

    def spike_counts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_int [M, in], V_th [M, 1])`` for the input rows ``x [M, in]``."""
        u = x.to(torch.float32) / self.input_divisor
        counts, v_th = adaptive_threshold_spikes(
            u,
            k=self.k,
            threshold=self.threshold,
            count_range=self.count_range,
            where=f"input of layer {self.name!r}",
        )
        return counts, v_th.reshape(-1, 1).expand(u.shape[0], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        counts, v_th = self.spike_counts(rows)
        if self.stats is not None:
            self.stats.update(counts, get_coder(self.coding))
        y = get_backend(self.backend)(self, counts, v_th)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else "static"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"coding={self.coding}, T={self.steps}, k={self.k}, threshold={mode}, "
            f"backend={self.backend}"
        )


@contextlib.contextmanager
def collect_stats(model: nn.Module) -> Iterator[dict[str, SpikeStats]]:
    """Record firing statistics of every ``SpikingLinear`` in ``model`` while the block runs."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SpikingLinear)}
    stats = {name: SpikeStats(steps=layer.steps) for name, layer in layers.items()}
    for name, layer in layers.items():
        layer.stats = stats[name]
    try:
        yield stats
    finally:
        for layer in layers.values():
            layer.stats = None
