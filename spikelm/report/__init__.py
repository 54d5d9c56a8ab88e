"""``spikelm report``: a run's counts and its energy under named models, against the ANN.

:func:`build` prices an :class:`~spikelm.estimators.accounting.Account` (from a live run or a
recording) under each energy model, phase by phase, and gathers everything the formats print:
the terminal table, JSON (``docs/report-schema.md``), Markdown and a self-contained HTML page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spikelm.estimators.accounting import Account
from spikelm.estimators.energy import (
    EnergyModel,
    Pricing,
    get_energy_model,
    spikes_per_synapse,
    verdicts,
)

DEFAULT_MODELS = ("spikingbrain", "horowitz45", "lemaire")
SCHEMA_VERSION = 1
GENERATOR = "spikelm report"


@dataclass
class ModelReport:
    """One energy model's figures: per phase and in total, and its verdicts."""

    model: EnergyModel
    pricings: dict[str, Pricing]
    """``prefill``, ``decode`` (phases with tokens) and ``total``."""
    verdicts: list[str]


@dataclass
class Report:
    source: str
    account: Account
    levels: int
    energy: list[ModelReport]
    meta: dict[str, Any] = field(default_factory=dict)
    sweep: list[dict[str, float]] = field(default_factory=list)

    @property
    def phases(self) -> list[str]:
        return [phase for phase, count in self.account.tokens.items() if count]


def build(
    account: Account,
    *,
    source: str,
    levels: int,
    models: Sequence[str] = DEFAULT_MODELS,
    meta: dict[str, Any] | None = None,
    sweep: list[dict[str, float]] | None = None,
) -> Report:
    """Price ``account`` under each of ``models`` (names or profile files; ConfigError for an
    unknown one, before any pricing). ``levels`` is the coding's number of count levels."""
    resolved = [get_energy_model(name) for name in models]
    phases = [phase for phase, count in account.tokens.items() if count]
    per_synapse = spikes_per_synapse(account.all_works())
    energy = []
    for model in resolved:
        pricings = {phase: model.price(account.works[phase], levels=levels) for phase in phases}
        pricings["total"] = model.price(account.all_works(), levels=levels)
        energy.append(ModelReport(model, pricings, verdicts(pricings["total"], per_synapse)))
    return Report(source, account, levels, energy, meta or {}, sweep or [])


__all__ = ["DEFAULT_MODELS", "GENERATOR", "SCHEMA_VERSION", "ModelReport", "Report", "build"]
