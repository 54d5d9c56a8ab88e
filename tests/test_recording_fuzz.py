"""Fuzzed spike recordings: altered, damaged or truncated files end in one-line spikelm errors.

Each example writes a small valid recording, mutates it (attributes, datasets, bytes, length) and
then reads every layer through the library and runs ``spikelm info`` / ``spikelm raster`` on it.
Only :class:`~spikelm.errors.SpikelmError` may escape the library, the CLI exits 0 or 1 with at
most one line on stderr, and nothing but the raster output appears or changes beside the file.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")

from spikelm.cli import main  # noqa: E402
from spikelm.errors import SpikelmError  # noqa: E402
from spikelm.spikes import MAX_NEURONS, MAX_STEPS, SpikeReader, SpikeWriter  # noqa: E402
from spikelm.spikes.format import DISK_DTYPES  # noqa: E402

LAYERS = ("blocks.0.q", "blocks.1.up", "silent")
DRAWN = "blocks.0.q"
DATASETS = tuple(DISK_DTYPES)
FUZZ = settings(max_examples=50, deadline=None)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid recording: two layers with spikes and one without tokens."""
    path = tmp_path_factory.mktemp("base") / "rec.h5"
    rng = np.random.default_rng(0)
    with SpikeWriter(path, attrs={"model": "fuzz"}) as writer:
        writer.add_layer("blocks.0.q", n_neurons=16, steps=4, coding="bitwise")
        writer.add_layer("blocks.1.up", n_neurons=8, steps=3)
        writer.add_layer("silent", n_neurons=5, steps=2)
        for _ in range(2):
            writer.append("blocks.0.q", rng.choice([-1, 0, 0, 1], size=(6, 4, 16)))
            writer.append("blocks.1.up", rng.choice([-1, 0, 0, 0, 1], size=(5, 3, 8)))
    return path


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def _check_library(path: Path) -> None:
    """Read everything; only one-line SpikelmErrors naming the file may escape."""
    try:
        with SpikeReader(path) as reader:
            assert reader.attrs["version"] == reader.version
            for layer in reader.layers:
                info = reader.info(layer)
                assert info.n_neurons >= 1 and info.steps >= 1
                assert info.n_tokens >= 0 and info.n_events >= 0
                train = reader.read(layer)
                assert train.tokens == range(info.n_tokens) and len(train) == info.n_events
                assert sum(len(c) for c in reader.iter_chunks(layer, 4)) == info.n_events
    except SpikelmError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


def _run_cli(argv: list[str]) -> tuple[int, str, list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue().splitlines()


def _check_cli(path: Path) -> None:
    """``info`` and ``raster`` exit 0 or 1 with one line; only the raster output is written."""
    png = path.parent / "raster.png"
    before = _snapshot(path.parent)
    code, out, err = _run_cli(["info", str(path)])
    assert code in (0, 1) and len(err) <= 1, err
    assert code == 0 or err[0].startswith("spikelm: error: ")
    if code == 0:
        rows = [line.split() for line in out.splitlines()[2:]]
        assert all(float(value) >= 0 for row in rows for value in row[1:]), out
    code, _, err = _run_cli(
        ["raster", str(path), "--layer", DRAWN, "--tokens", "2:5", "--out", str(png)]
    )
    assert code in (0, 1) and len(err) <= 1, err
    assert code == 0 or err[0].startswith("spikelm: error: ")
    assert png.exists() == (code == 0)
    after = _snapshot(path.parent)
    after.pop(png.name, None)
    assert after == before


def _fuzz(recording: Path, mutate: Callable[[Path], None]) -> None:
    """Copy the recording, apply ``mutate`` to the copy and run both checks."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rec.h5"
        shutil.copyfile(recording, path)
        mutate(path)
        _check_library(path)
        _check_cli(path)


# --- attribute values --------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
ATTRIBUTE_VALUES = st.one_of(
    st.none(),  # delete the attribute
    st.integers(-3, 40),
    st.sampled_from([MAX_STEPS, MAX_STEPS + 1, MAX_NEURONS + 1, 2**50, 2**63 - 1]),
    INT64.filter(lambda v: not -(2**31) < v < 2**31),
    st.integers(2**63, 2**64 - 1).map(np.uint64),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12).filter(lambda v: "\0" not in v),  # h5py stores no NUL in strings
    st.binary(max_size=12).filter(lambda v: b"\0" not in v),
    st.sampled_from(["spikelm.spikes", "ternary"]),
    st.lists(st.integers(-3, 3), min_size=1, max_size=3).map(np.array),
)


@FUZZ
@given(
    where=st.sampled_from(["/", *(f"/layers/{layer}" for layer in LAYERS)]),
    key=st.sampled_from(["format", "version", "complete", "n_neurons", "steps", "coding"]),
    value=ATTRIBUTE_VALUES,
)
def test_altered_attributes(recording: Path, where: str, key: str, value: Any) -> None:
    def mutate(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            attrs = f[where].attrs
            if value is None:
                attrs.pop(key, None)
            else:
                attrs[key] = value

    _fuzz(recording, mutate)


# --- datasets and groups -----------------------------------------------------------------------


def _replace(group: h5py.Group, name: str, data: Any, **options: Any) -> None:
    del group[name]
    group.create_dataset(name, data=data, **options)


def _alter(f: h5py.File, layer: str, name: str, kind: str, number: int) -> None:
    """Apply change ``kind`` to dataset ``name`` of ``layer`` (or to the layer structure)."""
    group = f["layers"][layer]
    data = group[name][()]
    if kind == "delete":
        del group[name]
    elif kind.startswith("dtype "):
        _replace(group, name, data.astype(kind.split()[1]), maxshape=(None,), chunks=True)
    elif kind == "2-D":
        _replace(group, name, np.stack([data, data]))
    elif kind == "scalar":
        _replace(group, name, data[0] if len(data) else 0)
    elif kind == "contiguous":  # still a valid file
        _replace(group, name, data)
    elif kind == "resize":
        group[name].resize((abs(number),))
    elif kind == "value" and len(data):
        info = np.iinfo(data.dtype)
        group[name][number % len(data)] = np.clip(number, info.min, info.max)
    elif kind == "group":
        del group[name]
        group.create_group(name)
    elif kind == "no layers":
        del f["layers"]
    elif kind == "layers dataset":
        del f["layers"]
        f["layers"] = np.arange(3)
    elif kind == "layer dataset":
        f["layers"]["extra"] = np.arange(3)
    elif kind == "dangling link":
        f["layers"]["ghost"] = h5py.SoftLink("/nowhere")


DATASET_CHANGES = [
    "delete",
    *(f"dtype {dtype}" for dtype in ["f4", "i2", "u8", "i8", "bool", "S3"]),
    "2-D",
    "scalar",
    "contiguous",
    "resize",
    "value",
    "group",
    "no layers",
    "layers dataset",
    "layer dataset",
    "dangling link",
]


@FUZZ
@given(
    layer=st.sampled_from(LAYERS),
    name=st.sampled_from(DATASETS),
    kind=st.sampled_from(DATASET_CHANGES),
    number=st.integers(-3, 70) | st.sampled_from([10**6, 10**15]) | INT64,
)
def test_altered_datasets(recording: Path, layer: str, name: str, kind: str, number: int) -> None:
    def mutate(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            _alter(f, layer, name, kind, number)

    _fuzz(recording, mutate)


# --- bytes -------------------------------------------------------------------------------------


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files(recording: Path, fraction: float) -> None:
    def mutate(path: Path) -> None:
        with open(path, "r+b") as f:
            f.truncate(int(fraction * path.stat().st_size))

    _fuzz(recording, mutate)


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)),
        min_size=1,
        max_size=8,
    )
)
def test_flipped_bits(recording: Path, flips: list[tuple[float, int]]) -> None:
    def mutate(path: Path) -> None:
        data = bytearray(path.read_bytes())
        for where, bit in flips:
            data[int(where * len(data))] ^= 1 << bit
        path.write_bytes(bytes(data))

    _fuzz(recording, mutate)


# --- command-line options ----------------------------------------------------------------------

ENDS = st.none() | st.integers(-15, 15) | st.sampled_from([100, 200, -100])


@FUZZ
@given(start=ENDS, stop=ENDS)
def test_raster_token_ranges(recording: Path, start: int | None, stop: int | None) -> None:
    n = 12  # tokens of the drawn layer
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    first = 0 if start is None else start + n if start < 0 else start
    last = n if stop is None else stop + n if stop < 0 else stop
    with tempfile.TemporaryDirectory() as directory:
        png = Path(directory) / "raster.png"
        argv = ["raster", str(recording), "--layer", DRAWN, f"--tokens={text}", "--out", str(png)]
        code, _, err = _run_cli(argv)
        if 0 <= first < last <= n:
            assert code == 0 and err == [] and png.exists()
        else:
            assert code == 1 and len(err) == 1 and not png.exists()
            assert f"'{DRAWN}' has {n} tokens; cannot read token range {text} (--tokens)" in err[0]


def test_raster_out_must_be_a_file_in_an_existing_directory(recording: Path, tmp_path: Path):
    for out in (tmp_path, tmp_path / "missing" / "raster.png"):
        code, _, err = _run_cli(["raster", str(recording), "--out", str(out), "--layer", DRAWN])
        assert code == 1 and len(err) == 1 and str(out) in err[0], err
    code, _, err = _run_cli(
        ["raster", str(recording), "--layer", "nope", "--out", str(tmp_path / "x.png")]
    )
    assert code == 1 and err == [
        f"spikelm: error: {recording}: no layer 'nope'; layers: 'blocks.0.q', 'blocks.1.up', "
        "'silent'"
    ]
    assert list(tmp_path.iterdir()) == []
