"""Fisher-weighted thresholds: the Fisher itself, thresholds ~ F^-p, config, checkpoints, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HYBRID
from torch import nn

import spikelm
from spikelm import NonFiniteError
from spikelm.calibrate import calibrate, next_token_loss, prepare
from spikelm.cli import _spike_config, build_parser
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.models import HybridLM
from spikelm.observers import (
    ActivationObserver,
    channel_divisor,
    fisher_scale,
    static_threshold,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids(seed: int, length: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(seed))


def _hybrid() -> HybridLM:
    torch.manual_seed(0)
    return HybridLM(TINY_HYBRID).eval()


def _direct_fisher(model: nn.Module, name: str, batches: list[torch.Tensor]) -> torch.Tensor:
    """``mean (W^T dL/dy)^2`` for the layer ``name`` by plain autograd (parameters trainable):
    the gradient at the layer's input through that layer only."""
    linear = model.get_submodule(name)
    outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: tuple, y: torch.Tensor) -> None:
        y.retain_grad()
        outputs.append(y)

    handle = linear.register_forward_hook(keep)
    total, rows = 0.0, 0
    for batch in batches:
        outputs.clear()
        next_token_loss(model, batch).backward()
        grad = (outputs[0].grad @ linear.weight).reshape(-1, linear.in_features).double()
        total, rows = total + (grad**2).sum(0), rows + grad.shape[0]
    handle.remove()
    return (total / rows).float()


@pytest.mark.parametrize(
    "name", ["layers.0.attn.q_proj", "layers.1.attn.k_proj", "layers.1.mlp.down_proj"]
)
def test_fisher_matches_autograd_and_is_non_negative(name: str) -> None:
    batches = [_ids(0), _ids(1)]
    model = prepare(_hybrid(), SpikeConfig(fisher_power=0.5))
    calibrate(model, batches, progress=False)
    fisher = model._spikelm_calibration.observers[name].fisher
    assert bool((fisher >= 0).all()) and float(fisher.sum()) > 0
    assert torch.allclose(fisher, _direct_fisher(_hybrid(), name, batches), rtol=1e-4, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # no weight gradient was kept
    assert all(p.requires_grad for p in model.parameters())  # and the flags are restored


def _observer(name: str, fisher: list[float], mean_abs: float = 1.0) -> ActivationObserver:
    observer = ActivationObserver(name, len(fisher), 0, 0)
    observer.observe(torch.full((4, len(fisher)), mean_abs))
    observer.observe_gradient(torch.tensor(fisher).sqrt().expand(3, -1))
    return observer


def test_thresholds_follow_inverse_sqrt_fisher() -> None:
    observer = _observer("a", [4.0, 1.0, 1.0, 1.0])
    weight = torch.ones(8, 4)
    divisor = channel_divisor(observer, weight, SpikeConfig(fisher_power=0.5))
    assert divisor[0] / divisor[1] == pytest.approx(0.5)  # 4x the Fisher, half the threshold
    assert float(divisor.log().mean().exp()) == pytest.approx(1.0)
    soft = channel_divisor(observer, weight, SpikeConfig(fisher_power=0.25))
    assert soft[0] / soft[1] == pytest.approx(0.5**0.5)


def test_static_thresholds_share_one_constant_across_layers() -> None:
    config = SpikeConfig(threshold="static_channel", fisher_power=0.5, k=2.0)
    a = _observer("a", [4.0, 1.0, 1.0, 1.0], mean_abs=2.0)
    b = _observer("b", [16.0] * 4, mean_abs=2.0)
    level = fisher_scale([a, b], 0.5)
    # c = geomean(mean|x| F^1/2) over all 8 channels = 2 * (2 * 1 * 1 * 1 * 4 * 4 * 4 * 4)^(1/8)
    assert level == pytest.approx(2.0 * 512 ** (1 / 8))
    thresholds = {o.name: channel_divisor(o, torch.ones(3, 4), config, level) for o in (a, b)}
    expected = {"a": [level / 2 / 2] + [level / 1 / 2] * 3, "b": [level / 4 / 2] * 4}
    for name, values in expected.items():
        assert thresholds[name].tolist() == pytest.approx(values)
    tensor = SpikeConfig(threshold="static_tensor", fisher_power=0.5, k=2.0)
    divisor = channel_divisor(a, torch.ones(3, 4), tensor, level)
    scalar = static_threshold(a, divisor, tensor, per_channel=False, fisher_level=level)
    assert (divisor * scalar).tolist() == pytest.approx(expected["a"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fisher_power": 0.0}, "fisher_power"),
        ({"fisher_power": -0.5}, "fisher_power"),
        ({"fisher_power": float("nan")}, "fisher_power"),
        ({"fisher_power": "half"}, "fisher_power"),
        ({"fisher_power": 3.0}, "fisher_power"),
        ({"fisher_power": 0.5, "threshold": "static_tensor", "rule": "max"}, "mean_abs"),
    ],
)
def test_bad_fisher_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpikeConfig(**changes)
    assert SpikeConfig(fisher_power=0.5).needs_calibration
    assert not SpikeConfig().needs_calibration


def test_fisher_checkpoint_round_trip_gives_identical_logits(tmp_path) -> None:
    config = SpikeConfig(threshold="static_tensor", fisher_power=0.5, group_size=32)
    snn = spikelm.spiking(_hybrid(), config, [_ids(0), _ids(1)], progress=False)
    restored = spikelm.load(spikelm.save(snn, tmp_path / "ckpt"))
    ids = _ids(9)
    with torch.no_grad():
        assert torch.equal(restored(ids), snn(ids))
    assert restored.layers[0].attn.q_proj.threshold is not None


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(x)))


def _square_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).square().sum()


def test_fisher_calibration_errors_are_one_line() -> None:
    config = SpikeConfig(fisher_power=0.5)
    with pytest.raises(ConfigError, match="empty"):
        calibrate(prepare(Tiny(), config), [], _square_loss, progress=False)
    bad = torch.randn(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="'up'"):
        calibrate(prepare(Tiny(), config), [bad], _square_loss, progress=False)
    with pytest.raises(ConfigError, match="scalar loss"):
        calibrate(prepare(Tiny(), config), [torch.randn(4, 8)], lambda m, x: None, progress=False)
    with pytest.raises(ConfigError, match="no calibration data"):
        spikelm.convert(prepare(Tiny(), SpikeConfig(fisher_power=0.5)))


def test_custom_loss_calibrates_plain_modules() -> None:
    torch.manual_seed(0)
    ann, data = Tiny().eval(), [torch.randn(16, 8) for _ in range(2)]
    config = SpikeConfig(threshold="static_channel", fisher_power=0.5, group_size=8)
    snn = spikelm.spiking(copy.deepcopy(ann), config, data, _square_loss, progress=False)
    assert bool((snn.up.input_divisor > 0).all())
    with torch.no_grad():
        cosine = F.cosine_similarity(snn(data[0]), ann(data[0]), dim=-1)
    assert float(cosine.mean()) > 0.9


def test_cli_passes_fisher_power_and_spike_cost() -> None:
    args = build_parser().parse_args(
        ["convert", "src", "--out", "o", "--fisher-power", "0.5", "--spike-cost", "0.3"]
    )
    config = _spike_config(args)
    assert config.fisher_power == 0.5 and config.spike_cost == 0.3
