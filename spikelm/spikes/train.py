"""Spike trains as events: :class:`SpikeTrain` and :func:`as_spike_array` (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spikelm.errors import CountRangeError, NonFiniteError, ShapeError
from spikelm.spikes.format import FIELDS

_MEMORY_DTYPES = {"token": np.int64, "t": np.int32, "neuron": np.int32, "polarity": np.int8}


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


def _increasing(token: np.ndarray, t: np.ndarray, neuron: np.ndarray) -> np.ndarray:
    """Whether each event comes strictly after the one before in (token, t, neuron) order."""
    d_token, d_t, d_neuron = np.diff(token), np.diff(t), np.diff(neuron)
    return (d_token > 0) | ((d_token == 0) & ((d_t > 0) | ((d_t == 0) & (d_neuron > 0))))


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
        lengths = {len(getattr(self, name)) for name in FIELDS}
        if len(lengths) != 1:
            raise ShapeError(
                f"SpikeTrain {self.layer!r}: columns differ in length: "
                + ", ".join(f"{name} {len(getattr(self, name))}" for name in FIELDS)
            )
        if (self.polarity == 0).any():
            raise CountRangeError(f"SpikeTrain {self.layer!r}: polarity must be +1 or -1, found 0")
        if not _increasing(self.token, self.t, self.neuron).all():
            if len(self.tokens) * self.steps * self.n_neurons < 2**63:  # one int64 key: faster
                key = (self.token - self.tokens.start) * (self.steps * self.n_neurons)
                key += self.t.astype(np.int64) * self.n_neurons + self.neuron
                order = np.argsort(key, kind="stable")
            else:
                order = np.lexsort((self.neuron, self.t, self.token))
            for name in FIELDS:
                setattr(self, name, getattr(self, name)[order])
            if not _increasing(self.token, self.t, self.neuron).all():
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

        ``tokens`` defaults to the train's own range; events outside it are left out. An array
        too large to allocate raises :class:`~spikelm.errors.ShapeError`.
        """
        tokens = self.tokens if tokens is None else tokens
        if tokens.step != 1:
            raise ShapeError("to_dense: tokens must be a range with step 1")
        shape = (len(tokens), self.steps, self.n_neurons)
        try:
            out = np.zeros(shape, dtype=np.int8)
        except MemoryError:
            raise ShapeError(
                f"SpikeTrain {self.layer!r}: dense int8 spikes {list(shape)} "
                f"({np.prod(shape, dtype=float):.3g} bytes) do not fit in memory; "
                "convert fewer tokens at a time"
            ) from None
        rows = slice(*np.searchsorted(self.token, [tokens.start, tokens.stop]))
        out[self.token[rows] - tokens.start, self.t[rows], self.neuron[rows]] = self.polarity[rows]
        return out

    def __len__(self) -> int:
        return len(self.token)

    @property
    def nbytes(self) -> int:
        """Bytes held by the four event columns."""
        return sum(getattr(self, name).nbytes for name in FIELDS)
