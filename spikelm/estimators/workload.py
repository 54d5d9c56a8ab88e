"""What a run did, layer by layer, as the energy models price it: the spiking model and the ANN
it came from on the same tokens.

For a spiking linear layer with fan-in ``N`` (input neurons), fan-out ``O`` over ``M`` tokens
and ``T`` steps, firing ``E`` spike events (one event = one single-bit or ternary spike; a
bitwise code of count 5 is two events):

    SOP (synaptic operations, effective ACs)  = E * O
    membrane updates                          = M * N * T
    ANN MACs on the same tokens               = M * N * O
    synapses                                  = N * O
    spikes per synapse per inference          = E * O / (M * N * O) = E / (M * N)

Work that stays dense in the spiking model (the output head, layers kept dense, attention scores
and recurrences, norms) is a ``dense`` entry: MACs, priced alike in the SNN and the ANN; those
not coming from a layer's shape are marked ``estimated``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerWork:
    """One layer's (or one dense operation's) work over a run."""

    name: str
    kind: str
    """``spiking`` (driven by spike events) or ``dense`` (MACs in both models)."""
    in_features: int
    out_features: int
    tokens: int
    steps: int = 0
    events: int = 0
    weight_bits: int = 8
    macs_override: int | None = None
    """MACs of a dense operation that is not a linear layer (attention scores, recurrences)."""
    estimated: bool = False
    """True when the MACs are estimated from shapes, not counted from a layer."""

    @property
    def spiking(self) -> bool:
        return self.kind == "spiking"

    @property
    def macs(self) -> int:
        """MACs of this layer in the ANN on the same tokens (and in the SNN if dense)."""
        if self.macs_override is not None:
            return self.macs_override
        return self.tokens * self.in_features * self.out_features

    @property
    def sops(self) -> int:
        """Synaptic operations: spike events times fan-out (0 for dense work)."""
        return self.events * self.out_features if self.spiking else 0

    @property
    def neuron_updates(self) -> int:
        """Membrane updates: every input neuron, every step, every token."""
        return self.tokens * self.in_features * self.steps if self.spiking else 0

    @property
    def synapses(self) -> int:
        return self.in_features * self.out_features

    @property
    def spikes_per_synapse(self) -> float:
        """Spike events per synapse per inference (token), Dampfhoffer et al.'s measure."""
        slots = self.tokens * self.in_features
        return self.events / slots if self.spiking and slots else 0.0
