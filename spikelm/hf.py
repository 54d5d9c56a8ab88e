"""Hugging Face ``transformers`` integration: load a causal LM, find its projections, read ids.

``import spikelm`` never imports this module (it pulls in transformers); ``import spikelm.hf`` does.

Supported families are the ``transformers`` adapters of :mod:`spikelm.adapters`
(:func:`supported_model_types`); each was checked on CPU with the pure-PyTorch fallbacks (no
optional fast-kernel packages needed). See ``docs/hf-architectures.md``.

A local checkpoint directory is validated before transformers touches it, so that a wrong path, a
truncated or corrupt safetensors file, an unsupported ``model_type`` or a config that does not
match the weights ends in one line naming the file and the problem, not a traceback. While
transformers loads the weights its log records are held back (and its progress bar is hidden when
stderr is not a terminal): a load that fails on mismatched or missing weights prints only that
one line, not transformers' multi-line "LOAD REPORT" as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from spikelm.adapters import adapter_for, transformers_model_types
from spikelm.errors import CheckpointError, ConfigError, UnsupportedModelError
from spikelm.fileio import check_safetensors_file, one_line

SINGLE_WEIGHTS = "model.safetensors"
SHARDED_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def load_causal_lm(
    src: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a causal LM and its tokenizer from a local directory or a Hugging Face hub id.

    A local directory is validated first (``config.json``, supported ``model_type``, every
    safetensors file complete with a parseable header). The model comes back in eval mode with
    its inference-time weights in place (the family adapter's ``loaded`` fix-ups, e.g. a rescaling
    some families do on their first eval forward, run here, so converters see the weights the
    forward pass uses).

    Returns ``(model, tokenizer)``; ``tokenizer`` is ``None`` when the checkpoint has none.
    Raises :class:`CheckpointError` or :class:`UnsupportedModelError`.
    """
    path = Path(src).expanduser()
    local = path.exists() or _looks_like_path(str(src))
    if local:
        check_checkpoint_dir(path)
    location = str(path) if local else str(src)
    config = _load_config(location, trust_remote_code)
    check_model_type(config.model_type, location)
    held: list[logging.LogRecord] = []
    try:
        with _transformers_output_held(held):
            model, info = AutoModelForCausalLM.from_pretrained(
                location,
                config=config,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError, RuntimeError, StrictDataclassError) as exc:
        _replay(held)  # transformers' own failures may point at its report ("see above")
        raise CheckpointError(f"{location}: cannot load model: {one_line(exc)}") from exc
    _check_loading_info(info, location)  # its one line says what the held report would
    _replay(held)
    model.eval()
    adapter_for(model).loaded(model)
    return model, load_tokenizer(location, trust_remote_code=trust_remote_code)


def check_checkpoint_dir(path: Path) -> None:
    """Validate a local checkpoint directory without loading it; raise on the first problem.

    Checks: a directory holding ``config.json`` (valid JSON) with a supported ``model_type``,
    and safetensors weights (``model.safetensors`` or a sharded index) whose every file is
    complete and has a valid header.
    """
    check_config_file(path)
    for weights in weight_files(path):
        check_safetensors_file(weights)


def check_config_file(path: Path) -> None:
    """Raise unless ``path/config.json`` exists, is a JSON object and names a supported model_type."""
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: not a valid JSON config: {one_line(exc)}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(f"{config_file}: no model_type in config")
    check_model_type(config["model_type"], str(path))


def model_from_config(
    path: str | Path, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A randomly initialized causal LM built from ``path/config.json`` (no weights are read).

    The skeleton into which a saved state dict of a :func:`load_causal_lm` model is loaded: eval
    mode and the same inference-time state (the family adapter's ``loaded`` fix-ups applied, so the
    first forward does not rescale the loaded weights again).
    """
    path = Path(path)
    check_config_file(path)
    config = _load_config(str(path), trust_remote_code)
    model = AutoModelForCausalLM.from_config(
        config, dtype=dtype, trust_remote_code=trust_remote_code
    )
    model.eval()
    adapter_for(model).loaded(model)
    return model


def load_tokenizer(
    src: str | Path, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase | None:
    """The tokenizer of a local checkpoint directory or hub id, or ``None`` if it has none.

    A local directory without any tokenizer file gives ``None``; one whose tokenizer files do not
    load raises :class:`CheckpointError`. For a hub id any failure to load gives ``None``.
    """
    path = Path(src).expanduser()
    local = path.is_dir()
    if local and not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(
            str(path) if local else str(src), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        if not local:
            return None  # a hub repository without tokenizer files
        raise CheckpointError(
            f"{path}: tokenizer files present but unreadable: {one_line(exc)}"
        ) from exc


def check_model_type(model_type: str, where: str) -> None:
    """Raise :class:`UnsupportedModelError` unless a ``transformers`` adapter knows ``model_type``."""
    if model_type not in supported_model_types():
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(supported_model_types())}"
        )


def supported_model_types() -> tuple[str, ...]:
    """``model_type`` values of the families with a ``transformers`` adapter."""
    return transformers_model_types()


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: the single file, or every shard of the index."""
    single = path / SINGLE_WEIGHTS
    if single.is_file():
        return [single]
    index = path / SHARDED_INDEX
    if not index.is_file():
        raise CheckpointError(
            f"{path}: no {SINGLE_WEIGHTS} or {SHARDED_INDEX} "
            "(only safetensors checkpoints are supported)"
        )
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid safetensors index: {one_line(exc)}") from exc
    files = [path / shard for shard in shards]
    for shard in files:
        if not shard.is_file():
            raise CheckpointError(f"{shard}: weight shard listed in {SHARDED_INDEX} is missing")
    return files


def load_token_ids(path: str | Path, *, vocab_size: int | None = None) -> list[torch.Tensor]:
    """Read token-id sequences from a ``.npy`` file or a text file of whitespace-separated ints.

    ``.npy``: an integer array, 1-D (one sequence) or 2-D (one sequence per row). Any other
    suffix: text, one sequence per non-blank line. Ids must be ``>= 0`` and, if ``vocab_size`` is
    given, ``< vocab_size``. Returns one 1-D ``LongTensor`` per sequence.
    Raises :class:`~spikelm.errors.ConfigError` naming the file (and line) on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: token-id file not found")
    if path.suffix == ".npy":
        seqs = _read_npy_ids(path)
    else:
        seqs = _read_text_ids(path)
    if not seqs:
        raise ConfigError(f"{path}: no token ids in file")
    for i, seq in enumerate(seqs):
        low, high = int(seq.min()), int(seq.max())
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            bad = low if low < 0 else high
            limit = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
            raise ConfigError(f"{path}: sequence {i}: token id {bad} outside {limit}")
    return seqs


def _read_npy_ids(path: Path) -> list[torch.Tensor]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable .npy file: {one_line(exc)}") from exc
    if not np.issubdtype(array.dtype, np.integer) or array.ndim not in (1, 2):
        raise ConfigError(
            f"{path}: expected a 1-D or 2-D integer array, got {array.ndim}-D {array.dtype}"
        )
    rows = [array] if array.ndim == 1 else list(array)
    return [torch.from_numpy(np.asarray(row, dtype=np.int64)) for row in rows if row.size]


def _read_text_ids(path: Path) -> list[torch.Tensor]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read token ids: {one_line(exc)}") from exc
    seqs = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            seqs.append(torch.tensor([int(f) for f in fields], dtype=torch.long))
        except ValueError as exc:
            raise ConfigError(
                f"{path}:{lineno}: not whitespace-separated ints: {one_line(exc)}"
            ) from exc
    return seqs


def _check_loading_info(info: dict, location: str) -> None:
    """Turn transformers' loading report into one-line errors: mismatched or missing weights."""
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, ckpt_shape, model_shape = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(
            f"{location}: config.json does not match the weights: {key} is "
            f"{tuple(ckpt_shape)} in the checkpoint but {tuple(model_shape)} per the config{more}"
        )
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{location}: weights missing from the checkpoint: {missing[0]}{more}; "
            "config.json does not match the weights"
        )


def _load_config(location: str, trust_remote_code: bool) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, StrictDataclassError) as exc:
        raise CheckpointError(f"{location}: cannot load config: {one_line(exc)}") from exc


class _RecordHolder(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _transformers_output_held(records: list[logging.LogRecord]) -> Iterator[None]:
    """Collect the ``transformers`` loggers' records into ``records`` instead of printing them,
    and hide transformers' progress bars unless stderr is a terminal, while the block runs.
    """
    library = logging.getLogger("transformers")
    handlers, propagate = library.handlers, library.propagate
    library.handlers, library.propagate = [_RecordHolder(records)], False
    hide_bars = hf_logging.is_progress_bar_enabled() and not _stderr_is_terminal()
    if hide_bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        library.handlers, library.propagate = handlers, propagate
        if hide_bars:
            hf_logging.enable_progress_bar()


def _replay(records: list[logging.LogRecord]) -> None:
    """Print held ``transformers`` records through its usual handlers, in order."""
    library = logging.getLogger("transformers")
    for record in records:
        library.handle(record)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _looks_like_path(src: str) -> bool:
    """True for strings that can only be a filesystem path, never a hub id (``org/name``)."""
    return (
        os.path.isabs(src)
        or src.startswith((".", "~"))
        or src.endswith(("/", os.sep))
        or src.count("/") > 1
    )
