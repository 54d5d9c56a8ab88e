"""Raster plots of spike trains (needs the optional ``plot`` extra: matplotlib).

:func:`raster` puts several codings of the same activations side by side, one panel each, as in
SpikingBrain's Fig. 10 (binary vs ternary vs bitwise). matplotlib is imported inside the function
and drives the Agg canvas directly, so the caller's pyplot backend and state are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spikelm.errors import ConfigError, ShapeError
from spikelm.fileio import atomic_file
from spikelm.spikes import as_spike_array

WIDTH_IN = 8.0
"""Figure width in inches."""

PANEL_HEIGHT_IN = 2.0
"""Height of one panel in inches."""

HEADER_IN = 0.8
"""Height in inches reserved for the title and the legend."""

POSITIVE_COLOUR = "#b2182b"
NEGATIVE_COLOUR = "#2166ac"


def raster(
    trains: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw one raster panel per entry of ``trains`` and save the figure as PNG at ``path``.

    Each value is a ``[T, N]`` numpy array or torch tensor of spikes in {-1, 0, 1}; time step on
    x, neuron on y, +1 spikes red and -1 spikes blue. The image is ``WIDTH_IN * dpi`` pixels wide
    and ``(HEADER_IN + PANEL_HEIGHT_IN * len(trains)) * dpi`` pixels tall. The file is written to
    a temporary sibling and renamed, so ``path`` never holds a partial image. Returns ``path``.

    Raises :class:`~spikelm.errors.CountRangeError` (a ``ValueError``) for values other than
    -1, 0, 1, :class:`~spikelm.errors.ShapeError` for a value that is not 2-D and
    :class:`~spikelm.errors.ConfigError` when ``trains`` is empty.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if not trains:
        raise ConfigError("raster: trains is empty; give at least one [T, N] spike array")
    panels = {
        name: as_spike_array(spikes, name=f"raster {name!r}") for name, spikes in trains.items()
    }
    for name, spikes in panels.items():
        if spikes.ndim != 2:
            raise ShapeError(f"raster {name!r}: expected spikes [T, N], got shape {spikes.shape}")

    fig = Figure(
        figsize=(WIDTH_IN, HEADER_IN + PANEL_HEIGHT_IN * len(panels)), layout="constrained"
    )
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, spikes) in zip(axes, panels.items(), strict=True):
        steps, n_neurons = spikes.shape
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
        t, neuron = np.nonzero(spikes)  # one call in (t, neuron) order: neither colour on top
        colours = np.where(spikes[t, neuron] > 0, POSITIVE_COLOUR, NEGATIVE_COLOUR)
        ax.scatter(t, neuron, s=size, c=colours, marker=bar, linewidths=0)
        n_spikes = int(np.count_nonzero(spikes))
        ax.set_title(
            f"{name}: T={steps}, N={n_neurons}, {n_spikes} spikes "
            f"({np.count_nonzero(spikes == 1)} +1, {np.count_nonzero(spikes == -1)} -1), "
            f"firing rate {n_spikes / spikes.size:.1%}",
            fontsize="medium",
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
        fig.suptitle(title)

    path = Path(path)
    with atomic_file(path) as staging:
        fig.savefig(staging, format="png", dpi=dpi)
    return path
