"""Hardware energy profiles: per-event figures of neuromorphic chips, read from JSON files.

A profile prices a spiking run as

    E = e_synop * SOP + e_neuron * neuron updates + e_spike * spike events   (e_spike optional)

Schema (every key below is required unless marked optional; any other key is an error)::

    {
      "name": "loihi", "title": "Intel Loihi", "source": "Davies et al., IEEE Micro 2018",
      "node": "14 nm",
      "notes": "...",                                     (optional)
      "fields": {
        "e_synop":  {"value": 23.6, "unit": "pJ", "provenance": "measured", "source": "..."},
        "e_neuron": {...},
        "e_spike":  {...}                                 (optional)
      }
    }

``unit`` is ``fJ``, ``pJ`` or ``nJ`` (stored in pJ); ``provenance`` is ``measured`` (silicon),
``simulated`` (pre-silicon) or ``minimum`` (a best-case or lower-bound figure). Every problem
raises :class:`~spikelm.errors.ConfigError` with one line naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from spikelm.errors import ConfigError

PROVENANCES = ("measured", "simulated", "minimum")
UNITS = {"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3}
REQUIRED_FIELDS = ("e_synop", "e_neuron")
OPTIONAL_FIELDS = ("e_spike",)
_TOP_REQUIRED = ("name", "title", "source", "node", "fields")
_TOP_OPTIONAL = ("notes",)
_FIGURE_KEYS = ("value", "unit", "provenance", "source")


@dataclass(frozen=True)
class Figure:
    """One published per-event energy, in pJ, with where it comes from."""

    pj: float
    provenance: str
    source: str


@dataclass(frozen=True)
class Profile:
    """A validated hardware profile."""

    name: str
    title: str
    source: str
    node: str
    e_synop: Figure
    e_neuron: Figure
    e_spike: Figure | None = None
    notes: str = ""
    path: str = ""


def _fail(path: str, field: str, problem: str) -> ConfigError:
    return ConfigError(f"energy profile {path}: {field}: {problem}")


def _text(data: dict[str, Any], key: str, path: str, where: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{where}{key}", f"must be a non-empty string, got {value!r}")
    return value


def _keys(data: Any, required: tuple[str, ...], optional: tuple[str, ...], path: str, where: str):
    if not isinstance(data, dict):
        raise _fail(path, where.rstrip(".") or "top level", "must be a JSON object")
    for key in data:
        if key not in required + optional:
            known = ", ".join(required + optional)
            raise _fail(path, f"{where}{key}", f"unknown key (known: {known})")
    for key in required:
        if key not in data:
            raise _fail(path, f"{where}{key}", "missing")


def _figure(data: Any, path: str, field: str) -> Figure:
    where = f"fields.{field}."
    _keys(data, _FIGURE_KEYS, (), path, where)
    value = data["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"{where}value", f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise _fail(path, f"{where}value", f"must be finite and >= 0, got {value!r}")
    if data["unit"] not in UNITS:
        raise _fail(
            path, f"{where}unit", f"must be one of {', '.join(UNITS)}, got {data['unit']!r}"
        )
    if data["provenance"] not in PROVENANCES:
        raise _fail(
            path,
            f"{where}provenance",
            f"must be one of {', '.join(PROVENANCES)}, got {data['provenance']!r}",
        )
    return Figure(
        pj=float(value) * UNITS[data["unit"]],
        provenance=data["provenance"],
        source=_text(data, "source", path, where),
    )


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate one profile JSON file."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(where, "file", f"cannot read it ({exc.__class__.__name__}: {exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(where, "file", f"not valid JSON ({exc})") from exc
    _keys(data, _TOP_REQUIRED, _TOP_OPTIONAL, where, "")
    fields = data["fields"]
    _keys(fields, REQUIRED_FIELDS, OPTIONAL_FIELDS, where, "fields.")
    notes = data.get("notes", "")
    if not isinstance(notes, str):
        raise _fail(where, "notes", f"must be a string, got {notes!r}")
    return Profile(
        name=_text(data, "name", where, ""),
        title=_text(data, "title", where, ""),
        source=_text(data, "source", where, ""),
        node=_text(data, "node", where, ""),
        e_synop=_figure(fields["e_synop"], where, "e_synop"),
        e_neuron=_figure(fields["e_neuron"], where, "e_neuron"),
        e_spike=_figure(fields["e_spike"], where, "e_spike") if "e_spike" in fields else None,
        notes=notes,
        path=where,
    )


def shipped_profiles() -> dict[str, Path]:
    """``name -> path`` of the profiles shipped in ``spikelm/estimators/profiles/``."""
    folder = Path(str(resources.files("spikelm.estimators") / "profiles"))
    return {path.stem: path for path in sorted(folder.glob("*.json"))}
