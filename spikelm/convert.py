"""prepare -> calibrate -> convert, over any ``nn.Module`` built of ``nn.Linear`` layers.

    model = prepare(model, SpikeConfig(...))     # observers on the inputs of target layers
    calibrate(model, batches)                     # run calibration data through it
    model = convert(model)                        # each target nn.Linear -> SpikingLinear

Conversion goes layer by layer: each float weight is quantized and released before the next, so
peak memory stays near the model's own size. ``spiking(model, config, batches)`` does all three.

With ``fuse=True`` (the default) sibling layers that read one input tensor and end up with the
same neuron become one fused ``SpikingLinear`` (:mod:`spikelm.fusion`); which layers share an
input is traced on the calibration batches (``spiking``) or on a short forward of a few tokens.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from spikelm.adapters import adapter_for
from spikelm.calibrate import calibrate, default_run, prepare, take_calibration
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.layers import SpikingLinear
from spikelm.observers import ActivationObserver, channel_divisor, fisher_scale, static_threshold
from spikelm.quant import W8A8Linear, quantize_weight
from spikelm.recipes import SATURATION_BATCHES, apply_recipe
from spikelm.saturation import measure_saturation, warn_saturation
from spikelm.targets import set_submodule, target_linears


@torch.no_grad()
def spiking_layer(
    linear: nn.Linear,
    config: SpikeConfig,
    name: str,
    observer: ActivationObserver | None = None,
    backend: str = "torch",
    *,
    fisher_level: float | None = None,
) -> SpikingLinear:
    """A ``SpikingLinear`` computing what ``linear`` does, from spikes and int weights.

    ``fisher_level`` is the model-wide constant of Fisher thresholds (:func:`fisher_scale`).
    """
    divisor = channel_divisor(observer, linear.weight, config, fisher_level)
    layer = SpikingLinear(
        linear.in_features,
        linear.out_features,
        config,
        bias=linear.bias is not None,
        backend=backend,
        name=name,
    )
    weight = linear.weight if bool((divisor == 1).all()) else linear.weight.float() * divisor
    weight_q, scale = quantize_weight(weight, config.weight_bits, config.group_size, name=name)
    del weight
    layer.weight_q.copy_(weight_q)
    layer.weight_scale.copy_(scale)
    layer.input_divisor.copy_(divisor)
    if config.threshold == "static_tensor":
        threshold = static_threshold(
            observer, divisor, config, per_channel=False, fisher_level=fisher_level
        )
        layer.threshold.copy_(threshold)
    if linear.bias is not None:
        layer.bias.copy_(linear.bias.to(torch.float32))
    return layer.to(linear.weight.device)


def convert(
    model: nn.Module,
    *,
    backend: str = "torch",
    fuse: bool = True,
    shared_inputs: Iterable[Sequence[str]] | None = None,
) -> nn.Module:
    """Replace every layer ``prepare`` marked with a ``SpikingLinear``, in place; returns ``model``.

    ``fuse``: fuse sibling layers that read one input and have identical neuron parameters
    (:func:`spikelm.fusion.fuse`). ``shared_inputs`` are the groups of layer names known to read
    one input (``spikelm.fusion.tracing`` around ``calibrate``); ``None`` traces one short forward
    of the float model here (a family adapter's model only).
    """
    record = take_calibration(model)
    config, observers = record.config, record.observers
    level = _fisher_level(observers, config)
    targets = list(observers)  # names only: no float layer kept alive
    groups: list[tuple[str, ...]] = []
    if fuse:
        if shared_inputs is None:
            from spikelm.fusion import trace_shared_inputs

            shared_inputs = trace_shared_inputs(
                model, {name: model.get_submodule(name) for name in targets}
            )
        groups = [tuple(group) for group in shared_inputs]
    for name in targets:
        linear = model.get_submodule(name)
        observer = observers.pop(name, None)
        layer = spiking_layer(linear, config, name, observer, backend, fisher_level=level)
        set_submodule(model, name, layer)
        del linear, layer
    if groups:
        from spikelm.fusion import fuse as fuse_layers

        fuse_layers(model, groups, config)
    model._spikelm_config = config
    adapter_for(model).converted(model)
    return model


def _fisher_level(observers: dict, config: SpikeConfig) -> float | None:
    """The model-wide constant of static Fisher thresholds, or ``None`` when none is needed."""
    if config.fisher_power is None or config.threshold == "dynamic":
        return None
    if not observers or any(o.rows == 0 for o in observers.values()):
        raise ConfigError("fisher_power needs calibration data; run calibrate() first")
    return fisher_scale(observers.values(), config.fisher_power)


def spiking(
    model: nn.Module,
    config: SpikeConfig,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any] | None = None,
    *,
    progress: bool = True,
    backend: str = "torch",
    fuse: bool = True,
) -> nn.Module:
    """prepare, calibrate and convert in one call (``run`` as in :func:`calibrate`); with
    ``fuse``, the calibration forwards also find the layers that share an input.

    With ``config.recipe`` other than ``spikingbrain``, the recipe's steps follow on the
    calibration batches (:func:`spikelm.recipes.apply_recipe`; the float model is copied first,
    as the reference they learn against). The converted model then runs the first
    :data:`~spikelm.recipes.SATURATION_BATCHES` calibration batches, and
    a :class:`~spikelm.saturation.SaturationWarning` names the layers that clamp more than
    :data:`~spikelm.saturation.SATURATION_LIMIT` of their spike counts there."""
    from spikelm.fusion import tracing

    batches = list(batches)
    reference = copy.deepcopy(model) if config.recipe != "spikingbrain" else None
    prepare(model, config)
    shared = None
    try:
        with contextlib.ExitStack() as stack:
            if fuse:
                tracer = stack.enter_context(tracing(target_linears(model, config)))
            calibrate(model, batches, run, progress=progress)
        if fuse:
            shared = tracer.groups()
    except BaseException:
        take_calibration(model)  # hooks off: the model is left as it was given
        raise
    model = convert(model, backend=backend, fuse=fuse, shared_inputs=shared)
    apply_recipe(model, config, batches, run or default_run, reference=reference)
    del reference
    measured = measure_saturation(model, batches[:SATURATION_BATCHES], run or default_run)
    warn_saturation(measured, "on the calibration data")
    return model


@torch.no_grad()
def w8a8(model: nn.Module, config: SpikeConfig) -> nn.Module:
    """The W8A8 fake-quant baseline of the same layers ``config`` would spike, in place."""
    for name, linear in target_linears(model, config).items():
        quantized = W8A8Linear(linear, config.weight_bits, config.group_size, name=name)
        set_submodule(model, name, quantized.to(linear.weight.device))
    return model
