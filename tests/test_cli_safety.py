"""Issue 9 from the command line: outputs never replace what spikelm did not write, broken
models are refused, every bad value is a one-line user error (exit 1), and signals stop long
commands cleanly. Each case checks the message, the exit code, and that nothing else changed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_HYBRID

import spikelm
from spikelm.cli import main
from spikelm.models import ByteTokenizer, HybridLM


def tree_hash(root: Path) -> str:
    """Names, modes and contents of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(oct(path.stat().st_mode).encode() + path.read_bytes())
    return digest.hexdigest()


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = HybridLM(TINY_HYBRID).eval()  # unfused: the edits below name single projections
    model = spikelm.convert(spikelm.prepare(model, spikelm.SpikeConfig()), fuse=False)
    return spikelm.save(model, tmp_path_factory.mktemp("ckpt") / "ckpt", tokenizer=ByteTokenizer())


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    import hf_tiny

    return hf_tiny.save_tiny("llama", tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture
def source_copy(hf_source: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(hf_source, tmp_path / "src" / "llama"))


# --- overwrite rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("{src}", "would replace the source"),
        ("{src_parent}", "would replace the source"),
        ("{mine}", "spikelm did not write"),
        ("{file}", "spikelm did not write"),
        (".", "would replace the source"),  # the working directory holds the source here
        ("..", "would replace the source"),
    ],
)
def test_convert_never_replaces_what_spikelm_did_not_write(
    out: str, expected: str, source_copy: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (tmp_path / "notes.txt").write_text("a file")
    monkeypatch.chdir(source_copy.parent)
    before = tree_hash(tmp_path)
    target = out.format(
        src=source_copy, src_parent=source_copy.parent, mine=mine, file=tmp_path / "notes.txt"
    )
    for extra in ([], ["--overwrite"]):
        code, err = run(["convert", source_copy, "--out", target, *extra], capsys)
        assert code == 1 and "\n" not in err and expected in err, err
    assert tree_hash(tmp_path) == before  # nothing changed, no stray temporaries


def test_the_working_directory_is_never_an_output(checkpoint: Path, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    code, err = run(["convert", checkpoint, "--out", ".", "--overwrite"], capsys)
    assert code == 1 and "working directory" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "work"]


def test_an_existing_checkpoint_is_replaced_only_with_overwrite(
    hf_source: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert run(["convert", hf_source, "--out", out], capsys)[0] == 0
    first = tree_hash(out)
    code, err = run(["convert", hf_source, "--out", out, "--steps", "6"], capsys)
    assert code == 1 and "pass --overwrite" in err and tree_hash(out) == first
    assert run(["convert", hf_source, "--out", out, "--steps", "6", "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "spikelm.json").read_text())["spike_config"]["steps"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("target", ["model.safetensors", "spikelm.json", "../notes.txt"])
def test_a_recording_never_replaces_another_file(
    target: str, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    ckpt = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (tmp_path / "notes.txt").write_text("notes")
    before = tree_hash(tmp_path)
    record = ckpt / target
    for extra in ([], ["--overwrite"]):
        code, err = run(
            ["simulate", ckpt, "--prompt", "ab", "--tokens", "1", "--record", record, *extra],
            capsys,
        )
        assert code == 1 and "spikelm did not write" in err and "\n" not in err, err
    assert tree_hash(tmp_path) == before


def test_a_recording_replaces_an_older_one_only_with_overwrite(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    record = tmp_path / "rec.h5"
    argv = ["simulate", checkpoint, "--prompt", "abc", "--tokens", "2", "--record", record]
    assert run(argv, capsys)[0] == 0
    old = record.read_bytes()
    code, err = run(argv, capsys)
    assert code == 1 and "a spike recording is already there; pass --overwrite" in err
    assert record.read_bytes() == old
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.h5"]


# --- bad values are user errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seq-len", "0"], "--seq-len: must be at least 2, got 0"),
        (["--seq-len", "-5"], "--seq-len: must be at least 2, got -5"),
        (["--calib-windows", "0"], "--calib-windows: must be at least 1, got 0"),
        (["--eval-windows", "-1"], "--eval-windows: must be at least 1, got -1"),
        (["--steps", "x"], "--steps: expected an integer, got 'x'"),
        (["--keep-dense", "no.such.*"], "--keep-dense 'no.such.*' matches no linear layer"),
    ],
)
def test_bad_convert_values_are_one_line_user_errors(
    argv: list[str], expected: str, hf_source: Path, tmp_path: Path, capsys
) -> None:
    before = tree_hash(hf_source)
    code, err = run(["convert", hf_source, "--out", tmp_path / "out", *argv], capsys)
    assert code == 1 and "\n" not in err and expected in err, err
    assert not (tmp_path / "out").exists() and tree_hash(hf_source) == before


def test_evaluation_shorter_than_one_window(hf_source: Path, tmp_path: Path, capsys) -> None:
    ids = tmp_path / "eval.txt"
    ids.write_text(" ".join(["5"] * 10))
    argv = ["convert", hf_source, "--out", tmp_path / "out", "--eval-ids", ids, "--seq-len", "32"]
    code, err = run(argv, capsys)
    assert code == 1 and "evaluation set is empty: it needs at least 32 tokens (got 10)" in err
    assert not (tmp_path / "out").exists()


def test_keep_dense_adds_to_the_defaults(hf_source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["convert", hf_source, "--out", out, "--keep-dense", "*.mlp.down_proj"]
    assert run(argv, capsys)[0] == 0
    layers = json.loads((out / "spikelm.json").read_text())["layers"]
    assert not any(n.endswith("down_proj") for n in layers) and "lm_head" not in layers
    keep = json.loads((out / "spikelm.json").read_text())["spike_config"]["keep_dense"]
    assert "lm_head" in keep and "*.mlp.down_proj" in keep
    argv = ["convert", hf_source, "--out", tmp_path / "bare", "--no-default-keep-dense"]
    assert run(argv, capsys)[0] == 0
    keep = json.loads((tmp_path / "bare" / "spikelm.json").read_text())["spike_config"]
    assert keep["keep_dense"] == []


def _edited_copy(checkpoint: Path, tmp_path: Path, name: str, edit) -> Path:
    import shutil

    ckpt = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    path = ckpt / name
    edit(path)
    return ckpt


def _set_json(value):
    return lambda path: path.write_text(json.dumps(value))


def _edit_json(change):
    def edit(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


@pytest.mark.parametrize(
    ("name", "edit", "expected"),
    [
        ("spikelm.json", _set_json([1, 2]), "not a spikelm checkpoint manifest"),
        ("spikelm.json", _edit_json(lambda d: d.pop("spike_config")), "no spike_config object"),
        ("spikelm.json", _edit_json(lambda d: d.update(layers={})), "no layers object"),
        (
            "spikelm.json",
            _edit_json(lambda d: d["layers"]["layers.0.attn.q_proj"].update({"in": 10**12})),
            "layer 'layers.0.attn.q_proj' is",
        ),
        (
            "spikelm.json",
            _edit_json(lambda d: d["layers"]["layers.0.attn.q_proj"].update({"in": -3})),
            "needs positive integers",
        ),
        ("config.json", lambda p: p.unlink(), "no config.json"),
        ("config.json", lambda p: p.write_text("{garbage"), "unreadable model config"),
        ("config.json", _set_json({"model_type": "bert"}), "model_type 'bert' is not supported"),
    ],
)
def test_a_broken_spiking_checkpoint_is_one_line(
    name: str, edit, expected: str, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    ckpt = _edited_copy(checkpoint, tmp_path, name, edit)
    before = tree_hash(tmp_path)
    code, err = run(["simulate", ckpt, "--prompt", "ab", "--tokens", "1"], capsys)
    assert code == 1 and "\n" not in err and expected in err, err
    assert tree_hash(tmp_path) == before


# --- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_simulate_and_keeps_the_older_recording(
    signum: int, code: int, checkpoint: Path, tmp_path: Path
) -> None:
    record = tmp_path / "rec.h5"
    base = [sys.executable, "-m", "spikelm", "simulate", str(checkpoint), "--prompt", "abc"]
    subprocess.run([*base, "--tokens", "2", "--record", str(record)], check=True)
    old = record.read_bytes()
    argv = [*base, "--tokens", "100000", "--record", str(record), "--overwrite"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".rec.h5.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the recording is being written
    assert list(tmp_path.glob(".rec.h5.partial-*")), "the run never started recording"
    time.sleep(0.3)
    sent = time.monotonic()
    os.kill(process.pid, signum)
    process.wait(timeout=10)
    assert time.monotonic() - sent < 1.5
    assert process.returncode == code
    assert process.stderr.read().strip().splitlines()[-1] in (
        "spikelm: interrupted",
        "spikelm: terminated",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.h5"] and record.read_bytes() == old
