"""prepare -> calibrate -> convert on plain modules: what is replaced, what it computes, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spikelm import NonFiniteError
from spikelm.backends import get_backend
from spikelm.calibrate import calibrate, prepare
from spikelm.config import SpikeConfig
from spikelm.convert import convert, spiking
from spikelm.errors import ConfigError
from spikelm.layers import SpikingLinear, collect_stats, spiking_layers
from spikelm.quant import dequantize_weight
from spikelm.targets import target_linears


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 32, bias=False)
        self.lm_head = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.down(torch.relu(self.up(x))))


def _data(seed: int, rows: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(64)
    scale[:4] = 20.0  # outlier channels, as LLM activations have
    return torch.randn(rows, 64, generator=g) * scale


def _model() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


CONFIGS = [
    SpikeConfig(group_size=32),
    SpikeConfig(coding="ternary", steps=48, group_size=None),  # outliers need a long unary train
    SpikeConfig(threshold="static_tensor", rule="percentile", percentile=99.0),
    SpikeConfig(threshold="static_channel", smooth_alpha=0.5),
    SpikeConfig(threshold="static_tensor", rule="max", smooth_alpha=0.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.coding}-{c.threshold}-{c.rule}")
def test_converted_model_tracks_the_ann(config: SpikeConfig) -> None:
    ann = _model()
    snn = spiking(copy.deepcopy(ann), config, [_data(i) for i in range(4)], progress=False)
    assert set(spiking_layers(snn)) == {"up", "down"}
    assert isinstance(snn.lm_head, nn.Linear) and not isinstance(snn.lm_head, SpikingLinear)
    x = _data(99)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(snn(x), ann(x), dim=-1)
    # Quantized activations + int8 weights: the outputs keep their direction (measured ~0.99).
    assert float(cosine.mean()) > 0.95


def test_spiking_layer_equals_dequantized_linear_on_its_own_counts() -> None:
    snn = spiking(_model(), SpikeConfig(group_size=16), [_data(0)], progress=False)
    layer = snn.up
    x = _data(5)
    counts, v_th = layer.spike_counts(x)
    assert bool((counts == counts.round()).all()) and int(counts.abs().max()) <= 255
    x_hat = counts * v_th * layer.input_divisor
    expected = x_hat @ dequantize_weight(layer.weight_q, layer.weight_scale).t() + layer.bias
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("coding", ["bitwise_bidirectional", "ternary", "bitwise_twos_complement"])
def test_dense_backend_matches_the_integer_reference(coding: str) -> None:
    steps = {"ternary": 20, "bitwise_bidirectional": 8, "bitwise_twos_complement": 9}[coding]
    config = SpikeConfig(coding=coding, steps=steps, group_size=32)
    snn = spiking(_model(), config, [_data(0)], progress=False)
    counts, v_th = snn.up.spike_counts(_data(7, rows=16))
    reference = get_backend("reference")(snn.up, counts, v_th)
    dense = get_backend("torch")(snn.up, counts, v_th)
    assert torch.allclose(dense, reference, rtol=1e-5, atol=1e-5)


def test_keep_dense_and_include_patterns_select_layers() -> None:
    model = _model()
    assert set(target_linears(model, SpikeConfig())) == {"up", "down"}
    assert set(target_linears(model, SpikeConfig(keep_dense=()))) == {"up", "down", "lm_head"}
    assert set(target_linears(model, SpikeConfig(include=("d*",)))) == {"down"}
    with pytest.raises(ConfigError, match="no nn.Linear"):
        prepare(model, SpikeConfig(include=("nothing*",)))


def test_stats_count_events_of_the_coding() -> None:
    snn = spiking(_model(), SpikeConfig(), [_data(0)], progress=False)
    x = _data(3, rows=10)
    with collect_stats(snn) as stats, torch.no_grad():
        snn(x)
    up = stats["up"]
    counts, _ = snn.up.spike_counts(x)
    popcount = sum(bin(abs(int(c))).count("1") for c in counts.flatten())
    assert up.events == popcount
    assert up.slots == 10 * 64 and up.tokens == 10
    assert up.silent == int((counts == 0).sum())
    assert 0 < up.firing_rate < 1 and up.spikes_per_channel == pytest.approx(popcount / 640)
    assert snn.up.probe is None  # recording stops with the block


def test_bad_calibration_input_is_refused() -> None:
    model = prepare(_model(), SpikeConfig(threshold="static_tensor"))
    with pytest.raises(ConfigError, match="empty"):
        calibrate(model, [], progress=False)
    bad = _data(0)
    bad[3, 7] = float("nan")
    with pytest.raises(NonFiniteError, match="'up'"):
        calibrate(model, [bad], progress=False)
    fresh = prepare(_model(), SpikeConfig(threshold="static_tensor"))
    with pytest.raises(ConfigError, match="no calibration data"):
        convert(fresh)
    with pytest.raises(ConfigError, match="prepare"):
        convert(_model())


def test_nan_at_run_time_names_the_layer() -> None:
    snn = spiking(_model(), SpikeConfig(), [_data(0)], progress=False)
    x = _data(1)
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="'up'"):
        snn(x)


def test_integer_config_values_become_floats_or_are_refused() -> None:
    """A float field given as an integer is held as a float (torch refuses ints past int64, as a
    fuzzed checkpoint's k = 2**64 found); one past float64 is a config error."""
    config = SpikeConfig(k=2**64, spike_cost=3)
    assert isinstance(config.k, float) and config.k == 2.0**64 and config.spike_cost == 3.0
    with pytest.raises(ConfigError, match="k is out of range: an integer of 401 digits"):
        SpikeConfig(k=10**400)
