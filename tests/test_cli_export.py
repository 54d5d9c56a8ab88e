"""`spikelm export` on the demo checkpoint: both formats from the command line, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import spikelm
from spikelm.cli import main
from spikelm.models import ByteTokenizer, load_demo_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The shipped demo model with SpikingBrain's recipe, as `spikelm demo` writes it."""
    model = spikelm.convert(spikelm.prepare(load_demo_model(), spikelm.SpikeConfig()))
    return spikelm.save(model, tmp_path_factory.mktemp("ckpt") / "demo", tokenizer=ByteTokenizer())


def test_export_nir_from_the_command_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    nir = pytest.importorskip("nir")
    out = tmp_path / "demo.nir"
    assert main(["export", str(checkpoint), "--format", "nir", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # 51 projections, q/k/v(/g) and gate/up of each block fused (spikelm.fusion): 30 layers
    assert (
        "30 spiking projection(s) exported" in printed and "round trip: nir.read gives" in printed
    )
    assert "not expressible in NIR" in printed and "embed_tokens" in printed
    graph = nir.read(out)
    fused = "layers.0.attn.{q_proj,k_proj,v_proj,g_proj}"
    weights = [n.weight for n in graph.nodes[fused].nodes.values()
               if isinstance(n, nir.Linear) and n.weight.dtype == np.int8]  # fmt: skip
    layer = spikelm.load(checkpoint).get_submodule(fused)
    assert weights and np.array_equal(weights[0][:, : layer.in_features], layer.weight_q.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.nir"]


def test_export_onnx_from_the_command_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    out = tmp_path / "demo.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ONNX export of a spikelm_hybrid model" in printed and "int8 weights" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names[0] == "input_ids" and "past_key_values.0.recurrent_state" in names
    assert (tmp_path / "demo.prefill.onnx").is_file()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--format", "tflite", "--out", "{tmp}/x"], "invalid choice: 'tflite'"),
        (["--format", "nir", "--out", "{tmp}/missing/x.nir"], "missing"),
        (["--format", "onnx", "--out", "{tmp}/missing/x.onnx"], "missing"),
        (["--format", "nir", "--out", "{tmp}/x.nir", "--layers", "nope.*"], "matches no"),
        (["--format", "onnx", "--out", "{tmp}/x.onnx", "--layers", "nope.*"], "matches no"),
        (["--format", "onnx", "--out", "{tmp}/x.onnx", "--opset", "3"], "opset"),
    ],
)
def test_bad_export_input_is_one_line(
    argv: list[str], expected: str, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    code = main(["export", str(checkpoint), *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and expected in err, err
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_a_family_the_onnx_exporter_cannot_handle_is_listed(tmp_path: Path, capsys) -> None:
    pytest.importorskip("transformers")
    import hf_tiny

    from spikelm.export.onnx import families

    model, _ = hf_tiny.build_tiny("qwen3_next")
    ckpt = spikelm.save(spikelm.convert(spikelm.prepare(model, spikelm.SpikeConfig())),
                        tmp_path / "ckpt")  # fmt: skip
    out = tmp_path / "q.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "qwen3_next" in err and all(family in err for family in families()), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
