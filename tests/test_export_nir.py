"""NIR export: round trip through ``nir.read``, and the graph run by nirtorch against spikelm.

The cross-check rebuilds each layer's spike trains from spikelm (not from the file), runs the
exported layer graph imported by ``nirtorch.nir_to_torch`` in float64 (exact for these integer
sums, all below 2^53) and holds its ``weight`` node's outputs to the reference backend's integer
accumulators bit for bit, and its float output (after V_th and bias) to the layer's own output.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import spikelm
from spikelm.backends.reference import integer_accumulators
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError, MissingExtraError, SpikelmError
from spikelm.models import load_demo_model, load_demo_texts

nir = pytest.importorskip("nir")
nirtorch = pytest.importorskip("nirtorch")

from spikelm.export import nir as nir_export  # noqa: E402
from spikelm.export.nir import IF_SUFFIX, export_nir  # noqa: E402

LAYERS = (
    "layers.0.attn.q_proj",  # GLA input projection
    "layers.0.attn.gk_proj.1",  # has a bias
    "layers.0.mlp.down_proj",  # two weight-scale groups
    "layers.1.attn.v_proj",  # sliding-window layer
)
TOKENS = b"NIR export check."


@pytest.fixture(scope="module")
def dynamic_model() -> torch.nn.Module:  # unfused: LAYERS name single projections
    return spikelm.convert(spikelm.prepare(load_demo_model(), spikelm.SpikeConfig()), fuse=False)


@pytest.fixture(scope="module")
def static_model() -> torch.nn.Module:
    calib = torch.tensor(list(load_demo_texts()[0].encode()[:256])).unsqueeze(0)
    config = spikelm.SpikeConfig(threshold="static_tensor")
    return spikelm.spiking(load_demo_model(), config, [calib], progress=False, fuse=False)


@pytest.fixture(scope="module")
def exported(dynamic_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("nir") / "demo.nir"
    result = export_nir(
        dynamic_model, path, layers=LAYERS, reference_tokens=TOKENS, approximate=True
    )
    return result, nir.read(path)


def _inputs(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Input rows ``[M, in]`` of each named layer on :data:`TOKENS`."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, args, out, n=n: seen.__setitem__(n, args[0].reshape(-1, m.in_features))
        )
        for n in names
    ]
    with torch.no_grad():
        model(torch.tensor([list(TOKENS)]))
    for handle in handles:
        handle.remove()
    return seen


class _Scale(torch.nn.Module):
    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _linear(weight: np.ndarray, bias: np.ndarray | None = None) -> torch.nn.Linear:
    module = torch.nn.Linear(*weight.shape[::-1], bias=bias is not None, dtype=torch.float64)
    module.weight.data = torch.from_numpy(weight.astype(np.float64))
    if bias is not None:
        module.bias.data = torch.from_numpy(bias.astype(np.float64))
    return module


# nirtorch 2.6 maps no Scale, loads int8 Linear weights as int8 (float modules cannot take them)
# and drops an Affine's bias (it sets ``weight.bias``): these three maps are the float64 ones.
NODE_MAP = {
    nir.Scale: lambda node: _Scale(node.scale),
    nir.Linear: lambda node: _linear(node.weight),
    nir.Affine: lambda node: _linear(node.weight, node.bias),
}


def _run_nirtorch(graph, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accumulators, output) of a layer graph imported by nirtorch, on the train ``[M, T*in]``."""
    module = nirtorch.nir_to_torch(graph, NODE_MAP, dtype=torch.float64)
    seen = {}
    module.weight.register_forward_hook(lambda m, a, out: seen.__setitem__("acc", out))
    with torch.no_grad():
        output, _ = module(train.to(torch.float64))
    return seen["acc"], output


def _train(layer, counts: torch.Tensor) -> torch.Tensor:
    """The unrolled train ``[M, T*in]``: channel ``t*in + i`` is step t of input i."""
    spikes = get_coder(layer.coding).encode(counts, layer.steps)
    return spikes.permute(1, 0, 2).reshape(counts.shape[0], -1)


def _chain(graph) -> list[str]:
    """Node names from ``input`` along the edges (HDF5 gives nodes back sorted by name)."""
    after = dict(graph.edges)
    names = ["input"]
    while names[-1] in after:
        names.append(after[names[-1]])
    return names


def test_round_trip_keeps_types_and_int8_weights(dynamic_model, exported):
    result, graph = exported
    assert result.layers == LAYERS
    assert "arrays equal" in result.round_trip
    for name in LAYERS:
        layer = dynamic_model.get_submodule(name)
        sub = graph.nodes[name]
        kinds = [type(sub.nodes[node]).__name__ for node in _chain(sub)]
        groups = layer.weight_scale.shape[1]
        expected = ["Input", "Scale", "Linear", "Scale"] + ["Linear"] * (groups > 1) + ["Output"]
        assert kinds == expected
        weight = sub.nodes["weight"].weight
        assert weight.dtype == np.int8
        assert weight.shape == (groups * layer.out_features, layer.steps * layer.in_features)
        w_q = layer.weight_q.numpy()
        width = layer.in_features // groups
        for g in range(groups):  # block g, step t: exactly W_q's columns of group g
            rows = weight[g * layer.out_features : (g + 1) * layer.out_features]
            for t in range(layer.steps):
                cols = rows[:, t * layer.in_features : (t + 1) * layer.in_features]
                group = slice(g * width, (g + 1) * width)
                assert np.array_equal(cols[:, group], w_q[:, group])
                assert not cols[:, : g * width].any() and not cols[:, (g + 1) * width :].any()
        steps = get_coder(layer.coding).step_weights(layer.steps).numpy()
        assert np.array_equal(sub.nodes["steps"].scale, np.repeat(steps, layer.in_features))
        scale = sub.nodes["weight_scale"].scale
        assert scale.dtype == np.float32
        assert np.array_equal(scale, layer.weight_scale.numpy().T.reshape(-1))
        assert sub.metadata["threshold_mode"] == "dynamic"
        assert "outside the graph" in sub.metadata["outside_graph"]
    assert "one NIR time step per token" in graph.metadata["time_axis"]


def test_nirtorch_matches_reference_accumulators_and_outputs(dynamic_model, exported):
    _, graph = exported
    inputs = _inputs(dynamic_model, LAYERS)
    for name in LAYERS:
        layer = dynamic_model.get_submodule(name)
        counts, v_th = layer.spike_counts(inputs[name])
        groups = layer.weight_scale.shape[1]
        acc, output = _run_nirtorch(graph.nodes[name], _train(layer, counts))
        expected = integer_accumulators(
            counts, layer.weight_q, groups, layer.coding, layer.steps
        ).reshape(counts.shape[0], -1)
        assert torch.equal(acc, expected.to(torch.float64))  # exact integers
        dense = counts.to(torch.int64) @ layer.weight_q.to(torch.int64).t()
        assert torch.equal(acc.reshape(-1, groups, layer.out_features).sum(1), dense.double())
        y = output * v_th.double()
        if layer.bias is not None:
            y = y + layer.bias.double()
        with torch.no_grad():
            reference = layer(inputs[name]).double()
        torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("coding", "steps"), [("binary", 4), ("ternary", 4), ("bitwise_twos_complement", 6)]
)
def test_other_codings_are_exact_too(coding, steps, tmp_path):
    config = spikelm.SpikeConfig(coding=coding, steps=steps)
    model = spikelm.convert(spikelm.prepare(load_demo_model(), config))
    name = "layers.0.mlp.down_proj"
    result = export_nir(model, tmp_path / "c.nir", layers=name, approximate=True)
    assert 0.0 <= result.mismatch_rate[name] <= 1.0
    layer = model.get_submodule(name)
    counts, _ = layer.spike_counts(_inputs(model, (name,))[name])
    acc, _ = _run_nirtorch(nir.read(result.path).nodes[name], _train(layer, counts))
    dense = counts.to(torch.int64) @ layer.weight_q.to(torch.int64).t()
    assert torch.equal(acc.reshape(len(counts), 2, -1).sum(1), dense.double())


def test_traces_in_file_equal_spikelm(dynamic_model, exported):
    result, _ = exported
    data = nir.read_data(result.path)
    inputs = _inputs(dynamic_model, LAYERS)
    for name in LAYERS:
        layer = dynamic_model.get_submodule(name)
        counts, v_th = layer.spike_counts(inputs[name])
        nodes = data.nodes[name].nodes
        spikes = nodes["input"].observables["spikes"]
        assert spikes.data.dtype == np.int8 and spikes.dt == 1.0
        assert np.array_equal(spikes.data[0], _train(layer, counts).numpy())
        acc = nodes["weight"].observables["accumulators"].data[0]
        groups = layer.weight_scale.shape[1]
        expected = integer_accumulators(counts, layer.weight_q, groups, layer.coding, layer.steps)
        assert np.array_equal(acc, expected.reshape(counts.shape[0], -1).numpy())
        outputs = nodes["output"].observables
        assert np.array_equal(outputs["v_th"].data[0][:, :1], v_th.numpy())
        with torch.no_grad():
            y = layer(inputs[name]).numpy()
        assert np.array_equal(outputs["layer_output"].data[0], y)
    assert result.tokens == len(TOKENS)


def test_static_thresholds_are_in_the_graph(static_model, tmp_path):
    names = ("layers.0.attn.gk_proj.1", "layers.0.mlp.down_proj")
    path = tmp_path / "static.nir"
    export_nir(static_model, path, layers=names, reference_tokens=TOKENS)
    graph = nir.read(path)
    inputs = _inputs(static_model, names)
    for name in names:
        layer = static_model.get_submodule(name)
        sub = graph.nodes[name]
        assert "threshold" in sub.nodes and sub.metadata["outside_graph"] == "y = output"
        assert ("bias" in sub.nodes) == (layer.bias is not None)
        counts, _ = layer.spike_counts(inputs[name])
        _, output = _run_nirtorch(sub, _train(layer, counts))
        with torch.no_grad():
            reference = layer(inputs[name]).double()
        torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-6)


def test_approximation_reports_a_measured_mismatch(exported):
    result, graph = exported
    assert set(result.mismatch_rate) == set(LAYERS)
    assert all(0.0 <= rate <= 1.0 for rate in result.mismatch_rate.values())
    assert 0.0 <= result.overall_mismatch_rate <= 1.0
    assert "IF approximation: count mismatch" in result.summary()
    sub = graph.nodes[LAYERS[0] + IF_SUFFIX]
    assert isinstance(sub.nodes["neuron"], nir.IF)
    assert float(sub.metadata["mismatch_rate"]) == result.mismatch_rate[LAYERS[0]]


def test_if_simulation_follows_nir_semantics():
    node = nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3))
    counts = nir_export._simulate_if(node, np.array([[0.5, 1.0, 1.5]]), steps=4)
    assert counts.tolist() == [[1, 2, 4]]  # strict v > 1, hard reset to 0 (soft, >=: 1, 4, 4)


def test_exact_export_has_no_approximation(dynamic_model, tmp_path):
    result = export_nir(dynamic_model, tmp_path / "a.nir", layers="layers.0.mlp.*")
    assert result.mismatch_rate is None and result.overall_mismatch_rate is None
    assert result.layers == (
        "layers.0.mlp.gate_proj",
        "layers.0.mlp.up_proj",
        "layers.0.mlp.down_proj",
    )
    graph = nir.read(result.path)
    assert not any(name.endswith(IF_SUFFIX) for name in graph.nodes)
    assert "not in the graph" in graph.metadata["neuron"]


def test_not_expressible_names_the_dense_parts(exported):
    result, _ = exported
    reasons = result.not_expressible
    for name in ("embed_tokens", "layers.0.attn_norm", "norm", "lm_head"):
        assert name in reasons
    assert "linear attention" in reasons["layers.0.attn"]
    assert "softmax attention" in reasons["layers.1.attn"]
    assert "product of two activations" in reasons["layers.0.mlp"]
    assert not any(name in reasons for name in LAYERS)
    assert "embed_tokens" in result.summary()


def test_missing_directory_is_one_line_and_writes_nothing(dynamic_model, tmp_path):
    with pytest.raises(ConfigError) as info:
        export_nir(dynamic_model, tmp_path / "missing" / "x.nir", layers=LAYERS[:1])
    assert "\n" not in str(info.value) and "does not exist" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_unmatched_pattern_lists_layers(dynamic_model, tmp_path):
    with pytest.raises(ConfigError) as info:
        export_nir(dynamic_model, tmp_path / "x.nir", layers=("layers.*.nope",))
    message = str(info.value)
    assert "\n" not in message and "layers.0.attn.q_proj" in message and "nope" in message
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_partial(dynamic_model, tmp_path, monkeypatch):
    path = tmp_path / "x.nir"
    path.write_bytes(b"old")

    def broken(*args):
        raise SpikelmError("NIR round trip: array differs at graph")

    monkeypatch.setattr(nir_export, "_check_round_trip", broken)
    with pytest.raises(SpikelmError):
        export_nir(dynamic_model, path, layers=LAYERS[:1])
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.nir"]


def test_missing_nir_names_the_extra(dynamic_model, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nir" else find_spec(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"spikelm\[nir\]"):
        export_nir(dynamic_model, tmp_path / "x.nir")


def test_error_aware_rounding_is_named_in_the_layer_metadata(tmp_path):
    """The neuron stays outside the graph; a layer that rounds error-aware (the spikelm recipe's
    rounding) says so, with its cost, so that a runtime does not round to nearest instead."""
    model = spikelm.convert(spikelm.prepare(load_demo_model(), spikelm.SpikeConfig(spike_cost=0.3)))
    name = "layers.0.mlp.down_proj"
    result = export_nir(model, tmp_path / "e.nir", layers=name)
    meta = nir.read(result.path).nodes[name].metadata
    assert float(meta["spike_cost"]) == 0.3 and "error-aware" in str(meta["rounding"])


@pytest.mark.parametrize("threshold", ["dynamic", "static_tensor"])
def test_a_decode_gain_is_in_the_graph_or_named_outside_it(threshold, tmp_path):
    """Static: the threshold node scales by ``V_out = g V_th`` and the graph gives the layer's
    outputs; dynamic: the metadata names the gain beside ``k`` and the traces keep spikelm's
    outputs."""
    calib = torch.tensor(list(load_demo_texts()[0].encode()[:256])).unsqueeze(0)
    config = spikelm.SpikeConfig(threshold=threshold)
    model = spikelm.spiking(load_demo_model(), config, [calib], progress=False, fuse=False)
    name = "layers.0.mlp.down_proj"
    layer = model.get_submodule(name)
    assert layer.bias is None
    layer.set_neuron(gain=1.125)
    path = tmp_path / "gain.nir"
    export_nir(model, path, layers=name, reference_tokens=TOKENS)
    sub = nir.read(path).nodes[name]
    assert sub.metadata["gain"] == 1.125
    inputs = _inputs(model, (name,))[name]
    counts, v_th = layer.spike_counts(inputs)
    with torch.no_grad():
        reference = layer(inputs)
    if threshold == "dynamic":
        assert sub.metadata["outside_graph"].startswith("y = gain * v_th * output")
        _, output = _run_nirtorch(sub, _train(layer, counts))
        y = output * (v_th * 1.125).double()  # down_proj has no bias
    else:
        scale = sub.nodes["threshold"].scale
        assert np.all(scale == np.float32(layer.threshold.item() * np.float32(1.125)))
        _, y = _run_nirtorch(sub, _train(layer, counts))
    torch.testing.assert_close(y, reference.double(), rtol=1e-5, atol=1e-6)
    outputs = nir.read_data(path).nodes[name].nodes["output"].observables
    assert np.array_equal(outputs["layer_output"].data[0], reference.numpy())
