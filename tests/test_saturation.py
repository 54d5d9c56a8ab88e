"""Saturation is measured and never silent: counts clamped at the coding's range are counted per
layer, named in a warning at conversion, and shown by the fidelity table, ``simulate`` and the
report."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_HYBRID

import spikelm
from spikelm.cli import main
from spikelm.encoders import get_coder
from spikelm.estimators import SpikeStats
from spikelm.estimators.accounting import account
from spikelm.models import ByteTokenizer, HybridLM
from spikelm.saturation import (
    SATURATION_LIMIT,
    SaturationWarning,
    saturated_layers,
    saturation_note,
)

CODER = get_coder("bitwise_bidirectional")


def _stats(counts: torch.Tensor, steps: int = 2) -> SpikeStats:
    stats = SpikeStats(steps=steps)
    stats.update(counts, CODER)
    return stats


def test_the_clamped_share_counts_both_edges_and_names_the_layers_over_the_limit() -> None:
    lo, hi = CODER.count_range(2)  # -3, 3
    quiet = torch.zeros(10, 100)
    quiet[0, 0] = hi - 1  # inside the range: not clamped
    loud = torch.zeros(10, 100)
    loud[0, :3] = hi
    loud[1, :2] = lo  # 5 of 1000 at an edge
    stats = {"quiet": _stats(quiet), "loud": _stats(loud), "edge": _stats(loud[:2])}
    assert stats["quiet"].clipped_share == 0 and stats["loud"].clipped_share == 0.005
    assert list(saturated_layers(stats)) == ["edge", "loud"]  # largest share first
    note = saturation_note(stats)
    assert note.startswith("2 of 3 spiking layers clamp more than 0.1% of their counts")
    assert "edge 2.50%" in note and "loud 0.50%" in note and "quiet" not in note
    assert saturation_note({"quiet": stats["quiet"]}) is None
    assert saturation_note(stats, limit=0.1) is None  # the limit is a parameter


def _calibration(tokens: int = 64, windows: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (1, tokens), generator=g) for _ in range(windows)]


def _convert(steps: int) -> list[warnings.WarningMessage]:
    torch.manual_seed(0)
    model = HybridLM(TINY_HYBRID).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spikelm.spiking(model, spikelm.SpikeConfig(steps=steps), _calibration(), progress=False)
    return [w for w in caught if issubclass(w.category, SaturationWarning)]


def test_conversion_warns_and_names_the_layers_that_clamp() -> None:
    """T=1 bitwise codes hold only -1..1: most layers clamp; T=16 holds +-65535: none does."""
    caught = _convert(steps=1)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("on the calibration data: 10 of 10 spiking layers clamp")
    assert "layers.1." in message and ", and 6 more" in message  # four named, the rest counted
    assert _convert(steps=16) == []


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    import hf_tiny

    return hf_tiny.save_tiny("llama", tmp_path_factory.mktemp("hf") / "llama")


def test_the_cli_warns_in_one_line_and_the_fidelity_table_shows_the_clamp(
    hf_source: Path, tmp_path: Path, capsys
) -> None:
    ids = tmp_path / "ids.txt"
    g = torch.Generator().manual_seed(1)
    ids.write_text(" ".join(str(int(i)) for i in torch.randint(0, 100, (256,), generator=g)))
    argv = ["convert", hf_source, "--out", tmp_path / "out", "--steps", "1", "--seq-len", "32",
            "--calib-ids", ids, "--eval-ids", ids]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    warning_lines = [line for line in captured.err.splitlines() if "clamp more than" in line]
    assert len(warning_lines) == 1
    assert warning_lines[0].startswith("spikelm: warning: on the calibration data: ")
    table = captured.out.splitlines()
    header = next(line for line in table if line.startswith("model"))
    spiking = next(line for line in table if line.startswith("spiking"))
    assert header.split()[-1] == "clamp" and spiking.split()[-1].endswith("%")
    assert float(spiking.split()[-1].rstrip("%")) > 100 * SATURATION_LIMIT
    assert any(line.startswith("spiking: ") and "clamp more than" in line for line in table)


def test_simulate_and_the_report_show_the_clamped_share(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = spikelm.convert(
        spikelm.prepare(HybridLM(TINY_HYBRID).eval(), spikelm.SpikeConfig(steps=1))
    )
    checkpoint = spikelm.save(model, tmp_path / "ckpt", tokenizer=ByteTokenizer())
    assert main(["simulate", str(checkpoint), "--prompt", "hello spikes", "--tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "clamped share" in out and "saturation: " in out
    assert main(["report", str(checkpoint), "--prompt", "hello spikes", "--tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "clamped" in out.splitlines()[0] or any("clamped" in line for line in out.splitlines())
    assert "note: " in out and "clamp more than" in out


def test_the_report_notes_saturation_over_both_phases() -> None:
    loud = torch.zeros(4, 10)
    loud[0, 0] = 3
    stats = {"prefill": {"a": _stats(loud)}, "decode": {"a": _stats(torch.zeros(4, 10))}}
    built = account(stats, {"a": (10, 10)}, tokens={"prefill": 4, "decode": 4}, weight_bits=8)
    assert any("1 of 1 spiking layers clamp" in note and "a 1.25%" in note for note in built.notes)
    quiet = {"prefill": {"a": _stats(torch.zeros(4, 10))}}
    assert account(quiet, {"a": (10, 10)}, tokens={"prefill": 4}, weight_bits=8).notes == [
        "no spike was fired: every spiking figure is zero"
    ]


def test_pooled_layers_of_different_steps_give_the_slot_weighted_firing_rate() -> None:
    """A recipe may give layers different T: the pooled firing rate divides the events by every
    layer's own slots x T, and the pooled T is the largest."""
    counts = torch.tensor([[1.0, 0.0, 3.0, 0.0]])  # 1 + 2 = 3 events (bitwise popcounts)
    narrow, wide = _stats(counts, steps=2), _stats(counts, steps=6)
    pooled = narrow.merge(wide)
    assert narrow.firing_rate == 3 / (4 * 2) and wide.firing_rate == 3 / (4 * 6)
    assert pooled.steps == 6 and pooled.firing_rate == 6 / (4 * 2 + 4 * 6)
