"""Backend speed: one spiking layer and whole-model decode, against dense fp32, int8, SpikingJelly.

1. One ``SpikingLinear`` (random weights, SpikingBrain's coding: bitwise-bidirectional, T=8,
   int8 weights, group 128) at 2048x2048, 4096x4096, 4096x11008 (in x out), batch 1 and 16.
   Spike counts are drawn (seeded) in two ways:
     - ``demo``: sampled from the real signed counts of the converted demo model on its eval text
       (every SpikingLinear input pooled), so firing rate, silent share and popcounts match it;
     - ``NN%``: every (channel, step) slot of the magnitude fires independently with probability
       1 - NN/100 (random sign per channel), i.e. sparsity = 1 - events / (channels * T) = NN%.
   Columns: the numba backend's two exact paths (count-domain and event-driven; torch_events is a
   CUDA path, not timed on the CPU) and its compiled call alone, dense fp32 ``F.linear`` on
   the dequantized input (counts * V_th) with the dequantized weight (the baseline), the same
   layer with int8 weights under torch's dynamic quantization (``quantize_dynamic``, W8A8: the
   int8 baseline; the whole-model rows quantize the ANN the same way: every linear layer, and
   separately only the layers spikelm converts), and SpikingJelly 2.0 simulating the same layer
   ann2snn-style: the float activation (the dequantized
   input, scaled to the IF threshold) is repeated over the same T steps into a multi-step
   ``IFNode(step_mode='m', v_reset=None)`` (soft reset, its default torch path), whose spike train
   ``[T, B, in]`` goes through the fp32 ``nn.Linear``; the T outputs are averaged. This is
   SpikingJelly's own simulation of a converted layer (rate coding over T steps), timed from the
   activation to the layer output, neuron reset included. At batch 1 a ``cold`` row repeats the
   demo case with every cache flushed (64 MiB written) before each timed call: between repeated
   calls an int8 layer up to 4096x4096 stays in this machine's L3 cache while its fp32 copy does
   not, which flatters the event-driven kernel; a layer of a large model is read cold. That
   flush also evicts the interpreter's and torch's own objects, which a layer inside a model
   finds warm, so the 4096-wide sizes add a ``stream`` row: every call takes the next of
   several copies of the layer (and of each baseline) whose weights together fill 128 MiB, so
   each call reads its weights from memory while the Python around it stays warm.
2. Whole-model decode at batch 1: the converted demo model under ``simulate(..., backend=...)``
   against the ANN demo model stepped token by token in fp32 (the adapter's ``step``, as
   ``simulate`` steps), same tokens, one
   thread. The demo model's layers are 128 wide, so both sides spend their time in per-call
   overhead; the same comparison therefore also runs on wider models (random weights, converted
   with the same recipe: dynamic k=3, bitwise-bidirectional T=8, int8), both threads: a
   HybridLM at hidden 1024 (the reference model's code) and a ``transformers`` Llama at hidden
   1024 (the ANN through the same adapter step, i.e. transformers' own forward with its cache
   object rebuilt from the named state each token; the spiking copy under ``simulate``). Their
   firing rate is measured and printed.
3. The physical limits, with the bandwidths measured in the same run: each path's read bound
   (the int8 bytes it must read once: the count path the channel pairs it lists, the event
   path its active channels, int8 every weight) and the event kernel's events/s <= copy bandwidth /
   column bytes (column = ``out`` int8 weights). Whole-model rows add each model's int8 weight
   bytes per token and where a token's time goes: the same decode with every linear layer's
   forward returning its previous output (the rest of the model), and with the numba backend's
   compiled calls writing zeros (the Python around them); the rest plus the compiled calls is
   what a token would take with no Python around the kernels. The demo model is also decoded
   with each spiking layer's forward cut to its compiled call (no checks, no backend choice, no
   statistics): the measured floor of one compiled call per layer.
4. numba compile / cache-load cost, apart from the timings.

Times are min and median over a few repetitions (``--quick``, the default) or more (``--full``,
what is committed); every ratio uses baselines measured in the same run, and in section 1's
``cold`` rows every column is timed interleaved, call by call (:func:`timeit_rounds`).

    python benchmarks/bench_backends.py --full --out benchmarks/results/bench_backends.txt
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import itertools
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

from spikelm.config import SpikeConfig  # noqa: E402
from spikelm.convert import spiking, spiking_layer  # noqa: E402
from spikelm.encoders import get_coder  # noqa: E402
from spikelm.estimators import SpikeStats, summarize  # noqa: E402
from spikelm.fidelity import token_batches  # noqa: E402
from spikelm.fusion import spiking_projections  # noqa: E402
from spikelm.layers import SpikingLinear, probed, spiking_layers  # noqa: E402
from spikelm.models import ByteTokenizer, load_demo_model, load_demo_texts  # noqa: E402
from spikelm.simulate import simulate  # noqa: E402

SIZES = ((2048, 2048), (4096, 4096), (4096, 11008))
BATCHES = (1, 16)
SPARSITIES = (0.50, 0.90, 0.99)
STREAM_BYTES = 128 << 20
"""A ``stream`` row rotates through copies of a layer until their weights fill this (4x the
L3 cache of the machines here), so that every call reads its weights from memory."""
STREAM_MIN = 4096 * 4096
"""Layers with at least this many weights get a ``stream`` row."""


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path | None) -> None:
        """Write the report to ``path`` (when one is given)."""
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


_FLUSH = np.zeros(0, dtype=np.uint8)


def flush_caches() -> None:
    """Write 64 MiB (twice this machine's L3) so the next call finds no weights in cache."""
    global _FLUSH
    if _FLUSH.size == 0:
        _FLUSH = np.zeros(64 << 20, dtype=np.uint8)
    _FLUSH += 1


def timeit(
    fn: Callable[[], object],
    reps: int,
    budget: float,
    slow: float = 1.0,
    before: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds per call: one warm-up call, then up to ``reps`` calls within ``budget`` seconds.

    A call slower than ``slow`` seconds is measured once (its warm-up is the measurement).
    ``before`` runs ahead of every call, outside the timing (e.g. :func:`flush_caches`).
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > slow:
        return [first]
    times: list[float] = []
    spent = 0.0
    while len(times) < reps and (spent < budget or len(times) < 2):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return times


def timeit_rounds(
    fns: dict[str, Callable[[], object]],
    reps: int,
    budget: float,
    before: Callable[[], None] | None = None,
    paths: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``, measured in rounds: one warm-up call each, then up
    to ``reps`` rounds (at least two; fewer once ``budget`` seconds per function are spent), each
    calling every function once in a shuffled order (seeded: each follows each of the others in
    turn), ``before`` ahead of every call outside the timing, and the numba backend's path set
    to ``paths[name]`` (``"auto"`` for a function not named there) for each call. Interleaved,
    every function sees the machine's drift alike (the load of other jobs, and with ``before``
    = :func:`flush_caches` the state the previous call and the flush leave: timed in blocks
    instead, the cold int8 baseline moved 1.5x between two runs of the same script)."""
    from spikelm.backends.numba import driver

    names, paths, previous = list(fns), paths or {}, driver.PATH
    times: dict[str, list[float]] = {name: [] for name in names}
    spent, order = 0.0, random.Random(0)
    try:
        for name in names:
            driver.PATH = paths.get(name, "auto")
            fns[name]()
        for turn in range(reps):
            if turn >= 2 and spent >= budget * len(names):
                break
            order.shuffle(names)
            for name in names:
                driver.PATH = paths.get(name, "auto")
                if before is not None:
                    before()
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
                spent += times[name][-1]
    finally:
        driver.PATH = previous
    return times


def fmt_crossovers(crossovers: dict) -> str:
    if not crossovers:
        return "none measured"
    ordered = sorted(crossovers.items(), key=lambda item: item[0][:3])  # (in, out, groups)
    shown = [f"{key[0]}x{key[1]}: r={ratio:.2f}" for key, ratio in ordered]
    return ", ".join(shown)


def fmt_ms(times: list[float] | None) -> str:
    if not times:
        return "n/a"
    return f"{min(times) * 1e3:.2f}/{statistics.median(times) * 1e3:.2f}"


# --- spike counts --------------------------------------------------------------------------------


def demo_counts(config: SpikeConfig, eval_windows: int) -> tuple[torch.Tensor, object]:
    """Signed counts of every SpikingLinear input of the converted demo model on eval text."""
    tokenizer = ByteTokenizer()
    calib_text, eval_text = load_demo_texts()
    calib = token_batches(torch.tensor(tokenizer.encode(calib_text)), 256, 4, 8)
    evaluation = token_batches(torch.tensor(tokenizer.encode(eval_text)), 256, 4, eval_windows)
    snn = spiking(load_demo_model(), config, calib, progress=False)
    pool: list[torch.Tensor] = []
    layers = spiking_layers(snn)
    stats = {name: SpikeStats(steps=layer.steps) for name, layer in layers.items()}

    def probe(name: str) -> Callable[[SpikingLinear, torch.Tensor], None]:
        def record(layer: SpikingLinear, counts: torch.Tensor) -> None:
            pool.append(counts.detach().to(torch.int16).flatten())
            stats[name].update(counts, get_coder(layer.coding))

        return record

    with torch.no_grad(), probed(layers, {name: probe(name) for name in layers}):
        for batch in evaluation:
            snn(batch)
    return torch.cat(pool), summarize(stats.values())


def sample_demo(pool: torch.Tensor, rows: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    index = torch.randint(len(pool), (rows * channels,), generator=gen)
    return pool[index].to(torch.float32).reshape(rows, channels)


def sample_sparsity(
    sparsity: float, rows: int, channels: int, steps: int, gen: torch.Generator
) -> torch.Tensor:
    fire = torch.rand(rows, channels, steps, generator=gen) < (1.0 - sparsity)
    magnitude = (fire.to(torch.int64) << torch.arange(steps)).sum(-1)
    sign = torch.where(torch.rand(rows, channels, generator=gen) < 0.5, -1, 1)
    return (magnitude * sign).to(torch.float32)


def event_count(counts: torch.Tensor, config: SpikeConfig) -> int:
    return int(get_coder(config.coding).events(counts.to(torch.int64), config.steps).sum())


# --- SpikingJelly ---------------------------------------------------------------------------------


def spikingjelly_runner():
    """``make(weight) -> run(x)``, or the reason SpikingJelly cannot be used."""
    try:
        from spikingjelly.activation_based import functional, neuron
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        return None, f"{type(error).__name__}: {error}"

    def make(weight: torch.Tensor, steps: int):
        fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        fc.weight.data = weight
        node = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m")

        def run(x: torch.Tensor) -> torch.Tensor:
            functional.reset_net(node)
            spikes = node(x.unsqueeze(0).repeat(steps, 1, 1))  # [T, B, in]
            return fc(spikes.flatten(0, 1)).reshape(steps, x.shape[0], -1).mean(0)

        return run

    return make, None


# --- sections ------------------------------------------------------------------------------------


def memory_bandwidth(reps: int) -> float:
    """Bytes read + written per second by a numpy copy of a 256 MiB array (best of ``reps``)."""
    src = np.ones(1 << 28, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def read_bandwidth(reps: int) -> float:
    """Bytes per second of a streaming read of 16 MiB of int8 by numba threads (every thread a
    contiguous part, caches flushed before each call, best of ``reps``): what a kernel that
    reads its weights once can reach at most. The bound of the spiking kernels below."""
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def read(a, parts, out):
        rows = a.shape[0] // parts
        for p in prange(parts):
            acc = np.zeros(a.shape[1], dtype=np.int16)
            for k in range(p * rows, (p + 1) * rows):
                for j in range(np.uint64(0), np.uint64(a.shape[1])):
                    acc[j] += a[k, j]
            out[p] = acc.sum()

    data = np.ones((16384, 1024), dtype=np.int8)
    parts = numba.get_num_threads()
    out = np.zeros(parts, dtype=np.int64)
    read(data, parts, out)
    best = float("inf")
    for _ in range(reps):
        flush_caches()
        start = time.perf_counter()
        read(data, parts, out)
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


@contextlib.contextmanager
def numba_path(path: str) -> Iterator[None]:
    """Force the numba backend's path (``counts``, ``events`` or ``auto``) for the block."""
    from spikelm.backends.numba import driver

    with mock.patch.object(driver, "PATH", path):
        yield


def rotate(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One function that runs the next of ``calls`` each time it is called."""
    turn = itertools.cycle(calls)
    return lambda: next(turn)()


def copies(make: Callable[[int], object], nbytes: int) -> list:
    """``make(0), make(1), ...``: enough of them (``nbytes`` each, two at least) to fill
    :data:`STREAM_BYTES`."""
    return [make(i) for i in range(max(2, -(-STREAM_BYTES // nbytes)))]


def int8_baseline(model: nn.Module, names: Iterable[str] | None = None) -> nn.Module:
    """The same model with int8 weights on torch's dynamic quantization (W8A8: activations
    quantized per call), the int8 CPU path issue 12 measures spikelm against: every
    ``nn.Linear``, or only the modules called ``names`` (those spikelm converts)."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig

    spec = {nn.Linear} if names is None else {name: default_dynamic_qconfig for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes on quantized tensors
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def layer_section(args, report: Report, pool: torch.Tensor, read_bw: float, copy_bw: float) -> dict:
    from spikelm.backends.numba import _call as numba_call  # a layer's compiled call
    from spikelm.backends.numba.counts import SKIP_RUN, listed_pairs

    config = SpikeConfig()
    make_sj, sj_reason = spikingjelly_runner()
    if sj_reason:
        report(f"SpikingJelly not available: {sj_reason}")
    gen = torch.Generator().manual_seed(0)
    key: dict = {}
    report(
        "times in ms, min/median, each column timed in a block of calls, but in the 'cold' rows "
        "all of them interleaved (each round flushes the caches before each column's call, in a "
        "shuffled order; the event path on its own copy of the layer); "
        "every column from the float input x of the layer (the spiking "
        "layer's forward: neuron, kernel, epilogue, bias; static threshold V = 0.01 and "
        "x = counts x V, so the neuron fires exactly the sampled counts) on the numba backend's "
        "two exact paths (bit-identical outputs): 'counts' = count-domain W_q n, 'events' = "
        "event-driven; sparsity = 1 - events/(in*T); "
        "'x dense' / 'x int8' / 'x SJ' = that baseline's median / the faster exact path's (>1: "
        "spikelm faster); 'int8' = torch dynamic quantization (W8A8, fbgemm); 'call' = the numba "
        "backend's compiled call alone on the count path, min/median ms (neuron, kernel, epilogue "
        "from the float rows as the layer makes them, without the torch and nn.Module layers on "
        "top: 'counts path' minus 'call' is the Python around the kernel, which a cold cache "
        "makes several times dearer); 'c/int8' = int8's median over the call's; 'BW%' = share of "
        "the read bound (the int8 bytes a path must read once / read bandwidth) that it reaches: "
        "'c' the count path, which reads the channel pairs it lists (every pair but runs of "
        f"{SKIP_RUN} or more silent ones: a gap in the stream costs more than it saves), 'e' "
        "the event path (the active channels' columns), 'q' "
        "int8 (every weight); 'ev/s%' = the event path's events/s over the event bound (copy "
        "bandwidth / out bytes: each event reading one int8 weight column from memory), the "
        "event kernel timed alone (in the cold rows a block of its own calls besides the "
        "interleaved one: the key ratios give both)"
    )
    report(
        "'cold' rows: demo counts with every cache flushed (64 MiB written) before each timed "
        "call, the interpreter's and torch's objects included; 'stream' rows (the 4096-wide "
        "sizes): each call takes the next of copies of the layer (and of each baseline) whose "
        f"weights fill {STREAM_BYTES >> 20} MiB, so its weights come from memory while the "
        "Python around it stays warm, as for a layer inside a large model; warm rows keep an int8 "
        "layer of up to 16 MiB in this machine's L3. torch_events is a CUDA path (~0.1 s per "
        "4096x4096 token on the CPU), not timed here"
    )
    header = (
        f"{'in x out':>11} {'B':>2} {'counts':>6} {'spars':>6} {'ev/row':>7} | "
        f"{'counts path':>13} {'events path':>13} {'dense F.linear':>14} {'int8 dynamic':>13} "
        f"{'SpikingJelly':>13} | {'x dense':>7} {'x int8':>6} {'x SJ':>6} | {'call':>11} "
        f"{'c/int8':>6} | {'BW% c':>5} {'BW% e':>5} {'BW% q':>5} {'ev/s%':>5}"
    )
    for in_f, out_f in SIZES:

        def make(seed: int, in_f: int = in_f, out_f: int = out_f) -> tuple:
            """(spiking layer, its dequantized fp32 weight, the int8 baseline) of one Linear."""
            torch.manual_seed(seed)
            linear = nn.Linear(in_f, out_f, bias=False)
            layer = spiking_layer(linear, config, f"{in_f}x{out_f}", backend="numba")
            layer.dynamic, layer.threshold = False, torch.tensor(0.01)  # x = counts * V: counts
            return layer, layer.dequantized_weight(), int8_baseline(nn.Sequential(linear))

        single, streamed = [make(0)], []  # the stream row's copies: built when first needed
        twin: list = []  # the cold rows' event-path copy of the layer: built when first needed
        sj_run = make_sj(single[0][1], config.steps) if make_sj else None
        report()
        report(header)
        report("-" * len(header))
        for batch in BATCHES:
            kinds = [("demo", None), ("cold", None), ("stream", None)]
            kinds += [(f"{int(s * 100)}%", s) for s in SPARSITIES]
            for label, sparsity in kinds:
                cold = flush_caches if label == "cold" else None
                stream = label == "stream"
                if label in ("cold", "stream") and batch != 1:
                    continue
                if stream and in_f * out_f < STREAM_MIN:
                    continue
                if stream and not streamed:
                    streamed = copies(make, in_f * out_f)
                layers, weights, int8s = zip(*(streamed if stream else single), strict=True)
                if sparsity is None:
                    counts = sample_demo(pool, batch, in_f, gen)
                else:
                    counts = sample_sparsity(sparsity, batch, in_f, config.steps, gen)
                v_th = torch.full((batch, 1), 0.01)
                x = counts * v_th
                events = event_count(counts, config)
                active = int(counts.count_nonzero())
                width = numba_call(layers[0]).bound.layout.width
                pairs = listed_pairs(counts.to(torch.int64).numpy(), width)  # count path reads
                spars = 1.0 - events / (batch * in_f * config.steps)
                reps, budget = args.reps, args.budget
                # the event path runs its own copy of the layer in the cold rows, which time
                # every column interleaved: each layer keeps the arguments of one path
                if cold and not twin:
                    twin.append(make(0)[0])
                path_layers = {"counts": layers, "events": twin if cold else layers}
                with torch.no_grad():
                    for path, runs in path_layers.items():
                        with numba_path(path):
                            for _ in range(10):  # PARALLEL="auto" times both kernels first
                                for layer in runs:
                                    layer(x)
                    rows = x.numpy()
                    fns = {
                        "counts": rotate([functools.partial(f, x) for f in layers]),
                        "events": rotate([functools.partial(f, x) for f in path_layers["events"]]),
                        "call": rotate(  # the compiled call alone, no torch on top
                            [functools.partial(numba_call(f).bound, x=rows) for f in layers]
                        ),
                        "dense": rotate([functools.partial(F.linear, x, w) for w in weights]),
                        "int8": rotate([functools.partial(f, x) for f in int8s]),
                    }
                    if sj_run is not None and not stream:
                        scale = x.abs().max().clamp(min=1e-12)  # activation -> IF threshold 1
                        fns["sj"] = functools.partial(sj_run, x / scale)
                    paths = {"counts": "counts", "events": "events", "call": "counts"}
                    if cold:  # each call from flushed caches: every column interleaved
                        times = timeit_rounds(fns, reps, budget, before=cold, paths=paths)
                        with numba_path("events"):  # and the event kernel alone, in a block
                            alone = timeit(fns["events"], reps, budget, before=cold)
                    else:  # warm or streaming: each column in its own block, as it repeats
                        times = {}
                        for name, fn in fns.items():
                            with numba_path(paths.get(name, "auto")):
                                times[name] = timeit(fn, reps, budget)
                        alone = times["events"]
                t_call, t_dense, t_int8 = times.pop("call"), times.pop("dense"), times.pop("int8")
                t_sj = times.pop("sj", None)
                med = {path: statistics.median(t) for path, t in times.items()}
                best = min(med.values())
                x_dense = statistics.median(t_dense) / best
                x_int8 = statistics.median(t_int8) / best
                call_int8 = statistics.median(t_int8) / statistics.median(t_call)
                x_sj = statistics.median(t_sj) / best if t_sj else float("nan")
                # seconds to read once what each path must: the count path the pairs it lists,
                # the event path its active channels' columns, int8 every weight
                bound = active * out_f / read_bw
                bound_c, bound_q = 2 * pairs * out_f / read_bw, in_f * out_f / read_bw
                event_rate = events / statistics.median(alone) / (copy_bw / out_f)
                mixed_rate = events / med["events"] / (copy_bw / out_f)
                report(
                    f"{f'{in_f}x{out_f}':>11} {batch:>2} {label:>6} {spars:>6.1%} "
                    f"{events / batch:>7.0f} | {fmt_ms(times['counts']):>13} "
                    f"{fmt_ms(times['events']):>13} {fmt_ms(t_dense):>14} {fmt_ms(t_int8):>13} "
                    f"{fmt_ms(t_sj):>13} | {x_dense:>7.2f} {x_int8:>6.2f} {x_sj:>6.2f} | "
                    f"{fmt_ms(t_call):>11} {call_int8:>6.2f} | "
                    f"{bound_c / med['counts']:>5.0%} {bound / med['events']:>5.0%} "
                    f"{bound_q / statistics.median(t_int8):>5.0%} {event_rate:>5.0%}"
                )
                key[(in_f, out_f, batch, label)] = {
                    "x_dense": x_dense,
                    "x_int8": x_int8,
                    "call_ms": statistics.median(t_call) * 1e3,
                    "call_int8": call_int8,
                    "x_sj": x_sj,
                    "bw_counts": bound_c / med["counts"],
                    "bw_events": bound / med["events"],
                    "bw_int8": bound_q / statistics.median(t_int8),
                    "event_rate": event_rate,
                    "mixed_rate": mixed_rate,
                    "faster": min(med, key=med.get),
                    "mb": active * out_f / batch / 1e6,
                    "mb_pairs": 2 * pairs * out_f / batch / 1e6,
                    "mb_int8": in_f * out_f / 1e6,
                }
    return key


def overhead_section(args, report: Report) -> dict:
    """Per-call time of one layer at batch 1 where the arithmetic is negligible (128 x 128) and
    at 1024 x 1024: SpikingLinear (numba, the whole neuron + kernel call), its compiled call
    alone and the cost of entering the kernel with no rows, vs nn.Linear, F.linear and the int8
    dynamic Linear."""
    from spikelm.backends.numba import _call as numba_call
    from spikelm.backends.numba import driver

    config = SpikeConfig()
    report(
        "microseconds per call, batch 1, median of 2000 calls (after 200), one thread; "
        "SpikingLinear = the whole spiking layer (threshold, spike counts, integer kernel, "
        "epilogue, bias) through its forward, numba backend, demo-like input; 'call' = its "
        "compiled call alone (numpy in and out: the neuron, the kernel and the epilogue, no "
        "torch or nn.Module on top); 'entry' = entering that kernel with no rows (unboxing its 25 "
        "arguments, allocating its plans: the floor of any call through it)"
    )
    header = (
        f"{'in x out':>11} | {'SpikingLinear':>13} {'call':>6} {'entry':>6} {'nn.Linear':>10} "
        f"{'F.linear':>9} {'int8 Linear':>11} | {'x F.linear':>10} {'call x F':>8}"
    )
    report(header)
    report("-" * len(header))
    results = {}
    with torch.no_grad(), torch_threads(1):
        for size in (128, 1024):
            torch.manual_seed(0)
            linear = nn.Linear(size, size)
            layer = spiking_layer(linear, config, f"{size}x{size}", backend="numba")
            int8 = int8_baseline(nn.Sequential(linear))
            x = torch.randn(1, size)
            layer(x)
            bound = numba_call(layer).bound
            kernel = driver.kernel(False, bound.kernel_key)
            no_rows = (driver.EMPTY_X, *bound.arguments(), driver.EMPTY_Y)
            calls = {
                "spiking": functools.partial(layer, x),
                "call": functools.partial(bound, x=x.numpy()),
                "entry": functools.partial(kernel, *no_rows),
                "module": functools.partial(linear, x),
                "functional": functools.partial(F.linear, x, linear.weight, linear.bias),
                "int8": functools.partial(int8, x),
            }
            med = {}
            for name, call in calls.items():
                for _ in range(200):
                    call()
                samples = []
                for _ in range(20):
                    start = time.perf_counter()
                    for _ in range(100):
                        call()
                    samples.append((time.perf_counter() - start) / 100)
                med[name] = statistics.median(samples) * 1e6
            report(
                f"{f'{size}x{size}':>11} | {med['spiking']:>13.1f} {med['call']:>6.1f} "
                f"{med['entry']:>6.1f} {med['module']:>10.1f} {med['functional']:>9.1f} "
                f"{med['int8']:>11.1f} | {med['spiking'] / med['functional']:>10.2f} "
                f"{med['call'] / med['functional']:>8.2f}"
            )
            results[size] = med
    return results


def peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def vm_hwm_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure(
    runs: dict[str, Callable[[], tuple]], reps: int
) -> dict[str, tuple[list[float], float, tuple]]:
    """``run() -> (seconds, tokens, ...)`` for each of ``runs``: a warm-up call (numba kernels
    per shape, allocator) and one call after a reset of the peak RSS, each run in turn; then
    ``reps`` rounds that time every run once, in turn, so that the machine's drift over the
    rounds (other jobs, memory bandwidth) falls on every run alike. Per run: tokens/s per round,
    the peak RSS (MiB) of its own call and the last call's result."""
    peaks, last = {}, {}
    for name, run in runs.items():
        run()
        reset = peak_rss_reset()
        last[name] = run()
        peaks[name] = vm_hwm_mib() if reset else float("nan")
    tps: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            last[name] = run()
            tps[name].append(last[name][1] / last[name][0])
    return {name: (tps[name], peaks[name], last[name]) for name in runs}


def on_backend(model: nn.Module, backend: str) -> nn.Module:
    """``model`` with every spiking layer on ``backend``."""
    for layer in spiking_layers(model).values():
        layer.backend = backend
    return model


def snn_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int, **options):
    """The spiking model under :func:`simulate`: (seconds, forward passes, result)."""
    result = simulate(model, prompt, new_tokens=new_tokens, progress=False, **options)
    return result.seconds, result.tokens, result


LINEAR_FORWARDS = (nn.Linear, SpikingLinear, torch.ao.nn.quantized.dynamic.Linear)
"""Classes whose ``forward`` does a model's linear layers: fp32, spiking (fused ones too), int8."""


@contextlib.contextmanager
def _replaced(patches: Iterable[tuple[object, str, object]]) -> Iterator[None]:
    """Each ``(owner, attribute, value)`` set for the block (``unittest.mock.patch.object``)."""
    with contextlib.ExitStack() as stack:
        for owner, name, value in patches:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield


def _previous_output(forward: Callable) -> Callable:
    """``forward`` that computes once per layer, then returns that output again (decode feeds
    one token per call, so a layer's output shape never changes)."""
    outputs: dict[int, torch.Tensor] = {}

    def stub(self, x, *args, **kwargs):
        out = outputs.get(id(self))
        if out is None:
            out = outputs[id(self)] = forward(self, x, *args, **kwargs)
        return out

    return stub


def _zeros_kernel(*args) -> int:
    """Stands in for the numba backend's compiled call: writes zero outputs (its last argument)
    and reports every row on the count path."""
    args[-1].fill(0)
    return args[-1].shape[0]


def token_split(
    runs: dict[str, tuple[nn.Module, Callable[[], tuple[float, int]]]], reps: int
) -> dict[str, dict[str, float]]:
    """Where a decode token's time goes, per model: microseconds per token (median of ``reps``
    rounds, every state of every model in turn) of ``run()`` as it is (``total``), with each
    linear layer's forward returning its previous output (``rest``: attention, norms, module
    calls, fused members' slices) and, for spiking models, with the numba backend's compiled
    calls replaced by :func:`_zeros_kernel` (``no kernels``: the Python around them stays).
    The parallel chooser's state is restored after the stubs, which it may have timed."""
    from spikelm.backends.numba import driver

    rest = [(cls, "forward", _previous_output(cls.forward)) for cls in LINEAR_FORWARDS]
    no_kernels = [(driver, "kernel", lambda parallel, key: _zeros_kernel)]
    states = {"total": [], "rest": rest, "no kernels": no_kernels}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    chooser = copy.deepcopy(driver._parallel_chooser.state)
    try:
        for _ in range(reps):
            for name, (model, run) in runs.items():
                for state, patches in states.items():
                    if state == "no kernels" and not spiking_layers(model):
                        continue
                    with _replaced(patches):
                        seconds, tokens = run()[:2]
                    times[name].setdefault(state, []).append(seconds / tokens * 1e6)
    finally:
        driver._parallel_chooser.state = chooser
    return {
        name: {state: statistics.median(values) for state, values in by_state.items()}
        for name, by_state in times.items()
    }


def split_lines(split: dict[str, dict[str, float]], baseline: str) -> list[str]:
    """Report lines of :func:`token_split`; each spiking model's bound is its rest plus its
    compiled calls (no Python around them), as a ratio of ``baseline``'s tokens/s."""
    lines = []
    for name, t in split.items():
        if "no kernels" not in t:
            lines.append(
                f"    {name}: {t['total']:.0f} = linear layers {t['total'] - t['rest']:.0f} + "
                f"rest {t['rest']:.0f}"
            )
            continue
        kernels, python = t["total"] - t["no kernels"], t["no kernels"] - t["rest"]
        bound = t["rest"] + kernels
        lines.append(
            f"    {name}: {t['total']:.0f} = compiled calls {kernels:.0f} + Python around them "
            f"{python:.0f} + rest {t['rest']:.0f}; without the Python around the compiled calls "
            f"a token would take {bound:.0f}: {split[baseline]['total'] / bound:.2f}x the "
            f"tokens/s of {baseline} (measured {split[baseline]['total'] / t['total']:.2f}x)"
        )
    return lines


SPLIT_NOTE = (
    "  where a token's time goes (us per token, medians of {reps} rounds, every state of every "
    "model in turn): 'rest' = the same decode with each linear layer's forward returning its "
    "previous output (attention, norms, module calls, fused members' slices); the compiled calls "
    "(numba's dispatch included) timed by replacing them with a Python function that writes "
    "zeros. With the weights streaming, each part also pays for what the others evict from the "
    "caches, so the parts are estimates:"
)


FLOOR_RUN = "spiking numba, compiled calls alone"


def _bare_forward(layer: SpikingLinear, x: torch.Tensor) -> torch.Tensor:
    """A spiking layer's forward cut down to its serial compiled call on the rows (``_bare``:
    the entry point and the row-independent arguments, gathered by :func:`floor_decode`): no
    checks, no backend choice, no statistics, no parallel chooser. What any wrapper around one
    compiled call per layer costs at least; the same outputs for layers that run serially (all
    of the demo model's)."""
    entry, args = layer.__dict__["_bare"]
    rows = x.reshape(-1, layer.in_features).numpy()
    y = np.empty((rows.shape[0], layer.out_features), dtype=np.float32)
    entry(rows, *args, y)
    return torch.from_numpy(y).view(*x.shape[:-1], layer.out_features)


def floor_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, int]:
    """:func:`ann_decode` of a spiking model whose layers' forwards are :func:`_bare_forward`
    (numba backend, serial calls): the decode speed of one compiled call per layer and nothing
    else around it but the model's own code (fused members' slices and module calls included)."""
    from spikelm.backends.numba import _call as numba_call
    from spikelm.backends.numba import driver

    layers = spiking_layers(on_backend(model, "numba")).values()
    for layer in layers:
        bound = numba_call(layer).bound
        layer.__dict__["_bare"] = (driver.kernel(False, bound.kernel_key), bound.arguments())
    try:
        with _replaced([(SpikingLinear, "forward", _bare_forward)]):
            return ann_decode(model, prompt, new_tokens)
    finally:
        for layer in layers:
            del layer.__dict__["_bare"]


def ann_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, int]:
    """Greedy decode of the fp32 model with the stepping ``simulate`` uses (the family adapter's
    ``step`` with its named state): (seconds, forward passes)."""
    from spikelm.adapters import adapter_for

    adapter = adapter_for(model)
    with torch.no_grad():
        state = adapter.init_state(model, 1)
        start = time.perf_counter()
        for token in prompt:
            logits, state = adapter.step(model, token.view(1), state)
        for _ in range(new_tokens - 1):
            logits, state = adapter.step(model, logits[0].argmax().view(1), state)
        return time.perf_counter() - start, len(prompt) + new_tokens - 1


def decode_section(args, report: Report) -> dict:
    tokenizer = ByteTokenizer()
    calib_text, eval_text = load_demo_texts()
    calib = token_batches(torch.tensor(tokenizer.encode(calib_text)), 256, 4, 8)
    prompt = torch.tensor(tokenizer.encode(eval_text)[: args.prompt_tokens])
    ann = load_demo_model()
    snn = spiking(copy.deepcopy(ann), SpikeConfig(), calib, progress=False)
    report(
        f"demo model, batch 1, {len(prompt)} prompt + {args.new_tokens} generated tokens "
        f"(greedy), torch threads = 1; {args.decode_reps} rounds, each timing every run once in "
        "turn; peak = VmHWM after a reset (process-wide RSS, MiB); '" + FLOOR_RUN + "' = the "
        "adapter step with every spiking layer's forward cut to its serial compiled call (no "
        "checks, no backend choice, no statistics, arguments gathered before the run): the speed "
        "of one compiled call per layer with nothing but the model's own code around it"
    )
    quantized = int8_baseline(ann)
    runs = {
        "ANN fp32 (adapter step)": lambda: ann_decode(ann, prompt, args.new_tokens),
        "ANN int8 dynamic (adapter step)": lambda: ann_decode(quantized, prompt, args.new_tokens),
    }
    for b in ("numba", "torch"):
        runs[f"spiking, simulate backend={b}"] = lambda b=b: snn_decode(
            snn, prompt, args.new_tokens, backend=b, threads=1
        )
        if b == "numba":  # simulate(backend=...) leaves its backend set: set numba again
            runs["spiking numba (adapter step)"] = lambda: ann_decode(
                on_backend(snn, "numba"), prompt, args.new_tokens
            )
            runs[FLOOR_RUN] = functools.partial(floor_decode, snn, prompt, args.new_tokens)
    tokens = len(prompt) + args.new_tokens - 1
    report(f"{'run':<34} {'tokens':>6} {'tok/s best':>10} {'tok/s med':>10} {'peak MiB':>9}")
    results = {}
    with torch_threads(1):
        for name, (tps, peak, _) in measure(runs, args.decode_reps).items():
            results[name] = statistics.median(tps)
            report(f"{name:<34} {tokens:>6} {max(tps):>10.1f} {results[name]:>10.1f} {peak:>9.0f}")
    ann_tps = results["ANN fp32 (adapter step)"]
    int8_tps = results["ANN int8 dynamic (adapter step)"]
    for name, med in results.items():
        if name.startswith("spiking"):
            report(
                f"  {name}: {med / ann_tps:.2f}x the fp32 ANN's tokens/s, {med / int8_tps:.2f}x "
                "the int8 ANN's (median)"
            )
    on_backend(snn, "numba")
    report(SPLIT_NOTE.format(reps=args.decode_reps))
    with torch_threads(1):
        split = token_split(
            {
                name: (model, functools.partial(ann_decode, model, prompt, args.new_tokens))
                for name, model in (("ANN fp32", ann), ("ANN int8", quantized), ("spiking", snn))
            },
            args.decode_reps,
        )
    for line in split_lines(split, "ANN fp32"):
        report(line)
    return results


WIDE = {"hidden": 1024, "intermediate": 2816, "layers": 4, "heads": 8}


def wide_models() -> dict[str, nn.Module]:
    """Randomly initialised fp32 models where the linear layers, not per-call overhead, dominate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spikelm.models import HybridConfig, HybridLM

    torch.manual_seed(0)
    hybrid = HybridLM(
        HybridConfig(
            hidden_size=WIDE["hidden"],
            n_layers=WIDE["layers"],
            n_heads=WIDE["heads"],
            head_dim=WIDE["hidden"] // WIDE["heads"],
            intermediate_size=WIDE["intermediate"],
            gate_rank=32,
        )
    )
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=WIDE["hidden"],
            intermediate_size=WIDE["intermediate"],
            num_hidden_layers=WIDE["layers"],
            num_attention_heads=WIDE["heads"],
            num_key_value_heads=WIDE["heads"],
            max_position_embeddings=512,
        )
    )
    return {
        "HybridLM (adapter step)": hybrid.eval(),
        "transformers Llama (adapter step)": llama.eval(),
    }


def wide_decode_section(args, report: Report, read_bw: float) -> dict:
    threads = os.cpu_count() or 1
    report(
        f"wider models (random weights, {WIDE['layers']} layers, hidden {WIDE['hidden']}, "
        f"MLP {WIDE['intermediate']}), batch 1, {args.prompt_tokens} prompt + {args.new_tokens} "
        f"generated tokens, {threads} threads for torch and numba; tok/s medians of "
        f"{args.decode_reps} rounds, each timing every run once in turn. ANN fp32, ANN int8 and "
        "'SNN step' run the same loop (the adapter's step, greedy); 'SNN simulate' is "
        "spikelm.simulate, which also keeps the firing statistics. 'ANN int8' quantizes every "
        "linear layer, the LM head included (the baseline of the ratios 'x int8'); 'int8 same' "
        "only the layers spikelm converts, so that the rest (LM head, attention, norms) is the "
        "same fp32 in both ('x same')"
    )
    header = (
        f"{'model':<34} {'params':>7} {'ANN fp32':>8} {'ANN int8':>8} {'int8 same':>9} "
        f"{'SNN step':>8} {'SNN sim':>8} | {'x fp32':>6} {'x int8':>6} {'x same':>6} "
        f"{'sim/int8':>8} {'spk/ch':>6} {'ANN MiB':>8} {'SNN MiB':>8}"
    )
    report(header)
    report("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 256, (args.prompt_tokens,), generator=gen)
    results, limits = {}, []
    for name, ann in wide_models().items():
        calib = [prompt.view(1, -1)]  # dynamic thresholds: calibration only checks the layers
        snn = spiking(copy.deepcopy(ann), SpikeConfig(), calib, progress=False, backend="numba")
        params = sum(p.numel() for p in ann.parameters())
        quantized = int8_baseline(ann)
        same = int8_baseline(ann, spiking_projections(snn))
        with torch_threads(threads):
            runs = {
                # first: simulate compiles and tunes the kernels before the step runs
                "sim": lambda m=snn: snn_decode(m, prompt, args.new_tokens, threads=threads),
                "ann": lambda m=ann: ann_decode(m, prompt, args.new_tokens),
                "int8": lambda m=quantized: ann_decode(m, prompt, args.new_tokens),
                "same": lambda m=same: ann_decode(m, prompt, args.new_tokens),
                "step": lambda m=snn: ann_decode(m, prompt, args.new_tokens),
            }
            measured = measure(runs, args.decode_reps)
        snn_sim, snn_peak, (*_, result) = measured["sim"]
        ann_tps, ann_peak, _ = measured["ann"]
        int8_tps, same_tps, snn_step = (measured[k][0] for k in ("int8", "same", "step"))
        del same, runs
        spc = result.stats.spikes_per_channel
        a, q = statistics.median(ann_tps), statistics.median(int8_tps)
        b, c, e = (
            statistics.median(snn_step),
            statistics.median(snn_sim),
            statistics.median(same_tps),
        )
        report(
            f"{name:<34} {params / 1e6:>6.1f}M {a:>8.1f} {q:>8.1f} {e:>9.1f} {b:>8.1f} {c:>8.1f} "
            f"| {b / a:>6.2f} {b / q:>6.2f} {b / e:>6.2f} {c / q:>8.2f} {spc:>6.3f} "
            f"{ann_peak:>8.0f} {snn_peak:>8.0f}"
        )
        results[name] = (b / a, b / q, c / q, b / e)
        with torch_threads(threads):
            split = token_split(
                {
                    label: (m, functools.partial(ann_decode, m, prompt, args.new_tokens))
                    for label, m in (("ANN int8", quantized), ("SNN step", snn))
                },
                args.decode_reps,
            )
        del quantized
        layers = spiking_layers(snn)
        weight_mb = sum(layer.weight_q.numel() for layer in layers.values()) / 1e6
        limits.append(
            f"  {name}: its {len(layers)} spiking layers read {weight_mb:.1f} MB of int8 weights "
            f"per token, {weight_mb * 1e9 / read_bw:.2f} ms at the read bandwidth; a token "
            f"takes {1e3 / b:.2f} ms (SNN step)."
        )
        limits += split_lines(split, "ANN int8")
        del snn
    report(
        "  (SNN: backend 'numba', SpikingBrain's recipe with shared-input projections fused; "
        "peak = VmHWM after a reset, process-wide, so the SNN column includes the ANN still "
        "held for comparison)"
    )
    report(SPLIT_NOTE.format(reps=args.decode_reps))
    for line in limits:
        report(line)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="full", action="store_false", help="few reps (default)")
    mode.add_argument("--full", dest="full", action="store_true", help="more repetitions")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.set_defaults(full=False)
    args = parser.parse_args()
    args.reps, args.budget = (20, 2.0) if args.full else (5, 0.5)
    args.decode_reps = 5 if args.full else 1
    args.prompt_tokens, args.new_tokens = 64, 64
    args.eval_windows = 16 if args.full else 4

    report = Report()
    report(
        "# bench_backends: spiking linear layers and decode vs dense fp32, int8 and SpikingJelly 2.0"
    )
    report(describe_machine())
    report(
        f"# load average at start: {loadavg()} (1/5/15 min) -- shared machine: other jobs "
        "run at the same time, so absolute times are noisy; ratios are measured back to back"
    )
    report(f"# mode: {'full' if args.full else 'quick'}; coding {SpikeConfig().coding}, T=8, k=3")
    wall = time.perf_counter()

    import numba

    from spikelm.backends import numba as numba_backend
    from spikelm.backends.numba import driver

    numba_backend.warmup()
    report()
    report("## 5. compile cost (numba)")
    report(
        f"warmup(): {numba_backend.compile_seconds():.2f} s compiling / loading kernels "
        f"(on-disk cache {numba_backend.cache_stats()}), excluded from every timing below; "
        f"numba threads {numba.get_num_threads()}, PARALLEL={driver.PARALLEL!r}"
    )

    report()
    report("## 4. memory bandwidth")
    bandwidth = memory_bandwidth(5 if args.full else 3)
    read_bw = read_bandwidth(10 if args.full else 5)
    report(
        f"numpy copy of 256 MiB (read + write): {bandwidth / 1e9:.1f} GB/s; streaming read of "
        f"16 MiB int8 by {numba.get_num_threads()} numba threads, caches flushed: "
        f"{read_bw / 1e9:.1f} GB/s (the read bounds below: a layer reads each int8 weight it "
        "needs at least once)"
    )

    report()
    report("## 1. one spiking linear layer")
    pool, demo_stats = demo_counts(SpikeConfig(), args.eval_windows)
    report(
        f"demo firing (converted demo model, {demo_stats.tokens} eval tokens, all spiking layers): "
        f"{demo_stats.spikes_per_channel:.3f} spikes/channel, sparsity {demo_stats.sparsity:.1%}, "
        f"silent share {demo_stats.silent_share:.1%}; 'demo' rows sample these real counts"
    )
    key = layer_section(args, report, pool, read_bw, bandwidth)

    report()
    report("## 2. per-call overhead of one layer")
    overhead = overhead_section(args, report)

    report()
    report("## 3. whole-model decode")
    decode = decode_section(args, report)
    report()
    wide = wide_decode_section(args, report, read_bw)
    report(
        "count/event crossover r measured at warm-up per layer shape of the decoded models (a "
        "row takes the count path when its events > r x its active channels; r < 1: every row): "
        f"{fmt_crossovers(numba_backend.path_crossovers())}"
    )

    report()
    report("## key ratios")
    for label, what in (
        ("demo", "warm caches"),
        ("cold", "every cache flushed"),
        ("stream", "weights from memory, Python warm"),
    ):
        k = key[(4096, 4096, 1, label)]
        sj = "" if label == "stream" else f", {k['x_sj']:.2f}x that of SpikingJelly"
        mixed = (
            f"; {k['mixed_rate']:.0%} timed interleaved with the rest" if label == "cold" else ""
        )
        report(
            f"4096x4096, batch 1, demo firing, {what}: fastest exact path ({k['faster']}) "
            f"{k['x_dense']:.2f}x the speed of dense F.linear, {k['x_int8']:.2f}x that of int8 "
            f"dynamic quantization{sj}; bytes to read: count path {k['mb_pairs']:.1f} MB (the pairs "
            f"it lists), event path {k['mb']:.1f} MB (active channels), int8 "
            f"{k['mb_int8']:.1f} MB; read bound ({read_bw / 1e9:.1f} GB/s) reached: count path "
            f"{k['bw_counts']:.0%}, event path {k['bw_events']:.0%}, int8 {k['bw_int8']:.0%}; "
            f"event path {k['event_rate']:.0%} of the event bound (one column per event at "
            f"{bandwidth / 1e9:.1f} GB/s{mixed}); the compiled call alone {k['call_ms']:.3f} ms, "
            f"{k['call_int8']:.2f}x the speed of int8"
        )
    for size, med in overhead.items():
        report(
            f"per-call time, {size}x{size} batch 1: SpikingLinear {med['spiking']:.1f} us (its "
            f"compiled call alone {med['call']:.1f} us, entering the kernel with no rows "
            f"{med['entry']:.1f} us), F.linear {med['functional']:.1f} us, nn.Linear "
            f"{med['module']:.1f} us, int8 Linear {med['int8']:.1f} us"
        )
    ann_tps = decode["ANN fp32 (adapter step)"]
    int8_tps = decode["ANN int8 dynamic (adapter step)"]
    spk = decode["spiking numba (adapter step)"]
    sim = decode["spiking, simulate backend=numba"]
    report(
        f"whole-model decode (demo, batch 1, same step loop): spiking/numba {spk / ann_tps:.2f}x "
        f"the fp32 ANN's tok/s, {spk / int8_tps:.2f}x the int8 ANN's ({sim / ann_tps:.2f}x the "
        f"fp32 ANN's under simulate; {decode[FLOOR_RUN] / ann_tps:.2f}x with each layer cut to "
        "its compiled call, the floor of one compiled call per layer)"
    )
    for name, (ratio, ratio_int8, sim_int8, ratio_same) in wide.items():
        report(
            f"whole-model decode ({name}, hidden {WIDE['hidden']}, same step loop): {ratio:.2f}x "
            f"the fp32 ANN's tok/s, {ratio_int8:.2f}x the int8 ANN's ({sim_int8:.2f}x under "
            f"simulate, statistics included; {ratio_same:.2f}x the ANN with int8 in the converted "
            "layers only)"
        )
    report(f"# load average at end: {loadavg()}; wall {time.perf_counter() - wall:.0f} s")
    report.save(args.out)


if __name__ == "__main__":
    main()
