"""Cross-checks with SpikingJelly 2.0 (issue #10, item 5): on the same small networks of spikes,
spikelm's counts, energies and firing rates against SpikingJelly's ``op_counter`` and monitors.

Agreement (exact for counts, ``rel=1e-9`` for energies, which differ only by float rounding):

- SOP = ``SynOpCounter`` = ``ACCounter`` on the synaptic layers; ANN MACs = ``MACCounter``.
- ``horowitz45-int8/-fp16/-fp32`` (and ``horowitz45`` with its int32 add) = the compute of
  ``estimate_simple_energy`` with the same ``SimpleEnergyCostConfig``, once SpikingJelly's neuron
  ACs are taken out (spikelm's Horowitz models do not price neuron updates). SpikingJelly's memory
  term (24.96 pJ/byte) has no counterpart there: those models are compute only.
- ``lemaire`` = ``estimate_lemaire_energy`` term by term once SpikingJelly's SRAM curve is set to
  spikelm's fit; the terms only one of them counts are added explicitly.
- Firing rates = ``OutputMonitor`` / ``InputMonitor`` records.

Where the definitions differ (signed or multi-level spikes, SRAM curves, bias, ANN addressing),
a test shows the difference numerically.

SpikingJelly goes in without dependencies (its wheel pulls torchvision, torchaudio and
tensorboard), plus loguru, which ``op_counter`` imports (see ``.ci/run``). Its ``monitor`` module
imports ``torch.utils.tensorboard``, and so tensorboard, at import time: the monitor test stubs
that module (only ``GPUMonitor`` uses it).
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
from torch import nn

pytest.importorskip("spikingjelly.activation_based.op_counter")

from spikingjelly.activation_based import functional, neuron  # noqa: E402
from spikingjelly.activation_based.op_counter import (  # noqa: E402
    ACCounter,
    DispatchCounterMode,
    LemaireEnergyConfig,
    LemaireEnergyCostConfig,
    MACCounter,
    SimpleEnergyConfig,
    SimpleEnergyCostConfig,
    SynOpCounter,
    estimate_lemaire_energy,
    estimate_simple_energy,
    is_binary_tensor,
)

from spikelm.encoders import get_coder  # noqa: E402
from spikelm.estimators.counters import SpikeStats  # noqa: E402
from spikelm.estimators.energy import (  # noqa: E402
    SRAM_PJ_FIXED,
    SRAM_PJ_PER_BIT,
    Lemaire,
    get_energy_model,
    sram_access_pj,
)
from spikelm.estimators.workload import LayerWork  # noqa: E402

T, M, N_IN, N_HID, N_OUT = 4, 3, 16, 32, 8
REL = 1e-9  # energies: the same sums in another order
BINARY = get_coder("binary")


class Unrolled(nn.Module):
    """Runs a single-step network on ``x[t]`` for each step ``t`` (state reset first)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(self.net)
        return torch.stack([self.net(x_t) for x_t in x])


def _snn() -> tuple[nn.Sequential, torch.Tensor]:
    """``Linear(16, 32) -> IF -> Linear(32, 8)`` and binary input spikes ``[T, M, 16]``."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(N_IN, N_HID), neuron.IFNode(), nn.Linear(N_HID, N_OUT))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) - 0.3)
            layer.bias.copy_(torch.rand(layer.bias.shape, generator=gen) * 0.1)
    x = (torch.rand(T, M, N_IN, generator=gen) < 0.3).float()
    return net, x


def _spikes(net: nn.Sequential, x: torch.Tensor, at: int = 1) -> torch.Tensor:
    """The spikes ``[T, M, C]`` of ``net[at]`` on ``x``, recorded with a forward hook."""
    out: list[torch.Tensor] = []
    handle = net[at].register_forward_hook(lambda _m, _i, o: out.append(o.detach().clone()))
    try:
        with torch.no_grad():
            Unrolled(net)(x)
    finally:
        handle.remove()
    return torch.stack(out)


def _stats(spikes: torch.Tensor) -> SpikeStats:
    """spikelm's statistics of binary spikes ``[T, M, C]`` (counts = spikes summed over T)."""
    stats = SpikeStats(steps=spikes.shape[0])
    stats.update(spikes.sum(0).to(torch.int64), BINARY)
    return stats


def _works(x: torch.Tensor, hidden: torch.Tensor) -> list[LayerWork]:
    """spikelm's work for the two synaptic layers: one event per input spike."""
    return [
        LayerWork("fc1", "spiking", N_IN, N_HID, tokens=M, steps=T, events=_stats(x).events),
        LayerWork("fc2", "spiking", N_HID, N_OUT, tokens=M, steps=T, events=_stats(hidden).events),
    ]


def _count(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, int]]:
    """SpikingJelly's SynOp, AC and MAC counts per module scope (``Unrolled.net.0``, ...)."""
    counters = {"synop": SynOpCounter(), "ac": ACCounter(), "mac": MACCounter()}
    with torch.no_grad(), DispatchCounterMode(list(counters.values())):
        model(x)
    return {
        key: {scope: sum(per_op.values()) for scope, per_op in c.get_counts().items()}
        for key, c in counters.items()
    }


@pytest.fixture(scope="module")
def snn():
    net, x = _snn()
    hidden = _spikes(net, x)
    assert 0 < hidden.mean() < 1 and 0 < x.mean() < 1  # both layers see some spikes, not all
    return net, x, hidden


def test_sops_and_acs_match_synop_and_ac_counters(snn):
    """SOP = events x fan-out = SynOpCounter, per layer and in total; the synaptic layers' ACs
    are their SOPs; a network of binary spikes does no MACs."""
    net, x, hidden = snn
    works = _works(x, hidden)
    counts = _count(Unrolled(net), x)
    for i, work in zip((0, 2), works, strict=True):
        assert counts["synop"][f"Unrolled.net.{i}"] == work.sops
        assert counts["ac"][f"Unrolled.net.{i}"] == work.sops
        assert work.events == int(x.sum() if i == 0 else hidden.sum())
    assert counts["synop"]["Global"] == sum(w.sops for w in works)
    assert counts["mac"]["Global"] == 0
    # The rest of its ACs are the IF neurons' own (charge, fire, reset: 4 per neuron per step),
    # which spikelm counts as neuron updates, not synaptic operations.
    assert counts["ac"]["Global"] - counts["synop"]["Global"] == counts["ac"]["Unrolled.net.1"]


def _ann(net: nn.Sequential) -> nn.Sequential:
    """The ANN the SNN stands for: the same layers, ReLU for the IF neurons."""
    return nn.Sequential(net[0], nn.ReLU(), net[2])


def test_ann_macs_match_mac_counter(snn):
    """spikelm's ANN MACs (tokens x in x out, one pass per token) = MACCounter on the ANN."""
    net, x, hidden = snn
    works = _works(x, hidden)
    dense = x.mean(0)  # the rates the spikes carry: one dense pass over the same M tokens
    assert not is_binary_tensor(dense)
    counts = _count(_ann(net), dense)
    assert counts["mac"]["Sequential.0"] == works[0].macs == M * N_IN * N_HID
    assert counts["mac"]["Sequential.2"] == works[1].macs == M * N_HID * N_OUT
    assert counts["synop"]["Global"] == 0


SIMPLE = [
    ("horowitz45-int8", SimpleEnergyCostConfig.int8(), "ann_int8"),
    ("horowitz45-fp16", SimpleEnergyCostConfig.fp16(), "ann_fp16"),
    ("horowitz45-fp32", SimpleEnergyCostConfig.fp32(), "ann_fp32"),
    # spikelm's default: int8 weights added into an int32 membrane, an int32 add (0.1 pJ).
    ("horowitz45", SimpleEnergyCostConfig(e_mac_pj=0.23, e_ac_pj=0.1), "ann_int8"),
]


@pytest.mark.parametrize(("name", "cost", "baseline"), SIMPLE, ids=[s[0] for s in SIMPLE])
def test_horowitz45_matches_estimate_simple_energy(snn, name, cost, baseline):
    """E_SNN = E_AC x SOP and E_ANN = E_MAC x MACs as ``estimate_simple_energy`` prices them.

    SpikingJelly also prices the IF neurons' ACs and a memory term (24.96 pJ/byte of parameter
    and neuron-state traffic); spikelm's Horowitz models price neither (compute only)."""
    net, x, hidden = snn
    pricing = get_energy_model(name).price(_works(x, hidden))
    config = SimpleEnergyConfig(cost_config=cost)
    sj = estimate_simple_energy(Unrolled(net), x, config=config)
    neuron_acs = sj.counts["ac"] - sj.counts["synop"]
    assert sj.counts["mac"] == 0 and neuron_acs > 0
    assert pricing.snn.compute == pytest.approx(cost.e_ac_pj * sj.counts["synop"], rel=REL)
    assert pricing.snn.compute == pytest.approx(
        sj.energy_compute_pj - cost.e_ac_pj * neuron_acs, rel=REL
    )
    assert pricing.snn.memory == 0 < sj.energy_memory_pj
    ann = estimate_simple_energy(_ann(net), x.mean(0), config=config)
    assert ann.counts["ac"] == 0
    assert pricing.baselines[baseline].compute == pytest.approx(ann.energy_mac_pj, rel=REL)
    assert pricing.baselines[baseline].compute == pytest.approx(ann.energy_compute_pj, rel=REL)


def _sj_lemaire_cost() -> LemaireEnergyCostConfig:
    """SpikingJelly's SRAM curve set to spikelm's fit for 32-bit words, up to 1 MB.

    SpikingJelly prices ``bytes x cost(capacity bytes)``; spikelm one access to ``n`` elements of
    ``b`` bits at ``1.09e-5 n b + 13.2`` pJ, i.e. ``(8.72e-5 bytes + 13.2) / 4`` pJ per byte of a
    32-bit word. The fit is linear, so four points on it reproduce it below the last one."""

    def per_byte(capacity: float) -> float:
        return (SRAM_PJ_PER_BIT * 8 * capacity + SRAM_PJ_FIXED) / 4

    xs = (0.0, 8.0 * 1024, 32.0 * 1024, 1024.0 * 1024)
    return LemaireEnergyCostConfig(memory_breakpoints=tuple((b, per_byte(b)) for b in xs))


def _per_token(model: nn.Module, inputs: list[torch.Tensor], cost) -> dict[str, float]:
    """SpikingJelly's Lemaire report summed over tokens run one at a time (spikelm sizes its
    buffers per token: a batch would make SpikingJelly's potential buffers M times larger)."""
    total: dict[str, float] = {}
    for item in inputs:
        report = estimate_lemaire_energy(model, item, config=LemaireEnergyConfig(cost_config=cost))
        assert not report.warnings
        for key, value in {**report.breakdown_pj, **report.counts}.items():
            total[key] = total.get(key, 0) + value
    return total


def _lemaire_layer(bias: bool) -> tuple[nn.Sequential, torch.Tensor, LayerWork]:
    """``IFNode -> Linear(16, 8)``, dense activations ``[M, 16]`` (each held for T steps) and
    spikelm's work for it (32-bit weights, as SpikingJelly's Lemaire model stores them)."""
    gen = torch.Generator().manual_seed(1)
    dense = torch.rand(M, N_IN, generator=gen)
    snn = nn.Sequential(neuron.IFNode(v_threshold=0.3), nn.Linear(N_IN, N_OUT, bias=bias))
    with torch.no_grad():
        snn[1].weight.copy_(torch.rand(N_OUT, N_IN, generator=gen) - 0.5)
    spikes = _spikes(snn, dense.expand(T, M, N_IN), at=0)
    work = LayerWork("fc", "spiking", N_IN, N_OUT, M, T, _stats(spikes).events, weight_bits=32)
    return snn, dense, work


def test_lemaire_matches_analytical_energy_term_by_term():
    """spikelm's spiking layer (dense input -> IF encoder -> synapses) = SpikingJelly's
    ``IFNode -> Linear`` under ``estimate_lemaire_energy``, with 32-bit words everywhere.

    Both count: SOP accumulates and SOP addressing adds, one add per spike (reset), one weight
    read per SOP, an accumulator read + write per SOP, the IF membranes read + written every step
    and each spike written to and read from a 1000-word FIFO. Only spikelm counts the IF
    neurons' integration adds (``U = M N T``), reading the dense inputs (``M N S(N, x)``) and
    writing the outputs (``M O S(O, x)``); they are added to SpikingJelly's figures here.
    The ANN (int32, the paper's own) agrees on memory; its addressing differs: spikelm counts
    ``N x O`` adds per token (the authors' code), SpikingJelly ``N + O``."""
    n, o = N_IN, N_OUT
    snn, dense, work = _lemaire_layer(bias=False)
    cost = _sj_lemaire_cost()
    sj = _per_token(Unrolled(snn), [row.expand(T, 1, n) for row in dense], cost)
    model = Lemaire(act_bits=32, word_bits=32)
    snn_price = model.price([work])
    assert 0 < work.events < M * n * T
    assert sj["synop"] == work.sops and sj["ac"] == work.sops + work.events
    assert sj["read_in_bytes"] == sj["write_out_bytes"] == 4 * work.events
    assert sj["read_params_bytes"] == 4 * work.sops
    assert sj["read_potential_bytes"] == 4 * (work.neuron_updates + work.sops)
    only_spikelm_compute = model.e_add * work.neuron_updates
    only_spikelm_memory = M * n * sram_access_pj(n, 32) + M * o * sram_access_pj(o, 32)
    sj_compute = sj["ops_pj"] + sj["addressing_pj"]
    assert snn_price.snn.compute == pytest.approx(sj_compute + only_spikelm_compute, rel=REL)
    assert snn_price.snn.memory == pytest.approx(sj["memory_pj"] + only_spikelm_memory, rel=REL)

    ann = _per_token(nn.Sequential(snn[1]), [row[None] for row in dense], cost)
    int32 = snn_price.baselines["ann_int32"]
    assert ann["mac"] == work.macs and ann["acc_addr"] == M * (n + o)
    assert int32.memory == pytest.approx(ann["memory_pj"], rel=REL)
    addressing_gap = model.e_add * (work.macs - M * (n + o))
    sj_ann_compute = ann["ops_pj"] + ann["addressing_pj"]
    assert int32.compute == pytest.approx(sj_ann_compute + addressing_gap, rel=REL)


def test_lemaire_bias_per_step_vs_per_token():
    """A bias: SpikingJelly adds and reads it at every step the Linear runs (``T M O`` adds, read
    from the parameter buffer), spikelm once per token when the output accumulators are read
    out (``M O`` adds and ``M O`` reads of S(O, w))."""
    snn, dense, work = _lemaire_layer(bias=True)
    sj = _per_token(Unrolled(snn), [row.expand(T, 1, N_IN) for row in dense], _sj_lemaire_cost())
    assert sj["ac"] - (work.sops + work.events) == T * M * N_OUT
    assert sj["read_params_bytes"] == 4 * (work.sops + T * M * N_OUT)
    with_bias = Lemaire(act_bits=32, word_bits=32, bias=True).price([work]).snn
    without = Lemaire(act_bits=32, word_bits=32).price([work]).snn
    assert with_bias.compute - without.compute == pytest.approx(0.1 * M * N_OUT, rel=REL)
    bias_reads = M * N_OUT * sram_access_pj(N_OUT, 32)
    assert with_bias.memory - without.memory == pytest.approx(bias_reads, rel=REL)


def test_sram_curves_differ():
    """Per 32-bit access: SpikingJelly interpolates 10 / 20 / 100 pJ at 8 KB / 32 KB / 1 MB
    piecewise from 0 pJ at 0 bytes and clamps above 1 MB; spikelm uses the authors' linear fit,
    ``1.09e-5 pJ/bit x capacity + 13.2 pJ``: 13.9 / 16.1 / 104.6 pJ there, 13.2 pJ for an empty
    buffer, and it keeps growing above 1 MB (1.48 nJ at 16 MB). On the small layer of the Lemaire
    test (buffers of 64 B to 4 KB), SpikingJelly's default curve gives about 24x less memory
    energy than spikelm (2.5 nJ against 60.2 nJ)."""
    sj = LemaireEnergyCostConfig()
    kib = 1024
    table = {  # capacity in bytes: (SpikingJelly, spikelm) pJ per 32-bit access
        512: (0.625, 13.245),
        8 * kib: (10.0, 13.914),
        32 * kib: (20.0, 16.057),
        1024 * kib: (100.0, 104.634),
        16 * 1024 * kib: (100.0, 1476.2),
    }
    for capacity, (sj_pj, spikelm_pj) in table.items():
        assert 4 * sj.memory_cost_pj(capacity) == pytest.approx(sj_pj, rel=1e-12)
        assert sram_access_pj(capacity // 4, 32) == pytest.approx(spikelm_pj, abs=0.05)


def test_ternary_spikes_are_dense_to_spikingjelly():
    """Signed spikes {-1, 0, 1}: spikelm counts one event per non-zero spike (SOP = events x O).
    SpikingJelly counts ACs only for tensors of 0s and 1s, so it prices a ternary step as a
    dense matmul: 0 SynOps and ``M N O`` MACs per step. Split into positive and negative binary
    planes, SpikingJelly's SynOps come back to spikelm's SOP."""
    ternary = get_coder("ternary")
    counts = torch.randint(-T, T + 1, (M, N_IN), generator=torch.Generator().manual_seed(2))
    spikes = ternary.encode(counts, T).float()  # [T, M, N]
    stats = SpikeStats(steps=T)
    stats.update(counts, ternary)
    work = LayerWork("fc", "spiking", N_IN, N_OUT, M, T, stats.events)
    assert work.events == int(spikes.ne(0).sum()) and spikes.min() == -1

    layer = nn.Sequential(nn.Linear(N_IN, N_OUT))
    counted = _count(Unrolled(layer), spikes)
    assert counted["synop"]["Global"] == 0
    assert counted["mac"]["Global"] == T * M * N_IN * N_OUT == T * work.macs
    planes = _count(Unrolled(layer), torch.cat([spikes.clamp(min=0), (-spikes).clamp(min=0)]))
    assert planes["synop"]["Global"] == work.sops


def test_multilevel_and_bitwise_spikes():
    """A count fed at once (values 0..T) is dense to SpikingJelly: ``M N O`` MACs, 0 SynOps,
    where spikelm counts one event per unit of count. Bitwise spikes (step t weighs 2^t) agree
    when each step's plane is fed as 0s and 1s (the weight applied as a shift after the synapse):
    SynOps = popcount events x O = spikelm's SOP. Fed pre-weighted (values {0, 2^t}), every plane
    but t = 0 looks dense to SpikingJelly and is counted as ``M N O`` MACs."""
    gen = torch.Generator().manual_seed(3)
    layer = nn.Sequential(nn.Linear(N_IN, N_OUT))

    counts = torch.randint(0, T + 1, (M, N_IN), generator=gen)
    events = _stats(BINARY.encode(counts, T)).events
    assert events == int(counts.sum())
    whole = _count(layer, counts.float())
    assert (whole["synop"]["Global"], whole["mac"]["Global"]) == (0, M * N_IN * N_OUT)
    steps = _count(Unrolled(layer), BINARY.encode(counts, T).float())
    assert steps["synop"]["Global"] == events * N_OUT

    bitwise = get_coder("bitwise")
    counts = torch.randint(0, 2**T, (M, N_IN), generator=gen)
    planes = bitwise.encode(counts, T).float()  # [T, M, N] of 0s and 1s
    stats = SpikeStats(steps=T)
    stats.update(counts, bitwise)
    work = LayerWork("fc", "spiking", N_IN, N_OUT, M, T, stats.events)
    assert _count(Unrolled(layer), planes)["synop"]["Global"] == work.sops
    weighted = planes * bitwise.step_weights(T).float()[:, None, None]
    assert all(planes[t].any() for t in range(T))  # no all-zero plane, which would look binary
    counted = _count(Unrolled(layer), weighted)
    assert counted["synop"]["Global"] == int(planes[0].sum()) * N_OUT < work.sops
    assert counted["mac"]["Global"] == (T - 1) * M * N_IN * N_OUT


@pytest.fixture
def monitor(monkeypatch):
    """SpikingJelly's monitor module, with ``torch.utils.tensorboard`` stubbed if absent."""
    name = "spikingjelly.activation_based.monitor"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != "tensorboard":
            raise
    stub = types.ModuleType("torch.utils.tensorboard")
    stub.SummaryWriter = None  # only GPUMonitor uses it
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", stub)
    return importlib.import_module(name)


def test_firing_rates_match_monitors(snn, monitor):
    """Firing rate = events / (M C T): spikelm's SpikeStats on the counts summed over T equals
    the mean of the spikes SpikingJelly's monitors record, per layer."""
    net, x, _ = snn
    model = Unrolled(net)
    with (
        monitor.OutputMonitor(model, neuron.IFNode) as out,
        monitor.InputMonitor(model, nn.Linear) as inp,
        torch.no_grad(),
    ):
        model(x)
    hidden = torch.stack(out["net.1"])  # [T, M, 32]
    assert len(out.records) == T and hidden.shape == (T, M, N_HID)
    for spikes in (hidden, torch.stack(inp["net.0"]), torch.stack(inp["net.2"])):
        stats = _stats(spikes)
        assert stats.firing_rate == pytest.approx(spikes.double().mean().item(), rel=1e-12)
        assert stats.spikes_per_channel == pytest.approx(T * spikes.double().mean().item())
    assert torch.equal(torch.stack(inp["net.0"]), x)
    assert torch.equal(torch.stack(inp["net.2"]), hidden)
