"""Fuzzing ``spikelm.hf.load_token_ids``: whatever a token-id file holds, the reader either returns
valid sequences or raises a one-line :class:`~spikelm.errors.SpikelmError`, and leaves the file
as it was. Headers claiming huge shapes must be refused before anything is allocated.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from spikelm.errors import SpikelmError  # noqa: E402
from spikelm.hf import load_token_ids  # noqa: E402

VOCAB_SIZES = st.none() | st.integers(1, 1000)
FUZZ = settings(max_examples=3000, deadline=None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ids")


def _check(path: Path, data: bytes, vocab_size: int | None) -> None:
    """Write ``data`` to ``path``, read it back, and check the outcome."""
    path.write_bytes(data)
    try:
        seqs = load_token_ids(path, vocab_size=vocab_size)
    except SpikelmError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
    else:
        assert seqs
        for seq in seqs:
            assert seq.dtype == torch.long and seq.ndim == 1 and seq.numel()
            assert int(seq.min()) >= 0
            assert vocab_size is None or int(seq.max()) < vocab_size
    assert path.read_bytes() == data


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_with_header(header: str, data: bytes, version: int = 1) -> bytes:
    raw = header.encode("utf-8" if version == 3 else "latin1")
    length = struct.pack("<H", len(raw)) if version == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw + data


def _int_array(values: list[int], dtype: str, rows: int) -> np.ndarray:
    array = np.array(values, dtype=np.int64).astype(dtype)  # wraps into small dtypes
    return array.reshape(rows, -1) if rows and len(values) % rows == 0 else array


INT_ARRAYS = st.builds(
    _int_array,
    st.lists(st.integers(-5, 400), max_size=24),
    st.sampled_from(["<i1", "<i2", ">i4", "<i8", "<u1", "<u2", "<u4"]),
    st.integers(0, 4),
)
OTHER_ARRAYS = st.sampled_from(
    [
        np.ones(3),
        np.array([1.5, 2.0], dtype=np.float16),
        np.array([True, False]),
        np.array([1 + 2j]),
        np.array(["12", "3"]),
        np.zeros((2, 2, 2), dtype=np.int64),
        np.int64(7).reshape(()),
        np.zeros((3, 0), dtype=np.int32),
        np.array([2**63 + 5, 3], dtype=np.uint64),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<i4")]),
    ]
)
DESCRS = st.sampled_from(
    ["'<i8'", "'<i4'", "'>i2'", "'|u1'", "'<u8'", "'<f8'", "'|O'", "'|b1'", "'<c16'", "'|V8'"]
    + ["'<U3'", "'<i99'", "'bogus'", "[('a', '<i4')]", "[]", "None", "3", "[[[]]]"]
)
SHAPES = st.lists(
    st.integers(-3, 8) | st.sampled_from([2**31, 2**40, 2**62, 2**63, 2**70]), max_size=4
).map(tuple) | st.sampled_from(["()", "[5]", "(1.5,)", "'x'", "(True, 2)"])


@FUZZ
@given(array=INT_ARRAYS | OTHER_ARRAYS, vocab_size=VOCAB_SIZES)
def test_valid_npy_files(workdir: Path, array: np.ndarray, vocab_size: int | None) -> None:
    _check(workdir / "ids.npy", _npy(array), vocab_size)


@FUZZ
@given(
    array=INT_ARRAYS | OTHER_ARRAYS,
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    tail=st.binary(max_size=16),
)
def test_damaged_npy_files(
    workdir: Path, array: np.ndarray, cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    data = bytearray(_npy(array))
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    data = data[: max(0, len(data) - cut)] + tail
    _check(workdir / "ids.npy", bytes(data), None)


@FUZZ
@given(
    descr=DESCRS,
    fortran=st.sampled_from(["False", "True", "0", "'no'"]),
    shape=SHAPES,
    data=st.binary(max_size=64),
    version=st.sampled_from([1, 2, 3, 4]),
    padding=st.sampled_from(["", " " * 40 + "\n", "\x00", "é"]),
)
def test_crafted_npy_headers(
    workdir: Path, descr: str, fortran: str, shape, data: bytes, version: int, padding: str
) -> None:
    """Huge shapes, negative or odd dims, odd dtypes and versions, with a tiny data section."""
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}{padding}"
    _check(workdir / "ids.npy", _npy_with_header(header, data, version), None)


@FUZZ
@given(header=st.text(max_size=80), data=st.binary(max_size=32))
def test_garbage_npy_headers(workdir: Path, header: str, data: bytes) -> None:
    _check(workdir / "ids.npy", _npy_with_header(header, data, 3), None)


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_bytes(workdir: Path, data: bytes) -> None:
    _check(workdir / "ids.npy", data, None)
    _check(workdir / "ids.txt", data, None)


TOKENS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 400).map(str),
    st.floats(allow_nan=True).map(str),
    st.text(max_size=6),
    st.sampled_from(["1_000", "+5", "٣", "0x10", "1e3", "9" * 5000, "", "\x00"]),
)
SEPARATORS = st.sampled_from([" ", "\t", "\n", "\r\n", "\u2028", "\x0c", "\u3000", "  \n\n"])


@FUZZ
@given(
    tokens=st.lists(st.tuples(TOKENS, SEPARATORS), max_size=12),
    vocab_size=VOCAB_SIZES,
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_text_files(
    workdir: Path, tokens: list[tuple[str, str]], vocab_size: int | None, encoding: str
) -> None:
    text = "".join(token + sep for token, sep in tokens)
    _check(workdir / "ids.txt", text.encode(encoding, errors="replace"), vocab_size)


def test_huge_shape_is_refused_before_allocating(workdir: Path) -> None:
    """A 16-byte file claiming an exabyte array: refused from the header, naming both sizes."""
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1048576, 137438953472), }"
    path = workdir / "huge.npy"
    path.write_bytes(_npy_with_header(header, b"\x01" * 16))
    with pytest.raises(SpikelmError, match=r"header declares shape \(1048576, 137438953472\)"):
        load_token_ids(path)
