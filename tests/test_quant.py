"""int8 weight quantization: codes in range, per-group scales, bounded error; the W8A8 baseline."""

from __future__ import annotations

import pytest
import torch

from spikelm.errors import ConfigError
from spikelm.quant import (
    dequantize_weight,
    fake_quant_activation,
    group_count,
    quantize_weight,
)


@pytest.mark.parametrize("group_size", [None, 16, 64])
@pytest.mark.parametrize("bits", [4, 8])
def test_codes_stay_in_the_symmetric_range_and_error_is_half_a_step(group_size, bits) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 64, generator=g) * torch.logspace(-2, 1, 64)  # wide column spread
    weight[3, 5] = 50.0  # an outlier
    codes, scale = quantize_weight(weight, bits, group_size)
    q_max = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8
    assert int(codes.abs().max()) <= q_max
    assert scale.shape == (32, group_count(64, group_size))
    error = (dequantize_weight(codes, scale) - weight).abs()
    step = scale.repeat_interleave(64 // scale.shape[1], dim=1)
    assert bool((error <= step / 2 + 1e-6).all())


def test_groups_must_divide_the_input_dim() -> None:
    with pytest.raises(ConfigError, match="does not divide"):
        quantize_weight(torch.ones(4, 100), 8, 64)
    assert group_count(100, 128) == 1


def test_zero_rows_quantize_to_zero_without_nan() -> None:
    codes, scale = quantize_weight(torch.zeros(3, 8), 8, None)
    assert torch.equal(dequantize_weight(codes, scale), torch.zeros(3, 8))


def test_fake_quant_activation_is_per_token_absmax() -> None:
    x = torch.tensor([[1.0, -127.0, 0.4], [0.0, 0.0, 0.0]])
    assert torch.equal(
        fake_quant_activation(x), torch.tensor([[1.0, -127.0, 0.0], [0.0, 0.0, 0.0]])
    )
