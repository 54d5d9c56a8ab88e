"""Fuzzing spiking checkpoints: mutated ``spikelm.json``, ``config.json`` and safetensors headers
and data. Loading must end in a spikelm error of one line (or a model that loaded cleanly and
runs), never another exception, and must leave every file as it was."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import TINY_HYBRID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_safety import tree_hash

import spikelm
from spikelm.errors import SpikelmError
from spikelm.models import ByteTokenizer, HybridLM

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = spikelm.convert(spikelm.prepare(HybridLM(TINY_HYBRID).eval(), spikelm.SpikeConfig()))
    return spikelm.save(model, tmp_path_factory.mktemp("ckpt") / "ckpt", tokenizer=ByteTokenizer())


def _fresh(checkpoint: Path, tmp_path: Path) -> Path:
    target = tmp_path / "case"
    if target.exists():
        shutil.rmtree(target)
    return Path(shutil.copytree(checkpoint, target))


def _load_is_clean(ckpt: Path) -> None:
    before = tree_hash(ckpt)
    try:
        model = spikelm.load(ckpt)
    except SpikelmError as error:
        assert "\n" not in str(error), str(error)
    else:
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3]]))
        assert bool(torch.isfinite(logits).all())
    assert tree_hash(ckpt) == before


def _paths(value) -> list[tuple]:
    """Every key path into a JSON value."""
    found = [()]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += [(key, *rest) for rest in _paths(inner)]
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += [(index, *rest) for rest in _paths(inner)]
    return found


def _replaced(value, path: tuple, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replaced(value[head], rest, new)
    return copy


@pytest.mark.parametrize("name", ["spikelm.json", "config.json"])
@SETTINGS
@given(data=st.data())
def test_mutated_json_files(name: str, data, checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _fresh(checkpoint, tmp_path)
    original = json.loads((ckpt / name).read_text())
    path = data.draw(st.sampled_from(_paths(original)))
    mutated = _replaced(original, path, data.draw(JSON))
    (ckpt / name).write_text(json.dumps(mutated))
    _load_is_clean(ckpt)


@SETTINGS
@given(data=st.data())
def test_mutated_safetensors_header(data, checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _fresh(checkpoint, tmp_path)
    weights = ckpt / "model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    path = data.draw(st.sampled_from([p for p in _paths(header) if p]))
    mutated = json.dumps(_replaced(header, path, data.draw(JSON))).encode()
    mutated += b" " * (-len(mutated) % 8)
    weights.write_bytes(struct.pack("<Q", len(mutated)) + mutated + raw[8 + length :])
    _load_is_clean(ckpt)


@SETTINGS
@given(data=st.data())
def test_mutated_safetensors_bytes(data, checkpoint: Path, tmp_path: Path) -> None:
    """Flipped bytes anywhere (header or data), or a truncated / extended file."""
    ckpt = _fresh(checkpoint, tmp_path)
    weights = ckpt / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([None, 0, 4, 8, 100, len(raw) - 1, len(raw) + 3]))
    if cut is not None:
        raw = raw[:cut] if cut <= len(raw) else raw + b"\0" * (cut - len(raw))
    weights.write_bytes(bytes(raw))
    _load_is_clean(ckpt)
