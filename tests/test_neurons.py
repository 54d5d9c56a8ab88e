"""Adaptive-threshold neuron vs the T-step soft-reset IF neuron it collapses from."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelm import NonFiniteError
from spikelm.neurons import (
    AdaptiveThresholdNeuron,
    IFNeuron,
    adaptive_threshold_spikes,
    dynamic_threshold,
    if_run,
    impulse,
    spike_counts,
)


def test_dynamic_threshold_is_mean_abs_over_channels_divided_by_k() -> None:
    x = torch.tensor([[1.0, -2.0, 3.0, -6.0], [0.0, 0.0, 0.0, 0.0]])
    v_th = dynamic_threshold(x, k=3.0)
    assert v_th.shape == (2, 1)
    assert torch.allclose(v_th[:, 0], torch.tensor([1.0, 0.0]))
    counts, _ = adaptive_threshold_spikes(x, k=3.0)
    assert counts.tolist() == [[1.0, -2.0, 3.0, -6.0], [0.0, 0.0, 0.0, 0.0]]


@settings(max_examples=80, deadline=None)
@given(
    numerators=st.lists(st.integers(-400, 400), min_size=1, max_size=32),
    exponent=st.integers(-4, 4),
)
def test_if_simulation_equals_rounded_count_on_exact_inputs(numerators, exponent) -> None:
    # x = m * V_th / 4 with V_th a power of two: every membrane value is exact in float32,
    # ties (m = 2 mod 4) included, so the T-step IF and the one-step form must agree exactly.
    v_th = 2.0**exponent
    x = torch.tensor(numerators, dtype=torch.float32) * v_th / 4
    one_step = spike_counts(x, torch.tensor(v_th))
    steps = 101  # >= max |count| = 100
    simulated = if_run(impulse(x, steps), v_th).to(torch.float32).sum(0)
    assert torch.equal(simulated, one_step)
    # ties round toward zero: 2.5 -> 2, -2.5 -> -2, +-0.5 -> 0
    tie = torch.tensor([2.5, -2.5, 0.5, -0.5, 0.75]) * v_th
    assert spike_counts(tie, torch.tensor(v_th)).tolist() == [2.0, -2.0, 0.0, 0.0, 1.0]


def test_if_simulation_equals_rounded_count_on_random_activations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 512, generator=g) * 2
    counts, v_th = adaptive_threshold_spikes(x, k=3.0)
    # keep inputs whose |x|/V_th is not within 1e-3 of a half-integer, where float order matters
    frac = (x.abs() / v_th) % 1.0
    clear = (frac - 0.5).abs() > 1e-3
    simulated = if_run(impulse(x / v_th, 64), 1.0).to(torch.float32).sum(0)
    assert clear.float().mean() > 0.99
    assert torch.equal(simulated[clear], counts[clear])


def test_floor_rounding_is_what_a_membrane_starting_at_zero_gives() -> None:
    x = torch.tensor([0.4, 0.6, 1.0, 1.6, 2.9, -0.6, -1.6, -2.9])
    floor = if_run(impulse(x, 8), 1.0, rounding="floor").sum(0).tolist()
    rounded = if_run(impulse(x, 8), 1.0, rounding="round").sum(0).tolist()
    assert floor == [0, 0, 1, 1, 2, 0, -1, -2]
    assert rounded == [0, 1, 1, 2, 3, -1, -2, -3]
    # floor mode fires at exactly V_th; round mode does not fire at exactly V_th / 2
    edge = impulse(torch.tensor([1.0, 0.5]), 4)
    assert if_run(edge, 1.0, rounding="floor").sum(0).tolist() == [1, 0]
    assert if_run(edge, 1.0).sum(0).tolist() == [1, 0]


def test_if_saturates_at_T_spikes_and_unsigned_ignores_negatives() -> None:
    x = torch.tensor([10.0, -10.0])
    assert if_run(impulse(x, 4), 1.0).sum(0).tolist() == [4, -4]
    assert if_run(impulse(x, 4), 1.0, signed=False).sum(0).tolist() == [4, 0]
    assert IFNeuron(1.0)(impulse(x, 4)).shape == (4, 2)


def test_static_thresholds_per_tensor_and_per_channel() -> None:
    x = torch.tensor([[1.0, 10.0], [-2.0, 20.0]])
    per_tensor = AdaptiveThresholdNeuron(threshold=torch.tensor(2.0))
    per_channel = AdaptiveThresholdNeuron(threshold=torch.tensor([1.0, 10.0]))
    assert per_tensor(x)[0].tolist() == [[0.0, 5.0], [-1.0, 10.0]]  # 1/2 is a tie: toward 0
    assert per_channel(x)[0].tolist() == [[1.0, 1.0], [-2.0, 2.0]]
    assert "threshold" in per_channel.state_dict()


def test_counts_are_clamped_to_the_coding_range() -> None:
    x = torch.tensor([[100.0, -100.0] + [1.0] * 98])  # V_th = 2.98 / 3
    counts, _ = adaptive_threshold_spikes(x, k=3.0, count_range=(-7, 7))
    assert counts.tolist()[0][:2] == [7.0, -7.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activations_raise_a_clear_error(bad: float) -> None:
    x = torch.ones(2, 4)
    x[1, 2] = bad
    with pytest.raises(NonFiniteError, match="NaN|inf"):
        adaptive_threshold_spikes(x)
    with pytest.raises(NonFiniteError):
        if_run(impulse(x, 4), 1.0)


def test_error_aware_rounding_trades_error_for_fewer_spikes() -> None:
    from spikelm.encoders import get_coder
    from spikelm.neurons import error_aware_counts

    coder = get_coder("bitwise_bidirectional")

    def events(c):
        return coder.events(c, 8)

    a = torch.tensor([0.3, 0.6, 2.7, 6.6, 7.2, 7.6, 300.0])
    assert error_aware_counts(a, 0.0, events, 255).tolist() == [0, 1, 3, 7, 7, 8, 255]
    # 6.6: 7 costs 3 spikes, 6 costs 2 (error 0.6); 2.7 -> 2 saves a spike at error 0.7
    assert error_aware_counts(a, 0.5, events, 255).tolist() == [0, 0, 2, 6, 8, 8, 255]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g).abs() * 4
    spikes, errors = [], []
    for cost in (0.0, 0.3, 1.0):
        counts = error_aware_counts(x, cost, events, 255)
        spikes.append(int(events(counts.to(torch.int64)).sum()))
        errors.append(float(((x - counts) ** 2).mean()))
    assert spikes[0] > spikes[1] > spikes[2]
    assert errors[0] < errors[1] < errors[2]
    signed, _ = adaptive_threshold_spikes(
        -x, k=3.0, count_range=(-255, 255), spike_cost=0.3, events=events
    )
    assert bool((signed <= 0).all())
