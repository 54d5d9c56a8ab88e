"""Symmetric integer weight quantization, per row or per group of input channels.

For a weight ``W[out, in]`` split along ``in`` into groups of ``g`` channels:

    scale[o, j] = max_{i in group j} |W[o, i]| / q_max,        q_max = 2^(bits-1) - 1
    W_q[o, i]   = clamp(round(W[o, i] / scale[o, i // g]), -q_max, q_max)      (int8 storage)
    W_hat       = W_q * scale

The clamp keeps every code inside the symmetric range (SpikingBrain's code lets ~1% of codes fall
outside [-128, 127]); quantization happens once, at conversion, never per forward pass.
A W8A8 fake-quant linear (int8 weights, per-token absmax int8 activations) is the baseline that
shows what spiking costs beyond plain int8.
"""

from __future__ import annotations

import torch
from torch import nn

from spikelm.errors import ConfigError, NonFiniteError


def group_count(in_features: int, group_size: int | None) -> int:
    """Number of weight-scale groups along the input dim (``group_size=None``: one per row)."""
    if group_size is None or group_size >= in_features:
        return 1
    if in_features % group_size:
        raise ConfigError(
            f"group_size {group_size} does not divide in_features {in_features}; "
            "pick a divisor or group_size=None (per row)"
        )
    return in_features // group_size


def quantize_weight(
    weight: torch.Tensor, bits: int = 8, group_size: int | None = 128, *, name: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_q int8 [out, in], scale float32 [out, groups])`` as in the module docstring.

    An all-zero group gets scale 1. Raises :class:`NonFiniteError` (naming the layer ``name``)
    if the weight holds NaN or infinite values (in float32), so no scale is ever non-finite.
    """
    out_features, in_features = weight.shape
    groups = group_count(in_features, group_size)
    q_max = 2 ** (bits - 1) - 1
    # one float32 working copy, then in place: peak ~1x the layer's float size, not ~4x
    work = weight.detach().to(torch.float32, copy=True).reshape(out_features, groups, -1)
    scale = torch.maximum(work.amax(-1), work.amin(-1).neg_()) / q_max
    _check_finite_scale(scale, name)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = work.div_(scale.unsqueeze(-1)).round_().clamp_(-q_max, q_max)
    return codes.reshape(out_features, in_features).to(torch.int8), scale


def _check_finite_scale(scale: torch.Tensor, name: str) -> None:
    """Raise unless every group's absmax is finite (``amax`` propagates NaN, so this covers it)."""
    bad = (~torch.isfinite(scale)).nonzero()
    if len(bad):
        row = int(bad[0, 0])
        kind = "NaN" if bool(scale[tuple(bad[0])].isnan()) else "infinite"
        raise NonFiniteError(
            f"{name or 'weight'}: cannot quantize a weight with {kind} values "
            f"(first in output row {row})"
        )


def dequantize_weight(weight_q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W_hat = W_q * scale`` as float32 ``[out, in]``."""
    out_features, in_features = weight_q.shape
    grouped = weight_q.to(torch.float32).reshape(out_features, scale.shape[1], -1)
    return (grouped * scale.unsqueeze(-1)).reshape(out_features, in_features)


def fake_quant_activation(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token symmetric absmax quantize-dequantize over the last dim."""
    q_max = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True) / q_max
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x / scale).clamp(-q_max, q_max) * scale


class W8A8Linear(nn.Module):
    """Fake-quant baseline: int8 weights (per row/group) and per-token int8 activations."""

    def __init__(
        self, linear: nn.Linear, bits: int = 8, group_size: int | None = 128, *, name: str = ""
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = bits
        weight_q, scale = quantize_weight(linear.weight, bits, group_size, name=name)
        self.register_buffer("weight", dequantize_weight(weight_q, scale))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = fake_quant_activation(x.to(torch.float32), self.bits)
        return nn.functional.linear(x_q, self.weight, self.bias).to(x.dtype)
