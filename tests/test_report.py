"""Energy and sparsity reports: counters against spike trains whose counts are known by
construction, live runs against their recordings, the four formats, the HTML page in a real
browser, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import spikelm
from spikelm.cli import main
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError
from spikelm.estimators.accounting import from_recording, from_simulation
from spikelm.models import ByteTokenizer, load_demo_model
from spikelm.report import build
from spikelm.report.formats import to_data
from spikelm.simulate import simulate
from spikelm.spikes import SpikeWriter

STEPS = 4


def _write(path: Path, layers: dict[str, tuple[str, torch.Tensor, int]], **attrs) -> None:
    """A version-2 recording of ``name -> (coding, counts [tokens, N], fan_out)``."""
    with SpikeWriter(path, attrs=attrs) as writer:
        for name, (coding, counts, fan_out) in layers.items():
            writer.add_layer(name, counts.shape[1], STEPS, coding, fan_out=fan_out, weight_bits=8)
            spikes = get_coder(coding).encode(counts, STEPS)  # [T, tokens, N]
            writer.append(name, spikes.permute(1, 0, 2).numpy())


COUNTS = {
    # coding -> counts [3 tokens, 4 channels]; events per count by construction:
    "ternary": torch.tensor([[1, -1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]),  # |s| events
    "bitwise": torch.tensor([[3, 0, 15, 1], [0, 0, 2, 0], [8, 0, 0, 0]]),  # popcount
    "bitwise_twos_complement": torch.tensor([[-1, 0, 7, 1], [0, 0, 0, 0], [-8, 2, 0, 0]]),
}
EVENTS = {
    "ternary": [2, 1, 0],
    "bitwise": [2 + 4 + 1, 1, 1],
    # two's complement over 4 steps: -1 = 1111 (4 events), 7 = 0111 (3), -8 = 1000 (1)
    "bitwise_twos_complement": [4 + 3 + 1, 0, 1 + 1],
}


@pytest.mark.parametrize("coding", list(COUNTS))
def test_counters_on_trains_known_by_construction(coding: str, tmp_path: Path) -> None:
    counts = COUNTS[coding]
    path = tmp_path / "rec.h5"
    silent = torch.zeros(3, 5, dtype=torch.long)
    _write(path, {"a": (coding, counts, 10), "quiet": ("ternary", silent, 7)}, input_tokens=2)
    account, levels, _ = from_recording(path, tokens_per_chunk=2)
    lo, hi = get_coder(coding).count_range(STEPS)
    assert levels == max(hi - lo + 1, 3)
    events = EVENTS[coding]
    assert account.tokens == {"prefill": 2, "decode": 1}
    assert account.token_events == events  # the silent layer adds nothing
    prefill, decode = account.stats["prefill"]["a"], account.stats["decode"]["a"]
    assert (prefill.events, decode.events) == (sum(events[:2]), events[2])
    assert prefill.silent + decode.silent == int((counts == 0).sum())
    histogram = prefill.histogram + decode.histogram
    expected = torch.bincount(counts.abs().flatten(), minlength=histogram.numel())
    assert torch.equal(histogram, expected)
    works = {w.name: w for w in account.all_works()}
    assert works["a"].sops == sum(events) * 10 and works["a"].macs == 3 * 4 * 10
    assert works["a"].neuron_updates == 3 * 4 * STEPS
    assert works["quiet"].events == 0 and works["quiet"].sops == 0
    assert works["quiet"].macs == 3 * 5 * 7  # the ANN still computes a silent layer's MACs


def test_a_recording_without_spikes_gives_zeros_and_a_note(tmp_path: Path, capsys) -> None:
    path = tmp_path / "rec.h5"
    _write(path, {"quiet": ("bitwise", torch.zeros(4, 6, dtype=torch.long), 3)})
    account, levels, _ = from_recording(path)
    report = build(account, source=str(path), levels=levels)
    data = to_data(report)
    assert data["total"]["events"] == 0 and data["total"]["firing_rate"] == 0.0
    assert "no spike was fired" in " ".join(data["notes"])
    for item in data["energy"]:
        for figures in item["phases"].values():
            assert all(np.isfinite(v) for v in figures["snn"].values())
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no spike was fired" in out and "nan" not in out.lower()


def test_a_version_1_recording_is_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    import spikelm.spikes.writer as writer

    monkeypatch.setattr(writer, "VERSION", 1)
    path = tmp_path / "old.h5"
    with SpikeWriter(path) as old:
        old.append("a", np.zeros((2, STEPS, 3), dtype=np.int8))
    code = main(["report", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "version-1 recording" in err
    assert main(["info", str(path)]) == 0  # version 1 is still read


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The shipped demo model, converted with SpikingBrain's recipe (what `spikelm demo` writes)."""
    model = spikelm.convert(spikelm.prepare(load_demo_model(), spikelm.SpikeConfig()))
    return spikelm.save(model, tmp_path_factory.mktemp("ckpt") / "ckpt", tokenizer=ByteTokenizer())


def test_a_live_run_and_its_recording_report_the_same(checkpoint: Path, tmp_path: Path) -> None:
    model = spikelm.load(checkpoint)
    record = tmp_path / "rec.h5"
    ids = list(b"spiking language model")
    result = simulate(model, ids, new_tokens=6, progress=False, record=record)
    live = to_data(build(from_simulation(result, model), source="x", levels=511))
    account, levels, _ = from_recording(record, tokens_per_chunk=5)
    recorded = to_data(build(account, source="x", levels=levels))
    assert levels == 511
    assert live["phases"] == recorded["phases"] and live["total"] == recorded["total"]
    assert live["energy"] == recorded["energy"] and live["token_events"] == recorded["token_events"]
    assert live["total"]["events"] == result.events
    assert live["phases"]["prefill"]["tokens"] == len(ids)
    assert live["phases"]["decode"]["tokens"] == result.tokens - len(ids)


def test_reading_a_long_recording_stays_in_bounded_memory(tmp_path: Path) -> None:
    """10,000 tokens of a 256-channel layer: the counts alone are 20 MB as int64."""
    path = tmp_path / "long.h5"
    generator = torch.Generator().manual_seed(0)
    with SpikeWriter(path) as writer:
        writer.add_layer("a", 256, STEPS, "ternary", fan_out=64, weight_bits=8)
        for _ in range(20):
            counts = torch.randint(-1, 2, (500, 256), generator=generator)
            writer.append("a", get_coder("ternary").encode(counts, STEPS).permute(1, 0, 2).numpy())
    tracemalloc.start()
    account, _, _ = from_recording(path, tokens_per_chunk=256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert account.tokens["decode"] + account.tokens["prefill"] == 10_000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_report_writes_all_four_formats(checkpoint: Path, tmp_path: Path, capsys) -> None:
    argv = ["report", str(checkpoint), "--prompt", "spikes", "--tokens", "4"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "= total" in table and "x FP16" in table and "break-even band" in table
    for form in ("json", "md", "html"):
        out = tmp_path / f"report.{form}"
        assert main([*argv, "--format", form, "--out", str(out), "--energy", "loihi"]) == 0
        text = out.read_text()
        assert "spikelm report" in text[:400]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema"] == 1 and [e["model"] for e in data["energy"]] == ["loihi"]
    assert data["total"]["tokens"] == data["phases"]["prefill"]["tokens"] + 3
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "http://" not in page
    assert "| model | phase |" in (tmp_path / "report.md").read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_the_html_page_renders_its_plots_in_a_browser(checkpoint: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    argv = ["report", str(checkpoint), "--prompt", "spikes", "--tokens", "4"]
    assert main([*argv, "--format", "html", "--out", str(page)]) == 0
    shot = tmp_path / "shot.png"
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
               "--window-size=1000,1800", f"--screenshot={shot}", page.as_uri()]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1800, 1000)
    # the plots are rendered: their blue bars (#3b6ea8) are on the screenshot
    blue = (np.abs(pixels[..., 0] - 0x3B / 255) < 0.02) & (
        np.abs(pixels[..., 2] - 0xA8 / 255) < 0.02
    )
    assert blue.sum() > 1000


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--energy", "bogus"], "unknown energy model 'bogus'"),
        (["--energy", "{bad}"], "energy profile"),
        (["--format", "pdf"], "invalid choice: 'pdf'"),
        (["--sweep", "{bad}"], "entry 0 is not an object"),
    ],
)
def test_bad_report_input_is_one_line(
    extra: list[str], expected: str, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1]))
    argv = ["report", str(checkpoint), "--prompt", "ab", *[e.format(bad=bad) for e in extra]]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_report_output_follows_the_overwrite_rules(checkpoint: Path, tmp_path: Path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    argv = ["report", str(checkpoint), "--prompt", "ab", "--format", "json", "--out", str(notes)]
    assert main(argv) == 1 and "spikelm did not write" in capsys.readouterr().err
    assert notes.read_text() == "{}"
    out = tmp_path / "r.json"
    argv[-1] = str(out)
    assert main(argv) == 0 and main(argv) == 1
    assert main([*argv, "--overwrite"]) == 0


def test_an_unknown_model_fails_before_anything_runs(checkpoint: Path) -> None:
    from spikelm.workflow import report

    with pytest.raises(ConfigError, match="unknown energy model"):
        report(checkpoint, models=["nope"], prompt="ab")


def test_a_report_needs_a_source_and_an_input(checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "no such spiking checkpoint or recording" in capsys.readouterr().err
    assert main(["report", str(checkpoint)]) == 1
    assert "pass --text or --prompt" in capsys.readouterr().err
