"""Spike trains as events, and their versioned, streamed, atomic HDF5 files.

A spiking layer's input for one token is a ``[T, N]`` tensor of spikes in {-1, 0, 1} (T time steps,
N input channels). :class:`SpikeTrain` (``train``) holds the non-zero entries of ``[tokens, T, N]``
as events, one row per spike, in canonical order (token, t, neuron). :class:`SpikeWriter`
(``writer``) appends trains to an HDF5 file layer by layer with bounded memory and publishes the
file atomically; :class:`SpikeReader` (``reader``) validates a file and reads token ranges by
slicing. The on-disk layout (``format``) is documented in ``docs/spike-hdf5-format.md``.

h5py is imported by the writer and the reader only when used, so importing this package and using
:class:`SpikeTrain` and :func:`as_spike_array` need nothing but numpy.
"""

from spikelm.spikes.format import (
    CHUNK_EVENTS,
    CHUNK_TOKENS,
    FORMAT,
    MAX_NEURONS,
    MAX_STEPS,
    VERSION,
)
from spikelm.spikes.reader import LayerInfo, SpikeReader, open_spikes
from spikelm.spikes.train import SpikeTrain, as_spike_array
from spikelm.spikes.writer import SpikeWriter

__all__ = [
    "CHUNK_EVENTS",
    "CHUNK_TOKENS",
    "FORMAT",
    "MAX_NEURONS",
    "MAX_STEPS",
    "VERSION",
    "LayerInfo",
    "SpikeReader",
    "SpikeTrain",
    "SpikeWriter",
    "as_spike_array",
    "open_spikes",
]
