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
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from spikelm.adapters import adapter_for
from spikelm.calibrate import (
    calibrate,
    channel_divisor,
    detach_observers,
    fisher_scale,
    prepare,
    static_threshold,
)
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.fusion import member_names
from spikelm.layers import SpikingLinear
from spikelm.quant import W8A8Linear, quantize_weight


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def target_linears(model: nn.Module, config: SpikeConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers ``config`` converts, by qualified name, in module order: the
    family's adapter proposes them, the config's ``include`` and ``keep_dense`` patterns filter."""
    return {
        name: module
        for name, module in adapter_for(model).linear_layers(model).items()
        if _matches(name, config.include) and not _matches(name, config.keep_dense)
    }


def select_layers(layers: dict[str, nn.Module], patterns: Iterable[str], option: str) -> dict:
    """The entries of ``layers`` whose names match one of ``patterns`` (a fused layer also by
    its members' names, :func:`spikelm.fusion.member_names`); :class:`ConfigError` naming
    ``option`` for a pattern that matches none."""
    patterns = list(patterns)

    def hit(name: str, pattern: str) -> bool:
        return any(fnmatchcase(n, pattern) for n in member_names(name))

    for pattern in patterns:
        if not any(hit(name, pattern) for name in layers):
            names = list(layers)
            shown = ", ".join(names[:4]) + (
                f", ... ({len(names)} in all)" if len(names) > 4 else ""
            )
            raise ConfigError(f"{option} {pattern!r} matches no spiking layer; layers: {shown}")
    return {n: m for n, m in layers.items() if any(hit(n, p) for p in patterns)}


def check_patterns(model: nn.Module, patterns: Iterable[str], option: str) -> None:
    """Raise :class:`ConfigError` naming ``option`` for a pattern that matches none of
    ``model``'s linear layers (its output head included)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:4]) + (
                f", ... ({len(names)} in all)" if len(names) > 4 else ""
            )
            raise ConfigError(f"{option} {pattern!r} matches no linear layer; layers: {shown}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def spiking_layer(
    linear: nn.Linear,
    config: SpikeConfig,
    name: str,
    observer=None,
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
    config: SpikeConfig | None = getattr(model, "_spikelm_config", None)
    if config is None:
        raise ConfigError("convert() needs a model returned by prepare() (and calibrate())")
    observers = detach_observers(model)
    level = _fisher_level(observers, config)
    targets = list(target_linears(model, config))  # names only: no float layer kept alive
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
        _set_submodule(model, name, layer)
        del linear, layer
    if groups:
        from spikelm.fusion import fuse as fuse_layers

        fuse_layers(model, groups, config)
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
    ``fuse``, the calibration forwards also find the layers that share an input."""
    from spikelm.fusion import tracing

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
        detach_observers(model)
        raise
    return convert(model, backend=backend, fuse=fuse, shared_inputs=shared)


@torch.no_grad()
def w8a8(model: nn.Module, config: SpikeConfig) -> nn.Module:
    """The W8A8 fake-quant baseline of the same layers ``config`` would spike, in place."""
    for name, linear in target_linears(model, config).items():
        quantized = W8A8Linear(linear, config.weight_bits, config.group_size, name=name)
        _set_submodule(model, name, quantized.to(linear.weight.device))
    return model
