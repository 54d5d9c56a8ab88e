"""Fused projections that share an input (``spikelm.fusion``): fused and unfused conversions give
bit-identical logits (parallel forward and greedy decode, numba and torch), fewer spiking layers,
exact save/load (old unfused checkpoints too), one recorded layer per group, groups that differ
stay unfused, and the shared-input cache keeps nothing after a forward."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import spikelm
from spikelm.backends import numba_available
from spikelm.cli import main
from spikelm.errors import CheckpointError, SpikelmError
from spikelm.fusion import (
    FusedSpikingLinear,
    SharedInputSlice,
    fuse,
    fused_layers,
    fused_name,
    trace_shared_inputs,
    tracing,
    unfuse,
)
from spikelm.layers import SpikingLinear, spiking_layers
from spikelm.models import load_demo_model
from spikelm.simulate import simulate
from spikelm.spikes import SpikeReader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKENDS = ["torch", *(["numba"] if numba_available() else [])]
IDS = torch.randint(4, 256, (2, 24), generator=torch.Generator().manual_seed(3))
PROMPT = IDS[0, :10]
NEW = 6


def _pair(model: nn.Module, config: spikelm.SpikeConfig | None = None) -> tuple:
    """``(unfused, fused)`` conversions of copies of ``model`` (no calibration data)."""
    config = config or spikelm.SpikeConfig()
    unfused = spikelm.convert(spikelm.prepare(copy.deepcopy(model), config), fuse=False)
    fused = spikelm.convert(spikelm.prepare(copy.deepcopy(model), config))
    return unfused, fused


def _set_backend(model: nn.Module, backend: str) -> None:
    for layer in spiking_layers(model).values():
        layer.backend = backend


def _on_torch(*models: nn.Module) -> None:
    """One backend for models compared bit for bit (simulate leaves its own on the models)."""
    for model in models:
        _set_backend(model, "torch")


def _expected_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """Sibling linears of each module that its own forward feeds from one tensor: the query,
    key, value (and gate) projections, and the MLP's gate and up projections."""
    groups = []
    for name, module in model.named_modules():
        children = [c for c, m in module.named_children() if type(m) is nn.Linear]
        shared = [c for c in ("q_proj", "k_proj", "v_proj", "g_proj") if c in children]
        for group in (shared, [c for c in ("gate_proj", "up_proj") if c in children]):
            if len(group) >= 2:
                groups.append(tuple(f"{name}.{c}" for c in group))
    return groups


# --- models --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> nn.Module:
    return load_demo_model()


@pytest.fixture(scope="module")
def demo_pair(demo) -> tuple:
    return _pair(demo)


def _tiny(family: str) -> nn.Module:
    pytest.importorskip("transformers")
    import hf_tiny

    model, _ = hf_tiny.build_tiny(family, seed=1)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf_pair(request) -> tuple:
    model = _tiny(request.param)
    return (request.param, model, *_pair(model))


# --- equivalence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_fused_parallel_forward_is_bit_identical(demo_pair, backend) -> None:
    unfused, fused = demo_pair
    _set_backend(unfused, backend)
    _set_backend(fused, backend)
    with torch.no_grad():
        expected, got = unfused(IDS), fused(IDS)
    assert torch.equal(got, expected)
    assert not any(layer.pending for layer in fused_layers(fused).values())


def test_demo_fusion_drops_the_expected_layers(demo, demo_pair) -> None:
    unfused, fused = demo_pair
    groups = _expected_groups(demo)
    removed = sum(len(g) - 1 for g in groups)
    assert groups and removed > 0
    assert len(spiking_layers(fused)) == len(spiking_layers(unfused)) - removed
    assert sorted(fused_layers(fused)) == sorted(fused_name(g) for g in groups)
    for group in groups:  # each member is a slice of its group's fused layer, in order
        layer = fused.get_submodule(fused_name(group))
        assert isinstance(layer, FusedSpikingLinear) and layer.member_names() == group
        for index, member in enumerate(group):
            module = fused.get_submodule(member)
            assert isinstance(module, SharedInputSlice) and module.fused is layer
            assert module.index == index and not any(True for _ in module.buffers())


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_fused_greedy_decode_is_bit_identical(demo_pair, backend) -> None:
    unfused, fused = demo_pair
    runs = [
        simulate(m, PROMPT, new_tokens=NEW, backend=backend, progress=False, return_logits=True)
        for m in (unfused, fused)
    ]
    assert torch.equal(runs[1].logits, runs[0].logits)
    assert runs[1].generated == runs[0].generated and len(runs[1].generated) == NEW
    assert len(runs[1].layer_stats) == len(spiking_layers(fused)) < len(runs[0].layer_stats)
    assert not any(layer.pending for layer in fused_layers(fused).values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_hf_fused_forward_and_decode_are_bit_identical(hf_pair, backend) -> None:
    family, model, unfused, fused = hf_pair
    _set_backend(unfused, backend)
    _set_backend(fused, backend)
    ids = IDS % model.config.vocab_size
    with torch.no_grad():
        assert torch.equal(fused(ids).logits, unfused(ids).logits)
    runs = [
        simulate(m, PROMPT, new_tokens=NEW, backend=backend, progress=False, return_logits=True)
        for m in (unfused, fused)
    ]
    assert torch.equal(runs[1].logits, runs[0].logits)
    assert runs[1].generated == runs[0].generated


def test_hf_fusion_groups_attention_and_mlp(hf_pair) -> None:
    family, model, unfused, fused = hf_pair
    groups = _expected_groups(model)
    layers = model.config.num_hidden_layers
    assert len(groups) == 2 * layers  # q/k/v and gate/up in every decoder layer
    assert sorted(fused_layers(fused)) == sorted(fused_name(g) for g in groups)
    assert len(spiking_layers(fused)) == len(spiking_layers(unfused)) - 3 * layers
    attention = fused.get_submodule(fused_name(groups[0]))
    assert attention.out_features == sum(unfused.get_submodule(m).out_features for m in groups[0])
    assert (attention.bias is not None) == (family == "qwen2")  # qwen2's q/k/v carry biases


def test_detection_on_calibration_batches_finds_the_same_groups(demo) -> None:
    model = copy.deepcopy(demo)
    config = spikelm.SpikeConfig(threshold="static_tensor")
    fused = spikelm.spiking(model, config, [IDS[:, :16]], progress=False)
    assert sorted(fused_layers(fused)) == sorted(fused_name(g) for g in _expected_groups(demo))
    unfused = spikelm.spiking(
        copy.deepcopy(demo), config, [IDS[:, :16]], progress=False, fuse=False
    )
    with torch.no_grad():
        assert torch.equal(fused(IDS), unfused(IDS))


# --- checkpoints ---------------------------------------------------------------------------------


def test_fused_checkpoint_round_trip_is_bit_identical(demo_pair, tmp_path) -> None:
    unfused, fused = demo_pair
    out = spikelm.save(fused, tmp_path / "ckpt")
    manifest = json.loads((out / "spikelm.json").read_text())
    assert manifest["version"] == 2
    assert set(manifest["fused"]) == set(fused_layers(fused))
    assert set(manifest["layers"]) == set(spiking_layers(fused))
    restored = spikelm.load(out)
    _on_torch(restored, unfused)
    assert list(spiking_layers(restored)) == list(spiking_layers(fused))
    assert list(fused_layers(restored)) == list(fused_layers(fused))
    state, saved = restored.state_dict(), fused.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(restored(IDS), unfused(IDS))


def test_unfused_checkpoint_loads_unfused_as_before(demo_pair, tmp_path) -> None:
    unfused, fused = demo_pair
    out = spikelm.save(unfused, tmp_path / "ckpt")
    manifest = json.loads((out / "spikelm.json").read_text())
    assert manifest["version"] == 1 and "fused" not in manifest
    restored = spikelm.load(out)
    _on_torch(restored, fused)
    assert not fused_layers(restored)
    assert list(spiking_layers(restored)) == list(spiking_layers(unfused))
    with torch.no_grad():
        assert torch.equal(restored(IDS), fused(IDS))


def _edit(path: Path, change) -> None:
    manifest = json.loads((path / "spikelm.json").read_text())
    change(manifest)
    (path / "spikelm.json").write_text(json.dumps(manifest))


def _first(manifest: dict) -> tuple[str, list]:
    return next(iter(manifest["fused"].items()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(version=1), "needs checkpoint version 2"),
        (lambda m: m.update(fused=[]), "'fused' must be an object"),
        (lambda m: _first(m)[1].pop(), "does not match its members"),
        (lambda m: _first(m)[1].reverse(), "does not match its members"),
        (lambda m: _first(m)[1][0].update(out=1), "its members add up to"),
        (lambda m: _first(m)[1][0].update(out="64"), "two or more members"),
        (lambda m: m["fused"].update({"nope.{a,b}": _first(m)[1]}), "is not in 'layers'"),
        (lambda m: m["layers"].pop(_first(m)[0]), "is not in 'layers'"),
        (lambda m: m.pop("fused"), "the model has no layer"),
    ],
)
def test_malformed_fusion_entries_are_refused_in_one_line(
    demo_pair, tmp_path, change, message
) -> None:
    out = spikelm.save(demo_pair[1], tmp_path / "ckpt")
    _edit(out, change)
    with pytest.raises(SpikelmError) as error:
        spikelm.load(out)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_fused_member_that_is_not_the_recorded_width_is_refused(demo_pair, tmp_path) -> None:
    out = spikelm.save(demo_pair[1], tmp_path / "ckpt")

    def change(manifest: dict) -> None:  # widths that still add up, but not the model's
        name, members = _first(manifest)
        members[0]["out"] += 16
        members[1]["out"] -= 16

    _edit(out, change)
    with pytest.raises(CheckpointError, match="fused member .* in the model"):
        spikelm.load(out)


# --- recording, cache, unfuse --------------------------------------------------------------------


def test_a_recording_stores_each_shared_input_once(demo_pair, tmp_path) -> None:
    fused = demo_pair[1]
    record = tmp_path / "spikes.h5"
    simulate(fused, PROMPT, new_tokens=2, backend="torch", progress=False, record=record)
    groups = fused_layers(fused)
    with SpikeReader(record) as reader:
        assert reader.layers == list(spiking_layers(fused))
        for name, layer in groups.items():
            info = reader.info(name)
            assert info.fan_out == sum(layer.splits) == layer.out_features
            assert info.n_neurons == layer.in_features
        members = {m for layer in groups.values() for m in layer.member_names()}
        assert not members & set(reader.layers)


def test_the_shared_output_is_dropped_once_every_member_took_it(demo_pair) -> None:
    unfused, fused = demo_pair
    _on_torch(unfused, fused)
    mlp, reference = fused.layers[0].mlp, unfused.layers[0].mlp
    layer = mlp.get_submodule("{gate_proj,up_proj}")
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gate = mlp.gate_proj(x)
        assert layer.pending  # held for up_proj
        assert torch.equal(mlp.up_proj(x), reference.up_proj(x))
        assert not layer.pending
        assert torch.equal(gate, reference.gate_proj(x))
        # another input: recomputed, and kept for the member that has not read it yet
        y = x.clone()
        mlp.gate_proj(x)
        assert torch.equal(mlp.up_proj(y), reference.up_proj(y))
        assert layer.pending
        layer.release()
        # the same tensor changed in place between the members: recomputed, still exact
        mlp.gate_proj(x)
        x.mul_(2)
        assert torch.equal(mlp.up_proj(x), reference.up_proj(x))
        layer.release()
        assert not layer.pending


def test_inference_tensors_are_computed_per_member(demo_pair) -> None:
    unfused, fused = demo_pair
    _on_torch(unfused, fused)
    with torch.inference_mode():
        assert torch.equal(fused(IDS), unfused(IDS))
    assert not any(layer.pending for layer in fused_layers(fused).values())


def test_unfuse_restores_the_separate_layers_exactly(demo_pair) -> None:
    unfused, fused = demo_pair
    restored = unfuse(copy.deepcopy(fused))
    assert not fused_layers(restored)
    assert list(spiking_layers(restored)) == list(spiking_layers(unfused))
    assert all(type(m) is SpikingLinear for m in spiking_layers(restored).values())
    state, expected = restored.state_dict(), unfused.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)


# --- what stays unfused --------------------------------------------------------------------------


def test_a_group_with_different_static_thresholds_stays_unfused(demo, caplog) -> None:
    config = spikelm.SpikeConfig(threshold="static_tensor")
    model = spikelm.spiking(copy.deepcopy(demo), config, [IDS[:, :16]], progress=False, fuse=False)
    groups = _expected_groups(demo)
    first = model.get_submodule(groups[0][1])
    first.threshold.mul_(1.5)
    with caplog.at_level(logging.INFO, logger="spikelm.fusion"):
        done = fuse(model, groups)
    assert fused_name(groups[0]) not in done and len(done) == len(groups) - 1
    assert all(type(model.get_submodule(m)) is SpikingLinear for m in groups[0])
    assert "threshold values differ" in caplog.text


def test_outlier_migration_divisors_keep_layers_apart(demo) -> None:
    config = spikelm.SpikeConfig(smooth_alpha=0.5)  # d depends on each layer's weights
    model = spikelm.spiking(copy.deepcopy(demo), config, [IDS[:, :16]], progress=False)
    assert not fused_layers(model)


def test_only_layers_reading_one_tensor_on_every_call_are_grouped() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x) + self.b(x) + self.c(x.clone())  # c reads a copy
            return y + self.d(y)

    block = Block()
    with tracing(dict(block.named_children())) as tracer, torch.no_grad():
        block(torch.randn(2, 8))
        block(torch.randn(3, 8))
    assert tracer.groups() == [("a", "b")]
    assert trace_shared_inputs(block, dict(block.named_children())) == []  # a plain module


def test_no_fuse_on_the_command_line(tmp_path) -> None:
    pytest.importorskip("transformers")
    import hf_tiny

    source = hf_tiny.save_tiny("llama", tmp_path / "src")
    versions = {}
    for flag in ([], ["--no-fuse"]):
        out = tmp_path / f"out{len(flag)}"
        assert main(["convert", str(source), "--out", str(out), *flag]) == 0
        versions[bool(flag)] = json.loads((out / "spikelm.json").read_text())
    assert versions[False]["version"] == 2 and versions[False]["fused"]
    assert versions[True]["version"] == 1 and "fused" not in versions[True]
    shutil.rmtree(tmp_path / "src")


# --- exports -------------------------------------------------------------------------------------


FUSED_ATTENTION = "layers.0.attn.{q_proj,k_proj,v_proj,g_proj}"


def test_nir_export_holds_a_fused_layer_as_one_projection(demo_pair, tmp_path) -> None:
    nir = pytest.importorskip("nir")
    import numpy as np

    from spikelm.export.nir import export_nir

    fused = demo_pair[1]
    _on_torch(fused)
    result = export_nir(fused, tmp_path / "f.nir", layers=[FUSED_ATTENTION], reference_tokens=b"ab")
    assert result.layers == (FUSED_ATTENTION,)
    slices = [n for n, m in fused.named_modules() if isinstance(m, SharedInputSlice)]
    assert slices and not set(slices) & set(result.not_expressible)
    graph = nir.read(tmp_path / "f.nir")
    weights = [n.weight for n in graph.nodes[FUSED_ATTENTION].nodes.values()
               if isinstance(n, nir.Linear) and n.weight.dtype == np.int8]  # fmt: skip
    layer = fused.get_submodule(FUSED_ATTENTION)
    assert weights and np.array_equal(weights[0][:, : layer.in_features], layer.weight_q.numpy())


def test_onnx_export_runs_each_fused_layer_once(demo_pair, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from spikelm.export.onnx import export_onnx

    fused = demo_pair[1]
    _on_torch(fused)
    result = export_onnx(fused, tmp_path / "f.onnx", prefill=False)
    called = result.spiking_layers  # each spiking layer once per step, fused ones included
    assert len(set(called)) == len(called) and set(called) == set(spiking_layers(fused))
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    weights = {t.name for t in graph.initializer}
    assert FUSED_ATTENTION + ".weight_q" in weights
    assert not any(".q_proj." in name for name in weights)
    assert not any(layer.pending for layer in fused_layers(fused).values())
