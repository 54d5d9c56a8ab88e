"""The count-domain kernel: the exact integer product of the int8 weights with the spike counts.

For every exact coding ``sum_t c_t s_t = n``, so the spike train's accumulators are

    acc[m, g, o] = sum_{i in group g} W_q[o, i] n[m, i]            (exact integers)

which this kernel computes directly, each active channel's weights once per row, whatever its
number of spikes; the float epilogue is the shared one (:mod:`.epilogue`), so the outputs are
bit-identical to the event kernel's and the reference's.

Layout (:func:`pair_layout`): channels in pairs ``(2p, 2p+1)``; per tile of ``TILE`` = 256
outputs, each pair's two weights of every output side by side,
``w[tile, p, o, 0:2] = W_q[tile*TILE + o, 2p : 2p+2]`` (int8, zero-padded): one pair of one tile
is 512 contiguous bytes, and a tile streams sequentially. Per call each row's pairs are listed
once, both counts packed as two int16 in an int32 (:func:`plan_counts`), but for runs of at
least ``SKIP_RUN`` silent pairs (both counts zero), which are never read: a shorter gap costs
the memory stream more than its bytes. The inner loop (:func:`_dot_tile`, LLVM IR) keeps the
tile's 256 int32 accumulators in vector registers and, per listed pair, adds ``c0 * w0 + c1 *
w1`` into each lane: one ``vpdpwssd`` per 16 outputs with AVX-512 VNNI (``vpmaddwd`` + add
elsewhere). The loop prefetches the weights of the pair ``PREFETCH_PAIRS`` list entries
ahead, and each group the next group's scales (their rows are far apart: hardware prefetchers
miss them); measured ~15% each on a cold 4096x4096 layer.

Exactness: int32 lanes wrap modulo 2^32, so a sum is exact whenever its true value fits int32.
A group's pair list is cut into chunks with ``pairs * 2 * cmax * 128 < 2^31`` (``cmax``: the
row's largest |count|), summed in int64 (one chunk for every usual shape: counts up to 255 need
a group of over 65 000 channels for two); rows with a count outside int16 take a plain int64
loop. Tasks: one tile x every count-path row (the rows reuse the tile's weights from L1).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from spikelm.backends.numba.epilogue import finish, group_done

LANES = 16
"""int32 lanes per vector (512 bits)."""

REGS = 16
"""Accumulator vectors per tile."""

TILE = LANES * REGS
"""Outputs per tile (and per task)."""

PAIR_BYTES = 2 * TILE
"""Bytes of one channel pair of one tile."""

PREFETCH_PAIRS = 16
"""The inner loop prefetches the weights of the listed pair this many entries ahead."""

SKIP_RUN = 8
"""Fewest consecutive silent pairs (8 x 512 bytes: 4 KiB) the count kernel skips; shorter runs
are read, their counts zero: on weights streaming from memory a gap costs more than the bytes it
saves. Measured on AMD EPYC (Zen 5), demo firing (16% of the channels silent), both ways
interleaved in one process: reading every pair is 8-10% faster than skipping each silent one
with one thread, 4-7% with two (1024x3072, 1024x5632, 4096x4096)."""

INT32_SAFE = (1 << 31) - 1
"""Largest |sum| an int32 accumulator holds."""


def pair_layout(weight_q: np.ndarray) -> np.ndarray:
    """int8 ``[tiles, ceil(in / 2), TILE, 2]``: the paired, tiled weights of ``W_q [out, in]``,
    starting on a 64-byte boundary (a pair's 512 bytes then fill whole cache lines: ~7% at 16
    rows). A fresh large numpy array: numpy asks for transparent huge pages (fewer TLB misses)."""
    out, n_in = weight_q.shape
    pairs, tiles = -(-n_in // 2), -(-out // TILE)
    padded = np.zeros((tiles * TILE, 2 * pairs), dtype=np.int8)
    padded[:out, :n_in] = weight_q
    shape = (tiles, pairs, TILE, 2)
    size = tiles * pairs * TILE * 2
    raw = np.empty(size + 64, dtype=np.int8)
    start = -raw.ctypes.data % 64
    layout = raw[start : start + size].reshape(shape)
    layout[...] = padded.reshape(tiles, TILE, pairs, 2).transpose(0, 2, 1, 3)
    return layout


@intrinsic
def _dot_tile(typingctx, w, w_off, pidx, pval, start, stop, end, acc):
    """``acc[0:TILE] = sum_{j in [start, stop)} c0_j w[off + pidx_j, :, 0] + c1_j w[..., 1]``.

    int32 lanes, wrapping. ``w`` int8 (any shape, C-contiguous), ``w_off`` its element offset
    of the tile, ``pidx`` int64 pair indices, ``pval`` int32 packed counts
    ``(c0 & 0xffff) | (c1 << 16)``, ``acc`` int32 (TILE elements written).
    """
    sig = types.void(w, w_off, pidx, pval, start, stop, end, acc)

    def codegen(context, builder, signature, args):
        w_ty, _, pidx_ty, pval_ty, _, _, _, acc_ty = signature.args
        w_v, off, pidx_v, pval_v, lo, hi, end, acc_v = args
        data = [
            context.make_array(ty)(context, builder, val).data
            for ty, val in ((w_ty, w_v), (pidx_ty, pidx_v), (pval_ty, pval_v), (acc_ty, acc_v))
        ]
        w_p, pidx_p, pval_p, acc_p = data
        i64, i32, i16, i8 = (ir.IntType(n) for n in (64, 32, 16, 8))
        vacc, vw8 = ir.VectorType(i32, LANES), ir.VectorType(i8, 2 * LANES)
        vw16, vprod = ir.VectorType(i16, 2 * LANES), ir.VectorType(i32, 2 * LANES)
        even = ir.Constant(vacc, [2 * q for q in range(LANES)])
        odd = ir.Constant(vacc, [2 * q + 1 for q in range(LANES)])
        base = builder.gep(w_p, [off])

        entry = builder.block
        head = builder.append_basic_block("pairs.head")
        body = builder.append_basic_block("pairs.body")
        done = builder.append_basic_block("pairs.done")
        builder.branch(head)

        builder.position_at_end(head)
        j = builder.phi(i64)
        j.add_incoming(lo, entry)
        accs = []
        for _ in range(REGS):
            a = builder.phi(vacc)
            a.add_incoming(ir.Constant(vacc, None), entry)
            accs.append(a)
        builder.cbranch(builder.icmp_signed("<", j, hi), body, done)

        builder.position_at_end(body)
        pair = builder.load(builder.gep(pidx_p, [j]))
        packed = builder.load(builder.gep(pval_p, [j]))
        splat = builder.shuffle_vector(
            builder.insert_element(ir.Constant(vacc, ir.Undefined), packed, ir.Constant(i32, 0)),
            ir.Constant(vacc, ir.Undefined),
            ir.Constant(vacc, None),
        )
        counts = builder.sext(builder.bitcast(splat, vw16), vprod)  # c0, c1, c0, c1, ...
        row = builder.gep(base, [builder.mul(pair, ir.Constant(i64, PAIR_BYTES))])
        ahead = builder.add(j, ir.Constant(i64, PREFETCH_PAIRS))
        last = builder.sub(end, ir.Constant(i64, 1))
        ahead = builder.select(builder.icmp_signed("<", ahead, last), ahead, last)
        pair_ahead = builder.load(builder.gep(pidx_p, [ahead]))
        row_ahead = builder.gep(base, [builder.mul(pair_ahead, ir.Constant(i64, PAIR_BYTES))])
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch",
            [ir.PointerType(i8)],
            ir.FunctionType(ir.VoidType(), [ir.PointerType(i8), i32, i32, i32]),
        )
        for line in range(0, PAIR_BYTES, 64):  # (read, high locality, data)
            args = (ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1))
            builder.call(prefetch, [builder.gep(row_ahead, [ir.Constant(i64, line)]), *args])
        for k, a in enumerate(accs):
            ptr = builder.bitcast(
                builder.gep(row, [ir.Constant(i64, 2 * LANES * k)]), vw8.as_pointer()
            )
            prod = builder.mul(builder.sext(builder.load(ptr, align=1), vprod), counts)
            # even + odd products: LLVM selects vpmaddwd (+ add: vpdpwssd with VNNI)
            pairsum = builder.add(
                builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd)
            )
            a.add_incoming(builder.add(a, pairsum), body)
        j.add_incoming(builder.add(j, ir.Constant(i64, 1)), body)
        builder.branch(head)

        builder.position_at_end(done)
        for k, a in enumerate(accs):
            ptr = builder.bitcast(
                builder.gep(acc_p, [ir.Constant(i64, LANES * k)]), vacc.as_pointer()
            )
            builder.store(a, ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint the cache line of ``arr.flat[index]`` into the cache (no effect on values)."""
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p, i32 = ir.PointerType(ir.IntType(8)), ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        )
        ptr = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _plan_row(counts, r, width, pidx, pval, bounds):
    """Row ``r``'s pairs, group by group, into ``pidx/pval[r]``, but for runs of at least
    :data:`SKIP_RUN` silent pairs; ``bounds[r, g]`` = the list's start of group ``g``
    (``bounds[r, G]`` its end). Returns the row's largest |count|. A pair straddling two groups
    (odd ``width``) is listed in each, the other group's count 0."""
    groups = counts.shape[1] // width
    n, cmax = 0, 0
    for g in range(groups):
        bounds[r, g] = n
        lo, hi = g * width, (g + 1) * width
        run = 0  # silent pairs listed last
        for p in range(lo // 2, (hi + 1) // 2):
            c0 = counts[r, 2 * p] if 2 * p >= lo else 0
            c1 = counts[r, 2 * p + 1] if 2 * p + 1 < hi else 0
            cmax = max(cmax, abs(c0), abs(c1))
            if c0 != 0 or c1 != 0:
                if run >= SKIP_RUN:
                    n -= run  # a long silent run: taken off the list
                run = 0
            else:
                run += 1
            pidx[r, n] = p
            pval[r, n] = np.int32((c0 & 0xFFFF) | ((c1 & 0xFFFF) << 16))
            n += 1
        if run >= SKIP_RUN:
            n -= run
    bounds[r, groups] = n
    return cmax


@njit(cache=True)
def plan_counts(counts, width, path):
    """The active-pair lists of the rows on the count path (``path[r]``) and each row's int32
    chunk length (0: counts outside int16, the int64 loop): ``(pidx, pval, bounds, chunk)``."""
    rows, n_in = counts.shape
    groups = n_in // width
    slots = n_in // 2 + groups + 1
    pidx = np.empty((rows, slots), dtype=np.int64)
    pval = np.empty((rows, slots), dtype=np.int32)
    bounds = np.zeros((rows, groups + 1), dtype=np.int64)
    chunk = np.zeros(rows, dtype=np.int64)
    for r in range(rows):
        if path[r]:
            cmax = _plan_row(counts, r, width, pidx, pval, bounds)
            chunk[r] = 0 if cmax > 32767 else INT32_SAFE // (256 * max(cmax, 1))
    return pidx, pval, bounds, chunk


def listed_pairs(counts: np.ndarray, width: int) -> int:
    """How many channel pairs the count kernel reads for the rows ``counts`` (int64 ``[M, in]``,
    groups of ``width`` channels), all rows on the count path: every pair but those in runs of
    :data:`SKIP_RUN` silent ones."""
    _, _, bounds, _ = plan_counts(counts, width, np.ones(counts.shape[0], dtype=np.bool_))
    return int(bounds[:, -1].sum())


@njit(inline="always")
def _row_slow(counts, w, r, t, width, acc64, g):
    """``acc64 = acc[r, g, tile t]`` in plain int64 (counts outside int16)."""
    acc64[:] = 0
    for i in range(g * width, (g + 1) * width):
        c = np.int64(counts[r, i])
        if c != 0:
            for o in range(TILE):
                acc64[o] += c * w[t, i // 2, o, i % 2]


@njit(cache=True, fastmath=False)
def count_tile(counts, w, t, width, plan, path, acc, scale_t, v, bias, y):
    """Tile ``t`` (outputs ``t*TILE ..``) of every count-path row: exact accumulators (into
    ``acc`` when it has rows), fused epilogue (into ``y`` when it has rows)."""
    pidx, pval, bounds, chunk = plan
    rows, groups = counts.shape[0], counts.shape[1] // width
    o0 = t * TILE
    size = min(TILE, scale_t.shape[1] - o0)
    w_off = t * w.shape[1] * PAIR_BYTES
    stride = pidx.shape[1]
    flat_idx, flat_val = pidx.reshape(-1), pval.reshape(-1)
    lanes = np.empty(TILE, dtype=np.int32)
    acc64 = np.empty(TILE, dtype=np.int64)
    total = np.empty((rows, TILE), dtype=np.float64)
    for g in range(groups):
        if g + 1 < groups:  # the next group's scales: a short run far from the weights
            for o in range(0, size, 64 // scale_t.itemsize):  # one per cache line
                _prefetch(scale_t, (g + 1) * scale_t.shape[1] + o0 + o)
        for r in range(rows):
            if not path[r]:
                continue
            lo, hi = r * stride + bounds[r, g], r * stride + bounds[r, g + 1]
            end = r * stride + bounds[r, groups]
            step = chunk[r]
            if step > 0 and hi - lo <= step:  # the usual case: one int32 pass, exact
                _dot_tile(w, w_off, flat_idx, flat_val, lo, hi, end, lanes)
                group_done(lanes, g, r, o0, size, acc, scale_t, total[r], y)
                continue
            if step > 0:  # int32 chunks summed in int64
                acc64[:] = 0
                for s in range(lo, hi, step):
                    _dot_tile(w, w_off, flat_idx, flat_val, s, min(hi, s + step), end, lanes)
                    for o in range(size):
                        acc64[o] += lanes[o]
            else:
                _row_slow(counts, w, r, t, width, acc64, g)
            group_done(acc64, g, r, o0, size, acc, scale_t, total[r], y)
    if y.shape[0]:
        for r in range(rows):
            if path[r]:
                finish(total[r], v[r], bias, y, r, o0, size)
