"""Spiking checkpoints: save -> load gives identical outputs; bad directories give one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_HYBRID

import spikelm
from spikelm.errors import ConfigError, SpikelmError
from spikelm.layers import SpikingLinear
from spikelm.models import HybridLM

CONFIG = TINY_HYBRID


def _ids(seed: int, length: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = HybridLM(CONFIG).eval()
    config = spikelm.SpikeConfig(threshold="static_channel", group_size=32)
    # unfused: these tests hold one SpikingLinear per nn.Linear (fused ones: test_fusion.py)
    return spikelm.spiking(model, config, [_ids(i) for i in range(2)], progress=False, fuse=False)


def test_round_trip_gives_identical_logits(converted, tmp_path) -> None:
    out = spikelm.save(converted, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "spikelm.json",
    ]
    restored, tokenizer = spikelm.load(out, with_tokenizer=True)
    assert tokenizer is not None and tokenizer.decode(tokenizer.encode("héllo")) == "héllo"
    ids = _ids(9)
    with torch.no_grad():
        assert torch.equal(restored(ids), converted(ids))
    manifest = json.loads((out / "spikelm.json").read_text())
    assert manifest["spike_config"]["threshold"] == "static_channel"
    spiking_names = {n for n, m in restored.named_modules() if isinstance(m, SpikingLinear)}
    linears = {n for n, m in HybridLM(CONFIG).named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(manifest["layers"]) == spiking_names == linears - {"lm_head"}


def test_saving_over_an_existing_checkpoint_needs_overwrite_and_replaces_it_whole(
    converted, tmp_path
) -> None:
    target = tmp_path / "ckpt"
    spikelm.save(converted, target)
    (target / "stale.txt").write_text("old")
    with pytest.raises(ConfigError, match="already there; pass --overwrite"):
        spikelm.save(converted, target)
    assert (target / "stale.txt").read_text() == "old"
    spikelm.save(converted, target, overwrite=True)
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporaries left


def test_saving_never_replaces_a_directory_spikelm_did_not_write(converted, tmp_path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="spikelm did not write"):
            spikelm.save(converted, target, overwrite=overwrite)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert spikelm.save(converted, empty) == empty  # an empty directory loses nothing


def test_files_honour_the_umask(converted, tmp_path) -> None:
    import os
    import stat

    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700)):
        previous = os.umask(mask)
        try:
            out = spikelm.save(converted, tmp_path / f"ckpt-{mask:o}")
        finally:
            os.umask(previous)
        assert stat.S_IMODE(out.stat().st_mode) == dir_mode
        assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {file_mode}


def test_not_a_spiking_checkpoint(tmp_path) -> None:
    HybridLM(CONFIG).save_pretrained(tmp_path / "ann")
    with pytest.raises(SpikelmError, match="not a spiking checkpoint"):
        spikelm.load(tmp_path / "ann")
    with pytest.raises(SpikelmError, match="no such checkpoint directory"):
        spikelm.load(tmp_path / "missing")


def test_truncated_weights_and_wrong_version(converted, tmp_path) -> None:
    out = spikelm.save(converted, tmp_path / "ckpt")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpikelmError, match="model.safetensors"):
        spikelm.load(out)
    manifest = json.loads((out / "spikelm.json").read_text())
    manifest["version"] = 99
    (out / "spikelm.json").write_text(json.dumps(manifest))
    with pytest.raises(SpikelmError, match="version 99"):
        spikelm.load(out)


def test_unconverted_model_cannot_be_saved(tmp_path) -> None:
    with pytest.raises(SpikelmError, match="converted"):
        spikelm.save(HybridLM(CONFIG), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unknown_backend_is_refused_before_loading(converted, tmp_path) -> None:
    out = spikelm.save(converted, tmp_path / "ckpt")
    with pytest.raises(SpikelmError, match="unknown backend 'gpu9'"):
        spikelm.load(out, backend="gpu9")


def _dynamic_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = HybridLM(CONFIG).eval()
    return spikelm.convert(spikelm.prepare(model, spikelm.SpikeConfig()), fuse=False)


def test_a_layer_with_its_own_neuron_is_saved_as_version_3_and_restored(tmp_path) -> None:
    model = _dynamic_model()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SpikingLinear)}
    first, second = list(layers)[:2]
    layers[first].set_neuron(k=2.25, steps=10)
    layers[second].set_neuron(k=3.0)  # the config's: no override
    assert layers[first].count_range == (-1023, 1023)
    out = spikelm.save(model, tmp_path / "ckpt")
    manifest = json.loads((out / "spikelm.json").read_text())
    assert manifest["version"] == 3
    assert manifest["layers"][first]["neuron"] == {"k": 2.25, "steps": 10}
    assert "neuron" not in manifest["layers"][second]
    restored = spikelm.load(out)
    again = dict(restored.named_modules())[first]
    assert (again.k, again.steps, again.count_range) == (2.25, 10, (-1023, 1023))
    ids = _ids(3)
    with torch.no_grad():
        assert torch.equal(restored(ids), model(ids))
        restored.get_submodule(first).set_neuron(k=3.0, steps=8)
        assert not torch.equal(restored(ids), model(ids))  # the override mattered


def test_a_decode_gain_is_saved_as_version_5_and_restored(tmp_path) -> None:
    model = _dynamic_model()
    name = next(n for n, m in model.named_modules() if isinstance(m, SpikingLinear))
    model.get_submodule(name).set_neuron(k=2.5, gain=0.9)
    gain = model.get_submodule(name).gain
    assert gain == float(torch.tensor(0.9, dtype=torch.float32)) != 0.9  # held as float32
    out = spikelm.save(model, tmp_path / "ckpt")
    manifest = json.loads((out / "spikelm.json").read_text())
    assert manifest["version"] == 5
    assert manifest["layers"][name]["neuron"] == {"k": 2.5, "gain": gain}
    restored = spikelm.load(out)
    assert restored.get_submodule(name).gain == gain
    ids = _ids(3)
    with torch.no_grad():
        assert torch.equal(restored(ids), model(ids))
        restored.get_submodule(name).set_neuron(gain=1.0)
        assert not torch.equal(restored(ids), model(ids))  # the gain mattered


@pytest.mark.parametrize(
    ("gain", "version", "expected"),
    [
        (0.9, 3, "needs checkpoint version 5"),
        (0.9, 4, "needs checkpoint version 5"),
        (-1.0, 5, "bad neuron parameters"),
        ("1", 5, "bad neuron parameters"),
        (1e39, 5, "bad neuron parameters"),  # inf as float32
    ],
)
def test_a_bad_decode_gain_is_a_one_line_error(tmp_path, gain, version, expected) -> None:
    model = _dynamic_model()
    name = next(n for n, m in model.named_modules() if isinstance(m, SpikingLinear))
    model.get_submodule(name).set_neuron(gain=0.9)
    out = spikelm.save(model, tmp_path / "ckpt")
    manifest = json.loads((out / "spikelm.json").read_text())
    manifest["version"] = version
    manifest["layers"][name]["neuron"]["gain"] = gain
    (out / "spikelm.json").write_text(json.dumps(manifest))
    with pytest.raises(SpikelmError, match=expected) as info:
        spikelm.load(out)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m, n: m["layers"][n].update(neuron={"k": -1.0}), "bad neuron parameters"),
        (lambda m, n: m["layers"][n].update(neuron={"k": 2.0, "v": 1}), "'neuron' must be"),
        (lambda m, n: m["layers"][n].update(neuron={"steps": 99}), "bad neuron parameters"),
        (lambda m, n: m.update(version=2), "needs checkpoint version 3"),
    ],
)
def test_a_bad_neuron_entry_is_a_one_line_error(tmp_path, edit, expected) -> None:
    model = _dynamic_model()
    name = next(n for n, m in model.named_modules() if isinstance(m, SpikingLinear))
    model.get_submodule(name).set_neuron(k=2.0)
    out = spikelm.save(model, tmp_path / "ckpt")
    manifest = json.loads((out / "spikelm.json").read_text())
    edit(manifest, name)
    (out / "spikelm.json").write_text(json.dumps(manifest))
    with pytest.raises(SpikelmError, match=expected) as info:
        spikelm.load(out)
    assert "\n" not in str(info.value)
