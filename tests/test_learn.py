"""Learned thresholds and decode gains: weights untouched, deterministic, spikes traded for
fidelity, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_HYBRID

from spikelm.config import SpikeConfig
from spikelm.convert import spiking
from spikelm.errors import ConfigError
from spikelm.layers import spiking_layers
from spikelm.learn import LearnReport, learn_thresholds
from spikelm.models import HybridLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHT_BUFFERS = ("weight_q", "weight_scale", "input_divisor", "bias")


def _ids(seed: int, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def converted() -> tuple[HybridLM, HybridLM, list[torch.Tensor]]:
    torch.manual_seed(0)
    ann = HybridLM(TINY_HYBRID).eval()
    batches = [_ids(1), _ids(2)]
    snn = spiking(copy.deepcopy(ann), SpikeConfig(), batches, progress=False, fuse=False)
    return ann, snn, batches


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": getattr(layer, key).clone()
        for name, layer in spiking_layers(model).items()
        for key in WEIGHT_BUFFERS
        if getattr(layer, key) is not None
    }


def test_weights_stay_bit_identical_and_k_moves(converted) -> None:
    ann, snn, batches = converted
    model = copy.deepcopy(snn)
    before = _buffers(model)
    report = learn_thresholds(ann, model, batches, spike_weight=0.05, steps=4, seed=0)
    after = _buffers(model)
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype
        assert torch.equal(after[key], tensor), key
    assert isinstance(report, LearnReport) and report.steps == 4
    layers = spiking_layers(model)
    assert set(report.values) == set(layers)
    assert all(isinstance(layer.k, float) for layer in layers.values())
    assert any(layer.k != 3.0 for layer in layers.values())
    assert report.gains == {name: layer.gain for name, layer in layers.items()}
    assert any(gain != 1.0 for gain in report.gains.values())  # decode gains learned too
    assert all(p.requires_grad for p in ann.parameters())  # restored after learning
    assert all("forward" not in layer.__dict__ for layer in layers.values())


@pytest.mark.parametrize("estimator", ["ste", "noise"])
def test_same_seed_same_thresholds(converted, estimator: str) -> None:
    ann, snn, batches = converted
    runs = []
    for seed in (7, 7, 8):
        model = copy.deepcopy(snn)
        learn_thresholds(
            ann, model, batches, spike_weight=0.05, steps=3, seed=seed, estimator=estimator
        )
        runs.append({n: (m.k, m.gain) for n, m in spiking_layers(model).items()})
    assert runs[0] == runs[1]
    if estimator == "noise":
        assert runs[0] != runs[2]


def test_tied_layers_share_k_and_still_fuse(converted) -> None:
    from spikelm.fusion import fuse, fused_layers

    ann, snn, batches = converted
    model = copy.deepcopy(snn)
    group = ("layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.0.attn.v_proj")
    learn_thresholds(ann, model, batches, spike_weight=0.5, steps=3, lr=0.2, tie=[group])
    ks = {spiking_layers(model)[name].k for name in group}
    assert len(ks) == 1 and ks != {3.0}
    assert len({spiking_layers(model)[name].gain for name in group}) == 1
    fuse(model, [group], model._spikelm_config)
    assert len(fused_layers(model)) == 1


def test_without_gains_only_thresholds_move(converted) -> None:
    ann, snn, batches = converted
    model = copy.deepcopy(snn)
    report = learn_thresholds(ann, model, batches, spike_weight=0.05, steps=3, gains=False)
    layers = spiking_layers(model).values()
    assert all(layer.gain == 1.0 for layer in layers) and set(report.gains.values()) == {1.0}
    assert any(layer.k != 3.0 for layer in layers)


def test_gains_stay_in_their_range(converted) -> None:
    ann, snn, batches = converted
    model = copy.deepcopy(snn)
    learn_thresholds(ann, model, batches, spike_weight=0.0, steps=3, lr=1.0, gain_range=(0.9, 1.05))
    gains = [layer.gain for layer in spiking_layers(model).values()]
    assert all(0.9 - 1e-6 <= gain <= 1.05 + 1e-6 for gain in gains)
    assert any(abs(gain - 1.0) > 0.04 for gain in gains)  # lr 1 drives some to an edge


def test_error_aware_layers_learn_with_their_own_rounding(converted) -> None:
    ann, _, batches = converted
    config = SpikeConfig(spike_cost=0.3)
    model = spiking(copy.deepcopy(ann), config, batches, progress=False, fuse=False)
    before = _buffers(model)
    learn_thresholds(ann, model, batches, spike_weight=0.05, steps=2)
    assert all(torch.equal(before[k], v) for k, v in _buffers(model).items())
    assert all(layer.spike_cost == 0.3 for layer in spiking_layers(model).values())


def test_spike_weight_lowers_k(converted) -> None:
    ann, snn, batches = converted
    ks = []
    for weight in (0.0, 5.0):
        model = copy.deepcopy(snn)
        learn_thresholds(ann, model, batches, spike_weight=weight, steps=3, lr=0.2)
        layers = spiking_layers(model).values()
        ks.append(sum(layer.k for layer in layers) / len(layers))
    assert ks[1] < 3.0 < ks[0]


def test_static_thresholds_are_learned_as_buffers(converted) -> None:
    ann, _, batches = converted
    config = SpikeConfig(threshold="static_tensor")
    model = spiking(copy.deepcopy(ann), config, batches, progress=False, fuse=False)
    before = _buffers(model)
    thresholds = {n: float(m.threshold) for n, m in spiking_layers(model).items()}
    report = learn_thresholds(ann, model, batches, spike_weight=5.0, steps=2, lr=0.2)
    assert all(torch.equal(before[k], v) for k, v in _buffers(model).items())
    moved = {n: float(m.threshold) for n, m in spiking_layers(model).items()}
    assert report.initial == pytest.approx(thresholds)
    assert all(moved[n] > thresholds[n] for n in moved)  # a spike price raises thresholds


@pytest.mark.parametrize(
    ("batches", "options", "message"),
    [
        ([], {}, "calibration batches"),
        ([torch.zeros(0, 8, dtype=torch.long)], {}, "calibration batches"),
        (None, {"spike_weight": -1.0}, "spike_weight"),
        (None, {"spike_weight": float("nan")}, "spike_weight"),
        (None, {"steps": -1}, "steps"),
        (None, {"lr": 0.0}, "lr"),
        (None, {"k_range": (2.0, 1.0)}, "k_range"),
        (None, {"layers": ["nope"]}, "nope"),
        (None, {"tie": [["nope"]]}, "nope"),
        (None, {"estimator": "magic"}, "estimator"),
        (None, {"gain_range": (1.1, 2.0)}, "gain_range"),
        (None, {"gain_range": (0.0, 2.0)}, "gain_range"),
    ],
)
def test_bad_input_is_a_config_error(converted, batches, options, message) -> None:
    ann, snn, good = converted
    model = copy.deepcopy(snn)
    kwargs = {"spike_weight": 0.1, "steps": 1, **options}
    with pytest.raises(ConfigError, match=message):
        learn_thresholds(ann, model, good if batches is None else batches, **kwargs)
    assert all(layer.k == 3.0 and layer.gain == 1.0 for layer in spiking_layers(model).values())


def test_unconverted_model_is_a_config_error(converted) -> None:
    ann, _, batches = converted
    with pytest.raises(ConfigError, match="no spiking layer"):
        learn_thresholds(ann, copy.deepcopy(ann), batches, spike_weight=0.1, steps=1)
