"""A run's work, phase by phase, as :class:`~spikelm.estimators.workload.LayerWork` lists: from a
live :func:`spikelm.simulate.simulate` run or from a spike recording.

Prefill is the input tokens fed one at a time; decode is the generated tokens fed back. A layer's
tokens are the rows it computed (an unrouted expert computes fewer than the model's tokens), and
its ANN MACs are counted on the same rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from spikelm.errors import ConfigError
from spikelm.estimators.counters import SpikeStats, summarize
from spikelm.estimators.workload import LayerWork
from spikelm.saturation import saturation_note

MIXERS = "attention and recurrences (estimated)"
PHASES = ("prefill", "decode")


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
    merged: dict[str, SpikeStats] = {}
    for table in stats.values():
        for name, layer in table.items():
            merged[name] = merged[name].merge(layer) if name in merged else layer
    saturated = saturation_note(merged)
    if saturated:
        notes.append(saturated)
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


def from_recording(path: str | os.PathLike[str], tokens_per_chunk: int = 256) -> tuple:
    """``(account, levels, meta)`` of a spike recording, read ``tokens_per_chunk`` tokens at a
    time (memory stays bounded however long the recording). Needs a version-2 recording (each
    layer's fan-out); a version-1 one is a :class:`ConfigError` saying so."""
    from spikelm.encoders import get_coder
    from spikelm.spikes import SpikeReader

    with SpikeReader(path) as reader:
        infos = [reader.info(name) for name in reader.layers]
        if reader.version < 2 or any(i.fan_out is None or i.coding is None for i in infos):
            raise ConfigError(
                f"{path}: a version-{reader.version} recording does not store each layer's "
                "fan-out and coding, which energy needs; record again with this spikelm "
                "(spikelm simulate --record) or report the checkpoint"
            )
        if not infos:
            raise ConfigError(f"{path}: the recording holds no layer")
        attrs = reader.attrs
        total = max(info.n_tokens for info in infos)
        prefill = min(_attr_int(attrs, "input_tokens", total), total)
        stats = {phase: {} for phase in PHASES}
        token_events = np.zeros(total, dtype=np.int64)
        for info in infos:
            coder = get_coder(info.coding)
            for phase in PHASES:
                stats[phase][info.name] = SpikeStats(steps=info.steps)
            start = 0
            for train in reader.iter_chunks(info.name, tokens_per_chunk):
                counts = coder.decode(torch.from_numpy(train.to_dense()).transpose(0, 1))
                rows = counts.shape[0]
                cut = min(max(prefill - start, 0), rows)
                for phase, part in (("prefill", counts[:cut]), ("decode", counts[cut:])):
                    if part.shape[0]:
                        stats[phase][info.name].update(part, coder)
                np.add.at(token_events, train.token, 1)
                start += rows
        levels = max(
            hi - lo + 1 for lo, hi in (get_coder(i.coding).count_range(i.steps) for i in infos)
        )
        meta = {"recording": str(path), "backend": attrs.get("backend"), "input_tokens": prefill}
    dense = {k: tuple(v) for k, v in _attr_json(attrs, "dense_linears", {}).items()}
    return (
        account(
            stats,
            {i.name: (i.n_neurons, i.fan_out) for i in infos},
            tokens={"prefill": prefill, "decode": total - prefill},
            weight_bits=infos[0].weight_bits or 8,
            dense=dense,
            mixer_macs=_attr_json(attrs, "mixer_macs", {}),
            token_events=token_events.tolist(),
        ),
        levels,
        meta,
    )


def _attr_int(attrs: Mapping, key: str, default: int) -> int:
    value = attrs.get(key, default)
    return int(value) if isinstance(value, (int, np.integer)) and value >= 0 else default


def _attr_json(attrs: Mapping, key: str, default: dict) -> dict:
    """A JSON object stored as a string attribute, checked; ``default`` when absent."""
    raw = attrs.get(key)
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = None
    ok = isinstance(value, dict) and all(
        isinstance(v, int)
        and v >= 0
        or isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, int) and x > 0 for x in v)
        for v in value.values()
    )
    if not ok:
        raise ConfigError(f"root attribute {key!r} is not a valid JSON object of counts")
    return value
