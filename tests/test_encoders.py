"""Exact spike coders: lossless round trips, spike counts as in the design table, range errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelm import CountRangeError, get_coder
from spikelm.encoders import CODERS, DeltaCoder, LatencyCoder, RateCoder
from spikelm.errors import ConfigError

EXACT = sorted(CODERS)


def _popcount(n: int) -> int:
    return bin(n).count("1")


# Spike events a count fires, straight from the table in spiking-scheme.md §2.
EXPECTED_EVENTS = {
    "binary": lambda n, T: n,
    "ternary": lambda n, T: abs(n),
    "bitwise": lambda n, T: _popcount(n),
    "bitwise_bidirectional": lambda n, T: _popcount(abs(n)),
    "bitwise_twos_complement": lambda n, T: _popcount(n & ((1 << T) - 1)),
}


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8])
def test_every_count_in_range_round_trips(name: str, steps: int) -> None:
    coder = get_coder(name)
    lo, hi = coder.count_range(steps)
    counts = torch.arange(lo, hi + 1)
    spikes = coder.encode(counts, steps)
    assert spikes.shape == (steps, counts.numel())
    assert spikes.dtype == torch.int8
    allowed = {-1, 0, 1} if coder.signed else {0, 1}
    assert set(spikes.unique().tolist()) <= allowed
    assert torch.equal(coder.decode(spikes), counts)


@pytest.mark.parametrize("name", EXACT)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_and_event_counts_property(name: str, data: st.DataObject) -> None:
    coder = get_coder(name)
    steps = data.draw(st.integers(1, 16), label="T")
    lo, hi = coder.count_range(steps)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=40), label="counts")
    counts = torch.tensor(values)
    spikes = coder.encode(counts, steps)
    assert torch.equal(coder.decode(spikes), counts)
    events = spikes.ne(0).sum(0).tolist()
    assert events == [EXPECTED_EVENTS[name](n, steps) for n in values]
    assert torch.equal(coder.events(counts, steps), torch.tensor(events))


@pytest.mark.parametrize("name", EXACT)
@settings(max_examples=60, deadline=None)
@given(n=st.integers(-5000, 5000))
def test_steps_needed_is_the_fewest_steps_that_hold_the_count(name: str, n: int) -> None:
    coder = get_coder(name)
    if coder.count_range(1)[0] >= 0 and n < 0:
        with pytest.raises(CountRangeError):
            coder.steps_needed(torch.tensor([n]))
        return
    need = int(coder.steps_needed(torch.tensor([n]))[0])
    if need >= 1:
        lo, hi = coder.count_range(need)
        assert lo <= n <= hi
    if need >= 2:
        lo, hi = coder.count_range(need - 1)
        assert not lo <= n <= hi
    if need == 0:
        assert n == 0


def test_steps_needed_matches_design_table() -> None:
    n = torch.tensor([0, 1, 5, 7, 8, 255])
    assert get_coder("binary").steps_needed(n).tolist() == [0, 1, 5, 7, 8, 255]
    assert get_coder("bitwise").steps_needed(n).tolist() == [0, 1, 3, 3, 4, 8]
    assert get_coder("ternary").steps_needed(-n).tolist() == [0, 1, 5, 7, 8, 255]
    assert get_coder("bitwise_bidirectional").steps_needed(-n).tolist() == [0, 1, 3, 3, 4, 8]
    # two's complement: 7 needs 4 bits (0111), -8 needs 4 bits (1000)
    assert get_coder("bitwise_twos_complement").steps_needed(
        torch.tensor([7, -8, -9])
    ).tolist() == [
        4,
        4,
        5,
    ]


@pytest.mark.parametrize("name", EXACT)
def test_out_of_range_counts_raise_or_saturate(name: str) -> None:
    coder = get_coder(name)
    lo, hi = coder.count_range(3)
    too_big = torch.tensor([hi + 1, lo])
    with pytest.raises(CountRangeError, match=r"T=3"):
        coder.encode(too_big, 3)
    saturated = coder.decode(coder.encode(too_big, 3, saturate=True))
    assert saturated.tolist() == [hi, lo]
    too_small = torch.tensor([lo - 1])
    with pytest.raises(CountRangeError):
        coder.encode(too_small, 3)


def test_bad_counts_and_steps_are_refused() -> None:
    coder = get_coder("ternary")
    with pytest.raises(CountRangeError, match="whole"):
        coder.encode(torch.tensor([1.5]), 4)
    with pytest.raises(CountRangeError, match="NaN"):
        coder.encode(torch.tensor([float("nan")]), 4)
    with pytest.raises(ConfigError, match="time steps"):
        coder.encode(torch.tensor([1]), 0)
    with pytest.raises(ConfigError, match="bitwise_bidirectional"):
        get_coder("morse")


def test_multidimensional_counts_keep_their_shape() -> None:
    coder = get_coder("bitwise_bidirectional")
    counts = torch.randint(-255, 256, (3, 4, 5), generator=torch.Generator().manual_seed(0))
    spikes = coder.encode(counts, 8)
    assert spikes.shape == (8, 3, 4, 5)
    assert torch.equal(coder.decode(spikes), counts)


def test_rate_coding_is_seeded_and_unbiased() -> None:
    x = torch.linspace(0, 1, 11)
    a = RateCoder(seed=7).encode(x, 4000)
    b = RateCoder(seed=7).encode(x, 4000)
    assert torch.equal(a, b)
    assert not torch.equal(a, RateCoder(seed=8).encode(x, 4000))
    # 4000 Bernoulli draws: std of the mean <= 0.5/sqrt(4000) ~ 0.008; allow 5 sigma.
    assert torch.allclose(RateCoder().decode(a), x, atol=0.04)
    assert a[:, 0].sum() == 0 and a[:, -1].sum() == 4000
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        RateCoder().encode(torch.tensor([1.5]), 4)


def test_latency_coding_fires_once_and_decodes_within_half_a_step() -> None:
    x = torch.rand(200, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    steps = 17
    spikes = LatencyCoder().encode(x, steps)
    assert spikes.sum(0).eq(1).all()
    assert (LatencyCoder().decode(spikes) - x).abs().max() <= 0.5 / (steps - 1) + 1e-6
    brighter_first = spikes.float().argmax(0)
    order = torch.argsort(x)
    assert (brighter_first[order].diff() <= 0).all()


def test_delta_coding_tracks_a_slow_signal_within_threshold() -> None:
    t = torch.linspace(0, 6.28, 300)
    x = torch.stack([torch.sin(t), torch.cos(t)], 1)
    coder = DeltaCoder(threshold=0.05)  # the signal moves < 0.03 per step
    events = coder.encode(x)
    assert set(events.unique().tolist()) <= {-1, 0, 1}
    assert events.ne(0).float().mean() < 0.7
    assert (coder.decode(events, x[0]) - x).abs().max() <= 0.05 + 1e-6
