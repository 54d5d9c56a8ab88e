"""Raster plot of binary / ternary / bitwise spike trains."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from spikelm.errors import ConfigError, CountRangeError, ShapeError  # noqa: E402
from spikelm.outputs import PLOT_MARKER  # noqa: E402
from spikelm.plot import raster  # noqa: E402
from spikelm.spikes import SpikeTrain  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def codings() -> dict[str, np.ndarray]:
    """Binary, ternary and bitwise [T, N] spikes of the same counts (by hand, no encoder)."""
    counts = np.array([0, 3, -2, 1, 5, -4, 0, 2])
    steps = 5
    t = np.arange(steps)[:, None]
    ternary = (np.sign(counts) * (t < np.abs(counts))).astype(np.int8)
    bitwise = (np.sign(counts) * ((np.abs(counts) >> t[:3]) & 1)).astype(np.int8)
    return {"binary": np.abs(ternary), "ternary": ternary, "bitwise": bitwise}


def test_raster_writes_png(tmp_path):
    from matplotlib.image import imread

    path = raster(codings(), tmp_path / "raster.png", title="same counts, three codings")
    assert path == tmp_path / "raster.png"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)
    assert imread(path).shape == (680, 800, 4)  # (0.8 + 3 * 2.0) in x 8 in at 100 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["raster.png"]


def test_raster_rejects_bad_input(tmp_path):
    with pytest.raises(CountRangeError, match="'counts'"):
        raster({"counts": np.array([[0, 2], [1, 0]])}, tmp_path / "x.png")
    with pytest.raises(ShapeError, match=r"\[T, N\]"):
        raster({"x": np.zeros((2, 2, 2))}, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_raster_of_spike_trains_matches_the_dense_panels(tmp_path):
    from matplotlib.image import imread

    dense = codings()["ternary"][None].repeat(3, axis=0)  # 3 tokens of [T, N]
    train = SpikeTrain.from_dense(dense, layer="q", token_offset=7)
    events = raster({"q": train}, tmp_path / "events.png")
    flat = raster({"q": dense.reshape(-1, dense.shape[-1])}, tmp_path / "dense.png")
    np.testing.assert_array_equal(imread(events), imread(flat))
    assert PLOT_MARKER in events.read_bytes()


def test_raster_output_path_and_empty_panels(tmp_path):
    spikes = codings()
    with pytest.raises(ConfigError, match=r"raster output .* \(--out\): is a directory"):
        raster(spikes, tmp_path)
    with pytest.raises(ConfigError, match=r"\(--out\): directory .*missing does not exist"):
        raster(spikes, tmp_path / "missing" / "x.png")
    with pytest.raises(ShapeError, match=r"'none': nothing to draw in spikes \[0, 4\]"):
        raster({"none": np.zeros((0, 4), dtype=np.int8)}, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    # names are drawn as text: no mathtext error for "$"
    raster({"a $\\frac$ b": spikes["binary"]}, tmp_path / "x.png", title="$$ file $")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
