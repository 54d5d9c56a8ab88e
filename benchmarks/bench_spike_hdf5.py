"""Benchmark the spike HDF5 writer and reader on a recording of about ten million events.

Spikes are generated chunk by chunk with a seeded RNG so that they look like SpikingBrain's
W8ASpike statistics (spiking-scheme.md §1-§3): heavy-tailed activations (Student-t, 2 degrees of
freedom) -> adaptive threshold mean(|x|)/k with k = 3 -> counts clamped to +-(2^T - 1) -> bitwise
bidirectional coding over T = 4 steps. That gives about 1.2 spikes per channel per token, 16 % of
channels silent and 93 % of |count| in [0, 7] (SpikingBrain-7B: 1.13, 18.4 %, 94.1 %).

Three passes over the same recording (same seed), each streamed chunk by chunk:
1. memory: the default writer (gzip) and reader alone, on a quarter of the recording and then on
   all of it; peak resident set size (``ru_maxrss``) increase over the baseline taken before
   (it should not grow with the recording's length).
2. throughput: one events file per compression option plus, for comparison, the dense int8
   tensor in a gzip-compressed HDF5 dataset; every events file is read back in slices of another
   size, checked against per-column BLAKE2 digests and event counts taken while writing, and
   timed on random 16-token reads.
3. allocations: pass 1 again under tracemalloc (numpy's allocations are traced), peak per phase.
   tracemalloc slows h5py calls down, which is why it has a pass of its own.

Usage (from the repository root, spikelm installed or ``PYTHONPATH=.``)::

    python benchmarks/bench_spike_hdf5.py --out benchmarks/results/bench_spike_hdf5.txt
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from _machine import describe_machine, emit

from spikelm.spikes import SpikeReader, SpikeTrain, SpikeWriter

COLUMNS = ("token", "t", "neuron", "polarity")
MB = 1e6
LOAD_AT_START = os.getloadavg()[0]


class Stopwatch:
    """Accumulates the time spent inside ``with`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._start

    def iterate(self, items: Iterable[SpikeTrain]) -> Iterator[SpikeTrain]:
        """Yield from ``items``, timing only the production of each item."""
        iterator = iter(items)
        while True:
            with self:
                item = next(iterator, None)
            if item is None:
                return
            yield item


@dataclass
class Recording:
    """What a write pass produced and measured."""

    paths: dict[str | None, Path]
    layers: list[str]
    digests: dict[str, dict[str, bytes]] = field(default_factory=dict)
    n_events: dict[str, int] = field(default_factory=dict)
    event_bytes: int = 0
    encode: Stopwatch = field(default_factory=Stopwatch)
    write: dict[str | None, Stopwatch] = field(default_factory=dict)
    dense_write: Stopwatch = field(default_factory=Stopwatch)
    dense_size: int = 0

    @property
    def total(self) -> int:
        return sum(self.n_events.values())


def generate(
    rng: np.random.Generator, tokens: int, n_neurons: int, steps: int, k: float
) -> np.ndarray:
    """Dense int8 spikes ``[tokens, steps, n_neurons]``, bitwise bidirectional coded."""
    x = rng.standard_t(2.0, size=(tokens, n_neurons)).astype(np.float32)
    v_th = np.abs(x).mean(axis=1, keepdims=True) / k
    limit = 2**steps - 1
    count = np.clip(np.rint(x / v_th), -limit, limit).astype(np.int16)
    bits = (np.abs(count)[:, None, :] >> np.arange(steps, dtype=np.int16)[:, None]) & 1
    return (np.sign(count)[:, None, :] * bits).astype(np.int8)


def new_digests() -> dict[str, hashlib.blake2b]:
    return {column: hashlib.blake2b(digest_size=16) for column in COLUMNS}


def update(hashes: dict[str, hashlib.blake2b], train: SpikeTrain) -> None:
    for column in COLUMNS:
        hashes[column].update(getattr(train, column))


def write_pass(
    args: argparse.Namespace, folder: Path, compressions: tuple[str | None, ...], dense: bool
) -> Recording:
    """Generate the recording chunk by chunk; append each chunk to one events file per option."""
    folder.mkdir()
    layers = [f"blocks.{i}.attn.q_proj" for i in range(args.layers)]
    rec = Recording({c: folder / f"events-{c or 'none'}.h5" for c in compressions}, layers)
    rec.write = {c: Stopwatch() for c in compressions}
    rng = np.random.default_rng(args.seed)
    hashes = {layer: new_digests() for layer in layers}
    rec.n_events = dict.fromkeys(layers, 0)
    writers = {
        c: SpikeWriter(path, coding="bitwise-bidirectional", compression=c)
        for c, path in rec.paths.items()
    }
    shape = (args.steps, args.neurons)
    dense_path = folder / "dense-gzip.h5"
    with contextlib.ExitStack() as stack:
        dense_sets = {}
        if dense:
            dense_file = stack.enter_context(h5py.File(dense_path, "w", rdcc_nbytes=0))
            dense_sets = {
                layer: dense_file.create_dataset(
                    layer,
                    shape=(args.tokens, *shape),
                    dtype=np.int8,
                    chunks=(64, *shape),
                    compression="gzip",
                    compression_opts=4,
                )
                for layer in layers
            }
        for start in range(0, args.tokens, args.write_chunk):
            stop = min(start + args.write_chunk, args.tokens)
            for layer in layers:
                spikes = generate(rng, stop - start, args.neurons, args.steps, args.k)
                with rec.encode:
                    train = SpikeTrain.from_dense(spikes, layer=layer, token_offset=start)
                for c, writer in writers.items():
                    with rec.write[c]:
                        writer.append(layer, train)
                if dense_sets:
                    with rec.dense_write:
                        dense_sets[layer][start:stop] = spikes
                update(hashes[layer], train)
                rec.n_events[layer] += len(train)
                rec.event_bytes += train.nbytes
        for c, writer in writers.items():
            with rec.write[c]:
                writer.close()
    rec.dense_size = dense_path.stat().st_size if dense else 0
    rec.digests = {
        layer: {col: h.digest() for col, h in hs.items()} for layer, hs in hashes.items()
    }
    return rec


def read_pass(
    args: argparse.Namespace, rec: Recording
) -> dict[str | None, tuple[Stopwatch, Stopwatch]]:
    """Read every file back in slices, verify it, and time random 16-token reads."""
    offsets = np.random.default_rng(args.seed + 1).integers(0, args.tokens - 16, args.random_reads)
    timings = {}
    for c, path in rec.paths.items():
        sequential, random = Stopwatch(), Stopwatch()
        with SpikeReader(path) as reader:
            for layer in rec.layers:
                hashes, count = new_digests(), 0
                for train in sequential.iterate(reader.iter_chunks(layer, args.read_chunk)):
                    update(hashes, train)
                    count += len(train)
                digests = {col: h.digest() for col, h in hashes.items()}
                if count != rec.n_events[layer] or digests != rec.digests[layer]:
                    sys.exit(f"verification failed: {path.name} {layer}: {count} events")
            for i, start in enumerate(offsets):
                with random:
                    reader.read(rec.layers[i % len(rec.layers)], slice(start, start + 16))
        timings[c] = (sequential, random)
    return timings


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def machine() -> list[str]:
    """The shared benchmark header, plus what this benchmark depends on."""
    return [
        describe_machine(),
        f"# numpy {np.__version__} | h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}) | "
        f"{platform.platform()} | {len(os.sched_getaffinity(0))} cores usable | "
        f"{datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC | "
        f"load average {LOAD_AT_START:.1f} at start (other processes share these cores)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--neurons", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--k", type=float, default=3.0)
    parser.add_argument("--write-chunk", type=int, default=256, help="tokens per append")
    parser.add_argument("--read-chunk", type=int, default=500, help="tokens per read")
    parser.add_argument("--random-reads", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        baseline_rss = max_rss_mb()
        rss_increase = {}
        for tokens in (args.tokens // 4, args.tokens):
            run = argparse.Namespace(**{**vars(args), "tokens": tokens})
            read_pass(run, write_pass(run, Path(tmp) / f"memory-{tokens}", ("gzip",), dense=False))
            rss_increase[tokens] = max_rss_mb() - baseline_rss

        compressions = ("gzip", "lzf", None)
        rec = write_pass(args, Path(tmp) / "throughput", compressions, dense=True)
        reads = read_pass(args, rec)
        sizes = {c: path.stat().st_size for c, path in rec.paths.items()}

        tracemalloc.start()
        traced = write_pass(args, Path(tmp) / "tracemalloc", ("gzip",), dense=False)
        write_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        read_pass(args, traced)
        read_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    total = rec.total
    dense_bytes = args.tokens * args.layers * args.steps * args.neurons
    per_chunk = rec.event_bytes * args.read_chunk / args.tokens / args.layers
    lines = [
        "spikelm spike HDF5 benchmark (benchmarks/bench_spike_hdf5.py)",
        *machine(),
        "",
        f"recording: {args.tokens} tokens x {args.layers} layers, T={args.steps}, N={args.neurons}; "
        f"bitwise bidirectional coding of Student-t(2) activations, k={args.k:g}, seed {args.seed}",
        f"events:    {total:,} (firing rate {total / dense_bytes:.1%}, "
        f"{total / (args.tokens * args.layers * args.neurons):.2f} spikes per channel per token)",
        f"appends of {args.write_chunk} tokens per layer, reads of {args.read_chunk} tokens, "
        f"{args.random_reads} random reads of 16 tokens; single thread",
        "verified:  event counts and BLAKE2 digests of all four columns match, every file and layer",
        "",
        f"{'size':<46}{'MB':>8}{'bytes/event':>13}",
    ]
    rows = [
        ("dense int8 [tokens, T, N], in memory", dense_bytes),
        ("events in memory (SpikeTrain columns)", rec.event_bytes),
        *((f"file: events, {c or 'no'} compression", sizes[c]) for c in compressions),
        ("file: dense int8, gzip-4 (for comparison)", rec.dense_size),
    ]
    lines += [f"{name:<46}{size / MB:>8.1f}{size / total:>13.2f}" for name, size in rows]
    lines += [
        "",
        f"{'throughput, million events per second':<46}{'write':>8}{'read':>13}{'16-token read':>16}",
        f"{'SpikeTrain.from_dense (dense -> events)':<46}{total / rec.encode.seconds / 1e6:>8.1f}",
    ]
    for c in compressions:
        sequential, random = reads[c]
        lines.append(
            f"{'events, ' + (c or 'no') + ' compression':<46}"
            f"{total / rec.write[c].seconds / 1e6:>8.1f}{total / sequential.seconds / 1e6:>13.1f}"
            f"{random.seconds / args.random_reads * 1e3:>13.2f} ms"
        )
    lines += [
        f"{'dense int8, gzip-4 (for comparison)':<46}{total / rec.dense_write.seconds / 1e6:>8.1f}",
        "",
        f"{'memory':<64}{'MB':>8}",
        *(
            f"{f'peak RSS increase (ru_maxrss), gzip write + read, {tokens} tokens':<64}{rss:>8.1f}"
            for tokens, rss in rss_increase.items()
        ),
        f"{'tracemalloc peak, writing (generation + encoding + writer)':<64}{write_peak / MB:>8.1f}",
        f"{f'tracemalloc peak, reading ({args.read_chunk}-token reads: {per_chunk / MB:.1f} MB of events)':<64}"
        f"{read_peak / MB:>8.1f}",
        f"{'the whole recording as dense int8':<64}{dense_bytes / MB:>8.1f}",
        f"{'the whole recording as events in memory':<64}{rec.event_bytes / MB:>8.1f}",
        "",
        f"total run time {time.perf_counter() - started:.0f} s",
    ]
    report = "\n".join(lines) + "\n"
    emit(report, args.out)


if __name__ == "__main__":
    main()
