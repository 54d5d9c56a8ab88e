"""The one protocol every backend implements, and the count of which execution path ran.

A backend is one :class:`Backend` object, defined in its own module: the selection layer
(``spikelm.backends``) and the layers only ever talk to that object, never to a backend by name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

Linear = Callable[..., torch.Tensor]
"""``linear(layer, counts [M, in], v_th [M, 1]) -> y [M, out]`` (float32, no bias); it notes the
rows of each execution path it ran with :func:`ran`."""

Accumulators = Callable[..., torch.Tensor]
"""``accumulators(layer, counts [M, in]) -> acc [M, G, out]``: the exact integer sums."""

Forward = Callable[..., "tuple[torch.Tensor, torch.Tensor | None] | None"]
"""``forward(layer, x [..., in], counts=bool) -> (y [..., out] with bias, counts [M, in] int64 or
None)``: the neuron and the matmul in one call, in the float operations of
``SpikingLinear.spike_counts`` (same spikes); ``None`` where it cannot (the layer then runs its
torch neuron and ``linear``)."""


@dataclass(frozen=True)
class Backend:
    """What a backend declares about itself; the selection layer needs nothing else.

    Attributes:
        name: the name users pass (``backend="numba"``).
        devices: device types it runs on (``None``: wherever torch runs).
        exact: whether it computes the exact integer accumulators and turns them into outputs
            through the shared :func:`~spikelm.backends.epilogue.epilogue` (then its outputs are
            bit-identical to every other exact backend's on one device).
        linear: its :data:`Linear`.
        accumulators: its :data:`Accumulators` (exact backends only).
        forward: an optional one-call :data:`Forward` for ``x`` on ``forward_device``.
        forward_device: the device type ``forward`` serves.
        warmup: optional ``warmup(layers) -> seconds``: compile or load kernels before timing.
        note: one line for the table of backends.
    """

    name: str
    devices: tuple[str, ...] | None
    exact: bool
    linear: Linear
    accumulators: Accumulators | None = None
    forward: Forward | None = None
    forward_device: str = "cpu"
    warmup: Callable[..., float] | None = None
    note: str = ""

    def runs_on(self, device: torch.device) -> bool:
        return self.devices is None or device.type in self.devices


_paths: Counter[str] = Counter()


def ran(path: str, rows: int) -> None:
    """Note that ``rows`` rows went through execution path ``path`` (e.g. ``numba.counts``)."""
    _paths[path] += rows


class PathCounts:
    """Rows each execution path ran since this object was made: call it for ``{path: rows}``."""

    def __init__(self) -> None:
        self._start = Counter(_paths)

    def __call__(self) -> dict[str, int]:
        return {k: v - self._start[k] for k, v in sorted(_paths.items()) if v != self._start[k]}


def counting_paths() -> PathCounts:
    """Start counting the rows each execution path runs (see :class:`PathCounts`)."""
    return PathCounts()


__all__ = ["Backend", "PathCounts", "counting_paths", "ran"]
