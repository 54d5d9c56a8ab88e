"""Recipes by name: ``spikingbrain`` converts as the config says; ``spikelm`` also widens the
layers whose counts saturate (and learns thresholds), without touching the weights."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import TINY_HYBRID

import spikelm
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.layers import spiking_layers
from spikelm.models import HybridLM
from spikelm.recipes import widen_saturated
from spikelm.saturation import SaturationWarning, measure_saturation, saturated_layers


def _batches(count: int = 2, tokens: int = 48, vocab: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, tokens), generator=g) for _ in range(count)]


def test_the_recipe_is_a_validated_config_field() -> None:
    assert SpikeConfig().recipe == "spikingbrain" and not SpikeConfig().needs_calibration
    assert SpikeConfig(recipe="spikelm").needs_calibration
    with pytest.raises(ConfigError, match="recipe must be one of spikingbrain, spikelm"):
        SpikeConfig(recipe="fast")
    assert SpikeConfig.from_dict(SpikeConfig(recipe="spikelm").to_dict()).recipe == "spikelm"
    # SpikingBrain's configs write no recipe fields: spikelm before recipes still reads them
    assert not {"recipe", "spike_weight", "spike_budget"} & set(SpikeConfig().to_dict())
    assert SpikeConfig.from_dict(SpikeConfig().to_dict()) == SpikeConfig()


def test_widening_gives_saturated_layers_steps_until_they_stop_clamping() -> None:
    torch.manual_seed(0)
    model = spikelm.convert(
        spikelm.prepare(HybridLM(TINY_HYBRID).eval(), SpikeConfig(steps=2)), fuse=False
    )
    batches = _batches()
    before = saturated_layers(measure_saturation(model, batches))
    weights = {n: m.weight_q.clone() for n, m in spiking_layers(model).items()}
    widened = widen_saturated(model, batches, max_extra=8)
    assert before and set(widened) == set(before)  # exactly the clamping layers grew
    assert all(steps > 2 for steps in widened.values())
    assert not saturated_layers(measure_saturation(model, batches))
    layers = spiking_layers(model)
    assert all(torch.equal(layers[n].weight_q, w) for n, w in weights.items())
    assert all(layers[n].steps == 2 for n in layers if n not in widened)


def test_widening_stops_at_its_limit() -> None:
    torch.manual_seed(0)
    model = spikelm.convert(
        spikelm.prepare(HybridLM(TINY_HYBRID).eval(), SpikeConfig(steps=1)), fuse=False
    )
    widened = widen_saturated(model, _batches(), max_extra=1)
    assert widened and set(widened.values()) == {2}


def test_the_spikelm_recipe_needs_calibration_data() -> None:
    model = HybridLM(TINY_HYBRID).eval()
    with pytest.raises(ConfigError, match="calibration"):
        spikelm.spiking(model, SpikeConfig(recipe="spikelm"), [], progress=False)


def _bert_with_outlier_features():
    """A BERT-style encoder (transformers' BertModel, random weights) whose FFNs have two
    outlier features (their input rows scaled 150x), as trained BERTs have: the counts of
    those channels overflow T=8 under SpikingBrain's dynamic threshold."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=128,
    )  # fmt: skip
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.intermediate.dense.weight[[7, 300]] *= 150.0
    return model


def _embedding_cosine(ann, snn, batches) -> float:
    with torch.no_grad():
        cosines = [
            torch.nn.functional.cosine_similarity(
                ann(b).last_hidden_state.mean(1), snn(b).last_hidden_state.mean(1), dim=-1
            )
            for b in batches
        ]
    return float(torch.cat(cosines).mean())


def test_spikelm_keeps_an_encoder_with_outliers_where_spikingbrain_does_not() -> None:
    """Sentence embeddings (mean-pooled last hidden states): the spiking encoder against the
    ANN, on token batches that calibration never saw."""
    model = _bert_with_outlier_features()
    calibration = _batches(4, 32, 512, seed=1)
    evaluation = _batches(2, 32, 512, seed=2)
    results = {}
    for recipe in ("spikingbrain", "spikelm"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            snn = spikelm.spiking(
                copy.deepcopy(model), SpikeConfig(recipe=recipe), calibration, progress=False
            )
        saturation = [w for w in caught if issubclass(w.category, SaturationWarning)]
        results[recipe] = (_embedding_cosine(model, snn, evaluation), saturation)
    cosine, warned = results["spikingbrain"]
    assert cosine < 0.99 and len(warned) == 1  # it loses the outliers, and says so
    cosine, warned = results["spikelm"]
    assert cosine >= 0.99 and not warned


def test_the_spikelm_recipe_learns_per_layer_k_deterministically_and_keeps_the_weights() -> None:
    torch.manual_seed(0)
    ann = HybridLM(TINY_HYBRID).eval()
    batches = _batches(3, 32)
    plain = spikelm.spiking(copy.deepcopy(ann), SpikeConfig(spike_cost=0.3), batches,
                            progress=False)  # fmt: skip
    runs = [
        spikelm.spiking(copy.deepcopy(ann), SpikeConfig(recipe="spikelm"), batches, progress=False)
        for _ in range(2)
    ]
    layers = [spiking_layers(run) for run in runs]
    ks = [{name: layer.k for name, layer in found.items()} for found in layers]
    assert ks[0] == ks[1] and len(set(ks[0].values())) > 1  # per layer, the same twice
    base = spiking_layers(plain)
    for name, layer in layers[0].items():
        for key in ("weight_q", "weight_scale", "input_divisor", "bias"):
            mine, theirs = getattr(layer, key), getattr(base[name], key)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), (name, key)
    assert all(layer.spike_cost == 0.3 for layer in layers[0].values())


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    pytest.importorskip("transformers")
    import hf_tiny

    return hf_tiny.save_tiny("llama", tmp_path_factory.mktemp("hf") / "llama")


def test_convert_with_the_spikelm_recipe_from_the_command_line(hf_llama, tmp_path, capsys) -> None:
    from spikelm.cli import main

    ids = tmp_path / "ids.txt"
    g = torch.Generator().manual_seed(3)
    ids.write_text(" ".join(str(int(i)) for i in torch.randint(0, 100, (192,), generator=g)))
    out = tmp_path / "out"
    argv = ["convert", hf_llama, "--out", out, "--recipe", "spikelm", "--seq-len", "32",
            "--calib-ids", ids, "--eval-ids", ids]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "recipe=spikelm (per-layer k and decode gain learned" in printed
    import json

    manifest = json.loads((out / "spikelm.json").read_text())
    assert manifest["version"] == 5 and manifest["spike_config"]["recipe"] == "spikelm"
    assert any("k" in entry.get("neuron", {}) for entry in manifest["layers"].values())
    model = spikelm.load(out)
    saved = {n: e["neuron"]["k"] for n, e in manifest["layers"].items() if "neuron" in e}
    loaded = {n: layer.k for n, layer in spiking_layers(model).items()}
    assert saved and all(loaded[n] == k != 3.0 for n, k in saved.items())  # learned, restored
    gains = {n: e["neuron"]["gain"] for n, e in manifest["layers"].items() if "neuron" in e}
    assert all(spiking_layers(model)[n].gain == g != 1.0 for n, g in gains.items())
    code = main(["convert", str(hf_llama), "--out", str(tmp_path / "none"), "--recipe", "spikelm"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "recipe=spikelm need calibration data" in err


def test_a_spikelm_recipe_checkpoint_reloads_to_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    ann = HybridLM(TINY_HYBRID).eval()
    snn = spikelm.spiking(
        ann, SpikeConfig(recipe="spikelm", steps=3), _batches(3, 32), progress=False
    )  # T=3 clamps, so some layers also get more steps
    own = {n: (m.k, m.steps, m.gain) for n, m in spiking_layers(snn).items()}
    assert any(steps > 3 for _, steps, _ in own.values())
    assert any(gain != 1.0 for _, _, gain in own.values())  # learned decode gains
    restored = spikelm.load(spikelm.save(snn, tmp_path / "ckpt"))
    assert {n: (m.k, m.steps, m.gain) for n, m in spiking_layers(restored).items()} == own
    ids = _batches(1, 40, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(restored(ids), snn(ids))


def test_a_spike_budget_is_met_or_refused_in_one_line() -> None:
    torch.manual_seed(0)
    ann = HybridLM(TINY_HYBRID).eval()
    batches = _batches(3, 32)
    with pytest.raises(ConfigError, match="spike budget of 0.001 .* cannot be met") as info:
        spikelm.spiking(copy.deepcopy(ann), SpikeConfig(recipe="spikelm", spike_budget=0.001),
                        batches, progress=False)  # fmt: skip
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="spike_budget must be a positive number"):
        SpikeConfig(spike_budget=0.0)
    from spikelm.fidelity import compare

    spent = {}
    for budget in (0.6, 1.2):
        config = SpikeConfig(recipe="spikelm", spike_budget=budget)
        snn = spikelm.spiking(copy.deepcopy(ann), config, batches, progress=False)
        spent[budget] = compare(ann, {"s": snn}, batches)[1].stats.spikes_per_channel
    # a budget is a ceiling (on random weights the KL barely resists, so it lands well below)
    assert spent[0.6] <= 0.6 * 1.1 and spent[1.2] <= 1.2 * 1.1 and spent[0.6] <= spent[1.2]
