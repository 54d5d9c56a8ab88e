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
are channel-major: all events of a channel, for every row of a tile of up to ``ROW_TILE`` rows,
are applied while its column is in cache. Work is split into tasks run in parallel (``prange``):
over row tiles at batch > 1; at batch 1 over the weight-scale groups (independent accumulators, no
reduction; each thread still streams whole weight rows) or, with fewer groups than threads, over
output blocks. Calls with less than ``PARALLEL_MIN_WORK`` column updates run the same task
function serially (a parallel region costs more than it saves there); ``numba.set_num_threads(1)``
makes every call serial.

Threads: numba's ``omp`` layer shares torch's OpenMP runtime, whose idle workers spin. On an
oversubscribed machine (more busy threads than cores) a parallel call can then wait for scheduler
slices (measured on 2 shared cores: median 32 ms instead of ~1.6 ms serially). So by default
(:data:`PARALLEL` ``= "auto"``) the backend times both kernels per problem shape and keeps the
faster (:func:`parallel_choices` tells which); ``GOMP_SPINCOUNT=0`` (or
``OMP_WAIT_POLICY=PASSIVE``) at process start makes the parallel kernel robust there too.

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

MIN_BLOCK = 256
"""Smallest output block worth a task of its own when splitting outputs between threads."""

PARALLEL_MIN_WORK = 1 << 20
"""Below this many ``active channels x out`` column updates a call runs serially."""

PARALLEL: bool | str = "auto"
"""Above ``PARALLEL_MIN_WORK``: ``True`` runs the parallel kernel, ``False`` the serial one, and
``"auto"`` times both on the first calls of each problem shape and keeps the faster, trying the
other again after 8, 16, 32, ... calls (up to every 1024th) to follow changes in machine load.
Both give the same numbers bit for bit; only the time differs."""


@njit(inline="always")
def _add_shifted(acc_row, column, shift):
    for o in range(np.uint64(0), np.uint64(acc_row.shape[0])):  # unsigned: no wraparound checks
        acc_row[o] += column[o] << shift


@njit(inline="always")
def _sub_shifted(acc_row, column, shift):
    for o in range(np.uint64(0), np.uint64(acc_row.shape[0])):
        acc_row[o] -= column[o] << shift


@njit(cache=True, fastmath=False)
def _run_task(counts, weight_t, acc, width, mode, steps, r0, r1, o0, o1, g0, g1):
    """Accumulate rows ``[r0, r1)`` x outputs ``[o0, o1)`` x groups ``[g0, g1)``: every event of
    every active channel of those groups."""
    mask = (np.int64(1) << steps) - 1
    top = steps - 1
    acc[r0:r1, g0:g1, o0:o1] = 0  # zeroed here, in the task's own cache, not by the caller
    for g in range(g0, g1):
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
def _run_parallel(counts, weight_t, acc, width, mode, steps, tile, block, gsplit, scale_t, v_th, y):
    """Tasks = row tiles x output blocks x ``gsplit`` chunks of weight-scale groups (independent
    accumulators: no reduction), then the epilogue over row tiles x output blocks."""
    rows, groups, out = acc.shape
    tiles = (rows + tile - 1) // tile
    blocks = (out + block - 1) // block
    gchunk = (groups + gsplit - 1) // gsplit
    for task in prange(tiles * blocks * gsplit):
        r0 = (task // (blocks * gsplit)) * tile
        o0 = ((task // gsplit) % blocks) * block
        g0 = (task % gsplit) * gchunk
        _run_task(
            counts, weight_t, acc, width, mode, steps,
            r0, min(rows, r0 + tile), o0, min(out, o0 + block), g0, min(groups, g0 + gchunk),
        )  # fmt: skip
    if y.shape[0]:
        for task in prange(tiles * blocks):
            r0 = (task // blocks) * tile
            o0 = (task % blocks) * block
            _epilogue_task(
                acc, scale_t, v_th, y, r0, min(rows, r0 + tile), o0, min(out, o0 + block)
            )


@njit(cache=True, fastmath=False)
def _run_serial(counts, weight_t, acc, width, mode, steps, tile, scale_t, v_th, y):
    rows, groups, out = acc.shape
    for r0 in range(0, rows, tile):
        r1 = min(rows, r0 + tile)
        _run_task(counts, weight_t, acc, width, mode, steps, r0, r1, 0, out, 0, groups)
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
        (counts, weight_t, acc, i64, i64, i64, i64, i64, i64, scale_t, v_th, y),  # _run_parallel
        (counts, weight_t, acc, i64, i64, i64, i64, scale_t, v_th, y),  # _run_serial
    )


def _ensure(parallel: bool, acc_dtype: torch.dtype) -> None:
    """Compile (or load from the disk cache) one kernel for one accumulator dtype, timed."""
    global _compile_seconds
    if (parallel, acc_dtype) in _compiled:
        return
    start = time.perf_counter()
    parallel_sig, serial_sig = _signatures(acc_dtype)
    if parallel:
        _run_parallel.compile(parallel_sig)
    else:
        _run_serial.compile(serial_sig)
    _compiled.add((parallel, acc_dtype))
    _compile_seconds += time.perf_counter() - start


def warmup(acc_dtypes: tuple[torch.dtype, ...] = (torch.int32,)) -> float:
    """Compile (or load from the on-disk cache) the kernels for these accumulator dtypes.

    Returns the seconds this call spent; :func:`compile_seconds` keeps the running total. Each
    kernel is otherwise compiled on its first use (the serial one for small layers, the parallel
    one for large ones); call this beforehand to keep compilation out of a timing.
    """
    start = time.perf_counter()
    for dtype in acc_dtypes:
        _ensure(False, dtype)
        _ensure(True, dtype)
    return time.perf_counter() - start


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


class _Chooser:
    """Serial or parallel, per problem shape, by measured time (``PARALLEL = "auto"``).

    Why: the parallel kernel shares torch's OpenMP runtime, whose idle workers spin; when the
    machine has more busy threads than cores a parallel call can wait for scheduler slices
    (measured on 2 shared cores: median 32 ms against 1.6 ms serial), while on an idle machine it
    is about twice as fast as the serial one. Timing both settles it where the code runs.
    """

    SAMPLES = 3  # timings kept per mode; the median decides
    FIRST_RETRY, LAST_RETRY = 8, 1024  # calls before the losing mode is timed again (doubling)

    def __init__(self) -> None:
        self.state: dict = {}

    def pick(self, key) -> bool:
        state = self.state.setdefault(key, {"times": {False: [], True: []}, "wait": 0, "gap": 0})
        times = state["times"]
        for mode in (True, False):  # time each mode a few times first
            if len(times[mode]) < self.SAMPLES:
                return mode
        best = self._best(times)
        state["wait"] -= 1
        if state["wait"] <= 0:  # time the other mode again, then wait twice as long
            state["gap"] = min(self.LAST_RETRY, max(self.FIRST_RETRY, 2 * state["gap"]))
            state["wait"] = state["gap"]
            return not best
        return best

    def record(self, key, parallel: bool, seconds: float) -> None:
        state = self.state.get(key)
        if state is None:
            return
        previous = self._best(state["times"]) if all(state["times"].values()) else None
        samples = state["times"][parallel]
        samples.append(seconds)
        del samples[: -self.SAMPLES]
        if previous is not None and self._best(state["times"]) != previous:
            state["gap"] = 0  # the other mode won: back to frequent checks
            state["wait"] = min(state["wait"], self.FIRST_RETRY)

    @staticmethod
    def _best(times) -> bool:
        return bool(float(np.median(times[True])) < float(np.median(times[False])))

    def choices(self) -> dict:
        """``{problem key: "parallel" | "serial"}`` as decided so far (for benchmarks)."""
        return {
            key: ("parallel" if self._best(state["times"]) else "serial")
            for key, state in self.state.items()
            if all(len(t) >= self.SAMPLES for t in state["times"].values())
        }


_chooser = _Chooser()


def parallel_choices() -> dict:
    """What ``PARALLEL = "auto"`` has chosen per problem shape (rows bucket, in, out, G, dtype)."""
    return _chooser.choices()


def _split(rows: int, groups: int, out_features: int, threads: int) -> tuple[int, int, int]:
    """``(row tile, output block, group chunks)`` of the parallel tasks: a task per thread at least.

    Row tiles first. When there are fewer tiles than threads (batch 1), the weight-scale groups
    are shared out (their accumulators are independent and each task still reads whole weight
    rows, contiguously), or, with too few groups, the outputs.
    """
    tile = max(1, min(ROW_TILE, -(-rows // threads)))
    tiles = -(-rows // tile)
    block, gsplit = out_features, 1
    if tiles < threads:
        wanted = -(-threads // tiles)
        if groups >= wanted:
            gsplit = wanted
        else:
            block = max(MIN_BLOCK, -(-out_features // wanted))
    return tile, block, gsplit


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
    rows, in_features = counts.shape
    out_features = weight_t.shape[1]
    width = in_features // groups
    np_dtype = np.int32 if acc_dtype == torch.int32 else np.int64
    acc = np.empty((rows, groups, out_features), dtype=np_dtype)  # each task zeroes its part
    fused = scale_t is not None and v_th is not None
    y = np.empty((rows if fused else 0, out_features), dtype=np.float32)
    if not fused:
        scale_t, v_th = np.zeros((groups, out_features)), np.zeros(0)
    if acc.size == 0:
        return acc, (y if fused else None)
    mode = MODES[coding]
    work = int(np.count_nonzero(counts)) * out_features
    # (asking for the thread count starts numba's pool: small problems never ask)
    parallel = PARALLEL is not False and work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1
    key = (min(rows, 64).bit_length(), in_features, out_features, groups, acc_dtype)
    if parallel and PARALLEL == "auto":
        parallel = _chooser.pick(key)
    _ensure(parallel, acc_dtype)
    start = time.perf_counter()
    if parallel:
        tile, block, gsplit = _split(rows, groups, out_features, numba.get_num_threads())
        _run_parallel(
            counts, weight_t, acc, width, mode, steps, tile, block, gsplit, scale_t, v_th, y
        )  # fmt: skip
    else:
        _run_serial(counts, weight_t, acc, width, mode, steps, ROW_TILE, scale_t, v_th, y)
    if PARALLEL == "auto" and work >= PARALLEL_MIN_WORK:
        _chooser.record(key, parallel, time.perf_counter() - start)
    return acc, (y if fused else None)


def _check_counts(layer, counts: torch.Tensor) -> np.ndarray:
    if counts.device.type != "cpu":
        raise ConfigError(
            f"backend 'numba' runs on the CPU only, but layer {layer.name!r} got tensors on "
            f"{counts.device}; use backend 'torch' or 'torch_events' there, or move the model "
            "to the CPU"
        )
    as_int = counts.detach().to(torch.int32).contiguous()
    if counts.is_floating_point() and not torch.equal(as_int.to(counts.dtype), counts):
        raise CountRangeError(
            f"layer {layer.name!r}: spike counts must be whole numbers (and finite)"
        )
    array = as_int.numpy()
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
    "parallel_choices",
    "run",
    "warmup",
]
