"""Event-driven CPU backend compiled with numba: weight columns added per spike event.

For each row (token) ``m`` and each active input channel ``i`` (count ``n != 0``), the kernel
decodes ``n`` into its spike events inline, as the layer's coding defines them, and for each event
adds the channel's int8 weight column into the int32 accumulators ``acc[m, group(i), :]``:

- bitwise / bitwise_bidirectional: one event per set bit ``t`` of ``|n|``; the event adds
  ``column << t`` (subtracts, for a negative count): shift-add, no multiplies;
- bitwise_twos_complement: one event per set bit of the ``T``-bit pattern of ``n``; the top bit
  ``T - 1`` subtracts ``column << (T - 1)``;
- binary / ternary (unary): ``|n|`` events that all add (or subtract) the same column.

Nothing in the inner loop multiplies. The weights are held transposed, ``W_q^T [in, out]``
(int8, contiguous, cached on the layer), so a channel's column is one contiguous row, and the loops
are channel-major: all events of a channel, for every row of a tile of rows, are applied while its
column sits in L1. Work is split into tasks of (row tile x output block) run in parallel
(``prange``): over row tiles at batch > 1, over output blocks at batch 1. Small problems run the
same task function serially (a parallel region costs more than it saves there).

The accumulators are exact. The float epilogue is fused into each task (applied to its rows and
outputs while they are in cache); it performs the operations of
:func:`spikelm.backends.epilogue.epilogue` one for one, in the same order, in IEEE float64 with
``fastmath=False`` (no FMA contraction), so this backend's outputs are bit-identical to the
reference's and ``torch_events``' on the CPU (the tests check it).

Compilation: the kernels are compiled once per accumulator dtype on first use (or by
:func:`warmup`) and cached on disk (``cache=True``), so later processes load them in milliseconds.
:func:`compile_seconds` reports the time spent compiling or loading, apart from steady state.
numba is imported by this module only; ``import spikelm`` does not import it.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import torch
from numba import njit, prange

from spikelm.backends.events import accumulator_dtype
from spikelm.errors import ConfigError, CountRangeError

UNARY, MAGNITUDE_BITS, TWOS_COMPLEMENT = 0, 1, 2
"""How the kernel decodes a count into events (``MODES`` maps each coding to one)."""

MODES = {
    "binary": UNARY,
    "ternary": UNARY,
    "bitwise": MAGNITUDE_BITS,
    "bitwise_bidirectional": MAGNITUDE_BITS,
    "bitwise_twos_complement": TWOS_COMPLEMENT,
}

ROW_TILE = 8
"""Rows processed together, so a weight column read once serves up to this many rows."""

MIN_BLOCK = 512
"""Smallest output block worth a task of its own at batch 1."""

PARALLEL_MIN_WORK = 1 << 20
"""Below this many ``active channels x out`` column updates a call runs serially."""


@njit(inline="always")
def _add_shifted(acc_row, column, shift):
    for o in range(np.uint64(0), np.uint64(acc_row.shape[0])):  # unsigned: no wraparound checks
        acc_row[o] += column[o] << shift


@njit(inline="always")
def _sub_shifted(acc_row, column, shift):
    for o in range(np.uint64(0), np.uint64(acc_row.shape[0])):
        acc_row[o] -= column[o] << shift


@njit(cache=True, fastmath=False)
def _run_task(counts, weight_t, acc, width, mode, steps, r0, r1, o0, o1):
    """Accumulate rows ``[r0, r1)`` x outputs ``[o0, o1)``: every event of every active channel."""
    mask = (np.int64(1) << steps) - 1
    top = steps - 1
    for g in range(acc.shape[1]):
        for i in range(g * width, (g + 1) * width):
            column = weight_t[i, o0:o1]
            for r in range(r0, r1):
                n = np.int64(counts[r, i])
                if n == 0:
                    continue
                acc_row = acc[r, g, o0:o1]
                if mode == UNARY:
                    if n > 0:
                        for _ in range(n):
                            _add_shifted(acc_row, column, 0)
                    else:
                        for _ in range(-n):
                            _sub_shifted(acc_row, column, 0)
                elif mode == MAGNITUDE_BITS:
                    bits = n if n > 0 else -n
                    t = 0
                    while bits:
                        if bits & 1:
                            if n > 0:
                                _add_shifted(acc_row, column, t)
                            else:
                                _sub_shifted(acc_row, column, t)
                        bits >>= 1
                        t += 1
                else:  # two's complement over T bits: the top bit weighs -2^(T-1)
                    bits = n & mask
                    t = 0
                    while bits:
                        if bits & 1:
                            if t == top:
                                _sub_shifted(acc_row, column, t)
                            else:
                                _add_shifted(acc_row, column, t)
                        bits >>= 1
                        t += 1


@njit(cache=True, fastmath=False)
def _epilogue_task(acc, scale_t, v_th, y, r0, r1, o0, o1):
    """:func:`spikelm.backends.epilogue.epilogue` for one task's region, op for op.

    ``y = f32(((acc_0 * s_0) + acc_1 * s_1 + ...) * v)`` in float64, g ascending; every product
    and sum is one correctly rounded IEEE operation (``fastmath=False``: no FMA contraction), so
    the result equals the torch epilogue's bit for bit.
    """
    size = o1 - o0
    total = np.empty(size, dtype=np.float64)
    for r in range(r0, r1):
        first = acc[r, 0, o0:o1]
        scale = scale_t[0, o0:o1]
        for o in range(np.uint64(0), np.uint64(size)):
            total[o] = np.float64(first[o]) * scale[o]
        for g in range(1, acc.shape[1]):
            part = acc[r, g, o0:o1]
            scale = scale_t[g, o0:o1]
            for o in range(np.uint64(0), np.uint64(size)):
                total[o] += np.float64(part[o]) * scale[o]
        v = np.float64(v_th[r])
        row = y[r, o0:o1]
        for o in range(np.uint64(0), np.uint64(size)):
            row[o] = np.float32(total[o] * v)


@njit(parallel=True, cache=True, fastmath=False)
def _run_parallel(counts, weight_t, acc, width, mode, steps, tile, blocks, scale_t, v_th, y):
    rows, out = counts.shape[0], weight_t.shape[1]
    tiles = (rows + tile - 1) // tile
    block = (out + blocks - 1) // blocks
    for task in prange(tiles * blocks):
        r0 = (task // blocks) * tile
        r1 = min(rows, r0 + tile)
        o0 = (task % blocks) * block
        o1 = min(out, o0 + block)
        _run_task(counts, weight_t, acc, width, mode, steps, r0, r1, o0, o1)
        if y.shape[0]:
            _epilogue_task(acc, scale_t, v_th, y, r0, r1, o0, o1)


@njit(cache=True, fastmath=False)
def _run_serial(counts, weight_t, acc, width, mode, steps, tile, scale_t, v_th, y):
    rows, out = counts.shape[0], weight_t.shape[1]
    for r0 in range(0, rows, tile):
        r1 = min(rows, r0 + tile)
        _run_task(counts, weight_t, acc, width, mode, steps, r0, r1, 0, out)
        if y.shape[0]:
            _epilogue_task(acc, scale_t, v_th, y, r0, r1, 0, out)


_ACC_TYPES = {torch.int32: numba.int32, torch.int64: numba.int64}
_compile_seconds = 0.0
_compiled: set = set()


def _signatures(acc_dtype: torch.dtype) -> tuple:
    acc = _ACC_TYPES[acc_dtype][:, :, ::1]
    counts, weight_t, i64 = numba.int32[:, ::1], numba.int8[:, ::1], numba.int64
    scale_t, v_th, y = numba.float64[:, ::1], numba.float64[::1], numba.float32[:, ::1]
    return (
        (counts, weight_t, acc, i64, i64, i64, i64, i64, scale_t, v_th, y),  # _run_parallel
        (counts, weight_t, acc, i64, i64, i64, i64, scale_t, v_th, y),  # _run_serial
    )


def warmup(acc_dtypes: tuple[torch.dtype, ...] = (torch.int32,)) -> float:
    """Compile (or load from the on-disk cache) the kernels for these accumulator dtypes.

    Returns the seconds this call spent; :func:`compile_seconds` keeps the running total. Done
    implicitly on first use; call it beforehand to keep compilation out of a timing.
    """
    global _compile_seconds
    start = time.perf_counter()
    for dtype in acc_dtypes:
        if dtype in _compiled:
            continue
        parallel_sig, serial_sig = _signatures(dtype)
        _run_parallel.compile(parallel_sig)
        _run_serial.compile(serial_sig)
        _compiled.add(dtype)
    spent = time.perf_counter() - start
    _compile_seconds += spent
    return spent


def compile_seconds() -> float:
    """Seconds this process has spent compiling or loading the kernels (not running them)."""
    return _compile_seconds


def cache_stats() -> dict[str, int]:
    """On-disk cache hits and misses of the kernels in this process (misses were compiled)."""
    stats = [_run_parallel.stats, _run_serial.stats]
    return {
        "hits": sum(sum(s.cache_hits.values()) for s in stats),
        "misses": sum(sum(s.cache_misses.values()) for s in stats),
    }


def _split(rows: int, out_features: int, threads: int) -> tuple[int, int]:
    """``(row tile, output blocks)``: row tiles first, output blocks to fill idle threads."""
    tile = max(1, min(ROW_TILE, -(-rows // threads)))
    tiles = -(-rows // tile)
    blocks = 1
    if tiles < threads:
        blocks = max(1, min(-(-threads // tiles), out_features // MIN_BLOCK))
    return tile, blocks


def run(
    counts: np.ndarray,
    weight_t: np.ndarray,
    groups: int,
    coding: str,
    steps: int,
    acc_dtype: torch.dtype = torch.int32,
    scale_t: np.ndarray | None = None,
    v_th: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(acc [M, G, out], y [M, out] or None)`` for int32 counts ``[M, in]``, int8 ``W_q^T``.

    numpy in, numpy out. With ``scale_t`` (float64 ``[G, out]``) and ``v_th`` (float64 ``[M]``)
    the epilogue is fused: each task turns its accumulators into float32 outputs while they are in
    cache. The counts must lie in the coding's range and ``acc_dtype`` must hold the sums (the
    layer entry points check both).
    """
    warmup((acc_dtype,))
    rows, in_features = counts.shape
    out_features = weight_t.shape[1]
    width = in_features // groups
    np_dtype = np.int32 if acc_dtype == torch.int32 else np.int64
    acc = np.zeros((rows, groups, out_features), dtype=np_dtype)
    fused = scale_t is not None and v_th is not None
    y = np.empty((rows if fused else 0, out_features), dtype=np.float32)
    if not fused:
        scale_t, v_th = np.zeros((groups, out_features)), np.zeros(0)
    if rows == 0 or out_features == 0:
        return acc, (y if fused else None)
    mode = MODES[coding]
    threads = numba.get_num_threads()
    work = int(np.count_nonzero(counts)) * out_features
    if threads > 1 and work >= PARALLEL_MIN_WORK:
        tile, blocks = _split(rows, out_features, threads)
        _run_parallel(
            counts, weight_t, acc, width, mode, steps, tile, blocks, scale_t, v_th, y
        )  # fmt: skip
    else:
        _run_serial(counts, weight_t, acc, width, mode, steps, ROW_TILE, scale_t, v_th, y)
    return acc, (y if fused else None)


def _check_counts(layer, counts: torch.Tensor) -> np.ndarray:
    if counts.device.type != "cpu":
        raise ConfigError(
            f"backend 'numba' runs on the CPU only, but layer {layer.name!r} got tensors on "
            f"{counts.device}; use backend 'torch' or 'torch_events' there, or move the model "
            "to the CPU"
        )
    array = counts.detach().to(torch.int32).contiguous().numpy()
    if array.size:
        lo, hi = layer.count_range
        if int(array.min()) < lo or int(array.max()) > hi:
            raise CountRangeError(
                f"layer {layer.name!r}: {layer.coding} coding with T={layer.steps} holds counts "
                f"in [{lo}, {hi}], got values in [{int(array.min())}, {int(array.max())}]"
            )
    return array


def _weights(layer) -> tuple[np.ndarray, int]:
    return layer.transposed_weight_q().numpy(), layer.weight_scale.shape[1]


def accumulators(layer, counts: torch.Tensor) -> torch.Tensor:
    """The layer's exact accumulators ``[M, G, out]`` (int32 or int64) for counts ``[M, in]``."""
    array = _check_counts(layer, counts)
    weight_t, groups = _weights(layer)
    acc, _ = run(array, weight_t, groups, layer.coding, layer.steps, accumulator_dtype(layer))
    return torch.from_numpy(acc)


def linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, out]`` (float32) of ``layer`` for counts ``[M, in]`` and thresholds ``[M, 1]``.

    The epilogue is fused into the kernel; it performs the operations of
    :func:`spikelm.backends.epilogue.epilogue` in the same order, so the outputs are those of
    ``epilogue(accumulators(layer, counts), ...)`` bit for bit.
    """
    array = _check_counts(layer, counts)
    weight_t, groups = _weights(layer)
    scale_t = layer.derived(
        "weight_scale_t64", lambda lay: lay.weight_scale.t().to(torch.float64).contiguous()
    ).numpy()
    v = v_th.detach().reshape(-1).to(torch.float64).contiguous().numpy()
    if v.shape[0] != array.shape[0]:
        v = np.ascontiguousarray(np.broadcast_to(v, (array.shape[0],)))
    _, y = run(
        array, weight_t, groups, layer.coding, layer.steps, accumulator_dtype(layer), scale_t, v
    )
    return torch.from_numpy(y)


__all__ = [
    "MODES",
    "accumulators",
    "cache_stats",
    "compile_seconds",
    "linear",
    "run",
    "warmup",
]
