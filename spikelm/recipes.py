"""Conversion recipes by name: what happens after the layers are converted.

- ``spikingbrain``: SpikingBrain's recipe as the config states it, nothing more (the default).
- ``spikelm``: the best recipe spikelm knows, from the calibration data:
    1. steps where counts saturate (:func:`widen_saturated`): a layer that clamps more than
       :data:`~spikelm.saturation.SATURATION_LIMIT` of its counts gets one more time step at a
       time (bitwise codes double their range per step), at most ``MAX_EXTRA_STEPS``;
    2. learned per-layer thresholds (:mod:`spikelm.learn`), with the spike count in the
       objective (``SpikeConfig.spike_weight``, the trade-off knob);
    3. the saturation check again, since learned thresholds move the counts.
  Weights stay as the conversion quantized them: only neuron parameters move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.layers import spiking_layers
from spikelm.saturation import SATURATION_LIMIT, measure_saturation, saturated_layers

MAX_EXTRA_STEPS = 4
"""Most time steps :func:`widen_saturated` adds to a layer."""


def widen_saturated(
    model: nn.Module,
    batches: Sequence[Any],
    run: Callable[[nn.Module, Any], Any] | None = None,
    *,
    limit: float = SATURATION_LIMIT,
    max_extra: int = MAX_EXTRA_STEPS,
) -> dict[str, int]:
    """Give each layer that clamps more than ``limit`` of its counts on ``batches`` one more time
    step, measure again, and repeat (at most ``max_extra`` steps per layer): ``{layer: steps}`` of
    the layers widened."""
    layers = spiking_layers(model)
    start = {name: layer.steps for name, layer in layers.items()}
    for _ in range(max_extra):
        over = saturated_layers(measure_saturation(model, batches, run), limit)
        grow = [name for name in over if layers[name].steps < start[name] + max_extra]
        if not grow:
            break
        for name in grow:
            layers[name].set_neuron(steps=layers[name].steps + 1)
    return {name: layer.steps for name, layer in layers.items() if layer.steps != start[name]}


def apply_recipe(
    model: nn.Module,
    config: SpikeConfig,
    batches: Sequence[Any],
    run: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, Any]:
    """Run ``config.recipe``'s steps after conversion on the calibration ``batches``; returns
    what they changed (``{"steps": {layer: T}, ...}``, empty for ``spikingbrain``)."""
    if config.recipe == "spikingbrain":
        return {}
    if not batches:
        raise ConfigError(
            "the spikelm recipe learns from calibration data: give calibration text or batches"
        )
    return {"steps": widen_saturated(model, batches, run)}


__all__ = ["MAX_EXTRA_STEPS", "apply_recipe", "widen_saturated"]
