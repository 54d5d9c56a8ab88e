"""SpikeTrain (events <-> dense) and the spike HDF5 writer / reader."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelm.errors import (
    ConfigError,
    CountRangeError,
    NonFiniteError,
    ShapeError,
    SpikeFileError,
)
from spikelm.spikes import (
    MAX_NEURONS,
    MAX_STEPS,
    VERSION,
    SpikeReader,
    SpikeTrain,
    SpikeWriter,
    open_spikes,
)


def random_spikes(shape: tuple[int, ...], density: float, seed: int = 0) -> np.ndarray:
    """Ternary int8 spikes; each entry is non-zero with probability ``density``."""
    rng = np.random.default_rng(seed)
    return rng.choice(
        np.array([-1, 0, 1], dtype=np.int8), size=shape, p=[density / 2, 1 - density, density / 2]
    )


def assert_canonical(train: SpikeTrain) -> None:
    order = np.lexsort((train.neuron, train.t, train.token))
    assert np.array_equal(order, np.arange(len(train)))


# --- SpikeTrain ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.integers(0, 5),
    steps=st.integers(1, 6),
    n_neurons=st.integers(1, 9),
    density=st.floats(0.0, 1.0),
    offset=st.integers(0, 1000),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_round_trip(tokens, steps, n_neurons, density, offset, seed):
    dense = random_spikes((tokens, steps, n_neurons), density, seed)
    train = SpikeTrain.from_dense(dense, layer="x", token_offset=offset)
    assert len(train) == np.count_nonzero(dense)
    assert train.tokens == range(offset, offset + tokens)
    assert (train.steps, train.n_neurons, train.layer) == (steps, n_neurons, "x")
    assert train.token.dtype == np.int64 and train.neuron.dtype == np.int32
    assert train.t.dtype == np.int32 and train.polarity.dtype == np.int8
    assert_canonical(train)
    np.testing.assert_array_equal(train.to_dense(), dense)


def test_from_dense_accepts_one_token_torch_and_bool():
    dense = random_spikes((3, 5), 0.5)
    for spikes in (dense, torch.from_numpy(dense).to(torch.bfloat16), dense.astype(np.float64)):
        train = SpikeTrain.from_dense(spikes)
        assert train.tokens == range(1)
        np.testing.assert_array_equal(train.to_dense()[0], dense)
    binary = SpikeTrain.from_dense(dense > 0)
    np.testing.assert_array_equal(binary.to_dense()[0], (dense > 0).astype(np.int8))


@pytest.mark.parametrize(
    ("value", "error"),
    [(2, CountRangeError), (-2, CountRangeError), (0.5, CountRangeError), (np.nan, NonFiniteError)],
)
def test_from_dense_rejects_non_ternary(value, error):
    dense = np.zeros((2, 3, 4))
    dense[1, 2, 3] = value
    with pytest.raises(error, match="-1, 0 or 1") as info:
        SpikeTrain.from_dense(dense)
    assert isinstance(info.value, ValueError)


def test_from_dense_rejects_wrong_rank():
    with pytest.raises(ShapeError, match=r"\[tokens, T, N\]"):
        SpikeTrain.from_dense(np.zeros((2, 2, 2, 2), dtype=np.int8))


def test_constructor_sorts_and_rejects_duplicates_and_out_of_range():
    train = SpikeTrain(
        token=[1, 0, 0],
        t=[0, 1, 0],
        neuron=[2, 0, 3],
        polarity=[1, -1, 1],
        layer="l",
        n_neurons=4,
        steps=2,
    )
    np.testing.assert_array_equal(train.token, [0, 0, 1])
    np.testing.assert_array_equal(train.t, [0, 1, 0])
    np.testing.assert_array_equal(train.neuron, [3, 0, 2])
    np.testing.assert_array_equal(train.polarity, [1, -1, 1])
    assert train.tokens == range(2)
    with pytest.raises(ShapeError, match="repeats"):
        SpikeTrain([0, 0], [1, 1], [2, 2], [1, -1], "l", n_neurons=4, steps=2)
    with pytest.raises(ShapeError, match="neuron"):
        SpikeTrain([0], [0], [4], [1], "l", n_neurons=4, steps=2)
    with pytest.raises(ShapeError, match="length"):
        SpikeTrain([0, 1], [0], [0], [1], "l", n_neurons=4, steps=2)
    with pytest.raises(ValueError, match="polarity"):
        SpikeTrain([0], [0], [0], [0], "l", n_neurons=4, steps=2)


def test_to_dense_of_a_sub_range():
    dense = random_spikes((6, 2, 3), 0.6)
    train = SpikeTrain.from_dense(dense, token_offset=10)
    np.testing.assert_array_equal(train.to_dense(range(12, 15)), dense[2:5])


def test_canonical_order_of_the_largest_shapes():
    # (token, t, neuron) order must not overflow where tokens * T * N exceeds int64
    train = SpikeTrain([2**16, 0], [0, 0], [0, 0], [1, -1], "l", MAX_NEURONS, MAX_STEPS)
    np.testing.assert_array_equal(train.token, [0, 2**16])
    np.testing.assert_array_equal(train.polarity, [-1, 1])
    with pytest.raises(ShapeError, match="repeats"):
        SpikeTrain([2**16, 2**16], [5, 5], [7, 7], [1, 1], "l", MAX_NEURONS, MAX_STEPS)


def test_to_dense_that_cannot_be_allocated():
    train = SpikeTrain([0], [0], [0], [1], "big", n_neurons=MAX_NEURONS, steps=MAX_STEPS)
    with pytest.raises(ShapeError, match=r"'big': dense int8 spikes \[1, 65536, 2147483647\]"):
        train.to_dense()


# --- HDF5 files ------------------------------------------------------------------------------


def write_recording(path: Path) -> dict[str, np.ndarray]:
    """Write two layers in several appends (dense, SpikeTrain, empty); return the dense truth."""
    pieces = {
        "blocks.0.q": [random_spikes((n, 3, 11), 0.3, seed) for seed, n in enumerate((4, 1, 0, 7))],
        "blocks.0.up": [random_spikes((n, 5, 6), 0.1, 10 + seed) for seed, n in enumerate((3, 9))],
    }
    with SpikeWriter(path, steps=3, coding="bitwise", attrs={"model": "demo"}) as writer:
        writer.add_layer("blocks.0.up", n_neurons=6, steps=5, coding="ternary")
        for i in range(4):
            for layer, chunks in pieces.items():
                if i < len(chunks):
                    spikes = chunks[i]
                    if i % 2:  # a SpikeTrain with arbitrary token numbers is renumbered
                        spikes = SpikeTrain.from_dense(spikes, layer=layer, token_offset=500)
                    writer.append(layer, spikes)
    return {layer: np.concatenate(chunks) for layer, chunks in pieces.items()}


def test_hdf5_round_trip(tmp_path):
    path = tmp_path / "rec.h5"
    truth = write_recording(path)
    with open_spikes(path) as reader:
        assert reader.layers == ["blocks.0.up", "blocks.0.q"]
        assert reader.attrs["model"] == "demo" and reader.version == VERSION
        for layer, dense in truth.items():
            info = reader.info(layer)
            assert (info.n_tokens, info.steps, info.n_neurons) == dense.shape
            assert info.n_events == np.count_nonzero(dense)
            assert reader.n_tokens(layer) == len(dense)
            train = reader.read(layer)
            assert train.layer == layer and train.tokens == range(len(dense))
            np.testing.assert_array_equal(train.to_dense(), dense)
        assert reader.info("blocks.0.q").coding == "bitwise"
        assert reader.info("blocks.0.up").coding == "ternary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.h5"]


def test_read_token_range_and_chunks(tmp_path):
    path = tmp_path / "rec.h5"
    dense = write_recording(path)["blocks.0.q"]
    with SpikeReader(path) as reader:
        for a, b in [(2, 5), (5, 6), (3, 12), (0, 12)]:
            train = reader.read("blocks.0.q", slice(a, b))
            assert train.tokens == range(a, b)
            assert set(train.token) <= set(range(a, b))
            np.testing.assert_array_equal(train.to_dense(), dense[a:b])
        assert reader.read("blocks.0.q", slice(-2, None)).tokens == range(10, 12)
        chunks = list(reader.iter_chunks("blocks.0.q", 5))
        assert [c.tokens for c in chunks] == [range(0, 5), range(5, 10), range(10, 12)]
        np.testing.assert_array_equal(np.concatenate([c.to_dense() for c in chunks]), dense)
        with pytest.raises(ConfigError, match="no layer 'nope'"):
            reader.read("nope")
        with pytest.raises(ConfigError, match="cannot read"):
            reader.read("blocks.0.q", range(5, 13))


def test_writer_rejects_mismatched_shapes(tmp_path):
    with SpikeWriter(tmp_path / "x.h5") as writer:
        writer.append("a", np.zeros((2, 3, 4), dtype=np.int8))
        with pytest.raises(ShapeError, match="T=3, N=4"):
            writer.append("a", np.zeros((2, 3, 5), dtype=np.int8))
        with pytest.raises(ConfigError, match="already added"):
            writer.add_layer("a", 4, 3)
        with pytest.raises(ConfigError, match="steps"):
            writer.add_layer("b", 4)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(SpikeFileError, match="no such spike file") as info:
        SpikeReader(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpikeFileError) as info:
        with open_spikes(path) as reader:
            for layer in reader.layers:
                reader.read(layer)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(SpikeFileError, match="not a readable HDF5 file") as info:
        open_spikes(path)
    assert str(path) in str(info.value)


def test_other_hdf5_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(SpikeFileError, match="not a spikelm spike file"):
        open_spikes(path)


def test_wrong_version(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 99
    with pytest.raises(SpikeFileError, match="version 99 .* reads versions 1, 2") as info:
        open_spikes(path)
    assert str(path) in str(info.value)


def test_incomplete_file(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(SpikeFileError, match="incomplete"):
        open_spikes(path)


def test_missing_dataset(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    with h5py.File(path, "r+") as f:
        del f["layers/blocks.0.q/neuron"]
    with pytest.raises(SpikeFileError, match="'blocks.0.q' is missing dataset 'neuron'") as info:
        open_spikes(path)
    assert str(path) in str(info.value)


def test_inconsistent_lengths(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    with h5py.File(path, "r+") as f:
        f["layers/blocks.0.q/t"].resize((3,))
    with pytest.raises(SpikeFileError, match="differ in length"):
        open_spikes(path)


def test_corrupt_token_ptr(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    with h5py.File(path, "r+") as f:
        ptr = f["layers/blocks.0.q/token_ptr"]
        ptr[3] = ptr[2] - 1
    with open_spikes(path) as reader:
        reader.read("blocks.0.q", slice(0, 2))  # rows before the damage are fine
        with pytest.raises(SpikeFileError, match="token_ptr") as info:
            reader.read("blocks.0.q")
    assert str(path) in str(info.value)


def test_exception_in_writer_leaves_no_file(tmp_path):
    path = tmp_path / "rec.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with SpikeWriter(path) as writer:
            writer.append("a", random_spikes((4, 2, 3), 0.5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(tmp_path):
    path = tmp_path / "rec.h5"
    truth = write_recording(path)
    with pytest.raises(ShapeError):
        with SpikeWriter(path) as writer:
            writer.append("blocks.0.q", random_spikes((2, 3, 11), 0.5))
            writer.append("blocks.0.q", random_spikes((2, 4, 11), 0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.h5"]
    with open_spikes(path) as reader:
        np.testing.assert_array_equal(reader.read("blocks.0.q").to_dense(), truth["blocks.0.q"])
    new = random_spikes((2, 3, 11), 0.5)
    with SpikeWriter(path) as writer:
        writer.append("blocks.0.q", new)
    with open_spikes(path) as reader:
        assert reader.layers == ["blocks.0.q"]
        np.testing.assert_array_equal(reader.read("blocks.0.q").to_dense(), new)


def test_many_small_appends_flush_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("spikelm.spikes.writer.CHUNK_EVENTS", 64)
    path = tmp_path / "rec.h5"
    dense = random_spikes((300, 2, 8), 0.4)
    with SpikeWriter(path) as writer:
        for token in dense:
            writer.append("a", token)
    with h5py.File(path, "r") as f:
        assert f["layers/a/token"].chunks == (64,)
        assert f["layers/a/token"].shape[0] > 64
    with open_spikes(path) as reader:
        np.testing.assert_array_equal(reader.read("a").to_dense(), dense)


def test_silent_layer_and_writer_misuse(tmp_path):
    path = tmp_path / "rec.h5"
    with pytest.raises(ConfigError, match="complete"):
        SpikeWriter(path, attrs={"complete": True})
    with SpikeWriter(path, steps=2) as writer:
        writer.add_layer("silent", n_neurons=5)
        writer.append("zeros", np.zeros((3, 2, 4), dtype=np.int8))
    with pytest.raises(SpikeFileError, match="closed"):
        writer.append("zeros", np.zeros((3, 2, 4), dtype=np.int8))
    with open_spikes(path) as reader:
        assert reader.n_tokens("silent") == 0 and len(reader.read("silent")) == 0
        assert reader.read("zeros").to_dense().shape == (3, 2, 4)
        assert reader.info("zeros").n_events == 0


def test_failures_outside_the_with_block_leave_no_partial_file(tmp_path):
    with pytest.raises(SpikeFileError, match="cannot create"):
        SpikeWriter(tmp_path / "no-such-dir" / "rec.h5")
    target = tmp_path / "is-a-dir"
    target.mkdir()
    with pytest.raises(OSError):
        with SpikeWriter(target) as writer:  # the final rename onto a directory fails
            writer.append("a", random_spikes((2, 2, 2), 0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["is-a-dir"]


def test_token_ranges_must_be_non_empty_and_inside_the_layer(tmp_path):
    path = tmp_path / "rec.h5"
    write_recording(path)
    with SpikeReader(path) as reader:
        for tokens, problem in [
            (slice(3, 3), "3:3 (--tokens): it is empty"),
            (slice(5, 2), "5:2 (--tokens): it is reversed"),
            (slice(100, 200), "100:200 (--tokens): it is outside 0:12"),
            (slice(-20, None), "-20: (--tokens): it is outside 0:12"),
            (range(5, 13), "5:13 (--tokens): it is outside 0:12"),
            (range(0, 6, 2), "0:6 (--tokens): it has step 2"),
        ]:
            with pytest.raises(ConfigError) as info:
                reader.read("blocks.0.q", tokens)
            assert str(info.value) == (
                f"{path}: layer 'blocks.0.q' has 12 tokens; cannot read token range {problem}"
                + ("; only consecutive tokens can be read" if "step" in problem else "")
            )
        with pytest.raises(ConfigError, match="slice of integers"):
            reader.read("blocks.0.q", slice(0.5, 2))
        with pytest.raises(ConfigError, match="layers: 'blocks.0.up', 'blocks.0.q'"):
            reader.info("nope")
        assert reader.read("blocks.0.q", slice(-2, None)).tokens == range(10, 12)


def _altered(path: Path, change) -> Path:
    write_recording(path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _set(name: str, key: str, value):
    def change(f: h5py.File) -> None:
        f[name].attrs[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("layers/blocks.0.q", "n_neurons", 2**50),
            r"layer 'blocks.0.q': attribute 'n_neurons' must be an integer in "
            r"\[1, 2147483647\], found 1125899906842624",
        ),
        (_set("layers/blocks.0.q", "n_neurons", -4), "'n_neurons' must be .* found -4"),
        (
            _set("layers/blocks.0.q", "steps", 0),
            "'steps' must be an integer in .1, 65536., found 0",
        ),
        (_set("layers/blocks.0.q", "steps", 3.0), "'steps' must be .* found 3.0"),
        (_set("layers/blocks.0.q", "steps", "3"), "'steps' must be .* found '3'"),
        (_set("layers/blocks.0.q", "steps", [3, 3]), r"'steps' must be .* found array\(\[3, 3\]\)"),
        (_set("layers/blocks.0.q", "coding", 7), "attribute 'coding' must be a string, found 7"),
        (_set("/", "version", True), "version True is not supported"),
        (_set("/", "version", 1.0), "version 1.0 is not supported"),
        (_set("/", "complete", "yes"), r"incomplete spike file \(complete flag 'yes'"),
        (_set("/", "format", np.array(["spikelm.spikes"] * 2, dtype="S")), "not a spikelm"),
        (
            lambda f: f["layers/blocks.0.q/token_ptr"].resize((10**15,)),
            "layer 'blocks.0.q': dataset 'token_ptr' claims 1000000000000000 rows, "
            "the file holds at most 16384",
        ),
        (
            lambda f: f["layers/blocks.0.up/t"].resize((10**6,)),
            "dataset 't' claims 1000000 rows, the file holds at most 65536",
        ),
        (
            lambda f: _replace(f["layers/blocks.0.q"], "neuron", np.zeros(3, dtype="f4")),
            "dataset 'neuron' must be 1-D int32, found float32 \\(3,\\)",
        ),
        (
            lambda f: _replace(f["layers/blocks.0.q"], "t", np.zeros((2, 2), dtype="u2")),
            "dataset 't' must be 1-D uint16, found uint16 \\(2, 2\\)",
        ),
        (
            lambda f: f["layers/blocks.0.q/token_ptr"].resize((0,)),
            "token_ptr must run from 0 to the number of events .* found nothing",
        ),
        (lambda f: f["layers"].create_group("x/y"), "layer 'x' is missing dataset 'token'"),
        (lambda f: f["layers"].create_dataset("z", data=[1]), "layer 'z' is not a group"),
        (
            lambda f: f["layers"].__setitem__("ghost", h5py.SoftLink("/nowhere")),
            "layer 'ghost' is not a group",
        ),
    ],
)
def test_sizes_and_types_are_checked_on_open(tmp_path, change, message):
    path = _altered(tmp_path / "rec.h5", change)
    with pytest.raises(SpikeFileError, match=message) as info:
        open_spikes(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> None:
    del group[name]
    group[name] = data


def _poke(dataset: str, index: int, value: int):
    def change(f: h5py.File) -> None:
        f[f"layers/blocks.0.q/{dataset}"][index] = value

    return change


def _duplicate_first_event(f: h5py.File) -> None:
    group = f["layers/blocks.0.q"]
    assert group["token"][0] == group["token"][1]
    for column in ("t", "neuron"):
        group[column][1] = group[column][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_poke("token_ptr", 3, 2**63 - 1), r"token_ptr is not non-decreasing within 0\.\.116"),
        (_poke("token_ptr", 3, -1), "token_ptr is not non-decreasing"),
        (_poke("token", 0, 1), "the token dataset disagrees with token_ptr"),
        (_poke("t", 0, 3), r"SpikeTrain.t: values must lie in \[0, 3\), found 0..3"),
        (_poke("neuron", 0, -1), r"SpikeTrain.neuron: values must lie in \[0, 11\)"),
        (_poke("polarity", 0, 0), "polarity must be \\+1 or -1"),
        (_duplicate_first_event, "an event .* repeats"),
    ],
)
def test_bad_events_are_refused_on_read(tmp_path, change, message):
    path = _altered(tmp_path / "rec.h5", change)
    with open_spikes(path) as reader:
        assert reader.info("blocks.0.q").n_events == 116
        with pytest.raises(SpikeFileError, match=message) as info:
            reader.read("blocks.0.q")
    assert str(info.value).startswith(f"{path}: layer 'blocks.0.q', tokens 0:12: ")


def test_writer_close_failure_is_a_spike_file_error(tmp_path):
    target = tmp_path / "is-a-dir"
    target.mkdir()
    with pytest.raises(SpikeFileError, match="is-a-dir: cannot write the spike file"):
        with SpikeWriter(target) as writer:
            writer.append("a", random_spikes((2, 2, 2), 0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["is-a-dir"]
