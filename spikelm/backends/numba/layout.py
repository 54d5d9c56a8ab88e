"""How the numba kernels hold a layer's weights, derived once from ``W_q`` and cached on it.

The count-domain kernel reads channel pairs per tile of outputs (:func:`.counts.pair_layout`);
the event kernel reads ``W_q^T`` cut into contiguous output blocks (:func:`blocked`), built only
when a row takes the event path (the count path wins on every machine measured so far, so a
model usually holds one copy).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch

from spikelm.backends.events import accumulator_dtype, step_shifts
from spikelm.backends.numba.counts import pair_layout
from spikelm.backends.numba.events import DECODINGS
from spikelm.encoders import get_coder

BLOCK = 1024
"""Most outputs per block of the layout (and per task): one row's int16 planes of a block,
``T x BLOCK x 2`` bytes (16 KiB at T = 8), stay in the L1 cache. Narrower layers get blocks of
``out / threads`` (multiples of 64, at least ``MIN_BLOCK``), so that one token's work still
splits between the threads."""

MIN_BLOCK = 256
"""Fewest outputs per block when a layer is cut for the threads."""


class Layout(NamedTuple):
    """What the kernels read of a layer besides the event blocks."""

    pairs: np.ndarray  # int8 [tiles, in / 2, TILE, 2]: the count kernel's weights
    weight_q: np.ndarray  # int8 [out, in]: the layer's own buffer (a view, not a copy)
    in_features: int
    out_features: int
    groups: int
    width: int  # input channels per weight-scale group
    scale_t: np.ndarray  # [G, out]: the weight scales, transposed (float32 as the layer holds
    # them, widened exactly in the kernel: half the bytes of float64; float64 buffers stay so)
    acc_dtype: torch.dtype  # int32, or int64 where int32 could overflow
    decoding: str  # the coder's Decoding
    shifts: np.ndarray  # int64 [T]: log2 |c_t|
    negative: np.ndarray  # bool [T]: c_t < 0
    key: tuple  # the problem shape, as the choosers key their measurements
    acc_np: type  # numpy's accumulator dtype
    decoding_code: int  # the kernels' code of the decoding


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def block_width(out_features: int, threads: int) -> int:
    """Outputs per block: at most ``BLOCK``, cut so that the number of blocks is a multiple of
    ``threads`` (every thread gets as many blocks of one token), in multiples of 64, at least
    ``MIN_BLOCK``, at most ``out_features``."""
    threads = max(1, threads)
    blocks = _ceil_div(_ceil_div(out_features, BLOCK), threads) * threads
    width = _ceil_div(_ceil_div(out_features, blocks), 64) * 64
    return min(out_features, BLOCK, max(MIN_BLOCK, width))


def blocked(weight_q: torch.Tensor, threads: int) -> np.ndarray:
    """``W_q^T`` as int8 ``[blocks, in, B]``: channel ``i``'s part of block ``b`` is contiguous,
    and so is the whole block, so a task streams its weights one cache line after the next."""
    columns = weight_q.t()  # [in, out]
    n_in, out = columns.shape
    width = max(1, block_width(out, threads))
    blocks = -(-out // width)
    padded = torch.zeros(n_in, blocks * width, dtype=torch.int8)
    padded[:, :out] = columns
    return padded.reshape(n_in, blocks, width).transpose(0, 1).contiguous().numpy()


def _scale_dtype(scale: torch.Tensor) -> torch.dtype:
    """float32 scales stay float32 (the kernels widen them to float64 exactly); anything else is
    held as float64, which every float dtype widens into exactly."""
    return torch.float32 if scale.dtype == torch.float32 else torch.float64


def layout(layer) -> Layout:
    """The layer's :class:`Layout`, cached on it (rebuilt when its weights change)."""

    def make(lay) -> Layout:
        groups = lay.weight_scale.shape[1]
        shifts, negative = step_shifts(lay.coding, lay.steps)
        acc_dtype = accumulator_dtype(lay)
        decoding = get_coder(lay.coding).decoding
        return Layout(
            pairs=pair_layout(lay.weight_q.numpy()),
            weight_q=lay.weight_q.numpy(),
            in_features=lay.in_features,
            out_features=lay.out_features,
            groups=groups,
            width=lay.in_features // groups,
            scale_t=lay.weight_scale.t().to(_scale_dtype(lay.weight_scale)).contiguous().numpy(),
            acc_dtype=acc_dtype,
            decoding=decoding,
            shifts=shifts.numpy(),
            negative=negative.numpy(),
            key=(lay.in_features, lay.out_features, groups, acc_dtype, decoding, lay.steps),
            acc_np=np.int32 if acc_dtype == torch.int32 else np.int64,
            decoding_code=DECODINGS[decoding],
        )

    return layer.derived("numba_layout", make)


def event_blocks(layer) -> np.ndarray:
    """The event kernel's weights of the layer (:func:`blocked`), cached on it."""
    return layer.derived("numba_blocks", lambda lay: blocked(lay.weight_q, numba.get_num_threads()))
