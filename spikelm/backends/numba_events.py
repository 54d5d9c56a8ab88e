"""Event-driven CPU backend compiled with numba: weight columns added per spike event.

Every spike event ``(row m, input channel i, step t, polarity p)`` adds ``p * W_q[:, i]`` into a
per-step partial sum, and the step weights ``c_t`` are applied once per sum, by shifts:

    P_t[m, :] = sum over events at step t of p * W_q[:, i]        (int16 "planes")
    acc[m, g, :] = sum_t c_t * P_t        (c_t = +-2^t for bitwise codes: a shift; 1 for unary)

The kernel decodes each count ``n`` into its events inline, as the layer's coding defines them:

- bitwise / bitwise_bidirectional: one event per set bit ``t`` of ``|n|``, polarity ``sign(n)``;
- bitwise_twos_complement: one event per set bit of the ``T``-bit pattern of ``n`` (the top step
  weighs ``-2^(T-1)``, applied when the planes are merged);
- binary / ternary (unary): ``|n|`` events at steps ``0 .. |n|-1``, polarity ``sign(n)``.

An event is int8 -> int16 additions (or subtractions) over a block of the channel's weight
column: nothing in the inner loop multiplies or shifts, and a 16-bit lane holds twice as many
outputs per SIMD instruction as a 32-bit accumulator would. A plane sums at most
``PLANE_CHANNELS`` = 255 channels of weights in [-128, 127] (|P_t| <= 32640 fits int16); planes
are merged into the exact int32 (or int64) accumulators every 255 channels and at the end of each
weight-scale group; planes no event touched are skipped (and not zeroed).

Layout and loops: the weights are held as :func:`layout` lays them out: ``W_q^T``
(int8) cut into blocks of ``BLOCK`` outputs, each block contiguous, so a channel's column within
a block is one contiguous run and a block's weights stream sequentially. A task is one row
(token) x one output block; its planes (``T x BLOCK`` int16) stay in the L1 cache. Before the
tasks, each row is planned (:func:`_plan_row`): its active channels, group by group, are sorted
by kind of spike train (one spike at step t; two; three; more), so the kernel's branches are
predictable, channels with two or three spikes add their column to all their planes in one pass,
and runs of four or eight single-spike channels with the same step add into their plane
together. At each group the task first reads the group's active weights once in address order
(memory then streams them), then applies the events in the sorted order from cache. Tasks run
in parallel (``prange`` over rows x blocks; each writes its own outputs, no reduction). Calls
with less than ``PARALLEL_MIN_WORK`` column updates run the same work serially (a parallel region
costs more than it saves there); ``numba.set_num_threads(1)`` makes every call serial.

The one-call path :func:`spiking_linear` (what ``SpikingLinear`` uses on the CPU) also computes
the spike counts in a kernel (:func:`_counts_of`), in the float32 operations of
:func:`spikelm.neurons.spike_counts`: the same spikes, with per-layer overhead down from a dozen
tensor operations to one torch reduction (the threshold) and two compiled calls.

Threads: numba's ``omp`` layer shares torch's OpenMP runtime, whose idle workers spin. On an
oversubscribed machine (more busy threads than cores) a parallel call can then wait for scheduler
slices (measured on 2 shared cores: median 32 ms instead of ~1.6 ms serially). So by default
(:data:`PARALLEL` ``= "auto"``) the backend times both kernels per problem shape and keeps the
faster (:func:`parallel_choices` tells which); ``GOMP_SPINCOUNT=0`` (or
``OMP_WAIT_POLICY=PASSIVE``) at process start makes the parallel kernel robust there too.

The accumulators are exact. The float epilogue is fused into each task: as each group's
accumulators are merged, the task adds ``acc_g * s_g`` into a float64 total, g ascending, and
ends with ``* V_th`` -- the operations of :func:`spikelm.backends.epilogue.epilogue` one for one,
in the same order, in IEEE float64 with ``fastmath=False`` (no FMA contraction), so this
backend's outputs are bit-identical to the reference's and ``torch_events``' on the CPU (the tests
check it).

Compilation: the kernels are compiled once per accumulator dtype on first use (or by
:func:`warmup`) and cached on disk (``cache=True``), so later processes load them in milliseconds.
:func:`compile_seconds` reports the time spent compiling or loading, apart from steady state.
numba is imported by this module only; ``import spikelm`` does not import it.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import njit, prange

from spikelm.backends.events import accumulator_dtype, step_shifts
from spikelm.errors import ConfigError, CountRangeError
from spikelm.neurons import check_finite, exact_count_range

UNARY, MAGNITUDE_BITS, TWOS_COMPLEMENT = 0, 1, 2
"""How the kernel decodes a count into events (``MODES`` maps each coding to one)."""

MODES = {
    "binary": UNARY,
    "ternary": UNARY,
    "bitwise": MAGNITUDE_BITS,
    "bitwise_bidirectional": MAGNITUDE_BITS,
    "bitwise_twos_complement": TWOS_COMPLEMENT,
}

BLOCK = 1024
"""Most outputs per block of the weight layout (and per task): one row's int16 planes of a
block, ``T x BLOCK x 2`` bytes (16 KiB at T = 8), stay in the L1 cache. Narrower layers get
blocks of ``out / threads`` (multiples of 64, at least ``MIN_BLOCK``), so that one token's
work still splits between the threads."""

MIN_BLOCK = 256
"""Fewest outputs per block when a layer is cut for the threads."""

PLANE_CHANNELS = 255
"""Channels summed into an int16 plane before it is merged: ``255 * 128 <= 32767``."""

PARALLEL_MIN_WORK = 1 << 17
"""Below this many ``active channels x out`` column updates a call runs serially."""

PARALLEL: bool | str = "auto"
"""Above ``PARALLEL_MIN_WORK``: ``True`` runs the parallel kernel, ``False`` the serial one, and
``"auto"`` times both on the first calls of each problem shape and keeps the faster, trying the
other again after 8, 16, 32, ... calls (up to every 1024th) to follow changes in machine load.
Both give the same numbers bit for bit; only the time differs."""


@njit(inline="always")
def _add(planes, p, weight_b, b, i, positive):
    """``P_p += +-W[block b, channel i]``: one spike event, int8 -> int16 adds.

    Indices, not array views: a view costs a reference-count update, more than a short block's
    adds. (Unsigned loop bounds: no wraparound checks. Each polarity has its own loop here and
    below: a conditional negation inside one loop measured markedly slower.)
    """
    size = np.uint64(weight_b.shape[2])
    if positive:
        for o in range(np.uint64(0), size):
            planes[p, o] += weight_b[b, i, o]
    else:
        for o in range(np.uint64(0), size):
            planes[p, o] -= weight_b[b, i, o]


@njit(inline="always")
def _add2(planes, p, q, weight_b, b, i, positive):
    """Two events of one channel (one polarity) in one pass: the weights are loaded once."""
    size = np.uint64(weight_b.shape[2])
    if positive:
        for o in range(np.uint64(0), size):
            w = np.int16(weight_b[b, i, o])
            planes[p, o] += w
            planes[q, o] += w
    else:
        for o in range(np.uint64(0), size):
            w = np.int16(weight_b[b, i, o])
            planes[p, o] -= w
            planes[q, o] -= w


@njit(inline="always")
def _add3(planes, p, q, u, weight_b, b, i, positive):
    """Three events of one channel (one polarity) in one pass."""
    size = np.uint64(weight_b.shape[2])
    if positive:
        for o in range(np.uint64(0), size):
            w = np.int16(weight_b[b, i, o])
            planes[p, o] += w
            planes[q, o] += w
            planes[u, o] += w
    else:
        for o in range(np.uint64(0), size):
            w = np.int16(weight_b[b, i, o])
            planes[p, o] -= w
            planes[q, o] -= w
            planes[u, o] -= w


@njit(inline="always")
def _add_channels4(planes, p, weight_b, b, i, j, k, m, positive):
    """Four single-spike channels with the same step and polarity: ``P_p += +-(W_i + W_j + W_k
    + W_m)``, one load and store of the plane for four events."""
    size = np.uint64(weight_b.shape[2])
    if positive:
        for o in range(np.uint64(0), size):
            planes[p, o] += (np.int16(weight_b[b, i, o]) + np.int16(weight_b[b, j, o])) + (
                np.int16(weight_b[b, k, o]) + np.int16(weight_b[b, m, o])
            )
    else:
        for o in range(np.uint64(0), size):
            planes[p, o] -= (np.int16(weight_b[b, i, o]) + np.int16(weight_b[b, j, o])) + (
                np.int16(weight_b[b, k, o]) + np.int16(weight_b[b, m, o])
            )


@njit(inline="always")
def _add_channels8(planes, p, weight_b, b, order, r, j, positive):
    """Eight single-spike channels ``order[r, j:j+8]`` with the same step and polarity."""
    size = np.uint64(weight_b.shape[2])
    i0, i1, i2, i3 = order[r, j], order[r, j + 1], order[r, j + 2], order[r, j + 3]
    i4, i5, i6, i7 = order[r, j + 4], order[r, j + 5], order[r, j + 6], order[r, j + 7]
    for o in range(np.uint64(0), size):
        w = (
            (np.int16(weight_b[b, i0, o]) + np.int16(weight_b[b, i1, o]))
            + (np.int16(weight_b[b, i2, o]) + np.int16(weight_b[b, i3, o]))
        ) + (
            (np.int16(weight_b[b, i4, o]) + np.int16(weight_b[b, i5, o]))
            + (np.int16(weight_b[b, i6, o]) + np.int16(weight_b[b, i7, o]))
        )
        if positive:
            planes[p, o] += w
        else:
            planes[p, o] -= w


@njit(inline="always")
def _merge(planes, used, shifts, negative, merged, fresh):
    """``merged (+)= sum_t c_t P_t`` over the touched planes, ``c_t = -+(1 << shift_t)``, and
    free them. ``fresh``: ``merged`` holds nothing yet. Returns whether it now does."""
    size = np.uint64(merged.shape[0])
    for t in range(shifts.shape[0]):
        if not used[t]:
            continue
        used[t] = False
        shift = shifts[t]
        if fresh and negative[t]:
            for o in range(np.uint64(0), size):
                merged[o] = -(np.int64(planes[t, o]) << shift)
        elif fresh:
            for o in range(np.uint64(0), size):
                merged[o] = np.int64(planes[t, o]) << shift
        elif negative[t]:
            for o in range(np.uint64(0), size):
                merged[o] -= np.int64(planes[t, o]) << shift
        else:
            for o in range(np.uint64(0), size):
                merged[o] += np.int64(planes[t, o]) << shift
        fresh = False
    return not fresh


@njit(inline="always")
def _decode(n, mode, mask, events):
    """The steps of count ``n``'s spikes into ``events[:k]``; returns ``k``.

    All spikes of a count share one polarity: ``sign(n)``, or +1 in two's complement.
    """
    k = 0
    if mode == UNARY:
        for t in range(n if n > 0 else -n):
            events[k] = t
            k += 1
        return k
    bits = (n if n > 0 else -n) if mode == MAGNITUDE_BITS else n & mask
    t = 0
    while bits:
        if bits & 1:
            events[k] = t
            k += 1
        bits >>= 1
        t += 1
    return k


@njit(inline="always")
def _plan_row(counts, r, width, mode, steps, order, kind, steps_of, active):
    """Row ``r``'s active channels, group by group, sorted by their kind of spike train.

    Within group ``g``, ``order[r, g*width : g*width + active[r, g]]`` lists the channels with
    spikes, sorted (counting sort, stable) into classes: one spike, by step and polarity; then
    2, 3, and 4 or more spikes, by polarity. ``kind`` is ``+-k`` (k spikes, the sign their
    polarity) and ``steps_of`` the steps of the first three. The order changes nothing in the
    exact sums; it makes the kernel's branches predictable and lets it add runs of single-spike
    channels that share a step four or eight at a time.
    """
    mask = (np.int64(1) << steps) - 1
    events = np.empty(max(steps, 64), dtype=np.int64)
    keys = np.empty(width, dtype=np.int64)
    classes = 2 * steps + 6
    fill = np.empty(classes + 1, dtype=np.int64)
    for g in range(counts.shape[1] // width):
        fill[:] = 0
        for j in range(width):
            n = np.int64(counts[r, g * width + j])
            if n == 0:
                keys[j] = -1
                continue
            k = _decode(n, mode, mask, events)
            sign = 1 if n < 0 and mode != TWOS_COMPLEMENT else 0
            keys[j] = 2 * events[0] + sign if k == 1 else 2 * steps + 2 * (min(k, 4) - 2) + sign
            fill[keys[j] + 1] += 1
        for c in range(classes):
            fill[c + 1] += fill[c]
        active[r, g] = fill[classes]
        for j in range(width):
            key = keys[j]
            if key < 0:
                continue
            at = g * width + fill[key]
            fill[key] += 1
            i = g * width + j
            k = _decode(np.int64(counts[r, i]), mode, mask, events)
            order[r, at] = i
            kind[r, at] = -k if key % 2 else k
            for e in range(min(k, 3)):
                steps_of[r, at, e] = events[e]


@njit(cache=True, fastmath=False)
def _run_task(
    counts, weight_b, width, mode, shifts, negative, r, b,
    order, kind, steps_of, active, acc, scale_t, v_th, y,
):  # fmt: skip
    """Row ``r`` x output block ``b``, every group: events -> planes -> accumulators (into
    ``acc`` when it has rows) -> fused epilogue (into ``y`` when it has rows)."""
    steps = shifts.shape[0]
    mask = (np.int64(1) << steps) - 1
    width_b = weight_b.shape[2]
    o0 = b * width_b
    size = min(width_b, scale_t.shape[1] - o0)
    planes = np.empty((steps, width_b), dtype=np.int16)
    used = np.zeros(steps, dtype=np.bool_)
    merged = np.empty(width_b, dtype=acc.dtype)
    total = np.empty(width_b, dtype=np.float64)
    events = np.empty(max(steps, 64), dtype=np.int64)
    sink = 0
    for g in range(counts.shape[1] // width):
        held = False
        start, stop = g * width, g * width + active[r, g]
        # read the group's weights once in address order (one load per cache line) so that
        # memory streams them; the sorted pass below then finds them in cache
        for i in range(start, start + width):
            if counts[r, i] != 0:
                for o in range(0, width_b, 64):
                    sink += weight_b[b, i, o]
        for c0 in range(start, stop, PLANE_CHANNELS):
            end = min(stop, c0 + PLANE_CHANNELS)
            j = c0
            while j < end:
                i, k = order[r, j], np.int64(kind[r, j])
                positive = k > 0
                k = k if positive else -k
                if k > 3:  # rare: decode again, one pass per spike
                    k = _decode(np.int64(counts[r, i]), mode, mask, events)
                else:
                    for e in range(k):
                        events[e] = steps_of[r, j, e]
                for e in range(k):  # a plane's first event of a chunk: zero it first
                    if not used[events[e]]:
                        used[events[e]] = True
                        planes[events[e], :] = 0
                if k == 1:
                    if (
                        j + 7 < end
                        and kind[r, j + 7] == kind[r, j]
                        and (steps_of[r, j + 7, 0] == events[0])
                    ):
                        _add_channels8(planes, events[0], weight_b, b, order, r, j, positive)
                        j += 8
                        continue
                    # sorted: j .. j+3 share step and polarity when j+3 is in j's class
                    if (
                        j + 3 < end
                        and kind[r, j + 3] == kind[r, j]
                        and (steps_of[r, j + 3, 0] == events[0])
                    ):
                        _add_channels4(
                            planes, events[0], weight_b, b,
                            i, order[r, j + 1], order[r, j + 2], order[r, j + 3], positive,
                        )  # fmt: skip
                        j += 4
                        continue
                    _add(planes, events[0], weight_b, b, i, positive)
                elif k == 2:
                    _add2(planes, events[0], events[1], weight_b, b, i, positive)
                elif k == 3:
                    _add3(planes, events[0], events[1], events[2], weight_b, b, i, positive)
                else:
                    for e in range(k):
                        _add(planes, events[e], weight_b, b, i, positive)
                j += 1
            held = _merge(planes, used, shifts, negative, merged, not held)
        row = merged[:size]
        if not held:
            row[:] = 0
        if acc.shape[0]:
            acc[r, g, o0 : o0 + size] = row
        if y.shape[0]:  # epilogue, g ascending: total = acc_0 s_0 + acc_1 s_1 + ...
            scale = scale_t[g, o0 : o0 + size]
            if g == 0:
                for o in range(size):
                    total[o] = np.float64(row[o]) * scale[o]
            else:
                for o in range(size):
                    total[o] += np.float64(row[o]) * scale[o]
    used[0] = sink == 0  # keeps the reads above (used is scratch, dead here)
    if y.shape[0]:
        v, out = np.float64(v_th[r]), y[r, o0 : o0 + size]
        for o in range(size):
            out[o] = np.float32(total[o] * v)


@njit(parallel=True, cache=True, fastmath=False)
def _run_parallel(
    counts, weight_b, width, mode, shifts, negative,
    order, kind, steps_of, active, acc, scale_t, v_th, y,
):  # fmt: skip
    """Plan every row, then run the tasks (row x output block), both in parallel."""
    rows, blocks = counts.shape[0], weight_b.shape[0]
    for r in prange(rows):
        _plan_row(counts, r, width, mode, shifts.shape[0], order, kind, steps_of, active)
    for task in prange(rows * blocks):
        _run_task(
            counts, weight_b, width, mode, shifts, negative, task // blocks, task % blocks,
            order, kind, steps_of, active, acc, scale_t, v_th, y,
        )  # fmt: skip


@njit(cache=True, fastmath=False)
def _run_serial(
    counts, weight_b, width, mode, shifts, negative,
    order, kind, steps_of, active, acc, scale_t, v_th, y,
):  # fmt: skip
    """:func:`_run_parallel`'s work, one step after the other."""
    for r in range(counts.shape[0]):
        _plan_row(counts, r, width, mode, shifts.shape[0], order, kind, steps_of, active)
        for b in range(weight_b.shape[0]):
            _run_task(
                counts, weight_b, width, mode, shifts, negative, r, b,
                order, kind, steps_of, active, acc, scale_t, v_th, y,
            )  # fmt: skip


@njit(cache=True, fastmath=False)
def _counts_of(u, v_th, lo, hi, counts):
    """The adaptive-threshold neuron of :func:`spikelm.neurons.spike_counts`, in the same float32
    operations: ``clamp(sign(u) ceil(|u| / V - 1/2), lo, hi)`` (0 where ``V <= 0``) into int64
    (``lo``, ``hi``: the range's bounds as float32 values, :func:`~spikelm.neurons.exact_count_range`)
    ``counts``. Returns 0, or 1 if ``u`` holds NaN or inf (the caller raises)."""
    half = np.float32(0.5)
    for r in range(u.shape[0]):
        v = v_th[r]
        for i in range(u.shape[1]):
            x = u[r, i]
            if not np.isfinite(x):
                return 1
            if v > 0 and x != 0:
                c = np.ceil(abs(x) / v - half)
                c = -c if x < 0 else c
                counts[r, i] = np.int64(min(max(c, np.float32(lo)), np.float32(hi)))
            else:
                counts[r, i] = 0
    return 0


_ACC_TYPES = {torch.int32: numba.int32, torch.int64: numba.int64}
_compile_seconds = 0.0
_compiled: set = set()


def _signatures(acc_dtype: torch.dtype) -> tuple:
    acc = _ACC_TYPES[acc_dtype]
    i64 = numba.int64
    arguments = (
        numba.int64[:, ::1],  # counts (int64: bitwise codes over T > 31 steps)
        numba.int8[:, :, ::1],  # weight_b
        i64, i64,  # width, mode
        numba.int64[::1], numba.boolean[::1],  # shifts, negative
        numba.int32[:, ::1], numba.int16[:, ::1], numba.int8[:, :, ::1],  # order, kind, steps_of
        numba.int64[:, ::1],  # active
        acc[:, :, ::1],  # acc
        numba.float64[:, ::1], numba.float64[::1], numba.float32[:, ::1],  # scale_t, v_th, y
    )  # fmt: skip
    return arguments, arguments  # _run_parallel, _run_serial


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


def _ensure_counts() -> None:
    """Compile (or load from the disk cache) :func:`_counts_of`, timed."""
    global _compile_seconds
    if "counts" in _compiled:
        return
    start = time.perf_counter()
    f32 = numba.float32
    _counts_of.compile((f32[:, ::1], f32[::1], numba.float64, numba.float64, numba.int64[:, ::1]))
    _compiled.add("counts")
    _compile_seconds += time.perf_counter() - start


def warmup(acc_dtypes: tuple[torch.dtype, ...] = (torch.int32,)) -> float:
    """Compile (or load from the on-disk cache) the kernels for these accumulator dtypes.

    Returns the seconds this call spent; :func:`compile_seconds` keeps the running total. Each
    kernel is otherwise compiled on its first use (the serial one for small layers, the parallel
    one for large ones); call this beforehand to keep compilation out of a timing.
    """
    start = time.perf_counter()
    _ensure_counts()
    for dtype in acc_dtypes:
        _ensure(False, dtype)
        _ensure(True, dtype)
    return time.perf_counter() - start


def compile_seconds() -> float:
    """Seconds this process has spent compiling or loading the kernels (not running them)."""
    return _compile_seconds


def cache_stats() -> dict[str, int]:
    """On-disk cache hits and misses of the kernels in this process (misses were compiled)."""
    stats = [_run_parallel.stats, _run_serial.stats, _counts_of.stats]
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

    SAMPLES = 3  # timings kept per mode (after a first, untimed call each); the median decides
    FIRST_RETRY, LAST_RETRY = 8, 1024  # calls before the losing mode is timed again (doubling)

    def __init__(self) -> None:
        self.state: dict = {}

    def pick(self, key) -> bool:
        state = self.state.setdefault(
            key, {"times": {False: [], True: []}, "warm": set(), "wait": 0, "gap": 0}
        )
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
        if parallel not in state["warm"]:  # a mode's first call pays one-time costs: not kept
            state["warm"].add(parallel)
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
        # a few samples: sorting in Python costs far less than np.median's overhead per call
        parallel, serial = sorted(times[True]), sorted(times[False])
        return parallel[len(parallel) // 2] < serial[len(serial) // 2]

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


class Layout(NamedTuple):
    """What the kernel reads of a layer, derived from its weights once and cached on it."""

    weight_b: np.ndarray  # int8 [blocks, in, B]: see layout()
    out_features: int
    groups: int
    scale_t: np.ndarray  # float64 [G, out]: the weight scales, transposed
    acc_dtype: torch.dtype  # int32, or int64 where int32 could overflow


def block_width(out_features: int, threads: int) -> int:
    """Outputs per block: ``BLOCK``, or ``out / threads`` (rounded up to 64) for narrow layers."""
    per_thread = -(-out_features // max(1, threads) // 64) * 64
    return min(out_features, BLOCK, max(MIN_BLOCK, per_thread))


def _blocked(weight_q: torch.Tensor) -> np.ndarray:
    columns = weight_q.t()  # [in, out]
    n_in, out = columns.shape
    width = block_width(out, numba.get_num_threads())
    blocks = -(-out // width)
    padded = torch.zeros(n_in, blocks * width, dtype=torch.int8)
    padded[:, :out] = columns
    return padded.reshape(n_in, blocks, width).transpose(0, 1).contiguous().numpy()


def layout(layer) -> Layout:
    """The layer's :class:`Layout`, cached on it (rebuilt when its weights change).

    ``weight_b`` is ``W_q^T`` cut into output blocks, int8 ``[blocks, in, B]`` (B from
    :func:`block_width` for numba's thread count then; the last block zero-padded): channel
    ``i``'s part of block ``b`` is contiguous, and so is the whole block, so a task streams its
    weights sequentially, one cache line after the next.
    """

    def make(lay) -> Layout:
        scale_t = lay.weight_scale.t().to(torch.float64).contiguous().numpy()
        groups = lay.weight_scale.shape[1]
        return Layout(
            _blocked(lay.weight_q), lay.out_features, groups, scale_t, accumulator_dtype(lay)
        )

    return layer.derived("numba_layout", make)


def run(
    counts: np.ndarray, lay: Layout, coding: str, steps: int, v_th: np.ndarray | None = None
) -> np.ndarray:
    """The accumulators ``[M, G, out]``, or with thresholds ``v_th`` (float64 ``[M]``) the
    outputs ``y [M, out]`` (float32): the epilogue is then fused, each task turning its
    accumulators into outputs as it merges them, and no accumulator array is written.

    numpy in, numpy out: int64 counts ``[M, in]`` and the layer's :class:`Layout`. The counts
    must lie in the coding's range (the layer entry points check it).
    """
    rows, in_features = counts.shape
    groups, out_features = lay.groups, lay.out_features
    width = in_features // groups
    np_dtype = np.int32 if lay.acc_dtype == torch.int32 else np.int64
    fused = v_th is not None
    acc = np.empty((0 if fused else rows, groups, out_features), dtype=np_dtype)
    y = np.empty((rows if fused else 0, out_features), dtype=np.float32)
    if not fused:
        v_th = np.zeros(0)
    if rows == 0 or out_features == 0:
        return y if fused else acc
    shift_t, negative_t = step_shifts(coding, steps)
    shifts, negative = shift_t.numpy(), negative_t.numpy()
    work = int(np.count_nonzero(counts)) * out_features
    # (asking for the thread count starts numba's pool: small problems never ask)
    parallel = PARALLEL is not False and work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1
    key = (min(rows, 64).bit_length(), in_features, out_features, groups, lay.acc_dtype)
    if parallel and PARALLEL == "auto":
        parallel = _chooser.pick(key)
    _ensure(parallel, lay.acc_dtype)
    order = np.empty((rows, in_features), dtype=np.int32)
    kind = np.empty((rows, in_features), dtype=np.int16)
    steps_of = np.empty((rows, in_features, 3), dtype=np.int8)
    active = np.empty((rows, groups), dtype=np.int64)
    kernel = _run_parallel if parallel else _run_serial
    start = time.perf_counter()
    kernel(
        counts, lay.weight_b, width, MODES[coding], shifts, negative,
        order, kind, steps_of, active, acc, lay.scale_t, v_th, y,
    )  # fmt: skip
    if PARALLEL == "auto" and work >= PARALLEL_MIN_WORK:
        _chooser.record(key, parallel, time.perf_counter() - start)
    return y if fused else acc


def _check_counts(layer, counts: torch.Tensor) -> np.ndarray:
    if counts.device.type != "cpu":
        raise ConfigError(
            f"backend 'numba' runs on the CPU only, but layer {layer.name!r} got tensors on "
            f"{counts.device}; use backend 'torch' or 'torch_events' there, or move the model "
            "to the CPU"
        )
    as_int = counts.detach().to(torch.int64).contiguous()
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


def accumulators(layer, counts: torch.Tensor) -> torch.Tensor:
    """The layer's exact accumulators ``[M, G, out]`` (int32 or int64) for counts ``[M, in]``."""
    array = _check_counts(layer, counts)
    return torch.from_numpy(run(array, layout(layer), layer.coding, layer.steps))


def spiking_linear(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [M, out], counts [M, in])``: the layer's outputs (float32, no bias) straight from its
    inputs ``x [M, in]``, and the spike counts it computed (int64).

    The threshold comes from :meth:`SpikingLinear.neuron_input` (torch), as for
    ``spike_counts``; the counts from :func:`_counts_of`, in the same float32 operations as
    :func:`spikelm.neurons.spike_counts` (so the spikes are the same, bit for bit), and the
    rest as :func:`linear`: one call instead of a dozen tensor operations, for token-by-token
    decoding where per-call overhead dominates. NaN or inf inputs raise
    :class:`~spikelm.errors.NonFiniteError` with the message ``spike_counts`` gives.
    """
    u, v_th = layer.neuron_input(x.detach())  # counts carry no gradient
    u_np, v_np = u.contiguous().numpy(), v_th.reshape(-1).contiguous().numpy()
    counts = np.empty(u_np.shape, dtype=np.int64)
    lo, hi = exact_count_range(layer.count_range, torch.float32)
    _ensure_counts()
    if _counts_of(u_np, v_np, lo, hi, counts):
        check_finite(u, f"input of layer {layer.name!r}")
    y = run(counts, layout(layer), layer.coding, layer.steps, v_np.astype(np.float64))
    return torch.from_numpy(y), torch.from_numpy(counts)


def linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, out]`` (float32) of ``layer`` for counts ``[M, in]`` and thresholds ``[M, 1]``.

    The epilogue is fused into the kernel; it performs the operations of
    :func:`spikelm.backends.epilogue.epilogue` in the same order, so the outputs are those of
    ``epilogue(accumulators(layer, counts), ...)`` bit for bit.
    """
    array = _check_counts(layer, counts)
    v = v_th.detach().reshape(-1).to(torch.float64).contiguous().numpy()
    if v.shape[0] != array.shape[0]:
        v = np.ascontiguousarray(np.broadcast_to(v, (array.shape[0],)))
    return torch.from_numpy(run(array, layout(layer), layer.coding, layer.steps, v))


__all__ = [
    "MODES",
    "Layout",
    "accumulators",
    "cache_stats",
    "compile_seconds",
    "layout",
    "linear",
    "parallel_choices",
    "run",
    "spiking_linear",
    "warmup",
]
