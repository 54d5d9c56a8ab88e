"""Saturation: spike counts clamped at the edge of the coding's range, measured and never silent.

A coding over ``T`` steps holds counts in ``[lo, hi]`` (bitwise-bidirectional, T=8: +-255); the
neuron clamps a larger ``|x| / V_th`` to the edge, and the value it stood for is lost. For a
layer that fired counts ``s[m, c]`` over ``M`` tokens and ``C`` channels:

    clamped share = #{s[m, c] in {lo, hi}} / (M C)          (lo only for signed codings)

(a count exactly at the edge is counted too: it is what the hardware sees, and it is rare).
Conversion measures it on calibration data and warns, naming the layers, when a layer's share
exceeds :data:`SATURATION_LIMIT`; the fidelity table, ``simulate`` and the report show it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from spikelm.estimators.counters import SpikeStats, summarize

SATURATION_LIMIT = 1e-3
"""A layer clamping more than this share of its counts is named in a warning."""

SHOWN_LAYERS = 4
"""Layers named in one line; the rest are counted."""


class SaturationWarning(UserWarning):
    """Some spiking layers clamp more than :data:`SATURATION_LIMIT` of their counts."""


def saturated_layers(
    layer_stats: Mapping[str, SpikeStats], limit: float = SATURATION_LIMIT
) -> dict[str, float]:
    """``{layer: clamped share}`` of the layers above ``limit``, largest share first."""
    shares = {name: s.clipped_share for name, s in layer_stats.items() if s.slots}
    return dict(sorted(((n, v) for n, v in shares.items() if v > limit), key=lambda i: -i[1]))


def saturation_note(
    layer_stats: Mapping[str, SpikeStats], limit: float = SATURATION_LIMIT
) -> str | None:
    """One line naming the layers that clamp more than ``limit`` of their counts, with the share
    of all counts clamped; ``None`` when no layer does."""
    over = saturated_layers(layer_stats, limit)
    if not over:
        return None
    shown = ", ".join(f"{name} {share:.2%}" for name, share in list(over.items())[:SHOWN_LAYERS])
    more = len(over) - SHOWN_LAYERS
    total = summarize(s for s in layer_stats.values() if s.slots).clipped_share
    return (
        f"{len(over)} of {len(layer_stats)} spiking layers clamp more than {limit:.1%} of their "
        f"counts at the coding's range: {shown}{f', and {more} more' if more > 0 else ''} "
        f"({total:.3%} of all counts); more steps (--steps), outlier migration "
        "(--smooth-alpha) or keeping those layers dense (--keep-dense) avoid it"
    )


def warn_saturation(
    layer_stats: Mapping[str, SpikeStats], where: str, limit: float = SATURATION_LIMIT
) -> dict[str, float]:
    """Warn (:class:`SaturationWarning`) when a layer clamps more than ``limit`` of its counts on
    ``where``; returns :func:`saturated_layers`."""
    note = saturation_note(layer_stats, limit)
    if note is not None:
        warnings.warn(f"{where}: {note}", SaturationWarning, stacklevel=3)
    return saturated_layers(layer_stats, limit)


@torch.no_grad()
def measure_saturation(
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, SpikeStats]:
    """Each spiking layer's firing statistics (clamped share included) over ``batches``, run by
    ``run(model, batch)`` (default: ``model(batch)``).

    Each layer drops the weight layouts its backend derived as soon as it has run (a dense
    backend's float copy of the weights), so that measuring holds one layer's, not the model's."""
    from spikelm.layers import collect_stats, spiking_layers

    was_training = model.training
    model.eval()
    hooks = [
        layer.register_forward_hook(lambda layer, args, out: layer.clear_derived())
        for layer in spiking_layers(model).values()
    ]
    try:
        with collect_stats(model) as stats:
            for batch in batches:
                (run or _forward)(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return stats


def _forward(model: nn.Module, batch: Any) -> None:
    model(batch)


__all__ = [
    "SATURATION_LIMIT",
    "SaturationWarning",
    "measure_saturation",
    "saturated_layers",
    "saturation_note",
    "warn_saturation",
]
