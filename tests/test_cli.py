"""The spikelm command line: info and raster over a real recording; one-line errors."""

from __future__ import annotations

import numpy as np

from spikelm.cli import main
from spikelm.spikes import SpikeWriter


def _recording(path) -> None:
    rng = np.random.default_rng(0)
    with SpikeWriter(path) as writer:
        writer.add_layer("layers.0.q_proj", n_neurons=16, steps=4, coding="bitwise_bidirectional")
        for _ in range(3):
            spikes = rng.choice([-1, 0, 0, 0, 1], size=(5, 4, 16)).astype(np.int8)
            writer.append("layers.0.q_proj", spikes)


def test_info_lists_layers_and_rates(tmp_path, capsys) -> None:
    path = tmp_path / "rec.h5"
    _recording(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("layers.0.q_proj"))
    fields = row.split()
    assert fields[1:4] == ["16", "4", "15"]  # neurons, T, tokens
    assert 0.2 < float(fields[5]) < 0.6  # 2 of 5 choices fire


def test_raster_writes_a_png(tmp_path, capsys) -> None:
    path = tmp_path / "rec.h5"
    _recording(path)
    png = tmp_path / "raster.png"
    assert main(["raster", str(path), "--tokens", "0:2", "--out", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")


def test_bad_inputs_exit_one_with_one_line(tmp_path, capsys) -> None:
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    assert main(["info", str(garbage)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "garbage.h5" in err[0]
    assert main(["raster", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()
