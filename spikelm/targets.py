"""Which layers a conversion touches, by qualified name: the family's adapter proposes the linear
layers, the config's ``include`` and ``keep_dense`` patterns filter them (:func:`target_linears`);
user patterns select among converted layers (:func:`select_layers`) or are checked against a
model's linear layers (:func:`check_patterns`)."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from spikelm.adapters import adapter_for
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.fusion import member_names


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


def check_targets(targets: dict[str, nn.Linear], config: SpikeConfig) -> None:
    """Raise :class:`ConfigError` when ``config``'s patterns leave no layer to convert."""
    if not targets:
        raise ConfigError(
            "no nn.Linear layer matches the include/keep_dense patterns "
            f"(include={list(config.include)}, keep_dense={list(config.keep_dense)})"
        )


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


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
