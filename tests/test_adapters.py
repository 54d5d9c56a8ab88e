"""Model-family adapters: explicit named state, stepping that reproduces the parallel forward,
one definition of the converted layers, and the errors for families no adapter knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_HYBRID
from torch import nn

import spikelm
from spikelm import SpikeConfig
from spikelm.adapters import (
    ADAPTERS,
    MODULE,
    adapter_for,
    adapter_for_type,
    known_families,
)
from spikelm.cli import main
from spikelm.errors import ConfigError, MissingExtraError, UnsupportedModelError, require_extra
from spikelm.models import HybridLM
from spikelm.simulate import simulate

PROMPT = torch.randint(4, 256, (1, 20), generator=torch.Generator().manual_seed(5))
STATE_NAME = re.compile(r"^position$|^past_key_values\.\d+\.[a-z_]+(\.\d+)?$")


def _hybrid() -> HybridLM:
    torch.manual_seed(0)
    return HybridLM(TINY_HYBRID).eval()


def _models() -> dict[str, nn.Module]:
    models = {"spikelm_hybrid": _hybrid()}
    try:
        import hf_tiny
    except ImportError:  # transformers not installed
        return models
    for family in hf_tiny.FAMILIES:
        model, _ = hf_tiny.build_tiny(family)
        adapter_for(model).loaded(model)
        models[family] = model
    return models


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return _models()


def _step_all(adapter, model, ids, state):
    logits = []
    for t in range(ids.shape[1]):
        out, state = adapter.step(model, ids[:, t], state)
        logits.append(out)
    return torch.stack(logits, dim=1), state


@pytest.mark.parametrize("family", known_families())
def test_stepping_with_named_state_reproduces_the_parallel_forward(family: str, models) -> None:
    if family not in models:
        pytest.skip("needs transformers")
    model = models[family]
    adapter = adapter_for(model)
    assert adapter.name == family and adapter.steps
    with torch.no_grad():
        parallel = adapter.logits(model, PROMPT)
        stepped, state = _step_all(adapter, model, PROMPT, adapter.init_state(model, 1))
    torch.testing.assert_close(stepped, parallel, atol=2e-5, rtol=0)
    assert isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())
    assert all(STATE_NAME.match(name) for name in state), sorted(state)
    assert int(state["position"]) == PROMPT.shape[1]
    assert any(name.startswith("past_key_values.") for name in state)


@pytest.mark.parametrize("family", known_families())
def test_state_is_plain_data_and_steps_do_not_change_it(family: str, models) -> None:
    """A state copied into fresh tensors (as a runtime or a file would hand it back) steps to the
    same logits as the original, and stepping leaves the state it was given untouched."""
    if family not in models:
        pytest.skip("needs transformers")
    model = models[family]
    adapter = adapter_for(model)
    with torch.no_grad():
        _, state = _step_all(adapter, model, PROMPT[:, :12], adapter.init_state(model, 1))
        before = {name: t.clone() for name, t in state.items()}
        copied = {name: t.clone() for name, t in state.items()}
        token = PROMPT[:, 12]
        logits, _ = adapter.step(model, token, state)
        again, _ = adapter.step(model, token, copied)
    assert all(torch.equal(state[name], before[name]) for name in before)
    assert torch.equal(logits, again)


def test_every_known_model_type_has_one_adapter() -> None:
    types = [t for adapter in ADAPTERS for t in adapter.model_types]
    assert len(types) == len(set(types))
    assert set(known_families()) <= set(types) | {"spikelm_hybrid"}
    for adapter in ADAPTERS:
        for model_type in adapter.model_types:
            assert adapter_for_type(model_type, "x") is adapter


def test_unknown_family_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError) as error:
        adapter_for_type("bert", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "'bert' is not supported" in message
    assert all(t in message for a in ADAPTERS for t in a.model_types)


def test_a_plain_module_converts_but_does_not_step() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    assert adapter_for(model) is MODULE
    assert list(MODULE.linear_layers(model)) == ["0", "2"]
    snn = spikelm.convert(spikelm.prepare(model, SpikeConfig()))
    with pytest.raises(ConfigError) as error:
        simulate(snn, [1, 2, 3], progress=False)
    message = str(error.value)
    assert "no adapter knows its family" in message
    assert all(family in message for family in known_families())


def test_the_hybrid_head_is_never_converted() -> None:
    model = _hybrid()
    layers = adapter_for(model).linear_layers(model)
    assert "lm_head" not in layers and layers
    converted = spikelm.convert(spikelm.prepare(model, SpikeConfig(keep_dense=())))
    assert isinstance(converted.lm_head, nn.Linear)


def test_a_converted_rwkv_refuses_training_mode_in_one_line(models) -> None:
    if "rwkv" not in models:
        pytest.skip("needs transformers")
    import hf_tiny

    model, _ = hf_tiny.build_tiny("rwkv")
    adapter_for(model).loaded(model)
    snn = spikelm.convert(spikelm.prepare(model, SpikeConfig()))
    with torch.no_grad():
        snn(PROMPT)  # eval mode runs
    snn.train()
    with pytest.raises(ConfigError) as error, torch.no_grad():
        snn(PROMPT)
    assert "eval mode only" in str(error.value) and "\n" not in str(error.value)
    snn.eval()
    with torch.no_grad():
        snn(PROMPT)  # and eval mode still runs afterwards


def test_a_missing_extra_names_the_extra() -> None:
    with pytest.raises(MissingExtraError) as error:
        require_extra("nir", "spikelm_no_such_module", "spikelm export --format nir")
    assert str(error.value) == (
        "spikelm export --format nir needs the optional package 'spikelm_no_such_module': "
        'pip install "spikelm[nir]"'
    )


@pytest.mark.parametrize(
    ("argv", "module", "extra"),
    [
        (["raster", "{rec}", "--out", "{tmp}/r.png"], "matplotlib", "plot"),
        (["convert", "{hf}", "--out", "{tmp}/out"], "transformers", "hf"),
    ],
)
def test_cli_without_an_extra_says_which_to_install(
    argv, module: str, extra: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    import importlib.util

    rec = tmp_path / "spikes.h5"
    rec.write_bytes(b"")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    args = [a.format(rec=rec, tmp=tmp_path, hf=hf) for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f'pip install "spikelm[{extra}]"' in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.png").exists()


def test_no_module_outside_the_adapters_names_a_family() -> None:
    package = Path(spikelm.__file__).parent
    families = [t for adapter in ADAPTERS for t in adapter.model_types]
    pattern = re.compile("|".join(re.escape(f) for f in families), re.IGNORECASE)
    offenders = [
        f"{path.relative_to(package)}:{n}"
        for path in package.rglob("*.py")
        if path.parent.name not in ("adapters", "models")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders
