"""Hugging Face ``transformers`` integration: load a causal LM, find its projections, read ids.

``import spikelm`` never imports this module (it pulls in transformers); ``import spikelm.hf`` does.

Supported families are the ``transformers`` adapters of :mod:`spikelm.adapters`
(:func:`supported_model_types`); each was checked on CPU with the pure-PyTorch fallbacks (no
optional fast-kernel packages needed). See ``docs/hf-architectures.md``.

A local checkpoint directory is validated before transformers touches it, so that a wrong path, a
truncated or corrupt safetensors file, a non-float weight, an unsupported ``model_type`` or a
config that does not match the weights ends in one line naming the file and the problem, not a
traceback. Loading is strict: checkpoint tensors the architecture does not use (unless allowed)
and NaN or infinite weights are errors too. A source that is neither a directory nor a plausible
hub id fails before any network access (:func:`check_source`). While
transformers loads the weights its log records are held back (and its progress bar is hidden when
stderr is not a terminal): a load that fails on mismatched or missing weights prints only that
one line, not transformers' multi-line "LOAD REPORT" as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    StrictDataclassError,
)
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
from spikelm.fileio import one_line, tensor_files

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
# one part of a hub id (``org`` or ``name``): letters, digits, '-', '_', '.', no '-'/'.' at the ends
_HUB_ID_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_HUB_TIMEOUT_S = 10.0
_FINITE_CHECK_CHUNK = 1 << 22  # elements per isfinite pass: a few MB of temporaries at most


def load_causal_lm(
    src: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    allow_unused_weights: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a causal LM and its tokenizer from a local directory or a Hugging Face hub id.

    A string ``src`` goes through :func:`check_source` first; a :class:`~pathlib.Path` is always
    a local directory. A local directory is validated before loading (``config.json``, supported
    ``model_type``, every safetensors file complete with a parseable header and only
    floating-point weights). Loading is strict: checkpoint tensors the architecture does not use
    are an error unless ``allow_unused_weights`` (they are then dropped), and so is a NaN or
    infinite value in any floating parameter or buffer. The model comes back in eval mode with its
    inference-time weights in place (the family adapter's ``loaded`` fix-ups, e.g. a rescaling
    some families do on their first eval forward, run here, so converters see the weights the
    forward pass uses).

    Returns ``(model, tokenizer)``; ``tokenizer`` is ``None`` when the checkpoint has none.
    Raises :class:`CheckpointError` or :class:`UnsupportedModelError`.
    """
    if not isinstance(src, os.PathLike):
        check_source(src)
    path = Path(os.path.expanduser(src))
    local = isinstance(src, os.PathLike) or path.exists()
    if local:
        check_checkpoint_dir(path)
    location = str(path) if local else str(src)
    config = _load_config(location, trust_remote_code)
    check_model_type(config.model_type, location)
    if local:
        check_weight_dtypes(path, config, trust_remote_code=trust_remote_code)
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
    _check_loading_info(info, location, config.model_type, allow_unused_weights)
    _replay(held)  # only harmless reports (e.g. allowed unused weights) get this far
    check_finite_weights(model, location)
    model.eval()
    adapter_for(model).loaded(model)
    return model, load_tokenizer(location, trust_remote_code=trust_remote_code)


def check_source(src: str) -> None:
    """Raise :class:`CheckpointError` unless ``src`` is an existing path or a usable hub id.

    Without any network access, a ``src`` that does not exist locally must be a plausible
    Hugging Face hub id (``name`` or ``org/name``: letters, digits, ``-``, ``_``, ``.``; no
    ``--`` or ``..``; no ``-``/``.`` at either end of a part; at most 96 characters a part), and
    an ``org/name`` whose ``org`` is a local directory is taken as a mistyped local path. A hub id
    not in the local cache must then be reachable: offline mode (``HF_HUB_OFFLINE``) is an
    error at once, and otherwise one request (no retries) checks the hub has its ``config.json``.
    """
    if Path(os.path.expanduser(src)).exists():
        return
    if not _is_hub_id(src):
        raise CheckpointError(
            f"{src}: no such model directory, and not a Hugging Face hub id (expected 'org/name')"
        )
    org = src.partition("/")[0]
    if "/" in src and Path(org).is_dir():
        raise CheckpointError(
            f"{src}: no such model directory (taken as a local path: {org!r} is a local directory)"
        )
    if isinstance(try_to_load_from_cache(src, "config.json"), str):
        return
    if _hub_offline():
        raise CheckpointError(
            f"{src}: no such model directory, and this Hugging Face hub model is not in the local "
            "cache while offline mode is on (HF_HUB_OFFLINE)"
        )
    _check_hub_model(src)


def check_checkpoint_dir(path: Path) -> None:
    """Validate a local checkpoint directory without loading it; raise on the first problem.

    Checks: a directory holding ``config.json`` (valid JSON) with a supported ``model_type``,
    and safetensors weights (``model.safetensors`` or a sharded index) whose every file is
    complete and has a valid header.
    """
    check_config_file(path)
    weight_files(path)


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
    """A causal LM built from ``path/config.json`` with its weights left uninitialized.

    The skeleton into which a saved state dict of a :func:`load_causal_lm` model is loaded: eval
    mode and the same inference-time state (the family adapter's ``loaded`` fix-ups applied, so the
    first forward does not rescale the loaded weights again). Its weights are allocated but never
    written (``transformers``' ``no_init_weights``), so the memory of a layer that loading then
    replaces (a linear layer becoming a spiking one) is never touched: a 7B skeleton costs what
    is loaded into it, not 28 GB of float32 initial values. Buffers computed at construction
    (rotary frequencies) are built as usual.
    """
    from transformers.initialization import no_init_weights

    path = Path(path)
    check_config_file(path)
    config = _load_config(str(path), trust_remote_code)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    model.tie_weights()  # no_init_weights skips init_weights, which also ties the embeddings
    model.eval()
    adapter_for(model).loaded(model)
    return model


def meta_model(path: str | Path) -> PreTrainedModel:
    """The causal LM of ``path/config.json`` on the ``meta`` device, in eval mode: names, shapes
    and dtypes (float32, as :func:`load_causal_lm` builds it), no memory."""
    path = Path(path)
    check_config_file(path)
    config = _load_config(str(path), False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def load_tokenizer(
    src: str | Path, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase | None:
    """The tokenizer of a local checkpoint directory or hub id, or ``None`` if it has none.

    A local directory without any tokenizer file gives ``None``; one whose tokenizer files do not
    load raises :class:`CheckpointError`. For a hub id any failure to load gives ``None``.
    """
    path = Path(os.path.expanduser(src))
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


def check_weight_dtypes(
    path: Path, config: PretrainedConfig, *, trust_remote_code: bool = False
) -> None:
    """Raise :class:`CheckpointError` naming the first tensor of ``path``'s safetensors files
    whose dtype (from the file headers, no data read) is not floating point.

    Integer or bool tensors pass only where the architecture of ``config`` keeps a non-float
    tensor of that name (checked on a weightless model skeleton, built only in that case).
    """
    odd = [
        (file, name, dtype)
        for file in weight_files(path)
        for name, dtype in _safetensors_dtypes(file).items()
        if not dtype.startswith(("F", "BF"))
    ]
    if not odd:
        return
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    kept = {name for name, t in skeleton.state_dict().items() if not t.is_floating_point()}
    for file, name, dtype in odd:
        if name not in kept:
            raise CheckpointError(
                f"{file}: tensor {name} has dtype {dtype}; model weights must be floating point"
            )


def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """Raise :class:`CheckpointError` naming the first floating parameter or buffer of ``model``
    holding a NaN or infinite value (checked in chunks, so the temporaries stay small)."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), _FINITE_CHECK_CHUNK):
            chunk = flat[start : start + _FINITE_CHECK_CHUNK]
            bad = (~torch.isfinite(chunk)).nonzero()
            if len(bad):
                value = float(chunk[int(bad[0, 0])])
                index = np.unravel_index(start + int(bad[0, 0]), tuple(tensor.shape))
                at = tuple(int(i) for i in index)
                raise CheckpointError(
                    f"{where}: weight {name} holds non-finite values ({value} at index {at})"
                )


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
    """The safetensors files of a checkpoint directory, each checked complete: the single file,
    or every shard of the index (which must name each shard's tensors and nothing else,
    :func:`spikelm.fileio.tensor_files`)."""
    if not (path / SINGLE_WEIGHTS).is_file() and not (path / SHARDED_INDEX).is_file():
        raise CheckpointError(
            f"{path}: no {SINGLE_WEIGHTS} or {SHARDED_INDEX} "
            "(only safetensors checkpoints are supported)"
        )
    return list(dict.fromkeys(tensor_files(path, SINGLE_WEIGHTS, SHARDED_INDEX).values()))


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
    """The rows of a ``.npy`` integer array; the header is checked against the file size before
    any data is read, so a header claiming a huge shape allocates nothing."""
    try:
        with open(path, "rb") as fh:
            shape, fortran_order, dtype = _read_npy_header(fh)
            if not np.issubdtype(dtype, np.integer) or len(shape) not in (1, 2):
                raise ConfigError(
                    f"{path}: expected a 1-D or 2-D integer array, got {len(shape)}-D {dtype}"
                )
            expected = math.prod(shape) * dtype.itemsize
            held = os.fstat(fh.fileno()).st_size - fh.tell()
            if min(shape) < 0 or held != expected:
                raise ConfigError(
                    f"{path}: not a readable .npy file: header declares shape {shape} of {dtype}, "
                    f"but the file holds {held} bytes of data"
                )
            data = fh.read(expected)
    except OSError as exc:
        raise ConfigError(f"{path}: not a readable .npy file: {one_line(exc)}") from exc
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ConfigError(f"{path}: token id {int(array.max())} does not fit in int64")
    rows = [array] if array.ndim == 1 else list(array)
    return [torch.from_numpy(row.astype(np.int64)) for row in rows if row.size]


def _read_npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of an open ``.npy`` file, left just after the header."""
    try:
        major, _ = np.lib.format.read_magic(fh)
        if major not in (1, 2, 3):
            raise ValueError(f"unsupported .npy format version {major}")
        # a 3.0 header differs from 2.0 only in being UTF-8, which no integer dtype needs
        if major == 1:
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:  # numpy parses the header with tokenize, ast and np.dtype: each
        # raises its own exception types (ValueError, SyntaxError, TokenError, ...) on bad input
        raise ConfigError(f"{fh.name}: not a readable .npy file: {one_line(exc)}") from exc
    return tuple(int(n) for n in shape), fortran_order, dtype  # a bool dim is a valid int


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
            ids = [int(f) for f in fields]
        except ValueError as exc:
            raise ConfigError(
                f"{path}:{lineno}: not whitespace-separated ints: {one_line(exc)}"
            ) from exc
        too_big = next((i for i in ids if not -(2**63) <= i < 2**63), None)
        if too_big is not None:
            raise ConfigError(f"{path}:{lineno}: token id {too_big:.3g} does not fit in int64")
        seqs.append(torch.tensor(ids, dtype=torch.long))
    return seqs


def _check_loading_info(
    info: dict, location: str, model_type: str, allow_unused_weights: bool
) -> None:
    """Turn transformers' loading report into one-line errors: mismatched, missing or (unless
    allowed) unused weights. Unused are only those transformers itself reports as unexpected
    (it already ignores e.g. stale ``rotary_emb.inv_freq`` buffers)."""
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
    unused = sorted(info.get("unexpected_keys") or ())
    if unused and not allow_unused_weights:
        raise CheckpointError(
            f"{location}: {len(unused)} checkpoint tensor(s) not used by the {model_type} "
            f"architecture, first {unused[0]}; config.json does not match the weights "
            "(or allow unused weights to drop them)"
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


def _is_hub_id(src: str) -> bool:
    """True for ``name`` or ``org/name`` following the Hugging Face hub's repository id rules."""
    parts = src.split("/")
    return (
        len(parts) <= 2
        and all(_HUB_ID_PART.fullmatch(part) for part in parts)
        and "--" not in src
        and ".." not in src
        and not src.endswith(".git")
    )


def _hub_offline() -> bool:
    """Hub offline mode: set when huggingface_hub was imported, or in the environment since."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return hub_constants.HF_HUB_OFFLINE or flag.upper() in {"1", "ON", "YES", "TRUE"}


def _check_hub_model(repo_id: str) -> None:
    """One request, without the retries a download makes, for the hub model's ``config.json``."""
    url = hf_hub_url(repo_id, "config.json", endpoint=hub_constants.ENDPOINT)
    try:
        get_hf_file_metadata(url, timeout=_HUB_TIMEOUT_S)
    except GatedRepoError as exc:
        raise CheckpointError(
            f"{repo_id}: gated Hugging Face hub model; accept its terms and log in (hf auth login)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"{repo_id}: no such model directory, and no such Hugging Face hub model "
            "(or it is private: log in with hf auth login)"
        ) from exc
    except RemoteEntryNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: the Hugging Face hub model has no config.json") from exc
    except HfHubHTTPError as exc:
        raise CheckpointError(
            f"{repo_id}: Hugging Face hub request failed: {one_line(exc)}"
        ) from exc
    except Exception as exc:  # the HTTP client's own connection, timeout and TLS errors
        raise CheckpointError(
            f"{repo_id}: not a local directory, and the Hugging Face hub is unreachable and the "
            f"model is not in the local cache: {one_line(exc)}"
        ) from exc


def _safetensors_dtypes(file: Path) -> dict[str, str]:
    """``{tensor name: safetensors dtype}`` from the header of a file that passed
    :func:`~spikelm.fileio.check_safetensors_file`."""
    with open(file, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return {name: entry["dtype"] for name, entry in header.items() if name != "__metadata__"}
