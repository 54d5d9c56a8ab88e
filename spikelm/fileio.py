"""File plumbing shared by the package: atomic writes and safetensors validation.

Atomic writes build output beside its target, then rename it into place in one step (a directory
merged into an existing one: one step per file). An interrupted or failed write leaves the target
as it was (absent, or the old version) and no partial file that looks complete; temporaries are
named ``.<name>.partial-*`` and removed.

:func:`check_safetensors_file` validates a safetensors file before anything loads it, so that a
truncated or corrupt file ends in one line naming the file and the problem. This module imports
no ``transformers``: :mod:`spikelm.checkpoint` uses it as well as :mod:`spikelm.hf`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from safetensors import safe_open

from spikelm.errors import CheckpointError, SpikelmError

_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    merge: Sequence[str] | None = None,
) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``, published as ``path`` if the block succeeds.

    By default the staging directory replaces ``path`` as a whole: an existing directory is renamed
    aside, the staging directory renamed into place, and the old one deleted.

    With ``merge`` (the names of the files the block writes, and only those), an existing ``path``
    is kept: each named file is moved into it by its own ``os.replace``, in the given order, and
    every other file in ``path`` stays. Each file is then replaced atomically, the set of them is
    not. A new ``path`` is still created by one rename of the staging directory.

    Before publishing, staged files and directories get the modes the process's umask gives new
    ones (0644 / 0755 under the usual umask 022): ``mkdtemp`` creates them owner-only.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SpikelmError(f"{target}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if merge is not None and sorted(os.listdir(staging)) != sorted(merge):
            raise ValueError(
                f"atomic_directory: the block staged {sorted(os.listdir(staging))}, "
                f"not the merge names {list(merge)}"
            )
        mask = _umask()
        _set_modes(staging, 0o666 & ~mask, 0o777 & ~mask)
        if merge is not None and target.is_dir():
            for name in merge:
                os.replace(staging / name, target / name)
        elif target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_modes(directory: Path, file_mode: int, dir_mode: int) -> None:
    """chmod ``directory`` and its subdirectories to ``dir_mode``, its files to ``file_mode``."""
    for root, _, files in os.walk(directory):
        os.chmod(root, dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def partial_path(path: Path) -> Path:
    """A new temporary sibling ``.<name>.partial-<pid>-<random>`` for an atomic write of ``path``.

    The random part keeps two writers of one target in one process apart.
    """
    return path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path that replaces ``path`` when the block succeeds."""
    target = Path(path)
    if not target.parent.is_dir():
        raise SpikelmError(f"{target.parent}: directory does not exist")
    staging = partial_path(target)
    try:
        yield staging
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def check_safetensors_file(file: str | os.PathLike[str]) -> None:
    """Raise :class:`~spikelm.errors.CheckpointError` unless ``file`` is a complete safetensors file.

    The header (8-byte little-endian length + JSON) must parse, the file size must equal the end
    of the last tensor's data (truncation and trailing bytes are reported as such), and
    ``safetensors.safe_open`` must accept it (it checks dtypes, shapes against offsets, overlaps).
    """
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{file}: corrupt safetensors header (file is {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{file}: corrupt safetensors header (header length {header_len} "
                    f"does not fit in a {size}-byte file)"
                )
            raw_header = fh.read(header_len)
    except OSError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{file}: cannot read safetensors file: {one_line(exc)}") from exc
    try:
        header = json.loads(raw_header)
        data_end = max(
            (
                int(entry["data_offsets"][1])
                for key, entry in header.items()
                if key != "__metadata__"
            ),
            default=0,
        )
    except (ValueError, AttributeError, IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header: {one_line(exc)}") from exc
    expected = 8 + header_len + data_end
    if size < expected:
        raise CheckpointError(f"{file}: truncated safetensors file ({size} of {expected} bytes)")
    if size > expected:
        raise CheckpointError(
            f"{file}: corrupt safetensors file ({size - expected} bytes after the last tensor)"
        )
    try:
        with safe_open(file, framework="pt"):
            pass
    except Exception as exc:  # safetensors raises its own SafetensorError and plain OSError
        raise CheckpointError(f"{file}: corrupt safetensors file: {one_line(exc)}") from exc


def safetensors_header(file: str | os.PathLike[str]) -> dict[str, dict]:
    """``name -> {"dtype", "shape", "data_offsets"}`` of a safetensors file (header only)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def tensor_files(directory: Path, single: str, index: str) -> dict[str, Path]:
    """Which file holds each tensor of a safetensors checkpoint: the ``single`` file, or the
    shards of the ``index`` (Hugging Face's ``weight_map``). Every file is checked complete
    (:func:`check_safetensors_file`); the index must name existing shards, each tensor in the
    shard that holds it, and every tensor of every shard."""
    if (directory / single).is_file():
        check_safetensors_file(directory / single)
        return dict.fromkeys(safetensors_header(directory / single), directory / single)
    index_file = directory / index
    if not index_file.is_file():
        raise CheckpointError(f"{directory}: no {single} or {index}")
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        pairs = [(str(name), str(shard)) for name, shard in weight_map.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{index_file}: not a valid safetensors index: {one_line(exc)}"
        ) from exc
    held: dict[str, set[str]] = {}
    for shard in sorted({shard for _, shard in pairs}):
        file = directory / shard
        if Path(shard).name != shard or not file.is_file():
            raise CheckpointError(f"{file}: weight shard listed in {index} is missing")
        check_safetensors_file(file)
        held[shard] = set(safetensors_header(file))
    for name, shard in pairs:
        if name not in held[shard]:
            raise CheckpointError(f"{index_file}: tensor {name} is not in its shard {shard}")
    listed = {name for name, _ in pairs}
    for shard, names in held.items():
        extra = sorted(names - listed)
        if extra:
            raise CheckpointError(f"{directory / shard}: tensor {extra[0]} is not in {index}")
    return {name: directory / shard for name, shard in pairs}


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (whitespace collapsed, cut to ``limit`` characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
