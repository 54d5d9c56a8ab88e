"""Whole-model simulation: a converted model run token by token, its spikes counted and recorded.

:func:`simulate` feeds a sequence of token ids through a spiking model one token at a time, as a
deployment would (constant work per token, with the model's recurrent state or cache), then
optionally generates new tokens greedily. Every ``SpikingLinear`` is probed while it runs: its
firing statistics are accumulated per layer, and the spike trains of the chosen layers are
encoded with the layer's own coder and streamed to an HDF5 recording (:class:`SpikeWriter`) in
blocks of a few tokens, so memory stays flat however long the input is.

How each model is stepped (``SimulationResult.stepping``):

- ``recurrent``: :class:`~spikelm.models.HybridLM` through ``init_state`` / ``step``.
- ``cache``: a ``transformers`` causal LM called on one token at a time with the cache its forward
  returns. Checked for every family of ``spikelm.hf.SUPPORTED_MODEL_TYPES``:
  ``llama``, ``qwen2``, ``qwen3_next`` (``past_key_values``: a ``DynamicCache`` holding the
  gated-delta-net conv/recurrent states too), ``minimax`` (``MiniMaxCache``), ``mamba2``
  (``cache_params`` in and out), ``rwkv`` (``state`` in and out) and ``recurrent_gemma``, whose
  forward returns no cache: its RG-LRU and conv states live inside the model and are reset here
  with ``_setup_cache``, its sliding-window key/value cache is a ``DynamicCache`` created here, and
  positions are passed explicitly. Logits match the parallel forward to float rounding.
- ``prefix``: the fallback for a model whose forward returns no cache (and that is not
  recurrent_gemma): each step recomputes the whole prefix (quadratic work), and only the last
  row of each layer's input is counted and recorded, so statistics and recordings mean the same
  thing as in the other modes.

One recorded token is one row of a layer's input. A layer that is not called during a token
(e.g. an unrouted expert) records a silent token, so every recorded layer has one entry per token
processed; a layer called more than once during a token records the last row it saw.

Nothing here prints; the CLI (``spikelm simulate``) formats the :class:`SimulationResult`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.encoders import get_coder
from spikelm.errors import ConfigError, SpikeFileError
from spikelm.estimators import SpikeStats, summarize
from spikelm.layers import SpikingLinear, attached

NO_GPU_MESSAGE = "CUDA requested but no GPU is available (torch.cuda.is_available() is False)"
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
    stepping: str
    record: Path | None = None
    recorded_layers: tuple[str, ...] = ()
    compile_seconds: float = 0.0
    logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


# --- option checks (cheap; run before any model is loaded) ------------------------------------


def backend_names() -> tuple[str, ...]:
    """Every backend name ``SpikingLinear.backend`` accepts (``auto`` included when available)."""
    from spikelm import backends

    return tuple(getattr(backends, "NAMES", backends.BACKENDS))


def check_backend(name: str, device: str | torch.device = "cpu") -> None:
    """Raise :class:`ConfigError` unless ``name`` is a backend name usable on ``device``."""
    from spikelm import backends

    names = backend_names()
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(names)}")
    try:
        if len(inspect.signature(backends.get_backend).parameters) >= 2:
            backends.get_backend(name, torch.device(device))  # also checks the device
        else:
            backends.get_backend(name)
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


def check_record_path(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`SpikeFileError` unless a spike recording can be created at ``path``."""
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
    return path


def check_options(
    *,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    record: str | os.PathLike[str] | None = None,
) -> torch.device:
    """Check the device, the backend name and the recording path; returns the device."""
    dev = check_device(device)
    if backend is not None:
        check_backend(backend, dev)
    if record is not None:
        check_record_path(record)
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
        self.stats = SpikeStats(steps=layer.steps)
        self.record = record
        self.last_row_only = False
        self.rows: list[torch.Tensor] = []  # every counted row since the last flush
        self.current: torch.Tensor | None = None  # the recorded row of the token in progress
        self.pending: list[torch.Tensor] = []  # recorded rows of finished tokens
        self.tokens = 0  # tokens since the last flush

    def __call__(self, layer: SpikingLinear, counts: torch.Tensor) -> None:
        counts = counts.detach()
        if self.last_row_only:
            counts = counts[-1:].clone()  # not a view that keeps the whole prefix alive
        if counts.shape[0]:
            self.rows.append(counts)
            self.current = counts[-1:]

    def end_token(self, writer: Any) -> None:
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
            self.stats.update(torch.cat(self.rows), self.coder)
        if self.pending:
            counts = torch.cat([row.to(torch.int64).cpu() for row in self.pending])
            spikes = self.coder.encode(counts, self.steps)  # [T, tokens, N]
            writer.append(self.name, spikes.permute(1, 0, 2).numpy())
        self.rows, self.pending, self.tokens = [], [], 0


def _probes(layers: dict[str, SpikingLinear], recorded: Collection[str]):
    probes = {name: _LayerProbe(name, layer, name in recorded) for name, layer in layers.items()}
    return attached(layers, "recorder", probes)


# --- steppers: one token in, next-token logits out ---------------------------------------------


class _HybridStepper:
    """:class:`~spikelm.models.HybridLM` in its recurrent form."""

    mode = "recurrent"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def reset(self) -> None:
        self.state = self.model.init_state(1)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model.step(token.view(1), self.state)
        return logits[0]


class _HFStepper:
    """A ``transformers`` causal LM, one token per call, with the cache its forward returns."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        if "cache_params" in params:  # mamba2
            self.cache_name = "cache_params"
        elif "state" in params and "past_key_values" not in params:  # rwkv
            self.cache_name = "state"
        else:
            self.cache_name = "past_key_values"
        # recurrent_gemma keeps its recurrent states inside the model and returns no cache
        self.internal_state = callable(getattr(model, "_setup_cache", None))
        self.mode = "cache"

    def reset(self) -> None:
        self.cache: Any = None
        self.history: list[torch.Tensor] = []
        self.position = 0
        if self.internal_state:
            from transformers import DynamicCache

            weight = next(self.model.parameters())
            self.model._setup_cache(self.model.config, 1, weight.device, weight.dtype)
            self.cache = DynamicCache(config=self.model.config)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        token = token.view(1, 1)
        if self.mode == "prefix" or self.position == 0:  # the mode is settled by the first call
            self.history.append(token)
        if self.mode == "prefix":
            out = self.model(input_ids=torch.cat(self.history, dim=1), use_cache=False)
        else:
            kwargs: dict[str, Any] = {self.cache_name: self.cache, "use_cache": True}
            if self.internal_state:
                kwargs["position_ids"] = torch.tensor([[self.position]], device=token.device)
            out = self.model(input_ids=token, **kwargs)
            cache = getattr(out, self.cache_name, None)
            if cache is not None:
                self.cache = cache
            elif not self.internal_state:
                self.mode = "prefix"  # no cache came back: recompute the prefix from now on
        self.position += 1
        return out.logits[0, -1]


def _stepper(model: nn.Module) -> _HybridStepper | _HFStepper:
    from spikelm.models import HybridLM

    if isinstance(model, HybridLM):
        return _HybridStepper(model)
    if type(model).__module__.startswith("transformers.") and hasattr(model, "config"):
        return _HFStepper(model)
    raise ConfigError(
        f"cannot simulate a {type(model).__name__}: simulation steps spikelm HybridLM models and "
        "transformers causal LMs"
    )


# --- the driver ---------------------------------------------------------------------------------


def _compile_kernels(layers: Iterable[SpikingLinear], device: torch.device) -> float:
    """Compile (or load) the numba kernels the layers will run, before any timing: seconds."""
    layers = list(layers)
    if device.type != "cpu" or not any(layer.backend in ("numba", "auto") for layer in layers):
        return 0.0
    from spikelm.backends import numba_available

    if not numba_available():
        return 0.0
    from spikelm.backends import numba_events
    from spikelm.backends.events import accumulator_dtype

    return numba_events.warmup(tuple({accumulator_dtype(layer) for layer in layers}))


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


def _select(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    names = list(names)
    chosen = [n for n in names if any(fnmatchcase(n, p) for p in patterns)]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:6]) + (
                f", ... ({len(names)} in all)" if len(names) > 6 else ""
            )
            raise ConfigError(
                f"layer pattern {pattern!r} matches no spiking layer; layers: {shown}"
            )
    return chosen


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
    time is a chain of small ops, for which a single thread is often fastest on a busy CPU.

    Bad options raise :class:`ConfigError` / :class:`SpikeFileError` before any work is done.
    """
    dev = check_options(backend=backend, device=device, record=record)
    spiking = {n: m for n, m in model.named_modules() if isinstance(m, SpikingLinear)}
    if not spiking:
        raise ConfigError(
            "the model has no SpikingLinear layers: it is not spiking; convert it first"
        )
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 0:
        raise ConfigError(f"new_tokens must be a non-negative integer, got {new_tokens!r}")
    stepper = _stepper(model)
    ids = _as_ids(token_ids, _vocab_size(model))
    recorded = _select(spiking, list(layers)) if record is not None else []
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
    planned = len(ids) + max(new_tokens - 1, 0)

    from tqdm.auto import tqdm

    generated: list[int] = []
    kept: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        writer = None
        if record is not None:
            from spikelm.spikes import SpikeWriter

            writer = stack.enter_context(
                SpikeWriter(
                    record,
                    attrs={
                        "producer": "spikelm simulate",
                        "backend": used_backends,
                        "device": str(dev),
                        "input_tokens": len(ids),
                    },
                )
            )
            for name in recorded:
                layer = spiking[name]
                writer.add_layer(name, layer.in_features, layer.steps, layer.coding)
        probes = stack.enter_context(_probes(spiking, recorded))
        bar = stack.enter_context(
            tqdm(total=planned, unit="tok", desc="simulating", disable=None if progress else True)
        )
        stack.enter_context(torch.no_grad())
        if threads is not None:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        tokens = 0

        def feed(token: torch.Tensor) -> torch.Tensor:
            nonlocal tokens
            last_only = stepper.mode == "prefix"
            for probe in probes.values():
                probe.last_row_only = last_only
            logits = stepper(token)
            for probe in probes.values():
                probe.end_token(writer)
            if return_logits:
                kept.append(logits.detach().float().cpu())
            tokens += 1
            bar.update(1)
            return logits

        start = time.perf_counter()
        stepper.reset()
        for t in range(len(ids)):
            logits = feed(ids[t : t + 1])
        while len(generated) < new_tokens:
            next_id = logits.argmax(-1, keepdim=True)
            generated.append(int(next_id))
            if len(generated) == new_tokens or generated[-1] in stop:
                break
            logits = feed(next_id)
        for probe in probes.values():
            probe.flush(writer)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    layer_stats = {name: probe.stats for name, probe in probes.items()}
    pooled = summarize(layer_stats.values())
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
        stepping=stepper.mode,
        compile_seconds=compile_seconds,
        record=Path(record) if record is not None else None,
        recorded_layers=tuple(recorded),
        logits=torch.stack(kept) if return_logits else None,
    )


# --- a saved checkpoint, text in and text out (what the CLI runs) --------------------------------


@dataclass
class CheckpointSimulation:
    """A simulation of a saved checkpoint: the result and the generated text (if a tokenizer)."""

    result: SimulationResult
    text: str | None


def _decode(tokenizer: Any, ids: list[int]) -> str:
    if hasattr(tokenizer, "convert_ids_to_tokens"):  # a transformers tokenizer
        return tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode(ids)


def _stop_ids(model: nn.Module) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos])]


def simulate_checkpoint(
    directory: str | os.PathLike[str],
    *,
    text_file: str | os.PathLike[str] | None = None,
    prompt: str | None = None,
    new_tokens: int | None = None,
    max_tokens: int | None = None,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    record: str | os.PathLike[str] | None = None,
    layers: Sequence[str] = ("*",),
    progress: bool = True,
    threads: int | None = None,
) -> CheckpointSimulation:
    """Load the spiking checkpoint ``directory`` and :func:`simulate` it on a text or a prompt.

    Exactly one of ``text_file`` (teacher-forced; ``new_tokens`` defaults to 0) and ``prompt``
    (``new_tokens`` defaults to 32) is given; ``max_tokens`` keeps the first input tokens only.
    Generation stops at the model's end-of-sequence token (transformers models). Options, the
    recording path and the text file are checked before the checkpoint is loaded.
    """
    import spikelm

    if (text_file is None) == (prompt is None):
        raise ConfigError("give exactly one of a text file and a prompt")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    if new_tokens is not None and new_tokens < 0:
        raise ConfigError(f"new_tokens must be >= 0, got {new_tokens}")
    check_options(backend=backend, device=device, record=record)
    if text_file is not None:
        path = Path(text_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read text ({error})") from error
        where = str(path)
    else:
        text, where = prompt, "the prompt"
    if not text:
        raise ConfigError(f"{where} is empty: no tokens to simulate")
    model, tokenizer = spikelm.load(directory, with_tokenizer=True)
    if tokenizer is None:
        raise ConfigError(
            f"{directory}: the checkpoint has no tokenizer, so text cannot be encoded"
        )
    ids = list(tokenizer.encode(text))[:max_tokens]
    if not ids:
        raise ConfigError(f"{where} encodes to no tokens")
    if new_tokens is None:
        new_tokens = 0 if text_file is not None else 32
    result = simulate(
        model,
        ids,
        new_tokens=new_tokens,
        backend=backend,
        device=device,
        record=record,
        layers=layers,
        progress=progress,
        stop_ids=_stop_ids(model) if new_tokens else (),
        threads=threads,
    )
    return CheckpointSimulation(
        result, _decode(tokenizer, result.generated) if result.generated else None
    )


__all__ = [
    "CheckpointSimulation",
    "SimulationResult",
    "backend_names",
    "check_backend",
    "check_device",
    "check_options",
    "check_record_path",
    "simulate",
    "simulate_checkpoint",
]
