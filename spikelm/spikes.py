"""Spike trains as events, and their versioned, streamed, atomic HDF5 files.

A spiking layer's input for one token is a ``[T, N]`` tensor of spikes in {-1, 0, 1} (T time steps,
N input channels). :class:`SpikeTrain` holds the non-zero entries of ``[tokens, T, N]`` as events,
one row per spike, in canonical order (token, t, neuron). :class:`SpikeWriter` appends trains to an
HDF5 file layer by layer with bounded memory and publishes the file atomically;
:class:`SpikeReader` validates a file and reads token ranges by slicing. The on-disk layout is
documented in ``docs/spike-hdf5-format.md``.

h5py is imported by the writer and the reader only, so :class:`SpikeTrain` and
:func:`as_spike_array` need nothing but numpy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spikelm.errors import (
    ConfigError,
    CountRangeError,
    NonFiniteError,
    ShapeError,
    SpikeFileError,
)
from spikelm.fileio import one_line, partial_path

if TYPE_CHECKING:
    import h5py

FORMAT = "spikelm.spikes"
"""Value of the root attribute ``format`` of every spike file."""

VERSION = 1
"""The layout version this module writes and the only one it reads."""

CHUNK_EVENTS = 1 << 16
"""HDF5 chunk length (rows) of the event datasets; the writer buffers up to a chunk per column."""

CHUNK_TOKENS = 1 << 14
"""HDF5 chunk length of ``token_ptr``."""

MAX_STEPS = 1 << 16
"""Largest T a file can hold: ``t`` is stored as uint16."""

_FIELDS = ("token", "t", "neuron", "polarity")
_MEMORY_DTYPES = {"token": np.int64, "t": np.int32, "neuron": np.int32, "polarity": np.int8}
_DISK_DTYPES = {
    "token": np.dtype("<i8"),
    "t": np.dtype("<u2"),
    "neuron": np.dtype("<i4"),
    "polarity": np.dtype("i1"),
    "token_ptr": np.dtype("<i8"),
}
_COMPRESSION = {
    "gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True, "fletcher32": True},
    "lzf": {"compression": "lzf", "shuffle": True, "fletcher32": True},
    None: {"fletcher32": True},
}
_RESERVED_ATTRS = frozenset({"format", "version", "complete"})


def as_spike_array(spikes: Any, *, name: str = "spikes") -> np.ndarray:
    """Return ``spikes`` (numpy array, torch tensor or nested sequence) as int8, any shape.

    Raises :class:`~spikelm.errors.NonFiniteError` for NaN/inf and
    :class:`~spikelm.errors.CountRangeError` for any value other than -1, 0 or 1 (both derive
    from ``ValueError``); ``name`` starts the message.
    """
    if hasattr(spikes, "detach"):  # a torch.Tensor; torch itself is not imported here
        spikes = spikes.detach().cpu()
        if spikes.is_floating_point():
            spikes = spikes.float()  # bfloat16 has no numpy dtype; float32 is returned as is
    arr = np.asarray(spikes)
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.int8)
    if kind in "iu":
        bad = (arr < -1) | (arr > 1)
    elif kind == "f":
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"{name}: contains NaN or infinite values; spikes are -1, 0 or 1")
        bad = (arr != 0) & (np.abs(arr) != 1)
    else:
        raise CountRangeError(f"{name}: dtype {arr.dtype} is not numeric; spikes are -1, 0 or 1")
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise CountRangeError(
            f"{name}: spikes must be -1, 0 or 1; found {arr[where].item()!r} at index "
            f"{tuple(int(i) for i in where)} of shape {tuple(arr.shape)}"
        )
    return arr.astype(np.int8, copy=False)


def _index_column(values: Any, name: str, low: int, high: int) -> np.ndarray:
    """``values`` as a 1-D integer array whose entries lie in ``[low, high)``."""
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ShapeError(
            f"SpikeTrain.{name}: expected a 1-D integer array, got {arr.dtype} {arr.shape}"
        )
    if arr.size and (arr.min() < low or arr.max() >= high):
        raise ShapeError(
            f"SpikeTrain.{name}: values must lie in [{low}, {high}), found {arr.min()}..{arr.max()}"
        )
    return arr.astype(_MEMORY_DTYPES[name], copy=False)


@dataclass(eq=False)
class SpikeTrain:
    """Spike events of one layer over a range of tokens; one row per non-zero spike.

    The four columns are 1-D numpy arrays of equal length: ``token`` (int64, absolute token
    number), ``t`` (int32, time step in ``[0, steps)``), ``neuron`` (int32, channel in
    ``[0, n_neurons)``) and ``polarity`` (int8, +1 or -1). ``tokens`` is the token range the train
    covers (tokens without spikes included); it defaults to ``range(0, max(token) + 1)`` and is
    always a ``range`` after construction.
    Construction validates the columns, casts them to those dtypes and sorts the events into
    canonical (token, t, neuron) order; a repeated (token, t, neuron) is an error.
    """

    token: np.ndarray
    t: np.ndarray
    neuron: np.ndarray
    polarity: np.ndarray
    layer: str
    n_neurons: int
    steps: int
    tokens: range | None = None

    def __post_init__(self) -> None:
        if self.n_neurons < 1 or self.steps < 1:
            raise ShapeError(
                f"SpikeTrain {self.layer!r}: n_neurons and steps must be >= 1, "
                f"got n_neurons={self.n_neurons}, steps={self.steps}"
            )
        self.n_neurons, self.steps = int(self.n_neurons), int(self.steps)
        token = np.asarray(self.token)
        if self.tokens is None:
            self.tokens = range(int(token.max()) + 1 if token.size else 0)
        if self.tokens.step != 1:
            raise ShapeError(f"SpikeTrain {self.layer!r}: tokens must be a range with step 1")
        self.token = _index_column(token, "token", self.tokens.start, self.tokens.stop)
        self.t = _index_column(self.t, "t", 0, self.steps)
        self.neuron = _index_column(self.neuron, "neuron", 0, self.n_neurons)
        self.polarity = _index_column(self.polarity, "polarity", -1, 2)
        lengths = {len(getattr(self, name)) for name in _FIELDS}
        if len(lengths) != 1:
            raise ShapeError(
                f"SpikeTrain {self.layer!r}: columns differ in length: "
                + ", ".join(f"{name} {len(getattr(self, name))}" for name in _FIELDS)
            )
        if (self.polarity == 0).any():
            raise CountRangeError(f"SpikeTrain {self.layer!r}: polarity must be +1 or -1, found 0")
        key = (self.token - self.tokens.start) * (self.steps * self.n_neurons)
        key += self.t.astype(np.int64) * self.n_neurons + self.neuron
        if (np.diff(key) <= 0).any():
            order = np.argsort(key, kind="stable")
            for name in _FIELDS:
                setattr(self, name, getattr(self, name)[order])
            if (np.diff(key[order]) == 0).any():
                raise ShapeError(f"SpikeTrain {self.layer!r}: an event (token, t, neuron) repeats")

    @classmethod
    def from_dense(cls, spikes: Any, *, layer: str = "", token_offset: int = 0) -> SpikeTrain:
        """Events of a dense ``[tokens, T, N]`` (or one token's ``[T, N]``) spike tensor.

        ``spikes`` is a numpy array or torch tensor of values in {-1, 0, 1}; the first token gets
        number ``token_offset``.
        """
        arr = as_spike_array(spikes, name=f"layer {layer!r}" if layer else "spikes")
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ShapeError(f"spikes must be [tokens, T, N] or [T, N], got shape {arr.shape}")
        token, t, neuron = np.nonzero(arr)
        n_tokens, steps, n_neurons = arr.shape
        return cls(
            token=token + token_offset,
            t=t,
            neuron=neuron,
            polarity=arr[token, t, neuron],
            layer=layer,
            n_neurons=n_neurons,
            steps=steps,
            tokens=range(token_offset, token_offset + n_tokens),
        )

    def to_dense(self, tokens: range | None = None) -> np.ndarray:
        """Dense int8 ``[len(tokens), T, N]`` spikes; row i is token ``tokens[i]``.

        ``tokens`` defaults to the train's own range; events outside it are left out.
        """
        tokens = self.tokens if tokens is None else tokens
        if tokens.step != 1:
            raise ShapeError("to_dense: tokens must be a range with step 1")
        out = np.zeros((len(tokens), self.steps, self.n_neurons), dtype=np.int8)
        rows = slice(*np.searchsorted(self.token, [tokens.start, tokens.stop]))
        out[self.token[rows] - tokens.start, self.t[rows], self.neuron[rows]] = self.polarity[rows]
        return out

    def __len__(self) -> int:
        return len(self.token)

    @property
    def nbytes(self) -> int:
        """Bytes held by the four event columns."""
        return sum(getattr(self, name).nbytes for name in _FIELDS)


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
            self.columns[name].append(column.astype(_DISK_DTYPES[name]))
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
        self, name: str, n_neurons: int, steps: int | None = None, coding: str | None = None
    ) -> None:
        """Declare layer ``name`` with N = ``n_neurons`` channels and T = ``steps`` time steps.

        ``steps`` and ``coding`` default to the writer's. :meth:`append` declares a layer it has
        not seen from the shape of its first data, so calling this is needed only to set
        ``coding`` per layer or to record a layer that never spikes.
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
        if not 1 <= n_neurons < 2**31:
            raise ConfigError(f"layer {name!r}: n_neurons must be in [1, 2**31), got {n_neurons}")
        group = self._layers_group.create_group(name)
        group.attrs.update({"n_neurons": int(n_neurons), "steps": int(steps)})
        if coding is not None:
            group.attrs["coding"] = coding
        columns = {}
        for column, dtype in _DISK_DTYPES.items():
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

    def close(self) -> None:
        """Flush, mark the file complete, sync it and move it to ``path``. Idempotent."""
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
        except BaseException:
            self.abort()
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


@dataclass(frozen=True)
class LayerInfo:
    """What a spike file records about one layer."""

    name: str
    n_neurons: int
    steps: int
    coding: str | None
    n_tokens: int
    n_events: int


class SpikeReader:
    """Read a spike file written by :class:`SpikeWriter`; validates it on open.

    Every problem with the file (missing, not HDF5, truncated, corrupt, another format or version,
    incomplete, missing or inconsistent datasets) raises :class:`~spikelm.errors.SpikeFileError`
    with a one-line message naming the file, on open or when the bad data are read.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise SpikeFileError(f"{self.path}: no such spike file")
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
        except OSError as exc:
            raise SpikeFileError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {one_line(exc)}"
            ) from exc
        try:
            with self._reading("the file's metadata"):
                self._layers = self._validate()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SpikeReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Turn h5py and validation errors while reading ``what`` into :class:`SpikeFileError`."""
        try:
            yield
        except SpikeFileError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise SpikeFileError(f"{self.path}: cannot read {what}: {one_line(exc)}") from exc

    def _fail(self, problem: str) -> SpikeFileError:
        return SpikeFileError(f"{self.path}: {problem}")

    def _validate(self) -> dict[str, LayerInfo]:
        attrs = self._file.attrs
        found = attrs.get("format")
        if found != FORMAT:
            raise self._fail(
                f"not a spikelm spike file (format attribute "
                f"{'missing' if found is None else repr(found)}, expected {FORMAT!r})"
            )
        version = attrs.get("version")
        if version != VERSION:
            raise self._fail(
                f"spike file format version {version} is not supported; "
                f"this spikelm reads version {VERSION}"
            )
        if not bool(attrs.get("complete", False)):
            raise self._fail(
                "incomplete spike file (complete flag missing or false): the write was interrupted"
            )
        if "layers" not in self._file:
            raise self._fail("missing group /layers")
        layers = {}
        for name, group in self._file["layers"].items():
            for dataset in (*_FIELDS, "token_ptr"):
                if dataset not in group:
                    raise self._fail(f"layer {name!r} is missing dataset {dataset!r}")
            for key in ("n_neurons", "steps"):
                if key not in group.attrs:
                    raise self._fail(f"layer {name!r} is missing attribute {key!r}")
            lengths = {column: group[column].shape[0] for column in _FIELDS}
            if len(set(lengths.values())) != 1:
                raise self._fail(
                    f"layer {name!r}: event datasets differ in length ("
                    + ", ".join(f"{k} {v}" for k, v in lengths.items())
                    + ")"
                )
            ptr = group["token_ptr"]
            n_events = lengths["token"]
            ends = (ptr[0], ptr[-1]) if ptr.shape[0] else None
            if ends != (0, n_events):
                raise self._fail(
                    f"layer {name!r}: token_ptr must run from 0 to the number of events "
                    f"({n_events}), found {'nothing' if ends is None else f'{ends[0]}..{ends[1]}'}"
                )
            coding = group.attrs.get("coding")
            layers[name] = LayerInfo(
                name=name,
                n_neurons=int(group.attrs["n_neurons"]),
                steps=int(group.attrs["steps"]),
                coding=None if coding is None else str(coding),
                n_tokens=ptr.shape[0] - 1,
                n_events=n_events,
            )
        return layers

    @property
    def layers(self) -> list[str]:
        """Layer names in the order they were added."""
        return list(self._layers)

    @property
    def version(self) -> int:
        """The file's layout version (always :data:`VERSION`: others are refused on open)."""
        return int(self._file.attrs["version"])

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (format, version, complete, spikelm_version and the writer's attrs)."""
        return dict(self._file.attrs)

    def info(self, layer: str) -> LayerInfo:
        """Shape and size of ``layer``."""
        if layer not in self._layers:
            raise ConfigError(f"{self.path}: no layer {layer!r}; layers: {', '.join(self._layers)}")
        return self._layers[layer]

    def n_tokens(self, layer: str) -> int:
        """Number of tokens recorded for ``layer``."""
        return self.info(layer).n_tokens

    def read(self, layer: str, tokens: slice | range | None = None) -> SpikeTrain:
        """Events of ``layer`` for ``tokens`` (a slice or range of token numbers; default all).

        Token numbers are preserved: ``read(l, slice(10, 20)).tokens == range(10, 20)``. Only the
        rows of those tokens are read (located through ``token_ptr``).
        """
        info = self.info(layer)
        if tokens is None:
            tokens = range(info.n_tokens)
        elif isinstance(tokens, slice):
            tokens = range(*tokens.indices(info.n_tokens))
        if tokens.step != 1 or not 0 <= tokens.start <= tokens.stop <= info.n_tokens:
            raise ConfigError(
                f"{self.path}: layer {layer!r} has tokens 0..{info.n_tokens}; cannot read {tokens}"
            )
        group = self._file["layers"][layer]
        with self._reading(f"layer {layer!r}, tokens {tokens.start}..{tokens.stop}"):
            ptr = group["token_ptr"][tokens.start : tokens.stop + 1]
            counts = np.diff(ptr)
            if (counts < 0).any() or ptr[0] < 0 or ptr[-1] > info.n_events:
                raise self._fail(
                    f"layer {layer!r}: token_ptr is not non-decreasing within 0..{info.n_events}"
                )
            lo, hi = int(ptr[0]), int(ptr[-1])
            columns = {column: group[column][lo:hi] for column in _FIELDS}
            expected = np.repeat(np.arange(tokens.start, tokens.stop, dtype=np.int64), counts)
            if not np.array_equal(columns["token"], expected):
                raise self._fail(f"layer {layer!r}: the token dataset disagrees with token_ptr")
            return SpikeTrain(
                **columns,
                layer=layer,
                n_neurons=info.n_neurons,
                steps=info.steps,
                tokens=tokens,
            )

    def iter_chunks(self, layer: str, tokens_per_chunk: int) -> Iterator[SpikeTrain]:
        """Yield ``layer`` as consecutive trains of ``tokens_per_chunk`` tokens (the last shorter)."""
        if tokens_per_chunk < 1:
            raise ConfigError(f"tokens_per_chunk must be >= 1, got {tokens_per_chunk}")
        n_tokens = self.n_tokens(layer)
        for start in range(0, n_tokens, tokens_per_chunk):
            yield self.read(layer, range(start, min(start + tokens_per_chunk, n_tokens)))


def open_spikes(path: str | os.PathLike[str]) -> SpikeReader:
    """Open and validate a spike file; same as ``SpikeReader(path)``."""
    return SpikeReader(path)
