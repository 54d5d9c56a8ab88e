"""A run's work, phase by phase, as :class:`~spikelm.estimators.workload.LayerWork` lists: from a
live :func:`spikelm.simulate.simulate` run or from a spike recording.

Prefill is the input tokens fed one at a time; decode is the generated tokens fed back. A layer's
tokens are the rows it computed (an unrouted expert computes fewer than the model's tokens), and
its ANN MACs are counted on the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from spikelm.estimators.counters import SpikeStats, summarize
from spikelm.estimators.workload import LayerWork

MIXERS = "attention and recurrences (estimated)"


@dataclass
class Account:
    """Per phase: the layers' work and spike statistics; per token: spike events."""

    works: dict[str, list[LayerWork]]
    stats: dict[str, dict[str, SpikeStats]]
    tokens: dict[str, int]
    token_events: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pooled(self, phase: str | None = None) -> SpikeStats | None:
        """Every layer's statistics pooled, over one phase or both; ``None`` without spikes data."""
        tables = [self.stats[phase]] if phase else list(self.stats.values())
        items = [s for table in tables for s in table.values() if s.slots]
        return summarize(items) if items else None

    def all_works(self) -> list[LayerWork]:
        """Each layer's work over both phases together (tokens, events and MACs summed)."""
        merged: dict[str, LayerWork] = {}
        for works in self.works.values():
            for work in works:
                seen = merged.get(work.name)
                if seen is None:
                    merged[work.name] = work
                    continue
                macs = None
                if seen.macs_override is not None or work.macs_override is not None:
                    macs = seen.macs + work.macs
                merged[work.name] = replace(
                    seen,
                    tokens=seen.tokens + work.tokens,
                    events=seen.events + work.events,
                    macs_override=macs,
                )
        return list(merged.values())


def account(
    stats: Mapping[str, Mapping[str, SpikeStats]],
    shapes: Mapping[str, tuple[int, int]],
    *,
    tokens: Mapping[str, int],
    weight_bits: int,
    dense: Mapping[str, tuple[int, int]] = {},  # noqa: B006 - read only
    mixer_macs: Mapping[str, int] = {},  # noqa: B006 - read only
    token_events: list[int] | None = None,
) -> Account:
    """Build the account of a run: ``stats[phase][layer]``, each spiking layer's ``(in, out)``,
    the phases' token counts, the dense linear layers' ``(in, out)`` and the estimated mixer MACs
    per phase."""
    works: dict[str, list[LayerWork]] = {}
    for phase, layers in stats.items():
        count = tokens.get(phase, 0)
        items = [
            LayerWork(
                name=name,
                kind="spiking",
                in_features=shapes[name][0],
                out_features=shapes[name][1],
                tokens=layer.tokens,
                steps=layer.steps,
                events=layer.events,
                weight_bits=weight_bits,
            )
            for name, layer in layers.items()
        ]
        items += [
            LayerWork(name=name, kind="dense", in_features=i, out_features=o, tokens=count)
            for name, (i, o) in dense.items()
        ]
        if phase in mixer_macs:
            items.append(
                LayerWork(
                    name=MIXERS,
                    kind="dense",
                    in_features=0,
                    out_features=0,
                    tokens=count,
                    macs_override=int(mixer_macs[phase]),
                    estimated=True,
                )
            )
        works[phase] = items
    notes = []
    if not any(s.events for table in stats.values() for s in table.values()):
        notes.append("no spike was fired: every spiking figure is zero")
    return Account(
        works, {p: dict(t) for p, t in stats.items()}, dict(tokens), token_events or [], notes
    )


def from_simulation(result, model) -> Account:
    """The account of a :class:`~spikelm.simulate.SimulationResult` of ``model``."""
    from spikelm.layers import spiking_layers

    layers = spiking_layers(model)
    config = getattr(model, "_spikelm_config", None)
    prefill = result.input_tokens
    return account(
        result.phase_stats,
        {name: (layer.in_features, layer.out_features) for name, layer in layers.items()},
        tokens={"prefill": prefill, "decode": result.tokens - prefill},
        weight_bits=config.weight_bits if config is not None else 8,
        dense=result.dense_linears,
        mixer_macs=result.mixer_macs,
        token_events=result.token_events,
    )
