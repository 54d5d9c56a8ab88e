"""Whole-model simulation: a converted model run token by token, its spikes counted and recorded.

:func:`simulate` feeds a sequence of token ids through a spiking model one token at a time, as a
deployment would (constant work per token), with the recurrent state as explicit named tensors
that the model family's adapter steps (``spikelm.adapters``), then optionally generates new
tokens greedily. Every ``SpikingLinear`` is probed while it runs: its firing statistics are
accumulated per layer, and the spike trains of the chosen layers are encoded with the layer's own
coder and streamed to an HDF5 recording (:class:`SpikeWriter`) in blocks of a few tokens, so
memory stays flat however long the input is.

Never stateless by accident: the step logits of the first :data:`CHECK_TOKENS` input tokens are
held to the parallel forward's (:data:`CHECK_TOLERANCE`) before anything is generated or
recorded; a family whose stepping loses its state stops with a one-line error.

One recorded token is one row of a layer's input. A layer that is not called during a token
(e.g. an unrouted expert) records a silent token, so every recorded layer has one entry per token
processed; a layer called more than once during a token records the last row it saw.

Nothing here prints; the CLI (``spikelm simulate``) formats the :class:`SimulationResult`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.adapters import Adapter, adapter_for
from spikelm.backends.base import counting_paths
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError, SpikeFileError
from spikelm.estimators import SpikeStats, summarize
from spikelm.estimators.counters import events_per_row
from spikelm.estimators.dense import dense_linears, query_heads, state_macs
from spikelm.layers import SpikingLinear, probed, spiking_layers
from spikelm.outputs import check_output
from spikelm.targets import select_layers

NO_GPU_MESSAGE = "CUDA requested but no GPU is available (torch.cuda.is_available() is False)"
CHECK_TOKENS = 16
"""Input tokens whose step logits are held to the parallel forward's before a simulation."""
CHECK_TOLERANCE = 1e-3
"""Largest step-vs-parallel logit deviation allowed, relative to the largest logit magnitude."""
PHASES = ("prefill", "decode")
"""The input tokens fed one by one, then the generated tokens fed back."""
FLUSH_TOKENS = 64
"""Tokens of counts a recorded layer buffers before encoding them and appending to the file."""


@dataclass
class SimulationResult:
    """What a token-by-token simulation did and measured.

    ``tokens`` is the number of tokens fed through the model (the input, then every generated
    token but the last, which needs no forward pass); it is also each recorded layer's
    ``n_tokens``. ``seconds`` is the wall time of the token loop, recording included;
    ``compile_seconds`` the time spent before it compiling (or loading from numba's disk cache)
    the numba kernels the layers will run, kept out of ``seconds``.
    """

    tokens: int
    input_tokens: int
    generated: list[int]
    seconds: float
    events: int
    stats: SpikeStats
    layer_stats: dict[str, SpikeStats]
    backend: str
    device: str
    family: str
    record: Path | None = None
    recorded_layers: tuple[str, ...] = ()
    compile_seconds: float = 0.0
    logits: torch.Tensor | None = field(default=None, repr=False)
    phase_stats: dict[str, dict[str, SpikeStats]] = field(default_factory=dict, repr=False)
    """``prefill`` (the input tokens) and ``decode`` (generated tokens fed back) apart."""
    token_events: list[int] = field(default_factory=list, repr=False)
    """Spike events of every spiking layer together, per token fed."""
    mixer_macs: dict[str, int] = field(default_factory=dict, repr=False)
    """Estimated dense MACs of attention and recurrences per phase (``estimators.dense``)."""
    dense_linears: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    """``(in, out)`` of every linear layer left dense (the head, kept-dense layers)."""
    paths: dict[str, int] = field(default_factory=dict)
    """Rows (layer calls x tokens) each execution path ran, e.g. ``numba.counts``,
    ``numba.events``, ``torch`` (:func:`spikelm.backends.counting_paths`)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


# --- option checks (cheap; run before any model is loaded) ------------------------------------


def backend_names() -> tuple[str, ...]:
    """Every backend name ``SpikingLinear.backend`` accepts (``auto`` included when available)."""
    from spikelm.backends import NAMES

    return NAMES


def check_backend(name: str, device: str | torch.device = "cpu") -> None:
    """Raise :class:`ConfigError` unless ``name`` is a backend name usable on ``device``."""
    from spikelm import backends

    names = backend_names()
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(names)}")
    try:
        backends.get_backend(name, torch.device(device))  # also checks the device
    except ImportError as error:
        raise ConfigError(f"backend {name!r} is not available here: {error}") from error


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; CUDA without a GPU and unknown devices are ConfigErrors."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(NO_GPU_MESSAGE)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def check_record_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise :class:`SpikeFileError` unless a spike recording can be created at ``path``, or
    :class:`ConfigError` when the overwrite rules (:mod:`spikelm.outputs`) forbid it."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise SpikeFileError(
            f"{path}: cannot record spikes there: directory {parent} does not exist"
        )
    if path.is_dir():
        raise SpikeFileError(f"{path}: is a directory; the recording needs an HDF5 file name")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpikeFileError(
            f"{path}: cannot record spikes there: directory {parent} is not writable"
        )
    return check_output(path, "recording", overwrite=overwrite, option="--record")


def check_options(
    *,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    record: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> torch.device:
    """Check the device, the backend name and the recording path; returns the device."""
    dev = check_device(device)
    if backend is not None:
        check_backend(backend, dev)
    if record is not None:
        check_record_path(record, overwrite=overwrite)
    return dev


# --- probes on the spiking layers -------------------------------------------------------------


class _LayerProbe:
    """Called by ``SpikingLinear.forward`` with the layer's counts; counts spikes, buffers rows.

    Rows are only queued per call; statistics and spike encoding run once per
    :data:`FLUSH_TOKENS` tokens on the queued block, which keeps the per-call cost negligible.
    """

    def __init__(self, name: str, layer: SpikingLinear, record: bool) -> None:
        self.name = name
        self.coder = get_coder(layer.coding)
        self.steps = layer.steps
        self.n_neurons = layer.in_features
        self.phase = PHASES[0]
        self.phase_stats = {phase: SpikeStats(steps=layer.steps) for phase in PHASES}
        self.token_events: list[int] = []  # spike events of each token fed, in order
        self.record = record
        self.rows: list[torch.Tensor] = []  # every counted row since the last flush
        self.row_tokens: list[int] = []  # rows counted for each token since the last flush
        self.current: torch.Tensor | None = None  # the recorded row of the token in progress
        self.pending: list[torch.Tensor] = []  # recorded rows of finished tokens
        self.tokens = 0  # tokens since the last flush
        self.calls = 0  # rows counted during the token in progress

    @property
    def stats(self) -> SpikeStats:
        """Both phases pooled."""
        prefill, decode = (self.phase_stats[phase] for phase in PHASES)
        pooled = prefill.merge(decode)
        pooled.tokens = prefill.tokens + decode.tokens
        return pooled

    def __call__(self, layer: SpikingLinear, counts: torch.Tensor) -> None:
        counts = counts.detach()
        if counts.shape[0]:
            self.rows.append(counts)
            self.current = counts[-1:]
            self.calls += counts.shape[0]

    def end_token(self, writer: Any) -> None:
        self.row_tokens.append(self.calls)
        self.calls = 0
        if self.record:
            row = self.current
            if row is None:  # not called during this token: silent
                row = torch.zeros(1, self.n_neurons)
            self.pending.append(row)
        self.current = None
        self.tokens += 1
        if self.tokens >= FLUSH_TOKENS:
            self.flush(writer)

    def flush(self, writer: Any) -> None:
        if self.rows:
            rows = torch.cat(self.rows)
            self.phase_stats[self.phase].update(rows, self.coder)
            per_row = events_per_row(rows, self.coder, self.steps)
            ends = torch.tensor(self.row_tokens).cumsum(0)
            starts = ends - torch.tensor(self.row_tokens)
            per_row = torch.cat([torch.zeros(1, dtype=per_row.dtype), per_row.cumsum(0)])
            self.token_events += (per_row[ends] - per_row[starts]).tolist()
        else:
            self.token_events += [0] * len(self.row_tokens)
        if self.pending:
            counts = torch.cat([row.to(torch.int64).cpu() for row in self.pending])
            spikes = self.coder.encode(counts, self.steps)  # [T, tokens, N]
            writer.append(self.name, spikes.permute(1, 0, 2).numpy())
        self.rows, self.row_tokens, self.pending, self.tokens = [], [], [], 0


# --- the stepping check -------------------------------------------------------------------------


def check_stepping(adapter: Adapter, model: nn.Module, ids: torch.Tensor, tokens: int = 0) -> float:
    """Hold the step logits of ``ids[:CHECK_TOKENS]`` to the parallel forward's; returns the
    largest deviation relative to the logits' scale. A deviation over :data:`CHECK_TOLERANCE`
    (a family whose stepping lost its state, or a forward that ignored the cache) raises
    :class:`ConfigError` naming the family and the transformers version.

    The spiking layers run an exact backend for the check (their own, or
    :func:`~spikelm.backends.exact_backend_name`): with a float backend one row and sixteen round
    differently, a count can flip at its rounding boundary, and in a model that amplifies it the
    two forms part for reasons that have nothing to do with the state."""
    ids = ids[: tokens or CHECK_TOKENS]
    with torch.no_grad(), _exact_layers(model, ids.device):
        parallel = adapter.logits(model, ids[None])[0].float()
        state = adapter.init_state(model, 1)
        stepped = []
        for t in range(len(ids)):
            logits, state = adapter.step(model, ids[t : t + 1], state)
            stepped.append(logits[0].float())
    deviation = float((torch.stack(stepped) - parallel).abs().max())
    relative = deviation / max(float(parallel.abs().max()), 1e-6)
    if not relative <= CHECK_TOLERANCE:
        raise ConfigError(
            f"{adapter.name}: stepping one token at a time does not reproduce the parallel "
            f"forward ({relative:.2g} of the logits' scale over {len(ids)} prompt tokens, "
            f"tolerance {CHECK_TOLERANCE:g}): the model's state is lost between steps"
            f"{_library_versions()}"
        )
    return relative


@contextlib.contextmanager
def _exact_layers(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Every spiking layer of ``model`` on an exact backend for the duration (then restored)."""
    from spikelm.backends import backend, exact_backend_name

    layers = list(spiking_layers(model).values())
    kept = [layer.backend for layer in layers]
    exact = exact_backend_name(device)
    try:
        for layer, name in zip(layers, kept, strict=True):
            if name == "auto" or not backend(name).exact:
                layer.backend = exact
        yield
    finally:
        for layer, name in zip(layers, kept, strict=True):
            layer.backend = name


def _library_versions() -> str:
    import sys

    library = sys.modules.get("transformers")
    return f" (transformers {library.__version__})" if library is not None else ""


# --- the driver ---------------------------------------------------------------------------------


def _compile_kernels(layers: Iterable[SpikingLinear], device: torch.device) -> float:
    """Compile (or load) the kernels the layers' backends will run, before any timing: seconds."""
    from spikelm.backends import warmup

    layers = list(layers)
    return sum(
        warmup(name, [layer for layer in layers if layer.backend == name], device)
        for name in sorted({layer.backend for layer in layers})
    )


def _vocab_size(model: nn.Module) -> int | None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def _as_ids(token_ids: Any, vocab_size: int | None) -> torch.Tensor:
    ids = torch.as_tensor(token_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or (ids.numel() and (ids.is_floating_point() or ids.is_complex())):
        raise ConfigError(
            f"token ids must be a 1-D sequence of integers (or [1, L]), got {ids.dtype} "
            f"of shape {tuple(ids.shape)}"
        )
    if ids.numel() == 0:
        raise ConfigError("no input tokens to simulate: the input is empty")
    ids = ids.to(torch.long)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bad = low if low < 0 else high
        raise ConfigError(f"token id {bad} is outside the model's vocabulary [0, {vocab_size})")
    return ids


def _check_counts(new_tokens: Any, threads: Any) -> None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 0:
        raise ConfigError(f"new_tokens must be a non-negative integer, got {new_tokens!r}")


def _writer(stack: contextlib.ExitStack, record: Any, layers: dict, recorded: list, attrs: dict):
    if record is None:
        return None
    from spikelm.spikes import SpikeWriter

    writer = stack.enter_context(SpikeWriter(record, attrs=attrs))
    for name in recorded:
        layer = layers[name]
        writer.add_layer(
            name,
            layer.in_features,
            layer.steps,
            layer.coding,
            fan_out=layer.out_features,
            weight_bits=layer.weight_bits,
        )
    return writer


def simulate(
    model: nn.Module,
    token_ids: Any,
    *,
    new_tokens: int = 0,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    record: str | os.PathLike[str] | None = None,
    layers: Sequence[str] = ("*",),
    progress: bool = True,
    stop_ids: Collection[int] = (),
    return_logits: bool = False,
    threads: int | None = None,
    overwrite: bool = False,
) -> SimulationResult:
    """Run ``model`` token by token over ``token_ids``, then generate ``new_tokens`` greedily.

    ``token_ids`` (1-D, or ``[1, L]``) are fed one at a time (teacher forcing); the logits after
    the last one give the first new token, and so on, exactly as greedy ``generate`` does.
    Generation stops early after a token in ``stop_ids``. ``backend`` (one of
    :func:`backend_names`) is set on every ``SpikingLinear`` when given; the model is
    moved to ``device``. With ``record`` (an ``.h5`` path) the spike trains of the spiking layers
    matching the ``fnmatch`` patterns ``layers`` are streamed to that file; it appears only when
    the run succeeds. ``return_logits`` keeps every step's logits (``[tokens, V]``, on the CPU).
    ``threads`` sets torch's intra-op CPU threads for the run (restored after): one token at a
    time is a chain of small ops, for which a single thread is often fastest on a busy CPU. An
    existing recording at ``record`` is replaced only with ``overwrite`` (never another file).

    Bad options raise :class:`ConfigError` / :class:`SpikeFileError` before any work is done; a
    model whose stepping does not reproduce its parallel forward raises :class:`ConfigError`
    (see :func:`check_stepping`) before anything is recorded.
    """
    dev = check_options(backend=backend, device=device, record=record, overwrite=overwrite)
    spiking = spiking_layers(model)
    if not spiking:
        raise ConfigError(
            "the model has no SpikingLinear layers: it is not spiking; convert it first"
        )
    _check_counts(new_tokens, threads)
    adapter = adapter_for(model)
    if not adapter.steps:
        adapter.init_state(model)  # raises: no adapter knows the family
    ids = _as_ids(token_ids, _vocab_size(model))
    recorded = list(select_layers(spiking, layers, "layer pattern")) if record is not None else []
    if record is not None and not recorded:
        raise ConfigError("no layer patterns given for the recording")
    if backend is not None:
        for layer in spiking.values():
            layer.backend = backend
    used_backends = ", ".join(sorted({layer.backend for layer in spiking.values()}))
    model.eval().to(dev)
    compile_seconds = _compile_kernels(spiking.values(), dev)
    ids = ids.to(dev)
    stop = {int(i) for i in stop_ids}

    from tqdm.auto import tqdm

    generated: list[int] = []
    kept: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if threads is not None:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        check_stepping(adapter, model, ids)
        attrs = {"producer": "spikelm simulate", "backend": used_backends, "device": str(dev)}
        writer = _writer(stack, record, spiking, recorded, {**attrs, "input_tokens": len(ids)})
        probes = {n: _LayerProbe(n, layer, n in recorded) for n, layer in spiking.items()}
        stack.enter_context(probed(spiking, probes))
        paths = counting_paths()
        planned = len(ids) + max(new_tokens - 1, 0)
        bar = stack.enter_context(
            tqdm(total=planned, unit="tok", desc="simulating", disable=None if progress else True)
        )
        start = time.perf_counter()
        state = adapter.init_state(model, 1)
        tokens = 0
        heads = query_heads(model)
        mixer_macs = dict.fromkeys(PHASES, 0)

        def feed(token: torch.Tensor) -> torch.Tensor:
            nonlocal state, tokens
            logits, state = adapter.step(model, token, state)
            mixer_macs[PHASES[tokens >= len(ids)]] += state_macs(state, heads)
            for probe in probes.values():
                probe.end_token(writer)
            if return_logits:
                kept.append(logits[0].detach().float().cpu())
            tokens += 1
            bar.update(1)
            return logits[0]

        for t in range(len(ids)):
            logits = feed(ids[t : t + 1])
        for probe in probes.values():
            probe.flush(writer)
            probe.phase = PHASES[1]
        while len(generated) < new_tokens:
            generated.append(int(logits.argmax(-1)))
            if len(generated) == new_tokens or generated[-1] in stop:
                break
            logits = feed(torch.tensor(generated[-1:], device=dev))
        for probe in probes.values():
            probe.flush(writer)
        if writer is not None:  # what an energy report of the recording needs
            writer.set_attrs(
                {
                    "tokens": tokens,
                    "weight_bits": next(iter(spiking.values())).weight_bits,
                    "mixer_macs": json.dumps(mixer_macs),
                    "dense_linears": json.dumps(dense_linears(model)),
                    "paths": json.dumps(paths()),
                }
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    layer_stats = {name: probe.stats for name, probe in probes.items()}
    pooled = summarize(layer_stats.values())
    token_events = [
        sum(events) for events in zip(*(p.token_events for p in probes.values()), strict=True)
    ]
    return SimulationResult(
        tokens=tokens,
        input_tokens=len(ids),
        generated=generated,
        seconds=seconds,
        events=pooled.events,
        stats=pooled,
        layer_stats=layer_stats,
        backend=used_backends,
        device=str(dev),
        family=adapter.name,
        compile_seconds=compile_seconds,
        record=Path(record) if record is not None else None,
        recorded_layers=tuple(recorded),
        logits=torch.stack(kept) if return_logits else None,
        phase_stats={
            phase: {name: probe.phase_stats[phase] for name, probe in probes.items()}
            for phase in PHASES
        },
        token_events=token_events,
        mixer_macs=mixer_macs,
        dense_linears=dense_linears(model),
        paths=paths(),
    )


__all__ = [
    "CHECK_TOKENS",
    "CHECK_TOLERANCE",
    "SimulationResult",
    "backend_names",
    "check_backend",
    "check_device",
    "check_options",
    "check_record_path",
    "check_stepping",
    "simulate",
]
