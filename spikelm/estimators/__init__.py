"""Counting spikes and pricing them: firing statistics now, energy models in a later module."""

from spikelm.estimators.counters import SpikeStats, summarize

__all__ = ["SpikeStats", "summarize"]
