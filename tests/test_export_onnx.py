"""ONNX export (spikelm.export.onnx): every graph passes onnx.checker and runs in onnxruntime
against spikelm on the same inputs: spike counts bit-identical at every spiking layer, logits
within LOGITS_ATOL, 32 greedy tokens identical; the prefill graph equals stepping bit for bit;
the layer graph equals the integer reference bit for bit."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_HYBRID
from torch import nn

import spikelm
from spikelm import SpikeConfig
from spikelm.adapters import adapter_for
from spikelm.backends.epilogue import epilogue
from spikelm.backends.reference import accumulators
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError
from spikelm.export import onnx as onnx_export
from spikelm.export.onnx import (
    DEFAULT_OPSET,
    EXPORTER,
    OnnxExport,
    export_layer_onnx,
    export_onnx,
    families,
    present_name,
)
from spikelm.export.onnx_spiking import LayerSpec, SpikingLinearOp
from spikelm.layers import SpikingLinear, probed, spiking_layers
from spikelm.models import HybridLM, load_demo_model
from spikelm.neurons import fixed_order_sum, spike_counts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

try:
    import hf_tiny
except ImportError:  # transformers not installed: the transformers families skip
    hf_tiny = None

LOGITS_ATOL = 1e-4
"""Logits of the graph and of spikelm agree to this (measured: below 2e-5)."""
NEW_TOKENS = 32
PROMPT = np.random.default_rng(3).integers(4, 250, (2, 8))
TESTED = ("spikelm_hybrid", "llama", "mamba2", "rwkv")


def _convert(model: nn.Module) -> nn.Module:
    return spikelm.convert(spikelm.prepare(model, SpikeConfig()))


def _model(family: str) -> nn.Module:
    if family == "spikelm_hybrid":
        torch.manual_seed(0)
        return _convert(HybridLM(TINY_HYBRID).eval())
    if hf_tiny is None:
        pytest.skip("needs transformers")
    model, _ = hf_tiny.build_tiny(family)
    adapter_for(model).loaded(model)
    return _convert(model)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[nn.Module, OnnxExport]]:
    """Each tested family's converted model and its export (counts exposed), built on first use."""
    directory = tmp_path_factory.mktemp("onnx")

    class Built(dict):
        def __missing__(self, family: str) -> tuple[nn.Module, OnnxExport]:
            model = _model(family)
            path = directory / f"{family}.onnx"
            self[family] = model, export_onnx(model, path, expose_counts=True)
            return self[family]

    return Built()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ort_decode(export: OnnxExport, prompt: np.ndarray, new_tokens: int):
    """Feed ``prompt [B, P]`` then ``new_tokens`` greedy tokens through the decode graph:
    ``(logits per step [B, V], counts per step {layer: [B, in]}, generated tokens [B, new])``."""
    session = _session(export.graph("decode").path)
    names = [o.name for o in session.get_outputs()]
    state = export.initial_state(prompt.shape[0])
    token = prompt[:, 0]
    logits, counts, generated = [], [], []
    for t in range(prompt.shape[1] + new_tokens - 1):
        out = dict(
            zip(names, session.run(None, {"input_ids": token[:, None], **state}), strict=True)
        )
        state = {name: out[present_name(name)] for name in state}
        logits.append(out["logits"][:, 0])
        counts.append(
            {n[len("spike_counts.") :]: v for n, v in out.items() if n.startswith("spike_")}
        )
        token = prompt[:, t + 1] if t + 1 < prompt.shape[1] else logits[-1].argmax(-1)
        if t + 1 >= prompt.shape[1]:
            generated.append(token)
    return logits, counts, np.stack(generated, 1)


@torch.no_grad()
def _spikelm_decode(model: nn.Module, prompt: np.ndarray, new_tokens: int):
    """The same through spikelm's own step (the adapter's), from the adapter's empty state."""
    adapter = adapter_for(model)
    layers = spiking_layers(model)
    seen: dict[str, np.ndarray] = {}
    probes = {
        name: (lambda n: lambda _, c: seen.__setitem__(n, c.numpy()))(name) for name in layers
    }
    state = adapter.init_state(model, prompt.shape[0])
    token = torch.from_numpy(prompt[:, 0])
    logits, counts, generated = [], [], []
    with probed(layers, probes):
        for t in range(prompt.shape[1] + new_tokens - 1):
            seen.clear()
            out, state = adapter.step(model, token, state)
            logits.append(out.numpy())
            counts.append(dict(seen))
            token = (
                torch.from_numpy(prompt[:, t + 1]) if t + 1 < prompt.shape[1] else out.argmax(-1)
            )
            if t + 1 >= prompt.shape[1]:
                generated.append(token.numpy())
    return logits, counts, np.stack(generated, 1)


def _assert_same_run(model: nn.Module, export: OnnxExport, prompt: np.ndarray) -> None:
    got = _ort_decode(export, prompt, NEW_TOKENS)
    want = _spikelm_decode(model, prompt, NEW_TOKENS)
    assert set(got[1][0]) == set(export.spiking_layers) == set(spiking_layers(model))
    for step, (ort_counts, ref_counts) in enumerate(zip(got[1], want[1], strict=True)):
        for name, counts in ort_counts.items():
            assert np.array_equal(counts, ref_counts[name]), f"step {step}, layer {name}"
    np.testing.assert_allclose(np.stack(got[0]), np.stack(want[0]), rtol=0, atol=LOGITS_ATOL)
    assert got[2].shape == (prompt.shape[0], NEW_TOKENS)
    assert np.array_equal(got[2], want[2])


@pytest.mark.parametrize("family", TESTED)
def test_decode_graph_reproduces_spikelm(family: str, exports) -> None:
    model, export = exports[family]
    for graph in export.graphs:
        onnx.checker.check_model(str(graph.path), full_check=True)
    prompt = PROMPT[:1] if export.batch == 1 else PROMPT
    _assert_same_run(model, export, prompt)


@pytest.mark.parametrize("family", TESTED)
def test_prefill_graph_equals_stepping_the_decode_graph(family: str, exports) -> None:
    _, export = exports[family]
    prompt = PROMPT[:1] if export.batch == 1 else PROMPT
    session = _session(export.graph("prefill").path)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"input_ids": prompt}), strict=True))
    decode = _session(export.graph("decode").path)
    decode_names = [o.name for o in decode.get_outputs()]
    state = export.initial_state(prompt.shape[0])
    for t in range(prompt.shape[1]):
        step = dict(
            zip(
                decode_names,
                decode.run(None, {"input_ids": prompt[:, t : t + 1], **state}),
                strict=True,
            )
        )
        state = {name: step[present_name(name)] for name in state}
        assert np.array_equal(out["logits"][:, t], step["logits"][:, 0])
        for name in export.spiking_layers:
            key = "spike_counts." + name
            assert np.array_equal(out[key][t], step[key])
    for name, value in state.items():
        assert np.array_equal(out[present_name(name)], value)


def test_shipped_demo_model(tmp_path: Path) -> None:
    model = _convert(load_demo_model())
    export = export_onnx(model, tmp_path / "demo.onnx", expose_counts=True, prefill=False)
    prompt = np.frombuffer(b"The quick brown fox", dtype=np.uint8).astype(np.int64)[None]
    _assert_same_run(model, export, prompt)
    # spiking weights as int8 (1 byte each), the rest (embeddings, head, norms) float32
    proto = onnx.load(str(export.graph("decode").path))
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights = sum(layer.weight_q.numel() for layer in spiking_layers(model).values())
    assert sum(len(t.raw_data) for t in int8) == weights > 0.8 * export.float32_bytes / 4
    assert export.graph("decode").bytes < 0.45 * export.float32_bytes


def test_weights_are_int8_initializers_feeding_matmul_integer(exports) -> None:
    model, export = exports["spikelm_hybrid"]
    proto = onnx.load(str(export.graph("decode").path))
    initializers = {t.name: t for t in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    assert len(matmuls) == len(spiking_layers(model))
    for node in matmuls:
        assert initializers[node.input[1]].data_type == onnx.TensorProto.INT8
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8) == sum(
        layer.weight_q.numel() for layer in spiking_layers(model).values()
    )
    for name, layer in spiking_layers(model).items():
        stored = onnx.numpy_helper.to_array(initializers[name + ".weight_q"])
        groups = layer.weight_scale.shape[1]
        assert np.array_equal(
            stored, layer.weight_q.reshape(layer.out_features, groups, -1).permute(1, 2, 0).numpy()
        )


def test_opset_and_exporter_are_pinned(exports, tmp_path: Path) -> None:
    assert (EXPORTER, DEFAULT_OPSET) == ("torchscript", 18)
    model, export = exports["spikelm_hybrid"]
    assert (export.exporter, export.opset) == ("torchscript", 18)
    for graph in export.graphs:
        proto = onnx.load(str(graph.path), load_external_data=False)
        assert {o.domain: o.version for o in proto.opset_import}[""] == 18
        assert proto.producer_name == "spikelm"
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["spikelm.exporter"] == "torchscript" and meta["spikelm.graph"] == graph.kind
    other = export_onnx(model, tmp_path / "o17.onnx", opset=17, prefill=False)
    proto = onnx.load(str(other.graph("decode").path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    _session(other.graph("decode").path).run(
        None, {"input_ids": PROMPT[:, :1], **other.initial_state(2)}
    )


def test_summary_names_files_and_graphs(exports) -> None:
    _, export = exports["llama"]
    text = export.summary()
    assert (
        "torchscript" in text and "opset 18" in text and str(export.graph("prefill").path) in text
    )
    assert export.graph("decode").inputs[:2] == ("input_ids", "past_key_values.0.key")
    assert export.graph("decode").outputs[:2] == ("logits", "present.0.key")
    assert export.graph("prefill").inputs == ("input_ids",)


def test_external_data_is_one_file_shared_by_both_graphs(exports, tmp_path: Path) -> None:
    model, embedded = exports["spikelm_hybrid"]
    export = export_onnx(model, tmp_path / "ext.onnx", external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data", "ext.prefill.onnx"]
    assert all(g.external_data == tmp_path / "ext.onnx.data" for g in export.graphs)
    for graph in export.graphs:
        proto = onnx.load(str(graph.path), load_external_data=False)
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    feed = {"input_ids": PROMPT[:, :1], **export.initial_state(2)}
    want = _session(embedded.graph("decode").path).run(["logits"], feed)[0]
    assert np.array_equal(_session(export.graph("decode").path).run(["logits"], feed)[0], want)
    prefill = _session(export.graph("prefill").path).run(["logits"], {"input_ids": PROMPT[:, :1]})
    assert np.array_equal(prefill[0], want)


LAYER_CASES = [
    ("bitwise_bidirectional", 8, "dynamic"),
    ("ternary", 5, "dynamic"),
    ("binary", 4, "dynamic"),
    ("bitwise", 6, "dynamic"),
    ("bitwise_twos_complement", 6, "dynamic"),
    ("bitwise_bidirectional", 8, "static_tensor"),
]


@pytest.mark.parametrize(("coding", "steps", "threshold"), LAYER_CASES)
def test_layer_graph_equals_the_integer_reference(coding, steps, threshold, tmp_path) -> None:
    torch.manual_seed(1)
    config = SpikeConfig(coding=coding, steps=steps, threshold=threshold)
    calibration = [torch.randn(16, 256) for _ in range(2)]
    net = spikelm.spiking(nn.Sequential(nn.Linear(256, 24)), config, calibration, progress=False)
    layer = spiking_layers(net)["0"]
    export = export_layer_onnx(layer, tmp_path / "layer.onnx")
    onnx.checker.check_model(str(tmp_path / "layer.onnx"), full_check=True)
    assert export.graph("layer").inputs == (
        ("spikes", "threshold") if threshold == "dynamic" else ("spikes",)
    )
    x = torch.randn(7, 256) * 2
    with torch.no_grad():
        counts, v_th = layer.spike_counts(x)
        feed = {"spikes": get_coder(coding).encode(counts, steps).numpy()}
        if threshold == "dynamic":
            feed["threshold"] = v_th.numpy()
        y, acc = _session(tmp_path / "layer.onnx").run(None, feed)
        want_acc = accumulators(layer, counts)
        want_y = epilogue(want_acc, layer.weight_scale, v_th) + layer.bias
    assert acc.dtype == np.int32 and np.array_equal(acc, want_acc.numpy())
    assert np.array_equal(y, want_y.numpy())


# --- the neuron inside the graph --------------------------------------------------------------


class _Neuron(nn.Module):
    """One spiking layer as the decode graph holds it: ``x -> (y, counts)``."""

    def __init__(self, layer: SpikingLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        return SpikingLinearOp.apply(
            x,
            layer.weight_q,
            layer.weight_scale,
            layer.input_divisor,
            layer.threshold,
            layer.bias,
            LayerSpec.of(layer),
            layer,
        )


def _export_neuron(layer: SpikingLinear, sample: torch.Tensor, path: Path) -> Path:
    """One spiking layer's graph (``x`` rows in; ``y`` and ``counts`` out), written to ``path``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about spikelm's own checks
        torch.onnx.export(
            _Neuron(layer).eval(),
            (sample,),
            str(path),
            dynamo=False,
            opset_version=DEFAULT_OPSET,
            input_names=["x"],
            output_names=["y", "counts"],
            dynamic_axes={"x": {0: "rows"}},
        )
    return path


@pytest.fixture(scope="module")
def wide_neuron(tmp_path_factory):
    """A 4096-wide layer's graph and rows where a library mean (torch's own reduction order) and
    spikelm's fixed-order sum give thresholds that round one count differently (about one row
    in 8000): the rows where any runtime with its own reduction order would disagree."""
    torch.manual_seed(2)
    layer = spiking_layers(_convert(nn.Sequential(nn.Linear(4096, 4))))["0"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(64):
        u = torch.randn(1024, 4096, generator=generator)
        u *= torch.exp(torch.randn(1, 4096, generator=generator))
        library = spike_counts(u, u.abs().mean(-1, keepdim=True) / layer.k, layer.count_range)
        ours = layer.spike_counts(u)[0]
        assert torch.equal(
            ours, spike_counts(u, fixed_order_sum(u.abs()) / 4096 / layer.k, layer.count_range)
        )
        theirs = library
        rows = (ours != theirs).any(-1).nonzero().flatten()
        if len(rows):
            break
    else:
        raise AssertionError("no row where the reduction order matters was found")
    path = _export_neuron(layer, u[:2], tmp_path_factory.mktemp("neuron") / "neuron.onnx")
    rows = torch.cat([u[rows], u[:16]])
    y, counts = _session(path).run(None, {"x": rows.numpy()})
    return layer, rows, y, counts


def test_graph_neuron_is_bit_exact_with_the_fixed_order_threshold(wide_neuron) -> None:
    layer, rows, y, counts = wide_neuron
    v_th = fixed_order_sum(rows.abs()) / 4096 / layer.k
    want = spike_counts(rows, v_th, layer.count_range)
    assert np.array_equal(counts, want.numpy())
    want_y = epilogue(accumulators(layer, want), layer.weight_scale, v_th) + layer.bias
    assert np.array_equal(y, want_y.numpy())


NEURON_CASES = [
    (300, {"group_size": None}),  # odd widths: the fixed-order sum pads
    (384, {"group_size": 128}),  # three weight-scale groups added in order
    (256, {"threshold": "static_tensor"}),
    (256, {"threshold": "static_channel"}),  # per-channel divisor, constant threshold
    (256, {"smooth_alpha": 0.5}),  # divisor and dynamic threshold
]


@pytest.mark.parametrize(("width", "options"), NEURON_CASES)
def test_graph_neuron_is_spikelm_neuron_given_its_threshold(width, options, tmp_path) -> None:
    """Bit for bit: the graph's neuron is spikelm's (its dynamic threshold's sum in the same
    fixed order)."""
    torch.manual_seed(3)
    calibration = [torch.randn(32, width) * 2 for _ in range(2)]
    net = nn.Sequential(nn.Linear(width, 8))
    net = spikelm.spiking(net, SpikeConfig(**options), calibration, progress=False)
    layer = spiking_layers(net)["0"]
    path = _export_neuron(layer, torch.randn(2, width), tmp_path / "neuron.onnx")
    rows = torch.randn(64, width) * 3
    y, counts = _session(path).run(None, {"x": rows.numpy()})
    with torch.no_grad():
        u, v_th = layer.neuron_input(rows)
        if layer.dynamic:
            v_th = fixed_order_sum(u.abs()) / width / layer.k
        want = spike_counts(u, v_th, layer.count_range)
        assert torch.equal(want, layer.spike_counts(rows)[0])  # the graph's threshold is spikelm's
        want_y = epilogue(accumulators(layer, want), layer.weight_scale, v_th) + layer.bias
    assert np.array_equal(counts, want.numpy())
    assert np.array_equal(y, want_y.numpy())


def test_graph_neuron_equals_spikelm_at_threshold_ties(wide_neuron) -> None:
    layer, rows, _, counts = wide_neuron
    assert np.array_equal(counts, layer.spike_counts(rows)[0].numpy())


# --- bad inputs, files ------------------------------------------------------------------------


def test_bad_paths_and_options(exports, tmp_path: Path) -> None:
    model, _ = exports["spikelm_hybrid"]
    with pytest.raises(ConfigError, match="does not exist"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ConfigError, match="must end in .onnx"):
        export_onnx(model, tmp_path / "m.bin")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        export_onnx(model, tmp_path / "d.onnx")
    with pytest.raises(ConfigError, match="opset 12"):
        export_onnx(model, tmp_path / "m.onnx", opset=12)
    with pytest.raises(ConfigError, match="convert it first"):
        export_onnx(HybridLM(TINY_HYBRID).eval(), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="SpikingLinear"):
        export_layer_onnx(nn.Linear(4, 4), tmp_path / "l.onnx")
    assert os.listdir(tmp_path) == ["d.onnx"]


def test_unsupported_family_lists_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        export_onnx(_convert(nn.Sequential(nn.Linear(8, 8))), tmp_path / "m.onnx")
    message = str(error.value)
    assert "'module'" in message and "no token-by-token step" in message
    assert all(family in message for family in families())
    if hf_tiny is not None:
        assert set(families()) == {"spikelm_hybrid", "llama", "qwen2", "mamba2", "rwkv"}
    if hf_tiny is not None:
        model, _ = hf_tiny.build_tiny("qwen3_next")
        with pytest.raises(ConfigError, match="'qwen3_next'.*routed experts.*handles: spike"):
            export_onnx(_convert(model), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_models_the_graph_cannot_express_are_refused(exports, tmp_path: Path) -> None:
    model, _ = exports["spikelm_hybrid"]
    model.train()
    try:
        with pytest.raises(ConfigError, match="eval mode"):
            export_onnx(model, tmp_path / "m.onnx")
    finally:
        model.eval()
    assert os.listdir(tmp_path) == []


def test_rwkv_graphs_take_batch_one(exports) -> None:
    _, export = exports["rwkv"]
    assert export.batch == 1
    assert export.graph("decode").inputs[1] == "past_key_values.0.ffn_shift"
    with pytest.raises(ConfigError, match="batch 1"):
        export.initial_state(2)


def test_a_failed_export_leaves_the_old_file_and_no_partial_one(exports, tmp_path, monkeypatch):
    model, _ = exports["spikelm_hybrid"]
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def broken(*args, **kwargs):
        raise onnx.checker.ValidationError("broken on purpose")

    monkeypatch.setattr(onnx_export.onnx.checker, "check_model", broken)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(model, target)
    assert os.listdir(tmp_path) == ["m.onnx"] and target.read_bytes() == b"old"


def test_export_leaves_the_model_as_it_was(exports, tmp_path: Path) -> None:
    model, _ = exports["spikelm_hybrid"]
    adapter = adapter_for(model)
    with torch.no_grad():
        before, _ = adapter.step(model, torch.tensor([5]), adapter.init_state(model, 1))
        export_onnx(model, tmp_path / "again.onnx", prefill=False)
        after, _ = adapter.step(model, torch.tensor([5]), adapter.init_state(model, 1))
    assert not any(m.training for m in model.modules())
    assert not any("forward" in layer.__dict__ for layer in spiking_layers(model).values())
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    ("coding", "steps", "cost"),
    [("bitwise_bidirectional", 8, 0.3), ("bitwise_bidirectional", 8, 1.0), ("bitwise", 6, 0.5),
     ("ternary", 4, 0.3)],
)  # fmt: skip
def test_graph_error_aware_rounding_picks_the_torch_counts(coding, steps, cost, tmp_path) -> None:
    """``spike_cost > 0`` (the spikelm recipe's rounding): the graph's candidates and choice
    equal ``spikelm.neurons.error_aware_counts`` bit for bit, powers of two and values a hair
    below them included (static threshold 1, so ``a = |x|``)."""
    config = SpikeConfig(coding=coding, steps=steps, threshold="static_tensor", spike_cost=cost)
    layer = SpikingLinear(64, 8, config, name="aware")
    layer.weight_q.copy_(torch.randint(-127, 128, (8, 64), dtype=torch.int8))
    layer.threshold.fill_(1.0)
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(40, 64, generator=g) * torch.exp(torch.randn(40, 1, generator=g) * 2)
    edges = [2.0**j for j in range(-1, steps + 2)]
    specials = edges + [torch.nextafter(torch.tensor(e), torch.tensor(0.0)).item() for e in edges]
    specials += [0.0, 0.5, 1.5, 2.5, 3.5, 5.5, 6.75, 1e30]
    edge_rows = torch.tensor(specials + [-v for v in specials], dtype=torch.float32)
    edge_rows = torch.nn.functional.pad(edge_rows, (0, -len(edge_rows) % 64)).reshape(-1, 64)
    rows = torch.cat([rows, edge_rows])
    path = _export_neuron(layer, rows[:2], tmp_path / "aware.onnx")
    y, counts = _session(path).run(None, {"x": rows.numpy()})
    want, v_th = layer.spike_counts(rows)
    assert np.array_equal(counts, want.numpy().astype(counts.dtype))
    assert (want.abs() > 0).any() and (want != spike_counts(rows, v_th, layer.count_range)).any()
    want_y = epilogue(accumulators(layer, want), layer.weight_scale, v_th) + layer.bias
    assert np.array_equal(y, want_y.numpy())


@pytest.mark.parametrize("threshold", ["dynamic", "static_tensor"])
def test_graphs_decode_with_the_layer_gain(threshold: str, tmp_path) -> None:
    """A learned decode gain (``V_out = g V_th``, one float32 product): the layer's graph, fed
    inputs or spikes, gives spikelm's outputs bit for bit, and they differ from gain 1's."""
    torch.manual_seed(2)
    config = SpikeConfig(threshold=threshold)
    calibration = [torch.randn(16, 128) for _ in range(2)]
    net = spikelm.spiking(nn.Sequential(nn.Linear(128, 24)), config, calibration, progress=False)
    layer = spiking_layers(net)["0"]
    layer.backend = "reference"
    x = torch.randn(9, 128) * 2
    with torch.no_grad():
        plain = layer(x)
        layer.set_neuron(gain=0.93)
        want = layer(x)
        counts, v_th = layer.spike_counts(x)
    assert not torch.equal(want, plain)
    y, graph_counts = _session(_export_neuron(layer, x[:2], tmp_path / "x.onnx")).run(
        None, {"x": x.numpy()}
    )
    assert np.array_equal(graph_counts, counts.numpy().astype(graph_counts.dtype))
    assert np.array_equal(y, want.numpy())
    export_layer_onnx(layer, tmp_path / "spikes.onnx")
    feed = {"spikes": get_coder(layer.coding).encode(counts, layer.steps).numpy()}
    if threshold == "dynamic":
        feed["threshold"] = v_th.numpy()  # the threshold that counted them; the graph decodes
    y, _ = _session(tmp_path / "spikes.onnx").run(None, feed)
    assert np.array_equal(y, want.numpy())
