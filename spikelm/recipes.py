"""Conversion recipes by name: what happens after the layers are converted.

- ``spikingbrain``: SpikingBrain's recipe as the config states it, nothing more (the default).
- ``spikelm``: the best recipe spikelm knows, from the calibration data:
    1. steps where counts saturate (:func:`widen_saturated`): a layer that clamps more than
       :data:`~spikelm.saturation.SATURATION_LIMIT` of its counts gets one more time step at a
       time (bitwise codes double their range per step), at most ``MAX_EXTRA_STEPS``;
    2. learned per-layer thresholds and decode gains (:mod:`spikelm.learn`), with the spike
       count in the objective (``SpikeConfig.spike_weight``, the trade-off knob);
    3. the saturation check again, since learned thresholds move the counts.
  Weights stay as the conversion quantized them: only neuron parameters move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from spikelm.adapters import adapter_for
from spikelm.calibrate import calibration_logits
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.layers import spiking_layers
from spikelm.learn import LearnOptions, LearnReport, learn_thresholds
from spikelm.saturation import SATURATION_LIMIT, measure_saturation, saturated_layers

MAX_EXTRA_STEPS = 4
"""Most time steps :func:`widen_saturated` adds to a layer."""

SATURATION_BATCHES = 2
"""Calibration batches on which saturation is measured (after conversion and after learning)."""


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


def learn_options(config: SpikeConfig) -> LearnOptions:
    """The recipe's learning settings from ``config`` (its trade-off knob and seed)."""
    return LearnOptions(config.spike_weight, seed=config.seed, spike_budget=config.spike_budget)


def recipe_steps(
    model: nn.Module,
    measured: Sequence[Any],
    run: Callable[[nn.Module, Any], Any] | None,
    learn: Callable[[], LearnReport] | None,
) -> dict[str, Any]:
    """The recipe on converted ``model`` (the whole model, or one block of it): steps where counts
    saturate on ``measured``, then ``learn()`` (thresholds and gains, when given), then the
    saturation check again. Returns ``{"steps": {layer: T}, "k": {..}, "gain": {..}}``."""
    changed: dict[str, Any] = {"steps": widen_saturated(model, measured, run)}
    if learn is not None:
        report = learn()
        changed["k"] = report.values
        changed["gain"] = report.gains
        changed["steps"].update(widen_saturated(model, measured, run))
    return changed


def apply_recipe(
    model: nn.Module,
    config: SpikeConfig,
    batches: Sequence[Any],
    run: Callable[[nn.Module, Any], Any] | None = None,
    *,
    reference: nn.Module | None = None,
) -> dict[str, Any]:
    """Run ``config.recipe``'s steps (:func:`recipe_steps`) after conversion on the calibration
    ``batches``; returns what they changed (empty for ``spikingbrain``).

    ``reference`` is the float model the spiking ``model`` was converted from: thresholds are
    learned against its next-token distribution, for language models (a model whose family has
    an output head); other models (encoders) only get the saturation steps.
    """
    if config.recipe == "spikingbrain":
        return {}
    if not batches:
        raise ConfigError(
            "the spikelm recipe learns from calibration data: give calibration text or batches"
        )
    learn = None
    if reference is not None and adapter_for(model).output_head(model) is not None:

        def learn() -> LearnReport:
            options = dataclasses.asdict(learn_options(config))
            return learn_thresholds(reference, model, batches, run=calibration_logits, **options)

    return recipe_steps(model, batches[:SATURATION_BATCHES], run, learn)


__all__ = [
    "MAX_EXTRA_STEPS",
    "apply_recipe",
    "learn_options",
    "recipe_steps",
    "widen_saturated",
]
