"""Calibration, the torch.ao way: ``prepare`` attaches an observer (:mod:`spikelm.observers`) to
the input of every layer a conversion targets (:func:`spikelm.targets.target_linears`),
``calibrate`` runs data through the model, and ``spikelm.convert.convert`` reads the
observers and turns each target layer into a spiking one.

Everything calibration holds travels in one record, :class:`Calibration`, stored on the model
as ``model._spikelm_calibration`` from ``prepare`` until ``convert`` takes it: the config, the
observers by layer name and the hooks. Dependencies run one way: this module knows observers
and targets, ``convert`` knows this module, never the reverse.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spikelm.adapters import adapter_for
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.loss import next_token_nll
from spikelm.observers import ActivationObserver
from spikelm.targets import check_targets, target_linears

RECORD = "_spikelm_calibration"
"""The model attribute holding its :class:`Calibration` between ``prepare`` and ``convert``."""


@dataclass
class Calibration:
    """What ``prepare`` set up and ``calibrate`` filled: the config, one observer per target layer
    (by qualified name) and the hooks that feed them."""

    config: SpikeConfig
    observers: dict[str, ActivationObserver]
    hooks: list[Any] = field(default_factory=list)

    def release(self) -> None:
        """Remove the hooks (the observers stay, for conversion to read)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks = []


def calibration_of(model: nn.Module, what: str = "convert()") -> Calibration:
    """The model's :class:`Calibration`, or :class:`ConfigError` saying ``what`` needs one."""
    record = getattr(model, RECORD, None)
    if not isinstance(record, Calibration):
        raise ConfigError(f"{what} needs a model returned by prepare()")
    return record


def take_calibration(model: nn.Module) -> Calibration:
    """Detach the model's :class:`Calibration` (hooks removed, attribute dropped) and return it."""
    record = calibration_of(model)
    record.release()
    delattr(model, RECORD)
    return record


def prepare(model: nn.Module, config: SpikeConfig) -> nn.Module:
    """Attach an observer to the input of every layer ``config`` converts; returns ``model``."""
    targets = target_linears(model, config)
    check_targets(targets, config)
    setattr(model, RECORD, observe(targets, config))
    return model


def observe(targets: dict[str, nn.Linear], config: SpikeConfig) -> Calibration:
    """An observer on the input of each of ``targets`` (by qualified name), hooked in."""
    needs_sample = config.threshold != "dynamic" and config.rule == "percentile"
    rows = config.max_calib_rows if needs_sample else 0
    record = Calibration(config, {})
    for name, linear in targets.items():
        observer = ActivationObserver(name, linear.in_features, rows, config.seed)
        record.observers[name] = observer
        hook = (
            _fisher_hook(observer) if config.fisher_power is not None else _observe_hook(observer)
        )
        record.hooks.append(linear.register_forward_pre_hook(hook))
    return record


def _observe_hook(observer: ActivationObserver) -> Callable[[nn.Module, tuple], None]:
    return lambda _module, args: observer.observe(args[0])


def _fisher_hook(observer: ActivationObserver) -> Callable[[nn.Module, tuple], tuple | None]:
    """Observe the input and, when grad is on, catch ``dL/dx = W^T dL/dy`` on the way back.

    The layer gets its own alias of its input, so the gradient caught is the one through this
    layer only (the layer's own quantization noise enters there), not the sum over every layer
    that reads the same tensor (q/k/v projections). An input that does not require grad
    (parameters are frozen in calibration, so the first layers' inputs do not) becomes a leaf.
    """

    def hook(_module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        observer.observe(x)
        if not torch.is_grad_enabled():
            return None
        alias = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
        alias.register_hook(observer.observe_gradient)
        return (alias, *args[1:])

    return hook


def default_run(model: nn.Module, batch: Any) -> None:
    """A forward pass of token ids with the family's calibration keywords."""
    model(batch, **_calibration_kwargs(model))


def calibration_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Every position's logits ``[B, L, V]`` of token ids ``[B, L]``, through the family's
    adapter with its calibration keywords."""
    return adapter_for(model).logits(model, batch, **_calibration_kwargs(model, all_logits=True))


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of token ids ``[B, L]``: the loss whose Fisher
    ``fisher_power`` uses (models returning logits or an object with ``.logits``)."""
    return next_token_nll(calibration_logits(model, batch), batch)


def _calibration_kwargs(model: nn.Module, *, all_logits: bool = False) -> dict[str, Any]:
    """The family's calibration keywords; every position's logits when a loss needs them or the
    output head itself is calibrated."""
    adapter = adapter_for(model)
    head = adapter.output_head(model)
    record = getattr(model, RECORD, None)
    names = record.observers if isinstance(record, Calibration) else ()
    observed = {id(model.get_submodule(name)) for name in names}
    all_logits = all_logits or (head is not None and id(head) in observed)
    return adapter.calibration_kwargs(model, all_logits=all_logits)


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any] | None = None,
    *,
    progress: bool = True,
) -> nn.Module:
    """Run ``run(model, batch)`` on each calibration batch (token ids) with a progress bar.

    The default ``run`` is a plain forward pass. When the config asks for ``fisher_power``, ``run``
    must return the loss (default :func:`next_token_loss`); it is differentiated with respect to
    the observed activations only (parameters are frozen meanwhile, so no weight gradient is kept).
    """
    record = calibration_of(model, "calibrate()")
    batches = list(batches)
    if not batches:
        raise ConfigError("the calibration set is empty: give at least one text or token batch")
    fisher = record.config.fisher_power is not None
    step = _loss_step(run or next_token_loss) if fisher else run or default_run
    was_training = model.training
    model.eval()
    # disable=None draws the bar only on a terminal, so logs and pipes get no bar lines
    bar = tqdm(batches, desc="calibrating", unit="batch", disable=None if progress else True)
    with _frozen(model) if fisher else torch.no_grad():
        for batch in bar:
            step(model, batch)
    model.train(was_training)
    return model


def _loss_step(run: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], None]:
    """``run`` followed by a backward pass of the loss it returns."""

    def step(model: nn.Module, batch: Any) -> None:
        loss = run(model, batch)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
            raise ConfigError(
                "fisher_power needs run(model, batch) to return a scalar loss that depends on the "
                "model's activations"
            )
        loss.backward()

    return step


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Grad on, parameters' ``requires_grad`` off (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
