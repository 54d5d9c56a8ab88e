"""Energy models against figures computed by hand, profiles' validation, and the verdicts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spikelm.errors import ConfigError
from spikelm.estimators.energy import (
    ChipProfile,
    Horowitz45,
    Lemaire,
    energy_models,
    get_energy_model,
    qnn_bits,
    spikes_per_synapse,
    spikingbrain_savings,
    sram_access_pj,
    verdicts,
)
from spikelm.estimators.profiles import load_profile, shipped_profiles
from spikelm.estimators.workload import LayerWork

# A spiking layer: M=2 tokens, N=4 inputs, O=3 outputs, T=3 steps, E=5 events.
#   SOP = 5 * 3 = 15, neuron updates = 2 * 4 * 3 = 24, ANN MACs = 2 * 4 * 3 = 24.
# A dense layer: 2 tokens, 4 -> 5: 40 MACs in every network.
SPIKING = LayerWork("q", "spiking", in_features=4, out_features=3, tokens=2, steps=3, events=5)
DENSE = LayerWork("head", "dense", in_features=4, out_features=5, tokens=2)
WORKS = [SPIKING, DENSE]
# QNN: default levels T + 1 = 4 -> 2 bits -> MAC 0.23 * 2 / 8 = 0.0575 pJ.
QNN_MAC = 0.23 * 2 / 8


def test_counts_of_the_fixture():
    assert (SPIKING.sops, SPIKING.neuron_updates, SPIKING.macs, DENSE.macs) == (15, 24, 24, 40)
    assert spikes_per_synapse(WORKS) == pytest.approx(5 / 8)


def test_spikingbrain_published_arithmetic():
    energy, vs_fp16, vs_int8 = spikingbrain_savings(1.13)
    assert energy == pytest.approx(1.13 * 0.03)
    assert f"{energy:.3f}" == "0.034"
    assert round(vs_fp16, 1) == -97.7
    assert round(vs_int8, 1) == -85.2
    # Without SpikingBrain's rounding of E to 0.034 pJ, INT8 comes out at -85.3%.
    exact = spikingbrain_savings(1.13, decimals=None)
    assert round(exact.vs_fp16_pct, 1) == -97.7
    assert round(exact.vs_int8_pct, 1) == -85.3


def test_spikingbrain_model():
    pricing = get_energy_model("spikingbrain").price(WORKS)
    assert pricing.snn.total == pytest.approx(0.03 * 15 + 1.5 * 40)
    assert pricing.snn_dense.total == pytest.approx(1.5 * 40)
    assert pricing.snn.memory == 0
    assert set(pricing.baselines) == {"ann_fp16", "ann_int8", "qnn"}
    assert pricing.baselines["ann_fp16"].total == pytest.approx(1.5 * 64)
    assert pricing.baselines["ann_int8"].total == pytest.approx(0.23 * 64)
    assert pricing.baselines["qnn"].total == pytest.approx(QNN_MAC * 24 + 1.5 * 40)
    # Per MAC-equivalent of the spiking layer: spikes per channel x 0.03 pJ.
    layer = pricing.layers[0]
    assert layer.snn.total / SPIKING.macs == pytest.approx(SPIKING.spikes_per_synapse * 0.03)


def test_horowitz_presets_match_spikingjelly():
    table = {
        "fp32": (4.6, 0.9),
        "fp16": (1.5, 0.4),
        "int8": (0.23, 0.03),
    }
    for preset, (mac, add) in table.items():
        model = Horowitz45(preset, "int8" if preset == "int8" else None)
        assert (model.e_mac, model.e_ac) == (mac, add)
    assert Horowitz45().e_ac == 0.1  # int8 weight into an int32 accumulator: an int32 add
    assert get_energy_model("horowitz45") == Horowitz45("int8", "int32")
    assert get_energy_model("horowitz45-fp16") == Horowitz45("fp16")


@pytest.mark.parametrize(
    ("name", "e_ac", "e_mac"),
    [
        ("horowitz45", 0.1, 0.23),
        ("horowitz45-int8", 0.03, 0.23),
        ("horowitz45-fp16", 0.4, 1.5),
        ("horowitz45-fp32", 0.9, 4.6),
    ],
)
def test_horowitz_pricing(name, e_ac, e_mac):
    pricing = get_energy_model(name).price(WORKS)
    assert pricing.snn.compute == pytest.approx(e_ac * 15 + e_mac * 40)
    assert pricing.snn.memory == 0
    assert pricing.baselines["ann_fp32"].total == pytest.approx(4.6 * 64)
    assert pricing.baselines["ann_fp16"].total == pytest.approx(1.5 * 64)
    assert pricing.baselines["ann_int8"].total == pytest.approx(0.23 * 64)
    assert pricing.baselines["qnn"].total == pytest.approx(QNN_MAC * 24 + e_mac * 40)
    assert pricing.ratio("ann_fp16") == pytest.approx((e_ac * 15 + e_mac * 40) / 96)
    assert pricing.per_token() == pytest.approx((e_ac * 15 + e_mac * 40) / 2)
    assert pricing.per_token("ann_int8") == pytest.approx(0.23 * 64 / 2)


def test_accumulator_width():
    wide = Horowitz45(accumulator="int32").price([SPIKING]).snn.total
    narrow = Horowitz45(accumulator="int8").price([SPIKING]).snn.total
    assert wide == pytest.approx(0.1 * 15)
    assert narrow == pytest.approx(0.03 * 15)
    assert wide / narrow == pytest.approx(0.1 / 0.03)
    with pytest.raises(ConfigError, match="accumulator"):
        Horowitz45("fp16", "int32")
    with pytest.raises(ConfigError, match="preset"):
        Horowitz45("int4")


def test_qnn_levels():
    assert [qnn_bits(n) for n in (2, 3, 4, 5, 16, 17, 256)] == [1, 2, 2, 3, 4, 5, 8]
    with pytest.raises(ConfigError):
        qnn_bits(1)
    # Ternary over 3 steps: counts -3..3, 7 levels -> 3 bits.
    pricing = Horowitz45().price([SPIKING], levels=7)
    assert pricing.qnn_bits == 3
    assert pricing.baselines["qnn"].total == pytest.approx(0.23 * 3 / 8 * 24)


def test_lemaire_sram_fit():
    # E = 1.09e-5 * bits + 13.2 pJ; bits of 8 KB, 32 KB and 1 MB buffers.
    assert sram_access_pj(8 * 1024, 8) == pytest.approx(1.09e-5 * 65_536 + 13.2)  # 13.91
    assert sram_access_pj(32 * 1024, 8) == pytest.approx(1.09e-5 * 262_144 + 13.2)  # 16.06
    assert sram_access_pj(1024 * 1024, 8) == pytest.approx(1.09e-5 * 8_388_608 + 13.2)  # 104.6
    # The fit passes near the paper's 1 MB point (100 pJ); elements x bits is what counts.
    assert sram_access_pj(1024 * 1024, 8) == pytest.approx(100, rel=0.05)
    assert sram_access_pj(2048, 32) == sram_access_pj(8192, 8)


def _sram(elements: int, bits: int) -> float:
    return 1.09e-5 * elements * bits + 13.2


def test_lemaire_by_hand():
    model = Lemaire()
    pricing = model.price(WORKS)
    snn, dense = pricing.layers
    # SNN, spiking layer: adds = 2 SOP + updates + events = 30 + 24 + 5.
    assert snn.snn.compute == pytest.approx(0.1 * (30 + 24 + 5))
    snn_memory = (
        2 * 4 * _sram(4, 16)  # inputs read
        + 2 * 24 * _sram(4, 32)  # membranes read + write
        + 2 * 5 * _sram(1000, 32)  # spike FIFO write + read
        + 15 * _sram(12, 8)  # one weight per SOP
        + 2 * 15 * _sram(3, 32)  # accumulators read + write
        + 2 * 3 * _sram(3, 16)  # outputs written
    )
    assert snn.snn.memory == pytest.approx(snn_memory)
    # ANN fp16 on the spiking layer: MAC 1.5 + addressing 0.1 per MAC; 16-bit weights.
    fp16 = snn.baselines["ann_fp16"]
    assert fp16.compute == pytest.approx((1.5 + 0.1) * 24)
    assert fp16.memory == pytest.approx(8 * _sram(4, 16) + 24 * _sram(12, 16) + 6 * _sram(3, 16))
    # The paper's own int32 ANN: mult + add per MAC.
    int32 = snn.baselines["ann_int32"]
    assert int32.compute == pytest.approx((3.1 + 0.1 + 0.1) * 24)
    assert int32.memory == pytest.approx(8 * _sram(4, 32) + 24 * _sram(12, 32) + 6 * _sram(3, 32))
    # QNN: 2-bit activations, stored int8 weights.
    qnn = snn.baselines["qnn"]
    assert qnn.compute == pytest.approx((QNN_MAC + 0.1) * 24)
    assert qnn.memory == pytest.approx(8 * _sram(4, 2) + 24 * _sram(12, 8) + 6 * _sram(3, 2))
    # Dense work: an ANN with FP16 MACs, 16-bit activations, stored (8-bit) weights; QNN keeps it.
    assert dense.snn.compute == pytest.approx((1.5 + 0.1) * 40)
    assert dense.snn.memory == pytest.approx(
        8 * _sram(4, 16) + 40 * _sram(20, 8) + 10 * _sram(5, 16)
    )
    assert dense.baselines["qnn"] == dense.snn
    assert pricing.snn_dense == dense.snn
    assert pricing.snn.total == pytest.approx(snn.snn.total + dense.snn.total)


def test_lemaire_bias():
    plain = Lemaire().price([SPIKING]).layers[0]
    biased = Lemaire(bias=True).price([SPIKING]).layers[0]
    extra = 6 * 0.1 + 6 * _sram(3, 32)  # M O adds and M O reads
    assert biased.snn.total - plain.snn.total == pytest.approx(extra)
    ann = biased.baselines["ann_int8"].total - plain.baselines["ann_int8"].total
    assert ann == pytest.approx(extra)


def test_chip_profile_by_hand():
    pricing = get_energy_model("loihi").price(WORKS)
    spiking, dense = pricing.layers
    assert spiking.snn.total == pytest.approx(23.6 * 15 + 81 * 24 + 1.7 * 5)
    assert dense.snn.total == pytest.approx(1.5 * 40)  # not on the chip: FP16 MACs on a host
    assert pricing.snn_dense.total == pytest.approx(60)
    assert any("not runnable on the chip" in note for note in pricing.notes)
    assert pricing.baselines["ann_fp16"].total == pytest.approx(1.5 * 64)
    assert pricing.baselines["qnn"].total == pytest.approx(QNN_MAC * 24 + 1.5 * 40)
    spinnaker = get_energy_model("spinnaker2").price([SPIKING])
    assert spinnaker.snn.total == pytest.approx(450 * 15 + 2190 * 24)
    truenorth = get_energy_model("truenorth").price([SPIKING])
    assert truenorth.snn.total == pytest.approx(26 * 15)


@pytest.mark.parametrize(
    ("name", "node", "e_synop"),
    [
        ("loihi", "14 nm", 23.6),
        ("truenorth", "28 nm", 26.0),
        ("spinnaker2", "28 nm", 450.0),
        ("odin", "28 nm", 12.7),
        ("darwin3", "22 nm", 5.47),
    ],
)
def test_shipped_profiles_load(name, node, e_synop):
    assert name in shipped_profiles()
    model = get_energy_model(name)
    assert isinstance(model, ChipProfile)
    assert (model.name, model.node, model.profile.e_synop.pj) == (name, node, e_synop)
    assert model.scope == "chip, all-in per event"
    assert all(f.provenance for f in (model.profile.e_synop, model.profile.e_neuron))
    assert model.price(WORKS).snn.total > 0
    assert get_energy_model(shipped_profiles()[name]) == model


def test_every_model_describes_itself():
    for name in energy_models():
        model = get_energy_model(name)
        assert model.name == name
        for text in (model.title, model.source, model.node, model.precision, model.scope):
            assert isinstance(text, str) and text
        assert model.constants and all(v >= 0 for v in model.constants.values())


def _profile(**changes):
    data = json.loads(shipped_profiles()["loihi"].read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"fields__e_synop": _DELETE}, "fields.e_synop", "missing"),
        ({"fields__e_neuron__provenance": _DELETE}, "fields.e_neuron.provenance", "missing"),
        ({"node": _DELETE}, "node", "missing"),
        ({"fields__e_synop__value": -1.0}, "fields.e_synop.value", ">= 0"),
        ({"fields__e_neuron__value": math.nan}, "fields.e_neuron.value", "finite"),
        ({"fields__e_spike__value": math.inf}, "fields.e_spike.value", "finite"),
        ({"fields__e_synop__value": "23.6"}, "fields.e_synop.value", "number"),
        ({"fields__e_synop__colour": "red"}, "fields.e_synop.colour", "unknown key"),
        ({"fields__e_leak": {}}, "fields.e_leak", "unknown key"),
        ({"vendor": "Intel"}, "vendor", "unknown key"),
        ({"fields__e_synop__unit": "mJ"}, "fields.e_synop.unit", "pJ"),
        ({"fields__e_synop__provenance": "guessed"}, "fields.e_synop.provenance", "measured"),
        ({"title": ""}, "title", "non-empty"),
    ],
)
def test_profile_validation(tmp_path, changes, field, problem):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_profile(**changes)))
    with pytest.raises(ConfigError) as info:
        get_energy_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and f": {field}: " in message and problem in message


def test_profile_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",')
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "file: not valid JSON" in message
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(tmp_path / "absent.json")


def test_profile_units(tmp_path):
    path = tmp_path / "chip.json"
    path.write_text(json.dumps(_profile(fields__e_synop__value=0.5, fields__e_synop__unit="nJ")))
    assert load_profile(path).e_synop.pj == pytest.approx(500)


def test_unknown_model():
    with pytest.raises(ConfigError) as info:
        get_energy_model("loihi3")
    message = str(info.value)
    assert "\n" not in message and "loihi3" in message
    for name in ("spikingbrain", "horowitz45", "horowitz45-fp16", "lemaire", "loihi", "odin"):
        assert name in message


def test_bad_work():
    with pytest.raises(ConfigError, match="kind"):
        Horowitz45().price([LayerWork("x", "analog", 1, 1, 1)])
    with pytest.raises(ConfigError, match="events"):
        Horowitz45().price([LayerWork("x", "spiking", 1, 1, 1, steps=1, events=-1)])


@pytest.mark.parametrize("name", energy_models())
def test_zero_work(name):
    model = get_energy_model(name)
    silent = LayerWork("q", "spiking", in_features=4, out_features=3, tokens=0, steps=3)
    for works in ([], [silent]):
        pricing = model.price(works)
        assert pricing.snn.total == 0 and pricing.tokens == 0
        assert all(b.total == 0 for b in pricing.baselines.values())
        assert all(r is None for r in pricing.ratios.values())
        assert pricing.per_token() == 0 and pricing.per_token("ann_fp16") == 0
        assert any("no work" in note for note in pricing.notes)
        lines = verdicts(pricing, spikes_per_synapse(works))
        assert len(lines) == 1 and "No work" in lines[0]
        assert not any(math.isnan(x) for x in (pricing.snn.total, spikes_per_synapse(works)))


def test_no_spikes_with_tokens():
    silent = LayerWork("q", "spiking", in_features=4, out_features=3, tokens=2, steps=3)
    pricing = Horowitz45().price([silent])
    assert pricing.snn.total == 0 and pricing.ratio("ann_fp16") == 0
    assert "beats the FP16 ANN" in verdicts(pricing, 0.0)[0]


def test_verdicts():
    pricing = Horowitz45().price(WORKS)  # SNN 10.7 pJ; fp16 96, int8 14.72, 2-bit QNN 10.58
    lines = verdicts(pricing, spikes_per_synapse(WORKS))
    assert lines[0].startswith("Under horowitz45, the SNN beats the FP16 ANN")
    assert "0.111x" in lines[0]
    assert "beats the INT8 ANN" in lines[1] and "27.3% less" in lines[1]
    assert "does not beat the 2-bit QNN" in lines[2] and "1.1% more" in lines[2]
    assert "inside Dampfhoffer" in lines[3]
    assert "compute only" in lines[4]
    assert "below" in verdicts(pricing, 0.1)[3]
    assert "above" in verdicts(pricing, 1.5)[3]
    assert "inside" in verdicts(pricing, 1.38)[3] and "inside" in verdicts(pricing, 0.15)[3]
    lemaire = verdicts(Lemaire().price(WORKS), 0.625)
    assert len(lemaire) == 4 and "does not beat the FP16 ANN" in lemaire[0]
    with pytest.raises(ConfigError):
        verdicts(pricing, math.nan)


@pytest.mark.parametrize("steps", [4, 8])
@pytest.mark.parametrize(
    "coding", ["binary", "ternary", "bitwise", "bitwise_bidirectional", "bitwise_twos_complement"]
)
def test_spike_stats_through_the_value_table_equal_the_direct_count(
    coding: str, steps: int, monkeypatch
) -> None:
    """Small count ranges are counted through one histogram of the values; every statistic must
    equal the per-element count (the path wide ranges take)."""
    from spikelm.encoders import get_coder
    from spikelm.estimators import SpikeStats, counters

    coder = get_coder(coding)
    lo, hi = coder.count_range(steps)
    g = torch.Generator().manual_seed(steps)
    counts = torch.randint(lo, hi + 1, (7, 300), generator=g).float()
    counts[0, :5], counts[1, :3], counts[2, :2] = 0, hi, lo
    tabled = SpikeStats(steps=steps)
    tabled.update(counts, coder)
    monkeypatch.setattr(counters, "value_table", lambda coding, steps: None)
    direct = SpikeStats(steps=steps)
    direct.update(counts, coder)
    fields = ("tokens", "slots", "events", "silent", "clipped", "steps_used")
    assert [getattr(tabled, f) for f in fields] == [getattr(direct, f) for f in fields]
    assert torch.equal(tabled.histogram, direct.histogram) and tabled.events > 0
    monkeypatch.undo()
    per_row = counters.events_per_row(counts, coder, steps)
    assert torch.equal(per_row, coder.events(counts.to(torch.int64), steps).sum(dim=1))
