"""One compiled call per layer: neuron, path choice, tasks, epilogue (numpy in, numpy out).

A call runs, inside one compiled function: the neuron on the input rows (when given ``x``, else
the caller's counts and thresholds), each row's choice of path (count-domain when its spike
events outnumber ``crossover x`` its active channels, else event-driven), the plans of both
paths' rows, then the tasks: one per output tile for the count-path rows (:mod:`.counts`), one
per row x output block for the event-path rows (:mod:`.events`), each writing its own outputs
(or exact accumulators). ``_run_parallel`` runs the tasks in parallel (``prange``),
``_run_serial`` one after the other; both compute the same numbers.

Kernels are compiled once per accumulator dtype on first use (or by :func:`warmup`) and cached
on disk (``cache=True``); :func:`compile_seconds` reports the time spent compiling or loading.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from numba import njit, prange

from spikelm.backends.base import ran
from spikelm.backends.numba.counts import count_tile, plan_counts
from spikelm.backends.numba.events import event_task, plan_row, row_events
from spikelm.backends.numba.layout import Layout, blocked
from spikelm.backends.numba.neuron import neuron_row
from spikelm.backends.numba.tuning import ParallelChooser, PathChooser

PARALLEL_MIN_WORK = 1 << 17
"""Below this many ``active channels x out`` column updates a call runs serially."""

PARALLEL: bool | str = "auto"
"""Above ``PARALLEL_MIN_WORK``: ``True`` runs the parallel kernel, ``False`` the serial one, and
``"auto"`` times both on the first calls of each problem shape and keeps the faster
(:class:`~spikelm.backends.numba.tuning.ParallelChooser`). Threads: numba's ``omp`` layer and
torch each load an OpenMP runtime whose idle workers spin, so on an oversubscribed machine a
parallel call can wait for scheduler slices (measured on 2 shared cores: median 32 ms instead of
~1.6 ms serially); timing both settles it. ``GOMP_SPINCOUNT=0`` at process start helps too. With
one numba thread the parallel kernel runs its tasks in that thread: the chooser keeps the faster
of two that do the same."""

PATH: str = "auto"
"""``"counts"`` or ``"events"`` forces a path; ``"auto"`` chooses per row by the crossover the
:class:`~spikelm.backends.numba.tuning.PathChooser` measured for the problem shape."""

EMPTY_X = np.zeros((0, 0), dtype=np.float32)
EMPTY_F32 = np.zeros(0, dtype=np.float32)
EMPTY_F64 = np.zeros(0, dtype=np.float64)
EMPTY_COUNTS = np.zeros((0, 0), dtype=np.int64)
NO_BLOCKS = np.zeros((0, 0, 0), dtype=np.int8)  # every row on the count path: no event weights
EMPTY_Y = np.zeros((0, 0), dtype=np.float32)
EMPTY_ACC = {dtype: np.zeros((0, 0, 0), dtype=dtype) for dtype in (np.int32, np.int64)}
FORCED = {"counts": -math.inf, "events": math.inf}


@njit(cache=True, fastmath=False)
def _prepare(
    x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary, counts, v,
    decoding, steps, crossover, scan, path,
):  # fmt: skip
    """Neuron (when ``x`` has rows) and path choice of every row: the number of rows on the
    count path, or -1 if ``x`` is not finite. ``v[r]`` is the decode level ``gain * V_th``
    (float32 product, as :func:`spikelm.neurons.decode_level`)."""
    rows, on_counts = counts.shape[0], 0
    if x.shape[0]:
        scratch = np.empty(2 * x.shape[1] + 2, dtype=np.float32)
        for r in range(rows):
            level = neuron_row(
                x, r, divisor, dynamic, k, threshold, lo, hi, cost, high, unary, counts, scratch
            )
            if np.isnan(level):  # nothing to compute: the plans below see silent rows
                counts[:, :] = 0
                path[:] = True
                return -1
            v[r] = np.float64(level * gain)
    for r in range(rows):
        if scan:
            active, events = row_events(counts, r, decoding, steps)
            path[r] = events > crossover * active
        else:  # r < 1: every row takes the count path (events >= active); inf: none does
            path[r] = crossover < 1.0
        on_counts += path[r]
    return on_counts


@njit(cache=True)
def _plan(counts, width, decoding, steps, path):
    """The event plans of the rows that take the event path (``order`` etc. of ``plan_row``)."""
    rows, n = counts.shape[0], counts.shape[1]
    planned = 0
    for r in range(rows):
        planned += not path[r]
    shape = (rows if planned else 0, n)
    order = np.empty(shape, dtype=np.int32)
    kind = np.empty(shape, dtype=np.int16)
    steps_of = np.empty((shape[0], n, 3), dtype=np.int8)
    active = np.empty((shape[0], n // width), dtype=np.int64)
    for r in range(rows if planned else 0):
        if not path[r]:
            plan_row(counts, r, width, decoding, steps, order, kind, steps_of, active)
    return order, kind, steps_of, active


@njit(cache=True, fastmath=False)
def _head(
    x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary, counts, v, pairs, blocks,
    width, decoding, steps, crossover, scan,
):  # fmt: skip
    """Everything before the tasks: ``(rows on the count path or -1, counts, thresholds, each
    row's path, count plan, event plan, count tasks, all tasks)``; the tasks are the count tiles,
    then rows x event blocks. With ``x``, ``counts`` and ``v`` without rows are allocated here
    (the caller does not want them): ~40 ns each here, against ~0.2 us for ``np.empty`` from
    Python, or ~5 us when streaming a large model's weights has pushed Python's objects out of
    the caches (measured)."""
    rows = max(x.shape[0], counts.shape[0])
    if counts.shape[0] != rows:
        counts = np.empty((rows, x.shape[1]), dtype=np.int64)
    if v.shape[0] != rows:
        v = np.empty(rows, dtype=np.float64)
    path = np.empty(rows, dtype=np.bool_)
    on_counts = _prepare(x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary,
                         counts, v, decoding, steps, crossover, scan, path)  # fmt: skip
    plan = plan_counts(counts, width, path)
    events = _plan(counts, width, decoding, steps, path)
    tiles = pairs.shape[0] if on_counts > 0 else 0
    tasks = tiles + (rows * blocks.shape[0] if 0 <= on_counts < rows else 0)
    return on_counts, counts, v, path, plan, events, tiles, tasks


@njit(cache=True, fastmath=False)
def _task(
    i, tiles, counts, pairs, blocks, width, decoding, shifts, negative, scale_t, v, bias, path,
    plan, events, acc, y,
):  # fmt: skip
    """Task ``i``: count tile ``i``, or (after the tiles) event task row x block."""
    if i < tiles:
        count_tile(counts, pairs, i, width, plan, path, acc, scale_t, v, bias, y)
        return
    r, b = (i - tiles) // blocks.shape[0], (i - tiles) % blocks.shape[0]
    if not path[r]:
        order, kind, steps_of, active = events
        event_task(counts, blocks, width, decoding, shifts, negative, r, b,
                   order, kind, steps_of, active, acc, scale_t, v, bias, y)  # fmt: skip


@njit(parallel=True, cache=True, fastmath=False)
def _run_parallel(
    x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary, counts, v, pairs, blocks,
    width, decoding, shifts, negative, scale_t, bias, crossover, scan, acc, y,
):  # fmt: skip
    """See the module docstring; tasks in parallel. Returns the number of rows on the count
    path, or -1 (nothing computed) for a non-finite input."""
    on_counts, counts, v, path, plan, events, tiles, tasks = _head(
        x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary, counts, v, pairs,
        blocks, width, decoding, shifts.shape[0], crossover, scan,
    )  # fmt: skip
    for i in prange(tasks):
        _task(i, tiles, counts, pairs, blocks, width, decoding, shifts, negative, scale_t, v,
              bias, path, plan, events, acc, y)  # fmt: skip
    return on_counts


@njit(cache=True, fastmath=False)
def _run_serial(
    x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary, counts, v, pairs, blocks,
    width, decoding, shifts, negative, scale_t, bias, crossover, scan, acc, y,
):  # fmt: skip
    """:func:`_run_parallel`'s work, one task after the other."""
    on_counts, counts, v, path, plan, events, tiles, tasks = _head(
        x, divisor, dynamic, k, gain, threshold, lo, hi, cost, high, unary, counts, v, pairs,
        blocks, width, decoding, shifts.shape[0], crossover, scan,
    )  # fmt: skip
    for i in range(tasks):
        _task(i, tiles, counts, pairs, blocks, width, decoding, shifts, negative, scale_t, v,
              bias, path, plan, events, acc, y)  # fmt: skip
    return on_counts


_ACC_TYPES = {torch.int32: numba.int32, torch.int64: numba.int64}
_compile_seconds = 0.0
_kernels: tuple[dict, dict] = ({}, {})  # [parallel][(accumulator dtype, scale dtype)]: entry
_parallel_chooser = ParallelChooser()
_path_chooser = PathChooser()


_SCALE_TYPES = {np.dtype(np.float32): numba.float32, np.dtype(np.float64): numba.float64}
FLOAT32 = np.dtype(np.float32)


def _signature(acc_dtype: torch.dtype, scale_dtype: np.dtype) -> tuple:
    f32, f64, i64, boolean = numba.float32, numba.float64, numba.int64, numba.boolean
    return (
        f32[:, ::1], f32[::1], boolean, f32, f32,  # x, divisor, dynamic, k, gain
        f32, f32, f32,  # V (static), lo, hi
        f32, i64, boolean,  # error-aware rounding: spike_cost, the count bound, unary coding
        i64[:, ::1], f64[::1],  # counts, v
        numba.int8[:, :, :, ::1], numba.int8[:, :, ::1],  # pairs, blocks
        i64, i64, i64[::1], boolean[::1],  # width, decoding, shifts, negative
        _SCALE_TYPES[scale_dtype][:, ::1], f32[::1],  # scale_t, bias
        f64, boolean,  # crossover, scan
        _ACC_TYPES[acc_dtype][:, :, ::1], f32[:, ::1],  # acc, y
    )  # fmt: skip


def kernel(parallel: bool, key: tuple[torch.dtype, np.dtype]) -> Callable[..., int]:
    """The compiled entry point of the parallel or serial kernel for ``key = (accumulator dtype,
    scale dtype)``, compiled (or loaded from the disk cache) on first use, timed. Calling it
    skips the dispatcher's matching of 25 argument types (~1 us a call, several times that
    when a large model's weights have pushed Python's objects out of the caches), so its
    arguments must have the signature's types (:func:`_signature`)."""
    global _compile_seconds
    entry = _kernels[parallel].get(key)
    if entry is None:
        start = time.perf_counter()
        dispatcher = _run_parallel if parallel else _run_serial
        signature = _signature(*key)
        dispatcher.compile(signature)
        entry = _kernels[parallel][key] = dispatcher.overloads[signature].entry_point
        _compile_seconds += time.perf_counter() - start
    return entry


def warmup(acc_dtypes: tuple[torch.dtype, ...] = (torch.int32,)) -> float:
    """Compile (or load from the on-disk cache) the kernels for these accumulator dtypes (and
    float32 scales; float64 ones compile on first use); returns the seconds this call spent
    (:func:`compile_seconds` keeps the running total)."""
    start = time.perf_counter()
    for dtype in acc_dtypes:
        kernel(False, (dtype, FLOAT32))
        kernel(True, (dtype, FLOAT32))
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


def parallel_choices() -> dict:
    """What ``PARALLEL = "auto"`` has chosen per problem shape (rows bucket and layout key)."""
    return _parallel_chooser.choices()


def path_crossovers() -> dict:
    """The crossover measured per problem shape (count path when events > r x active)."""
    return _path_chooser.choices()


def measure_crossover(lay: Layout) -> float:
    """The count/event crossover of ``lay``'s problem shape, measured on first use (then kept).
    The event kernel's weights are built for the measurement only, not kept on the layer."""
    blocks: list[np.ndarray] = []

    def measure(forced: float) -> float:
        if not blocks:
            blocks.append(blocked(torch.from_numpy(lay.weight_q), numba.get_num_threads()))
        return _synthetic(lay, blocks[0], forced)

    return _path_chooser.crossover(lay.key, measure)


def _synthetic(lay: Layout, blocks: np.ndarray, crossover: float) -> float:
    """Seconds of one serial call on :class:`PathChooser`'s synthetic rows (seeded): 85% of the
    channels active, each firing one spike at a random step of the coding, random polarity."""
    rows, in_features = PathChooser.ROWS, lay.in_features
    rng = np.random.default_rng(0)
    steps = lay.shifts.shape[0]
    top = steps - 1 if lay.decoding == "twos_complement" else steps  # one bit: top step negates
    magnitude = np.ones(rows * in_features, dtype=np.int64)
    if lay.decoding != "unary":
        magnitude <<= rng.integers(0, max(top, 1), magnitude.shape[0])
    sign = (
        1
        if lay.decoding == "twos_complement"
        else rng.choice(np.array([-1, 1]), magnitude.shape[0])
    )
    counts = (magnitude * sign * (rng.random(magnitude.shape[0]) < 0.85)).reshape(rows, -1)
    v = np.ones(rows)
    y = np.empty((rows, lay.out_features), dtype=np.float32)
    acc = EMPTY_ACC[lay.acc_np]
    run_serial = kernel(False, (lay.acc_dtype, lay.scale_t.dtype))
    start = time.perf_counter()
    run_serial(
        EMPTY_X, *NO_NEURON.arguments(), counts, v, lay.pairs, blocks, lay.width,
        lay.decoding_code, lay.shifts, lay.negative, lay.scale_t, EMPTY_F32, crossover, False,
        acc, y,
    )  # fmt: skip
    return time.perf_counter() - start


class Neuron:
    """The neuron's parameters as the kernel takes them (see :mod:`.neuron`)."""

    __slots__ = ("divisor", "dynamic", "gain", "hi", "k", "lo", "rounding", "threshold")

    def __init__(self, divisor, dynamic, k, threshold, lo, hi, rounding=None, gain=None) -> None:
        self.divisor, self.dynamic, self.k = divisor, dynamic, k
        self.threshold, self.lo, self.hi = threshold, lo, hi
        self.rounding = NEAREST if rounding is None else rounding  # (spike_cost, high, unary)
        self.gain = np.float32(1.0) if gain is None else gain  # decode level = gain * V_th

    def arguments(self) -> tuple:
        return (self.divisor, self.dynamic, self.k, self.gain, self.threshold, self.lo, self.hi,
                *self.rounding)  # fmt: skip


NEAREST = (np.float32(0.0), 0, False)
"""``rounding`` of nearest rounding: ``(spike_cost, high, unary)`` with no cost."""


_ZERO, _ONE = np.float32(0.0), np.float32(1.0)
NO_NEURON = Neuron(EMPTY_F32, False, _ONE, _ONE, _ZERO, _ZERO)


class Bound:
    """One layer's compiled call with everything but the rows bound: its layout, neuron and bias.

    Built once per layer and parameter version (the per-token path, :func:`spikelm.backends.numba
    .forward`) or per call (:func:`run`); a call does only what depends on the rows: allocate the
    outputs, pick the serial or parallel kernel, and run it. The arguments that do not depend on
    the rows (the crossover, measured on the first call that needs it, and the weights of the
    path it implies) are gathered once, and the kernel is entered through its compiled entry
    point (:func:`kernel`), so a call costs little more than the kernel's own work.
    """

    __slots__ = (
        "bias", "blocks", "kernel_key", "layout", "neuron", "no_acc", "out", "tail", "tail_path",
        "work",
    )  # fmt: skip

    def __init__(
        self,
        lay: Layout,
        blocks: Callable[[], np.ndarray],
        neuron: Neuron = NO_NEURON,
        bias: np.ndarray = EMPTY_F32,
    ) -> None:
        self.layout, self.blocks, self.bias = lay, blocks, bias
        self.neuron = neuron.arguments()
        self.work = lay.in_features * lay.out_features  # column updates per row, at most
        self.out, self.no_acc = lay.out_features, EMPTY_ACC[lay.acc_np]
        self.kernel_key = (lay.acc_dtype, lay.scale_t.dtype)
        self.tail: tuple = ()  # the kernel's arguments after ``v`` but for acc and y
        self.tail_path: str | None = None  # the PATH they were gathered for

    def _tail(self) -> tuple:
        lay = self.layout
        crossover = FORCED.get(PATH)
        if crossover is None:
            crossover = measure_crossover(lay)
        self.tail = (
            lay.pairs, self.blocks() if crossover >= 1.0 else NO_BLOCKS, lay.width,
            lay.decoding_code, lay.shifts, lay.negative, lay.scale_t, self.bias, crossover,
            1.0 <= crossover < math.inf,
        )  # fmt: skip
        self.tail_path = PATH
        return self.tail

    def __call__(
        self, counts: np.ndarray = EMPTY_COUNTS, v: np.ndarray = EMPTY_F64, *,
        x: np.ndarray = EMPTY_X, accumulators: bool = False,
    ) -> np.ndarray | None:  # fmt: skip
        """Outputs ``y [M, out]`` (float32, plus the bias), or the exact accumulators
        ``[M, G, out]``.

        With ``x`` (float32 ``[M, in]``) the neuron computes the counts and thresholds first,
        into ``counts`` (int64 ``[M, in]``) and ``v`` (float64 ``[M]``) where they have the rows
        (else the kernel keeps them); returns ``None`` if ``x`` holds NaN or inf. Without it,
        ``counts`` and ``v`` are inputs (counts in the coding's range: the entry points check
        that). Every array C-contiguous, of these dtypes: the compiled entry point does not
        check them. The event kernel's weights (``blocks()``) are asked for only when a row may
        take that path.
        """
        rows = x.shape[0] or counts.shape[0]
        if accumulators:
            lay = self.layout
            acc, y = np.empty((rows, lay.groups, self.out), dtype=lay.acc_np), EMPTY_Y
        else:
            acc, y = self.no_acc, np.empty((rows, self.out), dtype=np.float32)
        if rows == 0:
            return acc if accumulators else y
        tail = self.tail if self.tail_path == PATH else self._tail()
        if PARALLEL is False or rows * self.work < PARALLEL_MIN_WORK:
            on_counts = kernel(False, self.kernel_key)(x, *self.neuron, counts, v, *tail, acc, y)
        else:
            on_counts = self._parallel(rows, x, counts, v, tail, acc, y)
        if on_counts < 0:
            return None
        if on_counts:
            ran("numba.counts", on_counts)
        if on_counts < rows:
            ran("numba.events", rows - on_counts)
        return acc if accumulators else y

    def arguments(self) -> tuple:
        """The kernel's arguments between ``x`` and ``y`` for a call from float rows whose counts
        and thresholds the kernel keeps, outputs with bias: what entering :func:`kernel`'s entry
        point directly takes (``entry(x, *bound.arguments(), y)``), gathered for the current
        :data:`PATH`."""
        tail = self.tail if self.tail_path == PATH else self._tail()
        return (*self.neuron, EMPTY_COUNTS, EMPTY_F64, *tail, self.no_acc)

    def _parallel(self, rows: int, x, counts, v, tail: tuple, acc, y) -> int:
        """A call large enough for the parallel kernel: run it, the serial one, or (``"auto"``)
        the one the chooser picks for this problem shape, timing it while the chooser learns."""
        parallel, timed = True, False
        if PARALLEL == "auto":
            key = (min(rows, 64).bit_length(), self.layout.key)
            parallel, timed = _parallel_chooser.pick(key)
        start = time.perf_counter() if timed else 0.0
        on_counts = kernel(parallel, self.kernel_key)(x, *self.neuron, counts, v, *tail, acc, y)
        if timed:
            _parallel_chooser.record(key, parallel, time.perf_counter() - start)
        return on_counts


def run(
    lay: Layout,
    blocks: Callable[[], np.ndarray],
    counts: np.ndarray,
    v: np.ndarray,
    *,
    accumulators: bool = False,
) -> np.ndarray:
    """One call from given counts and thresholds (no neuron, no bias): :class:`Bound`'s
    outputs ``y [M, out]`` or exact accumulators ``[M, G, out]``."""
    return Bound(lay, blocks)(counts, v, accumulators=accumulators)
