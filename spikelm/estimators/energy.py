"""Energy models that price a run's work (:class:`~spikelm.estimators.workload.LayerWork`).

Every model prices the spiking model (SNN) and, on the same tokens, the ANN it came from at
FP16 and INT8 (and FP32 where the model has it) and the quantized ANN with as many activation
levels as the spike coding (QNN, after Yan et al., arXiv 2409.08290):

    QNN bits b = ceil(log2(levels))            (levels = T + 1 for T-step binary counting)
    E_MAC(b)   = E_MAC(int8) * b / 8           (a b-bit activation times an int8 weight: the
                                                multiplier's partial products scale with b;
                                                b = 1 gives 0.029 pJ, an int8 add)

The QNN keeps the SNN's dense work as the SNN prices it; only the spiking layers become b-bit
MACs. Work marked ``dense`` is priced alike in every network of one model (see each model's
``dense_pricing``), and the SNN's share of it is reported apart (:attr:`Pricing.snn_dense`).
Energies are in pJ, split into compute and memory.

Models (``get_energy_model(name)``): ``spikingbrain``, ``horowitz45`` (+ ``-int8``, ``-fp16``,
``-fp32``), ``lemaire`` and the shipped hardware profiles (or a path to a profile JSON file).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

from spikelm.errors import ConfigError
from spikelm.estimators.profiles import Profile, load_profile, shipped_profiles
from spikelm.estimators.workload import LayerWork

# Horowitz, ISSCC 2014, 45 nm (pJ); SpikingJelly 2.0's SimpleEnergyCostConfig presets.
FP32_MAC, FP32_ADD = 4.6, 0.9
FP16_MAC, FP16_ADD = 1.5, 0.4
INT8_MAC, INT8_ADD = 0.23, 0.03
INT32_ADD, INT32_MULT = 0.1, 3.1

#: Dampfhoffer et al. (IEEE TETCI 2023): IF networks beat efficient ANN hardware only below
#: this many spikes per synapse per inference (the band spans their hardware assumptions).
BREAK_EVEN_BAND = (0.15, 1.38)

#: Lemaire et al.'s least-squares fit of 45 nm SRAM energy per access (authors' code), pJ.
SRAM_PJ_PER_BIT = 1.09e-5
SRAM_PJ_FIXED = 13.2

#: Words for the baseline keys, for reports (the QNN's depend on its bits).
BASELINE_LABELS = {
    "ann_fp32": "the FP32 ANN",
    "ann_fp16": "the FP16 ANN",
    "ann_int8": "the INT8 ANN",
    "ann_int32": "the int32 ANN (Lemaire et al.'s own)",
}


@dataclass(frozen=True)
class Split:
    """Energy in pJ, split into compute and memory."""

    compute: float = 0.0
    memory: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.memory

    def __add__(self, other: Split) -> Split:
        return Split(self.compute + other.compute, self.memory + other.memory)


def _ratio(snn: Split, baseline: Split) -> float | None:
    """``snn / baseline`` in total energy; None when the baseline costs nothing."""
    return snn.total / baseline.total if baseline.total > 0 else None


@dataclass(frozen=True)
class LayerPricing:
    """One layer's energy: the SNN and each baseline on the same tokens."""

    name: str
    kind: str
    tokens: int
    snn: Split
    baselines: dict[str, Split]

    def ratio(self, baseline: str) -> float | None:
        """``E_SNN / E_baseline`` for this layer (None when the baseline costs 0 pJ)."""
        return _ratio(self.snn, self.baselines[baseline])


@dataclass(frozen=True)
class Pricing:
    """A run priced under one model: per layer and in total, in pJ."""

    model: str
    title: str
    scope: str
    layers: tuple[LayerPricing, ...]
    tokens: int
    """Tokens of the run (the most any layer saw); per-token figures divide by it."""
    qnn_bits: int
    snn: Split
    snn_dense: Split
    """The part of :attr:`snn` spent on dense work, priced as the model's ``dense_pricing`` says."""
    baselines: dict[str, Split]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def ratio(self, baseline: str) -> float | None:
        """``E_SNN / E_baseline`` in total (None when the baseline costs 0 pJ: no work)."""
        return _ratio(self.snn, self.baselines[baseline])

    @property
    def ratios(self) -> dict[str, float | None]:
        return {key: self.ratio(key) for key in self.baselines}

    def per_token(self, which: str = "snn") -> float:
        """Total energy of ``"snn"`` or a baseline divided by the tokens (0 when there are none)."""
        energy = self.snn if which == "snn" else self.baselines[which]
        return energy.total / self.tokens if self.tokens else 0.0

    @property
    def empty(self) -> bool:
        """True when nothing was priced (no tokens or no work at all)."""
        return self.snn.total == 0 and all(b.total == 0 for b in self.baselines.values())


class Precision(NamedTuple):
    """How a (Q)ANN computes: MAC energy (pJ), activation bits, weight bits (None: as stored)."""

    e_mac: float
    act_bits: int
    weight_bits: int | None


ANN_FP32 = Precision(FP32_MAC, 32, 32)
ANN_FP16 = Precision(FP16_MAC, 16, 16)
ANN_INT8 = Precision(INT8_MAC, 8, 8)


def qnn_bits(levels: int) -> int:
    """Bits of the QNN with ``levels`` activation levels: ``max(1, ceil(log2(levels)))``."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"QNN levels must be an integer >= 2, got {levels!r}")
    return max(1, math.ceil(math.log2(levels)))


def qnn_precision(bits: int) -> Precision:
    """The QNN's MACs: ``E_MAC(b) = E_MAC(int8) * b / 8``, int8 weights as stored."""
    return Precision(INT8_MAC * bits / 8, bits, None)


def spikes_per_synapse(works: Sequence[LayerWork]) -> float:
    """Spike events per synapse per inference over all spiking layers: ``sum E / sum M N``."""
    spiking = [w for w in works if w.spiking]
    slots = sum(w.tokens * w.in_features for w in spiking)
    return sum(w.events for w in spiking) / slots if slots else 0.0


def _check(work: LayerWork) -> None:
    if work.kind not in ("spiking", "dense"):
        raise ConfigError(f"layer {work.name!r}: kind must be spiking or dense, got {work.kind!r}")
    counts = {
        "in_features": work.in_features,
        "out_features": work.out_features,
        "tokens": work.tokens,
        "steps": work.steps,
        "events": work.events,
        "weight_bits": work.weight_bits,
        "macs": work.macs,
    }
    for key, value in counts.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"layer {work.name!r}: {key} must be an integer >= 0, got {value!r}")


class EnergyModel(ABC):
    """An energy model: descriptive attributes, its constants, and :meth:`price`."""

    name: str
    title: str
    source: str
    node: str
    precision: str
    scope: str
    dense_pricing: str
    """How work the SNN leaves dense is priced, in words."""

    @property
    @abstractmethod
    def constants(self) -> dict[str, float]:
        """``name -> pJ`` of every constant the model uses, to print beside its figures."""

    @property
    @abstractmethod
    def baseline_precisions(self) -> dict[str, Precision]:
        """The ANN baselines besides the QNN, by key (``ann_fp16``, ``ann_int8``, ...)."""

    @abstractmethod
    def snn_spiking(self, work: LayerWork) -> Split:
        """Energy of a spiking layer in the SNN."""

    @abstractmethod
    def snn_dense(self, work: LayerWork) -> Split:
        """Energy of dense work in the SNN (and in the QNN, which keeps it)."""

    @abstractmethod
    def ann(self, work: LayerWork, precision: Precision) -> Split:
        """Energy of the same work in an ANN computing at ``precision``."""

    def price(self, works: Sequence[LayerWork], *, levels: int | None = None) -> Pricing:
        """Price ``works``; ``levels`` = the spike coding's count levels (``hi - lo + 1`` of its
        ``count_range``), default ``T + 1`` with T the most steps of any spiking layer."""
        works = tuple(works)
        for work in works:
            _check(work)
        if levels is None:
            levels = max([2] + [w.steps + 1 for w in works if w.spiking])
        bits = qnn_bits(levels)
        qnn = qnn_precision(bits)
        layers = []
        for work in works:
            snn = self.snn_spiking(work) if work.spiking else self.snn_dense(work)
            baselines = {key: self.ann(work, p) for key, p in self.baseline_precisions.items()}
            baselines["qnn"] = self.ann(work, qnn) if work.spiking else snn
            layers.append(LayerPricing(work.name, work.kind, work.tokens, snn, baselines))
        keys = [*self.baseline_precisions, "qnn"]
        notes = []
        if any(not w.spiking and w.macs for w in works):
            notes.append(f"dense work: {self.dense_pricing}")
        if not any(w.tokens for w in works):
            notes.append("no work: no tokens were priced, every energy is 0 pJ")
        return Pricing(
            model=self.name,
            title=self.title,
            scope=self.scope,
            layers=tuple(layers),
            tokens=max([0] + [w.tokens for w in works]),
            qnn_bits=bits,
            snn=sum((lp.snn for lp in layers), Split()),
            snn_dense=sum((lp.snn for lp in layers if lp.kind == "dense"), Split()),
            baselines={k: sum((lp.baselines[k] for lp in layers), Split()) for k in keys},
            notes=tuple(notes),
        )


class _ComputeOnly(EnergyModel):
    """ANN baselines as ``E = E_MAC * MACs`` (compute only)."""

    def ann(self, work: LayerWork, precision: Precision) -> Split:
        return Split(compute=precision.e_mac * work.macs)


class SavingFigures(NamedTuple):
    """SpikingBrain's arithmetic: energy per MAC-equivalent and savings in percent."""

    energy_pj: float
    vs_fp16_pct: float
    vs_int8_pct: float


def spikingbrain_savings(spikes_per_channel: float, *, decimals: int | None = 3) -> SavingFigures:
    """``E = spikes/channel * E_add(int8)``; saving vs a MAC = ``100 * (E / E_MAC - 1)``.

    SpikingBrain computed the percentages from E rounded to ``decimals`` (0.034 pJ for 1.13
    spikes): -97.7% vs FP16, -85.2% vs INT8. ``decimals=None`` uses the exact E (0.0339 pJ:
    -97.7%, -85.3%). The returned energy is never rounded.
    """
    if not (math.isfinite(spikes_per_channel) and spikes_per_channel >= 0):
        raise ConfigError(f"spikes per channel must be finite and >= 0, got {spikes_per_channel}")
    energy = spikes_per_channel * INT8_ADD
    quoted = energy if decimals is None else round(energy, decimals)
    return SavingFigures(energy, 100 * (quoted / FP16_MAC - 1), 100 * (quoted / INT8_MAC - 1))


@dataclass(frozen=True)
class SpikingBrain(_ComputeOnly):
    """SpikingBrain's accounting (arXiv 2509.05276): every MAC-equivalent of a spiking
    layer costs ``spikes/channel * E_add(int8)``, so ``E_SNN = E_add(int8) * SOP`` (0.03 pJ).

    Dense work stays FP16 (SpikingBrain keeps it BF16): ``E_MAC(fp16) * MACs``.
    """

    name: ClassVar[str] = "spikingbrain"
    title: ClassVar[str] = "SpikingBrain, 45 nm compute only"
    source: ClassVar[str] = "SpikingBrain technical report (arXiv 2509.05276) after Horowitz 2014"
    node: ClassVar[str] = "45 nm"
    precision: ClassVar[str] = "int8 weights, int8 adds per spike; dense work FP16"
    scope: ClassVar[str] = "compute only"
    dense_pricing: ClassVar[str] = "FP16 MACs (1.5 pJ) in the SNN and the QNN"

    @property
    def constants(self) -> dict[str, float]:
        return {
            "add int8 (per spike x fan-out)": INT8_ADD,
            "MAC fp16": FP16_MAC,
            "MAC int8 (QNN: x b/8)": INT8_MAC,
        }

    @property
    def baseline_precisions(self) -> dict[str, Precision]:
        return {"ann_fp16": ANN_FP16, "ann_int8": ANN_INT8}

    def snn_spiking(self, work: LayerWork) -> Split:
        return Split(compute=INT8_ADD * work.sops)

    def snn_dense(self, work: LayerWork) -> Split:
        return Split(compute=FP16_MAC * work.macs)


_PRESETS = {
    "fp32": (FP32_MAC, FP32_ADD),
    "fp16": (FP16_MAC, FP16_ADD),
    "int8": (INT8_MAC, INT8_ADD),
}


@dataclass(frozen=True)
class Horowitz45(_ComputeOnly):
    """Compute only, Horowitz 45 nm, as SpikingJelly 2.0's ``SimpleEnergyCostConfig``:

        E_ANN = E_MAC * MACs        E_SNN = E_AC * SOP + E_MAC * (MACs left dense)

    ``preset`` (fp32, fp16, int8) sets E_MAC and E_AC. With int8 weights the ``accumulator``
    decides E_AC: ``int8`` is an int8 add (0.03 pJ, the preset); ``int32`` (the default, an int8
    weight added into a wide membrane) is an int32 add (0.1 pJ). Neuron updates are not priced.
    """

    preset: str = "int8"
    accumulator: str | None = None
    """``int8`` or ``int32`` for the int8 preset (None: int32); the preset's own otherwise."""

    source: ClassVar[str] = "Horowitz, ISSCC 2014; SpikingJelly 2.0 SimpleEnergyCostConfig"
    node: ClassVar[str] = "45 nm"
    scope: ClassVar[str] = "compute only"

    def __post_init__(self) -> None:
        if self.preset not in _PRESETS:
            raise ConfigError(f"horowitz45 preset must be fp32, fp16 or int8, got {self.preset!r}")
        allowed = ("int8", "int32") if self.preset == "int8" else (self.preset,)
        if self.accumulator is None:
            object.__setattr__(
                self, "accumulator", "int32" if self.preset == "int8" else self.preset
            )
        elif self.accumulator not in allowed:
            raise ConfigError(
                f"horowitz45 {self.preset} accumulator must be {' or '.join(allowed)}, "
                f"got {self.accumulator!r}"
            )

    @property
    def name(self) -> str:
        if self.preset == "int8":
            return "horowitz45" if self.accumulator == "int32" else "horowitz45-int8"
        return f"horowitz45-{self.preset}"

    @property
    def title(self) -> str:
        return f"Horowitz 45 nm {self.precision}, compute only"

    @property
    def precision(self) -> str:
        return f"{self.preset} weights, {self.accumulator} accumulation"

    @property
    def dense_pricing(self) -> str:
        return f"{self.preset} MACs ({self.e_mac} pJ) in the SNN and the QNN"

    @property
    def e_mac(self) -> float:
        return _PRESETS[self.preset][0]

    @property
    def e_ac(self) -> float:
        """Energy of one synaptic operation: an add at the accumulator's width."""
        return INT32_ADD if self.accumulator == "int32" else _PRESETS[self.preset][1]

    @property
    def constants(self) -> dict[str, float]:
        return {
            f"AC ({self.accumulator} add)": self.e_ac,
            f"MAC {self.preset} (dense work)": self.e_mac,
            "MAC fp32": FP32_MAC,
            "MAC fp16": FP16_MAC,
            "MAC int8 (QNN: x b/8)": INT8_MAC,
        }

    @property
    def baseline_precisions(self) -> dict[str, Precision]:
        return {"ann_fp32": ANN_FP32, "ann_fp16": ANN_FP16, "ann_int8": ANN_INT8}

    def snn_spiking(self, work: LayerWork) -> Split:
        return Split(compute=self.e_ac * work.sops)

    def snn_dense(self, work: LayerWork) -> Split:
        return Split(compute=self.e_mac * work.macs)


def sram_access_pj(elements: float, bits: int) -> float:
    """One access to an SRAM holding ``elements`` of ``bits``: ``1.09e-5 * elements * bits + 13.2``
    pJ, Lemaire et al.'s linear fit of 45 nm SRAM (10 / 20 / 100 pJ at 8 KB / 32 KB / 1 MB; the
    fit gives 13.9 / 16.1 / 104.6 there, and extrapolates linearly beyond 1 MB)."""
    return SRAM_PJ_PER_BIT * elements * bits + SRAM_PJ_FIXED


@dataclass(frozen=True)
class Lemaire(EnergyModel):
    """Memory-aware, after Lemaire et al. (ICONIP 2022, arXiv 2210.13107) and the authors' code.

    Per layer (M tokens, N inputs, O outputs, T steps, E events, SOP = E O), with
    ``S(n, b) = sram_access_pj(n, b)``, adds ``a = 0.1`` pJ, state and FIFO words ``w`` bits,
    dense activations ``x`` bits, weights ``q`` bits:

    SNN compute = a (SOP accumulates + M N T integrations + E resets + SOP addressing)
    SNN memory  = M N S(N, x) [read inputs] + 2 M N T S(N, w) [membranes, read + write]
                + 2 E S(fifo, w) [spike FIFO, write + read] + SOP S(N O, q) [one weight per SOP]
                + 2 SOP S(O, w) [output accumulators, read + write] + M O S(O, x) [write outputs]
    ANN compute = E_MAC MACs + a MACs [addressing, Nin x Nout per token]
    ANN memory  = M N S(N, x) [inputs read once, reused] + MACs S(N O, q) [one weight per MAC]
                + M O S(O, x) [write outputs]

    With ``bias``, both add ``M O`` int32 adds and ``M O`` reads of S(O, w). The ANN's E_MAC and
    widths come from the baseline (``ann_int32`` = the paper's own: int32 mult + add, 32 bits).
    Dense work is priced as an ANN with FP16 MACs, ``x``-bit activations and stored weights.
    """

    e_add: float = INT32_ADD
    e_mul: float = INT32_MULT
    act_bits: int = 16
    word_bits: int = 32
    fifo_elements: int = 1000
    bias: bool = False

    name: ClassVar[str] = "lemaire"
    title: ClassVar[str] = "Lemaire et al. 45 nm, compute + memory"
    source: ClassVar[str] = (
        "Lemaire et al., ICONIP 2022 (arXiv 2210.13107); SpikingJelly 2.0 analytical_energy"
    )
    node: ClassVar[str] = "45 nm"
    scope: ClassVar[str] = "compute + memory"

    def __post_init__(self) -> None:
        for key in ("e_add", "e_mul"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"lemaire {key} must be finite and >= 0, got {value!r}")
        for key in ("act_bits", "word_bits", "fifo_elements"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"lemaire {key} must be a positive integer, got {value!r}")

    @property
    def precision(self) -> str:
        return (
            f"int32 adds, {self.word_bits}-bit state, {self.act_bits}-bit activations, "
            "SRAM per access by buffer size"
        )

    @property
    def dense_pricing(self) -> str:
        return f"as an ANN with FP16 MACs and {self.act_bits}-bit activations, in the SNN and QNN"

    @property
    def constants(self) -> dict[str, float]:
        return {
            "add int32": self.e_add,
            "mult int32": self.e_mul,
            "SRAM per access, per stored bit": SRAM_PJ_PER_BIT,
            "SRAM per access, fixed": SRAM_PJ_FIXED,
            "MAC fp32": FP32_MAC,
            "MAC fp16": FP16_MAC,
            "MAC int8 (QNN: x b/8)": INT8_MAC,
        }

    @property
    def baseline_precisions(self) -> dict[str, Precision]:
        return {
            "ann_fp32": ANN_FP32,
            "ann_fp16": ANN_FP16,
            "ann_int8": ANN_INT8,
            "ann_int32": Precision(self.e_mul + self.e_add, 32, 32),
        }

    def _bias(self, work: LayerWork) -> Split:
        if not self.bias:
            return Split()
        outs = work.tokens * work.out_features
        return Split(self.e_add * outs, outs * sram_access_pj(work.out_features, self.word_bits))

    def snn_spiking(self, work: LayerWork) -> Split:
        m, n, o = work.tokens, work.in_features, work.out_features
        sop, updates, events, w = work.sops, work.neuron_updates, work.events, self.word_bits
        compute = self.e_add * (2 * sop + updates + events)
        memory = (
            m * n * sram_access_pj(n, self.act_bits)
            + 2 * updates * sram_access_pj(n, w)
            + 2 * events * sram_access_pj(self.fifo_elements, w)
            + sop * sram_access_pj(n * o, work.weight_bits)
            + 2 * sop * sram_access_pj(o, w)
            + m * o * sram_access_pj(o, self.act_bits)
        )
        return Split(compute, memory) + self._bias(work)

    def snn_dense(self, work: LayerWork) -> Split:
        return self.ann(work, Precision(FP16_MAC, self.act_bits, None))

    def ann(self, work: LayerWork, precision: Precision) -> Split:
        m, n, o, macs = work.tokens, work.in_features, work.out_features, work.macs
        weight_bits = precision.weight_bits or work.weight_bits
        compute = (precision.e_mac + self.e_add) * macs
        memory = (
            m * n * sram_access_pj(n, precision.act_bits)
            + macs * sram_access_pj(n * o, weight_bits)
            + m * o * sram_access_pj(o, precision.act_bits)
        )
        return Split(compute, memory) + self._bias(work)


@dataclass(frozen=True)
class ChipProfile(_ComputeOnly):
    """A neuromorphic chip's published per-event energies (a profile JSON file):

        E_SNN = e_synop * SOP + e_neuron * neuron updates + e_spike * events

    The figures are all-in per event, so nothing is split out as memory. Dense work cannot run
    on the chip: it is priced with Horowitz 45 nm FP16 MACs (1.5 pJ, a host beside the chip) and
    reported apart (``Pricing.snn_dense``). The ANN baselines are Horowitz 45 nm compute only,
    which leaves their memory out while the chip's figure includes it: the comparison favours
    the ANN.
    """

    profile: Profile

    scope: ClassVar[str] = "chip, all-in per event"
    dense_pricing: ClassVar[str] = (
        "not runnable on the chip; priced with Horowitz 45 nm FP16 MACs (1.5 pJ) on a host"
    )

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def title(self) -> str:
        return f"{self.profile.title}, {self.profile.node}, all-in per event"

    @property
    def source(self) -> str:
        return self.profile.source

    @property
    def node(self) -> str:
        return self.profile.node

    @property
    def precision(self) -> str:
        return "as the chip runs (published per-event figures)"

    @property
    def constants(self) -> dict[str, float]:
        p = self.profile
        figures = {"e_synop": p.e_synop, "e_neuron": p.e_neuron, "e_spike": p.e_spike}
        table = {
            f"{key} ({fig.provenance})": fig.pj for key, fig in figures.items() if fig is not None
        }
        table.update(
            {"MAC fp16 (dense, host)": FP16_MAC, "MAC fp32": FP32_MAC, "MAC int8": INT8_MAC}
        )
        return table

    @property
    def baseline_precisions(self) -> dict[str, Precision]:
        return {"ann_fp32": ANN_FP32, "ann_fp16": ANN_FP16, "ann_int8": ANN_INT8}

    def snn_spiking(self, work: LayerWork) -> Split:
        p = self.profile
        spike = p.e_spike.pj * work.events if p.e_spike else 0.0
        return Split(compute=p.e_synop.pj * work.sops + p.e_neuron.pj * work.neuron_updates + spike)

    def snn_dense(self, work: LayerWork) -> Split:
        return Split(compute=FP16_MAC * work.macs)


_MODELS: dict[str, EnergyModel] = {
    m.name: m
    for m in (
        SpikingBrain(),
        Horowitz45(),
        Horowitz45("int8", "int8"),
        Horowitz45("fp16"),
        Horowitz45("fp32"),
        Lemaire(),
    )
}


def energy_models() -> list[str]:
    """Names :func:`get_energy_model` knows: the analytic models, then the shipped profiles."""
    return [*_MODELS, *shipped_profiles()]


def get_energy_model(name_or_path: str | os.PathLike[str]) -> EnergyModel:
    """A model by name (``energy_models()``) or a hardware profile from a JSON file's path."""
    key = os.fspath(name_or_path)
    if key in _MODELS:
        return _MODELS[key]
    shipped = shipped_profiles()
    if key in shipped:
        return ChipProfile(load_profile(shipped[key]))
    if key.endswith(".json") or os.sep in key or Path(key).exists():
        return ChipProfile(load_profile(key))
    raise ConfigError(
        f"unknown energy model {key!r}; known: {', '.join(energy_models())}, "
        "or a path to a profile JSON file"
    )


def _compare(pricing: Pricing, key: str, label: str) -> str:
    ratio = pricing.ratio(key)
    head = f"Under {pricing.model}, the SNN"
    if ratio is None:
        return f"{head} cannot be compared with {label}: that costs 0 pJ."
    if ratio < 1:
        less = 100 * (1 - ratio)
        return f"{head} beats {label}: it uses {ratio:.3g}x its energy ({less:.1f}% less)."
    if ratio > 1:
        more = f" ({100 * (ratio - 1):.1f}% more)" if ratio < 2 else ""
        return f"{head} does not beat {label}: it uses {ratio:.3g}x its energy{more}."
    return f"{head} uses as much energy as {label}."


def verdicts(pricing: Pricing, spikes_per_synapse: float) -> list[str]:
    """Sentences: the SNN against the FP16 ANN, the INT8 ANN and the same-level QNN, and where
    ``spikes_per_synapse`` falls against Dampfhoffer et al.'s break-even band (0.15-1.38)."""
    if not (math.isfinite(spikes_per_synapse) and spikes_per_synapse >= 0):
        raise ConfigError(f"spikes per synapse must be finite and >= 0, got {spikes_per_synapse}")
    if pricing.empty:
        return [
            f"No work was priced under {pricing.title} (no tokens, no spikes): every energy is "
            "0 pJ, so there is no verdict."
        ]
    labels = {
        "ann_fp16": BASELINE_LABELS["ann_fp16"],
        "ann_int8": BASELINE_LABELS["ann_int8"],
        "qnn": f"the {pricing.qnn_bits}-bit QNN with the same activation levels",
    }
    lines = [_compare(pricing, key, label) for key, label in labels.items()]
    low, high = BREAK_EVEN_BAND
    band = f"Dampfhoffer et al.'s break-even band ({low}-{high} spikes per synapse per inference)"
    where = f"{spikes_per_synapse:.3g} spikes per synapse per inference"
    if spikes_per_synapse < low:
        lines.append(f"{where} is below {band}: IF networks can beat efficient ANN hardware here.")
    elif spikes_per_synapse <= high:
        lines.append(
            f"{where} is inside {band}: whether the SNN wins depends on the hardware, and memory "
            "access can erase its advantage."
        )
    else:
        lines.append(f"{where} is above {band}: efficient ANN hardware is expected to win.")
    if pricing.scope == "compute only":
        lines.append(
            "This model counts compute only; memory access is left out, which overstates the "
            "SNN's saving (see the lemaire model)."
        )
    return lines
