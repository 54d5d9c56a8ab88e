"""Streamed, atomic writing of spike files: :class:`SpikeWriter` (h5py imported on use)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spikelm.errors import ConfigError, ShapeError, SpikeFileError
from spikelm.fileio import one_line, partial_path
from spikelm.spikes.format import (
    CHUNK_EVENTS,
    CHUNK_TOKENS,
    DISK_DTYPES,
    FORMAT,
    MAX_NEURONS,
    MAX_STEPS,
    MAX_WEIGHT_BITS,
    VERSION,
)
from spikelm.spikes.train import SpikeTrain

if TYPE_CHECKING:
    import h5py

_COMPRESSION = {
    "gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True, "fletcher32": True},
    "lzf": {"compression": "lzf", "shuffle": True, "fletcher32": True},
    None: {"fletcher32": True},
}
_RESERVED_ATTRS = frozenset({"format", "version", "complete"})


@dataclass
class _Column:
    """A dataset appended to in whole chunks; rows wait here until they fill one."""

    dataset: h5py.Dataset
    chunk: int
    parts: list[np.ndarray] = field(default_factory=list)
    pending: int = 0

    def append(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.pending += len(rows)
        if self.pending >= self.chunk:
            self.flush(whole_chunks=True)

    def flush(self, *, whole_chunks: bool = False) -> None:
        """Write the queued rows, or with ``whole_chunks`` those up to the last chunk boundary.

        Writing whole chunks compresses each chunk once and needs no HDF5 chunk cache.
        """
        if not self.pending:
            return
        data = np.concatenate(self.parts)
        size = self.dataset.shape[0]
        stop = (size + len(data)) // self.chunk * self.chunk - size if whole_chunks else len(data)
        self.dataset.resize((size + stop,))
        self.dataset[size:] = data[:stop]
        self.parts = [data[stop:].copy()] if stop < len(data) else []
        self.pending = len(data) - stop


@dataclass
class _Layer:
    """A layer being written: its shape, its size so far and its five columns."""

    n_neurons: int
    steps: int
    columns: dict[str, _Column]
    n_tokens: int = 0
    n_events: int = 0

    def add(self, train: SpikeTrain) -> None:
        """Queue ``train`` as this layer's next ``len(train.tokens)`` tokens."""
        start, stop = train.tokens.start, train.tokens.stop
        ends = np.searchsorted(train.token, np.arange(start, stop), side="right")
        rows = {
            "token": train.token + (self.n_tokens - start),
            "t": train.t,
            "neuron": train.neuron,
            "polarity": train.polarity,
            "token_ptr": ends + self.n_events,
        }
        for name, column in rows.items():  # astype copies: the caller may reuse its arrays
            self.columns[name].append(column.astype(DISK_DTYPES[name]))
        self.n_tokens += len(train.tokens)
        self.n_events += len(train)


class SpikeWriter:
    """Write spike trains of several layers to an HDF5 file, token range by token range.

    Use as a context manager. Data go to ``.<name>.partial-<pid>-<random>`` beside ``path``; a successful
    :meth:`close` marks the file complete, syncs it and renames it to ``path`` (replacing any
    file there). An exception inside the ``with`` block, or a failing close, deletes the temporary
    file and leaves ``path`` as it was. Rows are written in whole HDF5 chunks; each layer buffers less
    than one chunk per dataset (about 1 MB) plus the train being appended, whatever the length of
    the recording.

    ``steps`` and ``coding`` are defaults for :meth:`add_layer`; ``attrs`` are extra root
    attributes (str, numbers or arrays). ``compression`` is ``"gzip"`` (default, level 4, with
    the shuffle filter: readable by any HDF5 build), ``"lzf"`` (faster, larger files, needs h5py
    or the lzf plugin to read) or ``None``. Every dataset carries a Fletcher-32 checksum, so
    damaged chunks fail to read instead of returning wrong spikes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        steps: int | None = None,
        coding: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        compression: str | None = "gzip",
    ) -> None:
        import h5py

        from spikelm import __version__

        self.path = Path(path)
        self._tmp = partial_path(self.path)
        self._steps = steps
        self._coding = coding
        self._layers: dict[str, _Layer] = {}
        attrs = dict(attrs or {})
        if _RESERVED_ATTRS & attrs.keys():
            raise ConfigError(f"attrs may not set {sorted(_RESERVED_ATTRS & attrs.keys())}")
        if compression not in _COMPRESSION:
            raise ConfigError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
        self._dataset_options = _COMPRESSION[compression]
        try:
            self._file: h5py.File | None = h5py.File(
                self._tmp, "w", track_order=True, rdcc_nbytes=0
            )
        except OSError as exc:
            raise SpikeFileError(f"{self.path}: cannot create spike file: {one_line(exc)}") from exc
        try:
            self._file.attrs.update(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "complete": False,
                    "spikelm_version": __version__,
                }
            )
            self._file.attrs.update(attrs)
            self._layers_group = self._file.create_group("layers", track_order=True)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> SpikeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _require_open(self) -> None:
        if self._file is None:
            raise SpikeFileError(f"{self.path}: the writer is closed")

    def add_layer(
        self,
        name: str,
        n_neurons: int,
        steps: int | None = None,
        coding: str | None = None,
        *,
        fan_out: int | None = None,
        weight_bits: int | None = None,
    ) -> None:
        """Declare layer ``name`` with N = ``n_neurons`` channels and T = ``steps`` time steps.

        ``steps`` and ``coding`` default to the writer's. :meth:`append` declares a layer it has
        not seen from the shape of its first data, so calling this is needed only to set
        ``coding``, ``fan_out`` (the output features its spikes drive) or ``weight_bits`` per
        layer, or to record a layer that never spikes.
        """
        self._require_open()
        steps = self._steps if steps is None else steps
        coding = self._coding if coding is None else coding
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"layer name must be a non-empty string without '/', got {name!r}")
        if name in self._layers:
            raise ConfigError(f"{self.path}: layer {name!r} was already added")
        if steps is None or not 1 <= steps <= MAX_STEPS:
            raise ConfigError(f"layer {name!r}: steps must be in [1, {MAX_STEPS}], got {steps}")
        if not 1 <= n_neurons <= MAX_NEURONS:
            raise ConfigError(
                f"layer {name!r}: n_neurons must be in [1, {MAX_NEURONS}], got {n_neurons}"
            )
        group = self._layers_group.create_group(name)
        group.attrs.update({"n_neurons": int(n_neurons), "steps": int(steps)})
        if coding is not None:
            group.attrs["coding"] = coding
        for key, value, high in (
            ("fan_out", fan_out, MAX_NEURONS),
            ("weight_bits", weight_bits, MAX_WEIGHT_BITS),
        ):
            if value is not None:
                if not 1 <= value <= high:
                    raise ConfigError(f"layer {name!r}: {key} must be in [1, {high}], got {value}")
                group.attrs[key] = int(value)
        columns = {}
        for column, dtype in DISK_DTYPES.items():
            is_ptr = column == "token_ptr"
            chunk = CHUNK_TOKENS if is_ptr else CHUNK_EVENTS
            dataset = group.create_dataset(
                column,
                data=np.zeros(1 if is_ptr else 0, dtype=dtype),  # token_ptr starts at offset 0
                maxshape=(None,),
                chunks=(chunk,),
                **self._dataset_options,
            )
            columns[column] = _Column(dataset, chunk)
        self._layers[name] = _Layer(int(n_neurons), int(steps), columns)

    def append(self, layer: str, spikes: Any) -> None:
        """Append the next tokens of ``layer``.

        ``spikes`` is a dense ``[tokens, T, N]`` / ``[T, N]`` array or tensor, or a
        :class:`SpikeTrain`, whose ``tokens`` range becomes the layer's next ``len(tokens)``
        tokens (its token numbers are shifted accordingly).
        """
        self._require_open()
        train = (
            spikes if isinstance(spikes, SpikeTrain) else SpikeTrain.from_dense(spikes, layer=layer)
        )
        if train.layer and train.layer != layer:
            raise ConfigError(
                f"append to layer {layer!r} got a SpikeTrain of layer {train.layer!r}"
            )
        if layer not in self._layers:
            self.add_layer(layer, train.n_neurons, train.steps)
        state = self._layers[layer]
        if (train.steps, train.n_neurons) != (state.steps, state.n_neurons):
            raise ShapeError(
                f"layer {layer!r} has T={state.steps}, N={state.n_neurons}; "
                f"got spikes with T={train.steps}, N={train.n_neurons}"
            )
        state.add(train)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add root attributes (str, numbers or arrays) before the file is closed."""
        self._require_open()
        if _RESERVED_ATTRS & attrs.keys():
            raise ConfigError(f"attrs may not set {sorted(_RESERVED_ATTRS & attrs.keys())}")
        self._file.attrs.update(attrs)

    def close(self) -> None:
        """Flush, mark the file complete, sync it and move it to ``path``. Idempotent.

        Any failure deletes the temporary file; an OS error (disk full, ``path`` a directory, ...)
        is raised as :class:`~spikelm.errors.SpikeFileError`.
        """
        if self._file is None:
            return
        try:
            for state in self._layers.values():
                for column in state.columns.values():
                    column.flush()
            self._file.attrs["complete"] = True
            self._file.close()
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError) and not isinstance(exc, SpikeFileError):
                raise SpikeFileError(
                    f"{self.path}: cannot write the spike file: {one_line(exc)}"
                ) from exc
            raise
        self._file = None

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left untouched. Idempotent."""
        if self._file is None:
            return
        try:
            self._file.close()
        finally:
            self._file = None
            self._tmp.unlink(missing_ok=True)
