"""Validated reading of spike files: :class:`SpikeReader` and :func:`open_spikes` (h5py on use)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikelm.errors import ConfigError, SpikeFileError
from spikelm.fileio import one_line
from spikelm.spikes.format import FIELDS, FORMAT, VERSION
from spikelm.spikes.train import SpikeTrain


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
            for dataset in (*FIELDS, "token_ptr"):
                if dataset not in group:
                    raise self._fail(f"layer {name!r} is missing dataset {dataset!r}")
            for key in ("n_neurons", "steps"):
                if key not in group.attrs:
                    raise self._fail(f"layer {name!r} is missing attribute {key!r}")
            lengths = {column: group[column].shape[0] for column in FIELDS}
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
            columns = {column: group[column][lo:hi] for column in FIELDS}
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
