"""Constants of the spike HDF5 layout (``docs/spike-hdf5-format.md``), used by writer and reader."""

from __future__ import annotations

import numpy as np

FORMAT = "spikelm.spikes"
"""Value of the root attribute ``format`` of every spike file."""

VERSION = 2
"""The layout version this package writes. Version 2 adds each layer's ``fan_out`` and
``weight_bits`` and the run's root attributes an energy report needs."""

READ_VERSIONS = (1, 2)
"""The layout versions this package reads."""

MAX_WEIGHT_BITS = 32
"""Largest ``weight_bits`` a layer may declare."""

CHUNK_EVENTS = 1 << 16
"""HDF5 chunk length (rows) of the event datasets; the writer buffers up to a chunk per column."""

CHUNK_TOKENS = 1 << 14
"""HDF5 chunk length of ``token_ptr``."""

MAX_STEPS = 1 << 16
"""Largest T a file can hold: ``t`` is stored as uint16."""

MAX_NEURONS = (1 << 31) - 1
"""Largest N a file can hold: ``neuron`` is stored as int32."""

FIELDS = ("token", "t", "neuron", "polarity")
"""The event columns, in :class:`~spikelm.spikes.SpikeTrain` and in each layer group."""

DISK_DTYPES = {
    "token": np.dtype("<i8"),
    "t": np.dtype("<u2"),
    "neuron": np.dtype("<i4"),
    "polarity": np.dtype("i1"),
    "token_ptr": np.dtype("<i8"),
}
"""On-disk dtype of every dataset of a layer group."""
