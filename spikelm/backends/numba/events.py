"""The event-driven kernel: each spike event adds one int8 weight column into an int16 plane.

Every spike event ``(row m, input channel i, step t, polarity p)`` adds ``p * W_q[:, i]`` into a
per-step partial sum, and the step weights ``c_t`` are applied once per sum, by shifts:

    P_t[m, :] = sum over events at step t of p * W_q[:, i]        (int16 "planes")
    acc[m, g, :] = sum_t c_t * P_t        (c_t = +-2^t for bitwise codes: a shift; 1 for unary)

The kernel decodes each count ``n`` into its events inline, as the coder's ``decoding`` says
(:data:`spikelm.encoders.base.Decoding`): one event per set bit of ``|n|`` (``magnitude_bits``),
per set bit of the ``T``-bit pattern (``twos_complement``, the top step weighing ``-2^(T-1)``),
or ``|n|`` events at steps ``0 .. |n|-1`` (``unary``).

An event is int8 -> int16 additions over a block of the channel's weight column: nothing in the
inner loop multiplies or shifts. A plane sums at most ``PLANE_CHANNELS`` = 255 channels of
weights in [-128, 127] (``|P_t| <= 32640`` fits int16); planes are merged into the exact int32
(or int64) accumulators every 255 channels and at the end of each weight-scale group.

A row is planned first (:func:`plan_row`): its active channels, group by group, are sorted by
kind of spike train (one spike at step t; two; three; more), so the branches are predictable,
channels with two or three spikes add their column to all their planes in one pass, and runs of
four or eight single-spike channels with the same step add into their plane together. A task
(:func:`event_task`: one row x one output block of the layout) first reads the group's active
weights once in address order (every channel's, where at least half of them fire), so that memory
streams them, then applies the events from cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from spikelm.backends.numba.epilogue import finish, group_done

UNARY, MAGNITUDE_BITS, TWOS_COMPLEMENT = 0, 1, 2
"""The kernels' codes of :data:`spikelm.encoders.base.Decoding`."""

DECODINGS = {"unary": UNARY, "magnitude_bits": MAGNITUDE_BITS, "twos_complement": TWOS_COMPLEMENT}

PLANE_CHANNELS = 255
"""Channels summed into an int16 plane before it is merged: ``255 * 128 <= 32767``."""


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
def _decode(n, decoding, mask, events):
    """The steps of count ``n``'s spikes into ``events[:k]``; returns ``k``.

    All spikes of a count share one polarity: ``sign(n)``, or +1 in two's complement.
    """
    k = 0
    if decoding == UNARY:
        for t in range(n if n > 0 else -n):
            events[k] = t
            k += 1
        return k
    bits = (n if n > 0 else -n) if decoding == MAGNITUDE_BITS else n & mask
    t = 0
    while bits:
        if bits & 1:
            events[k] = t
            k += 1
        bits >>= 1
        t += 1
    return k


@njit(inline="always")
def plan_row(counts, r, width, decoding, steps, order, kind, steps_of, active):
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
            k = _decode(n, decoding, mask, events)
            sign = 1 if n < 0 and decoding != TWOS_COMPLEMENT else 0
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
            k = _decode(np.int64(counts[r, i]), decoding, mask, events)
            order[r, at] = i
            kind[r, at] = -k if key % 2 else k
            for e in range(min(k, 3)):
                steps_of[r, at, e] = events[e]


@njit(cache=True, fastmath=False)
def event_task(
    counts, weight_b, width, decoding, shifts, negative, r, b,
    order, kind, steps_of, active, acc, scale_t, v, bias, y,
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
        # read the group's active weights once in address order (one load per cache line) so
        # that memory streams them; the sorted pass below then finds them in cache. Where at
        # least half the channels fire, every channel is read: the branch-free loop keeps more
        # loads in flight than skipping the silent ones saves (10-12% on a cold 4096x4096 at
        # demo firing, AMD EPYC; two loops: the condition inside one measured as slow as before)
        if 2 * active[r, g] >= width:
            for i in range(start, start + width):
                for o in range(0, width_b, 64):
                    sink += weight_b[b, i, o]
        else:
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
                    k = _decode(np.int64(counts[r, i]), decoding, mask, events)
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
        if not held:
            merged[:] = 0
        group_done(merged, g, r, o0, size, acc, scale_t, total, y)
    used[0] = sink == 0  # keeps the reads above (used is scratch, dead here)
    if y.shape[0]:
        finish(total, v[r], bias, y, r, o0, size)


@njit(inline="always")
def row_events(counts, r, decoding, steps):
    """``(active channels, spike events)`` of row ``r``: what the path chooser weighs."""
    mask = (np.int64(1) << steps) - 1
    active, events = 0, 0
    for i in range(counts.shape[1]):
        n = np.int64(counts[r, i])
        if n == 0:
            continue
        active += 1
        if decoding == UNARY:
            events += n if n > 0 else -n
        else:
            bits = (n if n > 0 else -n) if decoding == MAGNITUDE_BITS else n & mask
            while bits:
                events += bits & 1
                bits >>= 1
    return active, events
