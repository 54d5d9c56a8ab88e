"""Validated reading of spike files: :class:`SpikeReader` and :func:`open_spikes` (h5py on use)."""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikelm.errors import ConfigError, CountRangeError, ShapeError, SpikeFileError
from spikelm.fileio import one_line
from spikelm.spikes.format import (
    DISK_DTYPES,
    FIELDS,
    FORMAT,
    MAX_NEURONS,
    MAX_STEPS,
    MAX_WEIGHT_BITS,
    READ_VERSIONS,
)
from spikelm.spikes.train import SpikeTrain


def _show(value: Any) -> str:
    """``value`` for a one-line message: numpy scalars as Python values, long reprs cut short."""
    if isinstance(value, np.generic):
        value = value.item()
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is an integer scalar (not a bool), else None."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


@dataclass(frozen=True)
class LayerInfo:
    """What a spike file records about one layer."""

    name: str
    n_neurons: int
    steps: int
    coding: str | None
    n_tokens: int
    n_events: int
    fan_out: int | None = None
    """Output features the layer's spikes drive (version 2; ``None`` in version 1 files)."""
    weight_bits: int | None = None
    """Bits of the layer's integer weights (version 2; ``None`` in version 1 files)."""


class SpikeReader:
    """Read a spike file written by :class:`SpikeWriter`; validates it on open.

    Every problem with the file (missing, not HDF5, truncated, corrupt, another format or version,
    incomplete, missing or inconsistent datasets, sizes or values out of range) raises
    :class:`~spikelm.errors.SpikeFileError` with a one-line message naming the file (and the
    layer and dataset or attribute), on open or when the bad data are read. Every size is checked
    on open against the data the file holds, so nothing is allocated for sizes it only claims.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            problem = "not a file" if self.path.exists() else "no such spike file"
            raise SpikeFileError(f"{self.path}: {problem}")
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
        import h5py

        attrs = self._file.attrs
        found = attrs.get("format")
        if not isinstance(found, str) or found != FORMAT:
            raise self._fail(
                f"not a spikelm spike file (format attribute "
                f"{'missing' if found is None else _show(found)}, expected {FORMAT!r})"
            )
        version = attrs.get("version")
        if _integer(version) not in READ_VERSIONS:
            raise self._fail(
                f"spike file format version {'missing' if version is None else _show(version)} "
                f"is not supported; this spikelm reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}"
            )
        self._version = _integer(version)
        complete = attrs.get("complete")
        if not isinstance(complete, (bool, np.bool_)) or not complete:
            raise self._fail(
                f"incomplete spike file (complete flag "
                f"{'missing' if complete is None else _show(complete)}, expected True): "
                "the write was interrupted"
            )
        layers = self._file.get("layers")
        if not isinstance(layers, h5py.Group):
            raise self._fail("missing group /layers")
        return {name: self._validate_layer(name, group) for name, group in layers.items()}

    def _validate_layer(self, name: str, group: Any) -> LayerInfo:
        """Check one layer group's datasets and attributes against each other and the file."""
        import h5py

        if not isinstance(group, h5py.Group):
            raise self._fail(f"layer {name!r} is not a group")
        lengths = {}
        for column, dtype in DISK_DTYPES.items():
            dataset = group.get(column)
            if dataset is None:
                raise self._fail(f"layer {name!r} is missing dataset {column!r}")
            if not isinstance(dataset, h5py.Dataset):
                raise self._fail(f"layer {name!r}: {column!r} is not a dataset")
            shape = dataset.shape or ()
            if len(shape) != 1 or (dataset.dtype.kind, dataset.dtype.itemsize) != (
                dtype.kind,
                dtype.itemsize,
            ):
                raise self._fail(
                    f"layer {name!r}: dataset {column!r} must be 1-D {dtype}, "
                    f"found {dataset.dtype} {shape}"
                )
            # A dataset's length is only a claim: the rows must be stored (chunks or bytes).
            stored = (
                dataset.id.get_num_chunks() * dataset.chunks[0]
                if dataset.chunks
                else dataset.id.get_storage_size() // dtype.itemsize
            )
            if shape[0] > stored:
                raise self._fail(
                    f"layer {name!r}: dataset {column!r} claims {shape[0]} rows, "
                    f"the file holds at most {stored}"
                )
            lengths[column] = shape[0]
        n_neurons = self._count_attribute(name, group.attrs, "n_neurons", MAX_NEURONS)
        steps = self._count_attribute(name, group.attrs, "steps", MAX_STEPS)
        coding = group.attrs.get("coding")
        if coding is not None and not isinstance(coding, str):
            raise self._fail(
                f"layer {name!r}: attribute 'coding' must be a string, found {_show(coding)}"
            )
        n_events = lengths["token"]
        if any(lengths[column] != n_events for column in FIELDS):
            raise self._fail(
                f"layer {name!r}: event datasets differ in length ("
                + ", ".join(f"{column} {lengths[column]}" for column in FIELDS)
                + ")"
            )
        ptr = group["token_ptr"]
        ends = (int(ptr[0]), int(ptr[-1])) if lengths["token_ptr"] else None
        if ends != (0, n_events):
            raise self._fail(
                f"layer {name!r}: token_ptr must run from 0 to the number of events "
                f"({n_events}), found {'nothing' if ends is None else f'{ends[0]}..{ends[1]}'}"
            )
        optional = {
            key: self._count_attribute(name, group.attrs, key, high)
            for key, high in (("fan_out", MAX_NEURONS), ("weight_bits", MAX_WEIGHT_BITS))
            if key in group.attrs
        }
        return LayerInfo(
            name=name,
            n_neurons=n_neurons,
            steps=steps,
            coding=None if coding is None else str(coding),
            n_tokens=lengths["token_ptr"] - 1,
            n_events=n_events,
            **optional,
        )

    def _count_attribute(self, layer: str, attrs: Any, key: str, high: int) -> int:
        """Attribute ``key`` of ``layer``: an integer in ``[1, high]``."""
        if key not in attrs:
            raise self._fail(f"layer {layer!r} is missing attribute {key!r}")
        value = attrs[key]
        count = _integer(value)
        if count is None or not 1 <= count <= high:
            raise self._fail(
                f"layer {layer!r}: attribute {key!r} must be an integer in [1, {high}], "
                f"found {_show(value)}"
            )
        return count

    @property
    def layers(self) -> list[str]:
        """Layer names in the order they were added."""
        return list(self._layers)

    @property
    def version(self) -> int:
        """The file's layout version (one of :data:`READ_VERSIONS`: others are refused on open)."""
        return self._version

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (format, version, complete, spikelm_version and the writer's attrs)."""
        with self._reading("the root attributes"):
            return dict(self._file.attrs)

    def info(self, layer: str) -> LayerInfo:
        """Shape and size of ``layer``."""
        if layer not in self._layers:
            known = ", ".join(map(repr, self._layers)) or "none"
            raise ConfigError(f"{self.path}: no layer {layer!r}; layers: {known}")
        return self._layers[layer]

    def n_tokens(self, layer: str) -> int:
        """Number of tokens recorded for ``layer``."""
        return self.info(layer).n_tokens

    def _token_range(self, info: LayerInfo, tokens: slice | range | None) -> range:
        """``tokens`` as a non-empty range within ``info``'s tokens (``None``: all of them).

        Slices follow Python's rules for ``None`` and negative ends but are not clipped.
        """
        n = info.n_tokens
        if tokens is None:
            return range(n)
        if isinstance(tokens, range):
            start, stop, step = tokens.start, tokens.stop, tokens.step
        elif isinstance(tokens, slice):
            try:
                start, stop, step = (
                    None if end is None else operator.index(end)
                    for end in (tokens.start, tokens.stop, tokens.step)
                )
            except TypeError:
                raise ConfigError(
                    f"tokens must be a slice of integers, got {_show(tokens)}"
                ) from None
            start = 0 if start is None else start + n if start < 0 else start
            stop = n if stop is None else stop + n if stop < 0 else stop
        else:
            raise ConfigError(f"tokens must be a slice or a range, got {_show(tokens)}")
        shown = (
            f"{'' if tokens.start is None else tokens.start}:"
            f"{'' if tokens.stop is None else tokens.stop}"
        )
        if step not in (None, 1):
            problem = f"has step {step}; only consecutive tokens can be read"
        elif start > stop:
            problem = "is reversed"
        elif start == stop:
            problem = "is empty"
        elif start < 0 or stop > n:
            problem = f"is outside 0:{n}"
        else:
            return range(start, stop)
        raise ConfigError(
            f"{self.path}: layer {info.name!r} has {n} tokens; "
            f"cannot read token range {shown} (--tokens): it {problem}"
        )

    def read(self, layer: str, tokens: slice | range | None = None) -> SpikeTrain:
        """Events of ``layer`` for ``tokens`` (default all).

        ``tokens`` is a slice (``None`` and negative ends as in Python) or a range of token
        numbers; it must be non-empty and within the layer's tokens, else
        :class:`~spikelm.errors.ConfigError`. Token numbers are preserved:
        ``read(l, slice(10, 20)).tokens == range(10, 20)``. Only the rows of those tokens are
        read (located through ``token_ptr``).
        """
        info = self.info(layer)
        tokens = self._token_range(info, tokens)
        where = f"layer {layer!r}, tokens {tokens.start}:{tokens.stop}"
        with self._reading(where):
            group = self._file["layers"][layer]
            ptr = group["token_ptr"][tokens.start : tokens.stop + 1]
            counts = np.diff(ptr)
            if (ptr < 0).any() or (ptr > info.n_events).any() or (counts < 0).any():
                raise self._fail(
                    f"{where}: token_ptr is not non-decreasing within 0..{info.n_events}"
                )
            lo, hi = int(ptr[0]), int(ptr[-1])
            columns = {column: group[column][lo:hi] for column in FIELDS}
            expected = np.repeat(np.arange(tokens.start, tokens.stop, dtype=np.int64), counts)
            if not np.array_equal(columns["token"], expected):
                raise self._fail(f"{where}: the token dataset disagrees with token_ptr")
            try:
                return SpikeTrain(
                    **columns,
                    layer=layer,
                    n_neurons=info.n_neurons,
                    steps=info.steps,
                    tokens=tokens,
                )
            except (ShapeError, CountRangeError) as exc:
                raise self._fail(f"{where}: invalid events: {exc}") from exc

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
