"""End-to-end jobs behind the CLI: load a source model, convert it, score it, save it.

Nothing here prints; the CLI formats what these functions return.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.adapters import TransformersAdapter, adapter_for_type
from spikelm.calibrate import prepare
from spikelm.checkpoint import save, source_metadata
from spikelm.config import SpikeConfig
from spikelm.convert import convert, spiking, w8a8
from spikelm.errors import ConfigError, SpikelmError, require_extra
from spikelm.fidelity import Score, compare, token_batches
from spikelm.outputs import check_output
from spikelm.report import Report, build
from spikelm.saturation import warn_saturation
from spikelm.simulate import SimulationResult
from spikelm.targets import check_patterns


@dataclass
class ConversionResult:
    """What a conversion produced: the checkpoint directory and, if evaluated, the scores."""

    out_dir: Path
    config: SpikeConfig
    scores: list[Score] | None
    eval_tokens: int
    calib_tokens: int


def load_source(
    src: str | os.PathLike[str], *, allow_unused_weights: bool = False
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer or None)`` from a model directory (its family's adapter loads it) or a
    Hugging Face hub id; tensors the architecture does not use are an error unless
    ``allow_unused_weights``."""
    path = Path(os.path.expanduser(src))
    if (path / "spikelm.json").is_file():
        raise ConfigError(f"{path}: already a spiking checkpoint; convert its source model")
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            raise SpikelmError(f"{config_file}: unreadable model config ({error})") from error
        adapter = adapter_for_type(model_type, str(path))
        if not isinstance(adapter, TransformersAdapter):
            return adapter.load(path)
    require_extra("hf", "transformers", f"{src}: loading Hugging Face checkpoints")
    from spikelm.hf import load_causal_lm

    return load_causal_lm(src, allow_unused_weights=allow_unused_weights)


def token_ids(
    tokenizer: Any,
    *,
    text_file: str | None,
    ids_file: str | None,
    source: str,
    what: str,
    vocab_size: int | None = None,
) -> torch.Tensor | None:
    """1-D token ids from a text file (through the tokenizer) or an ids file; ``None`` if neither."""
    if ids_file is not None:
        from spikelm.hf import load_token_ids

        return torch.cat(load_token_ids(ids_file, vocab_size=vocab_size))
    if text_file is None:
        return None
    path = Path(text_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read {what} text ({error})") from error
    if tokenizer is None:
        raise ConfigError(
            f"{source} has no tokenizer; pass token ids with --{what}-ids FILE "
            "(.npy, or a text file of whitespace-separated integers)"
        )
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def convert_model(
    model: nn.Module,
    config: SpikeConfig,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    calib_ids: torch.Tensor | None,
    eval_ids: torch.Tensor | None,
    seq_len: int = 256,
    calib_windows: int = 32,
    eval_windows: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    source: str | os.PathLike[str] | None = None,
    patterns: dict[str, Sequence[str]] | None = None,
    fuse: bool = True,
    origin: str | None = None,
) -> ConversionResult:
    """Calibrate and convert ``model``; score it against the ANN and W8A8 if ``eval_ids``; save.

    ``out_dir`` follows :func:`spikelm.outputs.check_output` (``overwrite``; never the
    ``source``), checked before any work. ``patterns`` maps an option name to user-given layer
    patterns, each of which must match one of the model's linear layers. ``fuse``: fuse layers
    that share an input (:mod:`spikelm.fusion`), found on the calibration windows or, without
    calibration data, on a short traced forward. ``origin`` (default ``source``) is recorded in
    the manifest as the model converted (``spikelm eval`` rebuilds its baselines from it).
    """
    sources = [] if source is None else [source]
    check_output(out_dir, "checkpoint", overwrite=overwrite, sources=sources)
    for option, given in (patterns or {}).items():
        check_patterns(model, given, option)
    calib = calibration_windows(calib_ids, seq_len, calib_windows)
    if calib is None and config.needs_calibration:
        raise ConfigError(
            f"threshold={config.threshold} / smooth_alpha={config.smooth_alpha} / "
            f"fisher_power={config.fisher_power} / recipe={config.recipe} need calibration data: "
            "pass --calib FILE or --calib-ids FILE"
        )
    evaluation = _windows(eval_ids, seq_len, eval_windows, "evaluation")
    reference = copy.deepcopy(model) if evaluation is not None else None
    if calib is None:  # SpikingBrain's dynamic rule needs no calibration data
        spiking_model = convert(prepare(model, config), fuse=fuse)
    else:
        spiking_model = spiking(model, config, calib, progress=progress, fuse=fuse)
    scores = None
    if evaluation is not None:
        baseline = w8a8(copy.deepcopy(reference), config)
        scores = compare(
            reference, {"W8A8 fake-quant": baseline, "spiking": spiking_model}, evaluation
        )
        if calib is None:  # no calibration run measured it (spiking() does when there is one)
            warn_saturation(scores[-1].layer_stats or {}, "on the evaluation data")
    target = save(
        spiking_model, out_dir, tokenizer=tokenizer, overwrite=overwrite, sources=sources,
        metadata=source_metadata(origin or source),
    )  # fmt: skip
    return ConversionResult(
        target,
        config,
        scores,
        eval_tokens=sum(b.numel() for b in evaluation or []),
        calib_tokens=sum(b.numel() for b in calib or []),
    )


def calibration_windows(
    ids: torch.Tensor | None, seq_len: int, max_windows: int
) -> list[torch.Tensor] | None:
    """The calibration batches of 1-D token ids: windows of ``seq_len`` tokens, one per batch,
    at most ``max_windows``; ``None`` without ids."""
    return _windows(ids, seq_len, max_windows, "calibration", batch_size=1)


def _windows(
    ids: torch.Tensor | None,
    seq_len: int,
    max_windows: int | None,
    what: str,
    batch_size: int = 4,
) -> list[torch.Tensor] | None:
    if ids is None:
        return None
    batches = token_batches(ids, seq_len, batch_size=batch_size, max_windows=max_windows)
    if not batches:
        raise ConfigError(
            f"the {what} set is empty: it needs at least {seq_len} tokens (got {ids.numel()})"
        )
    return batches


def demo(out_dir: str | os.PathLike[str], *, progress: bool = True) -> ConversionResult:
    """Convert the built-in demo model with SpikingBrain's recipe and score it on its eval split.

    Replaces its own earlier output (a spiking checkpoint), so the quick start can run twice.
    """
    from spikelm.models import ByteTokenizer, load_demo_model, load_demo_texts
    from spikelm.models.demo import DEMO_SOURCE

    tokenizer = ByteTokenizer()
    calib_text, eval_text = load_demo_texts()
    return convert_model(
        load_demo_model(),
        SpikeConfig(),
        out_dir,
        tokenizer=tokenizer,
        calib_ids=torch.tensor(tokenizer.encode(calib_text)),
        eval_ids=torch.tensor(tokenizer.encode(eval_text)),
        progress=progress,
        overwrite=True,
        origin=DEMO_SOURCE,
    )


@dataclass
class CheckpointSimulation:
    """A simulation of a saved checkpoint: the result and the generated text (if a tokenizer)."""

    result: SimulationResult
    text: str | None
    model: nn.Module


def decode_text(tokenizer: Any, ids: list[int]) -> str:
    """The text of token ids (a transformers tokenizer's special tokens left out)."""
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
    overwrite: bool = False,
) -> CheckpointSimulation:
    """Load the spiking checkpoint ``directory`` and :func:`simulate` it on a text or a prompt.

    Exactly one of ``text_file`` (teacher-forced; ``new_tokens`` defaults to 0) and ``prompt``
    (``new_tokens`` defaults to 32) is given; ``max_tokens`` keeps the first input tokens only.
    Generation stops at the model's end-of-sequence token (transformers models). Options, the
    recording path and the text file are checked before the checkpoint is loaded.
    """
    import spikelm
    from spikelm.simulate import check_options, simulate

    if (text_file is None) == (prompt is None):
        raise ConfigError("give exactly one of a text file and a prompt")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    if new_tokens is not None and new_tokens < 0:
        raise ConfigError(f"new_tokens must be >= 0, got {new_tokens}")
    check_options(backend=backend, device=device, record=record, overwrite=overwrite)
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
        overwrite=overwrite,
    )
    return CheckpointSimulation(
        result, decode_text(tokenizer, result.generated) if result.generated else None, model
    )


def report(
    source: str | os.PathLike[str],
    *,
    models: Sequence[str],
    text_file: str | os.PathLike[str] | None = None,
    prompt: str | None = None,
    new_tokens: int | None = None,
    max_tokens: int | None = None,
    backend: str | None = None,
    sweep_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Report:
    """The energy and sparsity report of a spiking checkpoint run on a text or a prompt, or of a
    spike recording (``.h5``). Energy model names are checked before anything runs."""
    from spikelm.estimators.energy import get_energy_model

    for name in models:
        get_energy_model(name)
    sweep = read_sweep(sweep_file) if sweep_file is not None else None
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{path}: no such spiking checkpoint or recording")
    if path.is_dir() and text_file is None and prompt is None:
        raise ConfigError(
            f"{path}: a checkpoint is reported by running it: pass --text or --prompt"
        )
    if path.is_file():
        if text_file is not None or prompt is not None:
            raise ConfigError(f"{path}: a recording is reported as recorded; drop --text/--prompt")
        from spikelm.estimators.accounting import from_recording

        account, levels, meta = from_recording(path)
        return build(
            account, source=str(path), levels=levels, models=models, meta=meta, sweep=sweep
        )
    run = simulate_checkpoint(
        path,
        text_file=text_file,
        prompt=prompt,
        new_tokens=new_tokens,
        max_tokens=max_tokens,
        backend=backend,
        progress=progress,
    )
    from spikelm.encoders import get_coder
    from spikelm.estimators.accounting import from_simulation

    config = run.model._spikelm_config
    low, high = get_coder(config.coding).count_range(config.steps)
    meta = {"coding": config.coding, "steps": config.steps, "k": config.k,
            "threshold": config.threshold, "backend": run.result.backend,
            "input_tokens": run.result.input_tokens, "generated": len(run.result.generated)}  # fmt: skip
    return build(
        from_simulation(run.result, run.model),
        source=str(path),
        levels=high - low + 1,
        models=models,
        meta=meta,
        sweep=sweep,
    )


SWEEP_KEYS = ("k", "perplexity", "sparsity", "energy_ratio")


def read_sweep(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """A k sweep for the report's trade-off plot: a JSON list of objects with the numbers
    ``k``, ``perplexity``, ``sparsity`` and ``energy_ratio`` (SNN energy / FP16 ANN)."""
    import math

    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable JSON sweep ({error})") from error
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: a sweep is a non-empty JSON list of objects")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: entry {index} is not an object")
        for key in SWEEP_KEYS:
            value = row.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value):
                raise ConfigError(f"{path}: entry {index}: {key} must be a finite number")
    return [{key: float(row[key]) for key in SWEEP_KEYS} for row in rows]
