"""Raster plots of spike trains (needs the optional ``plot`` extra: matplotlib).

:func:`raster` puts several codings of the same activations side by side, one panel each, as in
SpikingBrain's Fig. 10 (binary vs ternary vs bitwise), or several layers of a recording. matplotlib
is imported inside the function and drives the Agg canvas directly, so the caller's pyplot backend
and state are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spikelm.errors import ConfigError, ShapeError
from spikelm.fileio import atomic_file, one_line
from spikelm.outputs import PLOT_MARKER
from spikelm.spikes import SpikeTrain, as_spike_array

WIDTH_IN = 8.0
"""Figure width in inches."""

PANEL_HEIGHT_IN = 2.0
"""Height of one panel in inches."""

HEADER_IN = 0.8
"""Height in inches reserved for the title and the legend."""

POSITIVE_COLOUR = "#b2182b"
NEGATIVE_COLOUR = "#2166ac"


def _events(name: str, spikes: Any) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, n_neurons, t, neuron, polarity)`` of one panel, spikes in (t, neuron) order.

    A :class:`SpikeTrain` of k tokens is drawn as ``k * T`` time steps, token after token, without
    building its dense array.
    """
    if isinstance(spikes, SpikeTrain):
        t = (spikes.token - spikes.tokens.start) * spikes.steps + spikes.t
        steps = len(spikes.tokens) * spikes.steps
        return steps, spikes.n_neurons, t, spikes.neuron, spikes.polarity
    arr = as_spike_array(spikes, name=f"raster {name!r}")
    if arr.ndim != 2:
        raise ShapeError(f"raster {name!r}: expected spikes [T, N], got shape {arr.shape}")
    t, neuron = np.nonzero(arr)
    return arr.shape[0], arr.shape[1], t, neuron, arr[t, neuron]


def raster(
    trains: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw one raster panel per entry of ``trains`` and save the figure as PNG at ``path``.

    Each value is a ``[T, N]`` numpy array or torch tensor of spikes in {-1, 0, 1}, or a
    :class:`~spikelm.spikes.SpikeTrain` (its tokens one after another: ``len(tokens) * T`` steps);
    time step on x, neuron on y, +1 spikes red and -1 spikes blue. The image is
    ``WIDTH_IN * dpi`` pixels wide and ``(HEADER_IN + PANEL_HEIGHT_IN * len(trains)) * dpi``
    pixels tall. The file is written to a temporary sibling and renamed, so ``path`` never holds a
    partial image; its PNG metadata mark it as spikelm's (``spikelm.outputs``). Returns ``path``.

    Raises :class:`~spikelm.errors.CountRangeError` (a ``ValueError``) for values other than
    -1, 0, 1, :class:`~spikelm.errors.ShapeError` for a value that is not 2-D or has no time
    steps or neurons, and :class:`~spikelm.errors.ConfigError` when ``trains`` is empty or
    ``path`` is a directory, lies in a missing directory or cannot be written.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"raster output {path} (--out): is a directory; give a .png file")
    if not path.parent.is_dir():
        raise ConfigError(f"raster output {path} (--out): directory {path.parent} does not exist")
    if not trains:
        raise ConfigError("raster: trains is empty; give at least one [T, N] spike array")
    panels = {name: _events(name, spikes) for name, spikes in trains.items()}
    for name, (steps, n_neurons, *_) in panels.items():
        if not steps or not n_neurons:
            raise ShapeError(f"raster {name!r}: nothing to draw in spikes [{steps}, {n_neurons}]")

    fig = Figure(
        figsize=(WIDTH_IN, HEADER_IN + PANEL_HEIGHT_IN * len(panels)), layout="constrained"
    )
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, (steps, n_neurons, t, neuron, polarity)) in zip(
        axes, panels.items(), strict=True
    ):
        # One bar per spike: 60 % of a time step wide, one neuron (at least one pixel) high.
        width_pt = 0.6 * 0.85 * WIDTH_IN * 72 / steps
        height_pt = max(0.9 * (PANEL_HEIGHT_IN - 0.5) * 72 / n_neurons, 72 / dpi)
        bar = [
            (-width_pt, -height_pt),
            (width_pt, -height_pt),
            (width_pt, height_pt),
            (-width_pt, height_pt),
        ]
        size = max(width_pt, height_pt) ** 2  # a vertex marker's longer side is sqrt(s) points
        # One call in (t, neuron) order: neither colour on top.
        colours = np.where(polarity > 0, POSITIVE_COLOUR, NEGATIVE_COLOUR)
        ax.scatter(t, neuron, s=size, c=colours, marker=bar, linewidths=0)
        n_positive = int(np.count_nonzero(polarity > 0))
        ax.set_title(
            f"{name}: T={steps}, N={n_neurons}, {len(t)} spikes "
            f"({n_positive} +1, {len(t) - n_positive} -1), "
            f"firing rate {len(t) / (steps * n_neurons):.1%}",
            fontsize="medium",
            parse_math=False,  # layer names and file names are text, whatever "$" they hold
        )
        ax.set_xlim(-0.5, steps - 0.5)
        ax.set_ylim(-0.5, n_neurons - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("neuron")
    axes[-1].set_xlabel("time step")
    fig.legend(
        handles=[
            Patch(color=POSITIVE_COLOUR, label="+1 spike"),
            Patch(color=NEGATIVE_COLOUR, label="-1 spike"),
        ],
        loc="outside upper right",
        ncols=2,
    )
    if title is not None:
        fig.suptitle(title, parse_math=False)

    try:
        with atomic_file(path) as staging:
            fig.savefig(staging, format="png", dpi=dpi, metadata={"Software": PLOT_MARKER.decode()})
    except OSError as exc:
        raise ConfigError(f"raster output {path} (--out): cannot write: {one_line(exc)}") from exc
    return path
