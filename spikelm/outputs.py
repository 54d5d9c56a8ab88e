"""Overwrite rules for everything spikelm writes, in one place.

An output never replaces anything spikelm did not write. A target that does not exist (or an
empty directory, for directory outputs) is written. An existing spikelm output of the same kind
(a spiking checkpoint, a spike recording, a raster plot, a report) is replaced only with
``overwrite=True`` (``--overwrite``). Anything else is refused with one line saying why: a file
or directory of another kind, a non-empty directory spikelm did not write, the source itself, a
directory that contains the source, and the working directory or one of its parents (``.``,
``..``). Replacement itself stays atomic (``spikelm.fileio``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from spikelm.errors import ConfigError
from spikelm.spikes.format import FORMAT as RECORDING_FORMAT

PLOT_MARKER = b"spikelm raster"
"""Written into every plot's metadata (PNG text chunk), so a later run can tell it is spikelm's."""
REPORT_MARKER = b"spikelm report"
"""The generator named at the top of every report file (JSON, Markdown, HTML)."""
EVAL_MARKER = b'"generator": "spikelm eval"'
"""The first key of every ``spikelm eval`` results file."""


def _is_checkpoint(path: Path) -> bool:
    from spikelm.checkpoint import FORMAT, MANIFEST

    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _is_recording(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            return handle.attrs.get("format") == RECORDING_FORMAT
    except (OSError, ValueError, ImportError):
        return False


def _marked(marker: bytes, window: int = 1 << 16) -> Callable[[Path], bool]:
    """A test that a file carries ``marker`` in its first ``window`` bytes (metadata, header)."""

    def test(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            with open(path, "rb") as handle:
                return marker in handle.read(window)
        except OSError:
            return False

    return test


KINDS: dict[str, tuple[str, bool, Callable[[Path], bool]]] = {
    "checkpoint": ("a spiking checkpoint", True, _is_checkpoint),
    "recording": ("a spike recording", False, _is_recording),
    "plot": ("a spikelm plot", False, _marked(PLOT_MARKER)),
    "report": ("a spikelm report", False, _marked(REPORT_MARKER)),
    "eval": ("a spikelm eval result", False, _marked(EVAL_MARKER)),
    "onnx": ("a spikelm ONNX export", False, _marked(b"spikelm")),
    "nir": ("a spikelm NIR export", False, _marked(b"spikelm-nir", window=1 << 20)),
}
"""kind -> (description, is a directory, test that an existing path is spikelm's of that kind)."""


def check_output(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike[str]] = (),
    option: str = "--out",
) -> Path:
    """Raise :class:`ConfigError` unless ``path`` may be written as an output of ``kind``
    (a key of :data:`KINDS`) under the rules above; returns
    ``path``.

    ``sources`` are the inputs of the command (never replaced, nor any directory holding one);
    ``option`` names the command-line option in the messages.
    """
    what, is_dir, is_kind = KINDS[kind]
    target = Path(path)
    resolved = target.resolve()
    where = f"{option} {target}"
    for source in sources:
        source = Path(source).expanduser().resolve()
        if resolved == source or resolved in source.parents:
            raise ConfigError(f"{where}: would replace the source {source}; choose another path")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ConfigError(f"{where}: would replace the working directory or a parent of it")
    if not target.exists() and not target.is_symlink():
        return target
    if target.is_symlink():
        raise ConfigError(f"{where}: is a symbolic link; spikelm does not replace links")
    if is_dir and target.is_dir() and not any(target.iterdir()):
        return target  # an empty directory: nothing to lose
    if not is_kind(target):
        found = "a directory" if target.is_dir() else "a file"
        raise ConfigError(
            f"{where}: exists and is {found} spikelm did not write as {what}; "
            "refusing to replace it (choose another path)"
        )
    if not overwrite:
        raise ConfigError(f"{where}: {what} is already there; pass --overwrite to replace it")
    return target
