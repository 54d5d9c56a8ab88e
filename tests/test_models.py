"""Tests of spikelm.models: the hybrid GLA + SWA model, its two forms, I/O, tokenizer, demo."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

import spikelm.models
from spikelm.errors import ConfigError, ShapeError, SpikelmError
from spikelm.models import (
    ByteTokenizer,
    HybridConfig,
    HybridLM,
    demo_dir,
    gla_chunked,
    gla_step,
    load_demo_model,
    load_demo_texts,
    perplexity,
)

SMALL = dict(
    hidden_size=32,
    n_layers=4,
    n_heads=2,
    head_dim=16,
    intermediate_size=48,
    window=8,
    gate_rank=4,
    gate_logit_normalizer=2.0,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(seed: int = 0, **overrides: object) -> HybridLM:
    """A random small model with weights large enough that every layer matters."""
    torch.manual_seed(seed)
    model = HybridLM(HybridConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.15)
            elif name.endswith("bias"):
                p.normal_(0, 1.0)
    return model


def step_logits(model: HybridLM, ids: torch.Tensor) -> torch.Tensor:
    state = model.init_state(ids.shape[0])
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1)


def state_sizes(state) -> list[tuple[int, ...]]:
    return [tuple(state.pos.shape)] + [tuple(t.shape) for layer in state.layers for t in layer]


@torch.no_grad()
def test_parallel_matches_recurrent():
    model = small_model()
    ids = torch.randint(0, 256, (2, 37))  # longer than the window (8), not a multiple of chunks
    reference = step_logits(model, ids)
    assert reference.abs().max() > 1.0  # the comparison is not between near-zero logits
    for chunk_size in (1, 3, 8, 64):
        torch.testing.assert_close(model(ids, chunk_size=chunk_size), reference, atol=1e-4, rtol=0)


def test_gla_chunked_matches_step_under_strong_and_weak_decay():
    torch.manual_seed(1)
    B, H, L, d = 2, 3, 21, 8
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) for _ in range(3))
    # per-step decays from exp(-30) (would overflow a naive q*exp(b), k*exp(-b) factoring) to ~1
    scale = torch.tensor([30.0, 1e-3], dtype=torch.float64).repeat(d // 2)
    log_alpha = -torch.rand(B, H, L, d, dtype=torch.float64) * scale
    S = torch.zeros(B, H, d, d, dtype=torch.float64)
    outs = []
    for t in range(L):
        o, S = gla_step(q[:, :, t], k[:, :, t], v[:, :, t], log_alpha[:, :, t], S)
        outs.append(o)
    for chunk_size in (1, 4, 32):
        o, S_end = gla_chunked(q, k, v, log_alpha, chunk_size)
        torch.testing.assert_close(o, torch.stack(outs, dim=2))
        torch.testing.assert_close(S_end, S)


@torch.no_grad()
def test_prefill_then_step_continues_the_sequence():
    model = small_model()
    ids = torch.randint(0, 256, (3, 30))
    full = model(ids)
    logits, state = model.prefill(ids[:, :19], chunk_size=4)
    torch.testing.assert_close(logits, full[:, :19], atol=1e-4, rtol=0)
    assert int(state.pos) == 19
    for t in range(19, 30):
        logits, state = model.step(ids[:, t], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-4, rtol=0)


@torch.no_grad()
def test_state_memory_is_constant():
    model = small_model()
    state = model.init_state(2)
    sizes = state_sizes(state)
    _, prefilled = model.prefill(torch.randint(0, 256, (2, 50)))
    assert state_sizes(prefilled) == sizes
    for t in range(3 * model.config.window):
        _, state = model.step(torch.full((2,), t % 256), state)
        assert state_sizes(state) == sizes


@torch.no_grad()
def test_generate_is_greedy():
    model = small_model()
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, max_new_tokens=12)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    expected = model(out).argmax(-1)[:, 4:-1]
    assert torch.equal(out[:, 5:], expected)


def test_projections_are_named_linears():
    model = small_model()
    linear_names = {
        n.split(".")[-1] for n, m in model.named_modules() if type(m) is torch.nn.Linear
    }
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "gate_proj", "up_proj"} <= (
        linear_names
    )
    assert {"down_proj", "lm_head"} <= linear_names


def test_bad_shapes_raise():
    model = small_model()
    with pytest.raises(ShapeError):
        model(torch.randint(0, 256, (5,)))
    with pytest.raises(ShapeError):
        model.step(torch.zeros(3, dtype=torch.long), model.init_state(2))


def test_config_round_trip_and_validation():
    config = HybridConfig(**SMALL)
    assert HybridConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.layer_types == ["gla", "swa", "gla", "swa"]
    for bad in (
        {"n_layers": 0},
        {"head_dim": 15},
        {"layer_types": ["gla", "mamba", "gla", "swa"]},
        {"layer_types": ["gla"]},
    ):
        with pytest.raises(ConfigError):
            HybridConfig(**{**SMALL, **bad})
    with pytest.raises(ConfigError):
        HybridConfig.from_dict({**config.to_dict(), "model_type": "llama"})
    with pytest.raises(ConfigError):
        HybridConfig.from_dict({**config.to_dict(), "unknown_key": 1})


@torch.no_grad()
def test_save_load_round_trip(tmp_path: Path):
    model = small_model()
    target = tmp_path / "model"
    model.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    ids = torch.randint(0, 256, (2, 20))
    assert torch.equal(HybridLM.from_pretrained(target)(ids), model(ids))

    (target / "notes.txt").write_text("kept")
    other = small_model(seed=1)
    other.save_pretrained(target)  # over an existing directory: files replaced, others kept
    assert torch.equal(HybridLM.from_pretrained(target)(ids), other(ids))
    assert (target / "notes.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("spikelm.models.hybrid.save_file", disk_full)
    with pytest.raises(SpikelmError, match="No space left"):
        small_model().save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "file").write_text("")
    with pytest.raises(SpikelmError, match="not a directory"):
        small_model().save_pretrained(tmp_path / "file")


def test_load_errors_name_the_path(tmp_path: Path):
    good = tmp_path / "good"
    small_model().save_pretrained(good)

    def expect(path: Path, offending: Path, error: type[SpikelmError] = SpikelmError) -> None:
        with pytest.raises(error) as info:
            HybridLM.from_pretrained(path)
        assert str(offending) in str(info.value)
        assert "\n" not in str(info.value)

    missing = tmp_path / "missing"
    expect(missing, missing)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    expect(no_config, no_config / "config.json")

    def copy(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        for f in good.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        return path

    wrong_type = copy("wrong_type")
    config = json.loads((wrong_type / "config.json").read_text())
    (wrong_type / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    expect(wrong_type, wrong_type / "config.json", ConfigError)

    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect(truncated, truncated / "model.safetensors")

    garbage = copy("garbage")
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    expect(garbage, garbage / "model.safetensors")

    reshaped = copy("reshaped")
    (reshaped / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    expect(reshaped, reshaped / "model.safetensors", ShapeError)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ** 2  # ≥ naïve 🐍"
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode(ids[:-1]).endswith("\ufffd")  # a cut multi-byte character is replaced
    with pytest.raises(SpikelmError):
        tok.decode([65, 256])


def test_perplexity_of_uniform_model_is_vocab_size():
    def uniform(ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, 256)

    ids = list(range(100))
    assert perplexity(uniform, ids, seq_len=16, batch_size=3) == pytest.approx(256.0)
    with pytest.raises(ConfigError):
        perplexity(uniform, [1], seq_len=16)


def test_demo_model_is_small_and_predicts_its_eval_text():
    size = sum(f.stat().st_size for f in demo_dir().rglob("*") if f.is_file())
    assert size <= 5 * 2**20
    model = load_demo_model()
    calib, evaluation = load_demo_texts()
    assert len(calib) > 10_000 and len(evaluation) > 10_000
    ids = ByteTokenizer().encode(evaluation)[:2048]
    ppl = perplexity(model, ids, seq_len=256)
    assert ppl < 8.0  # uniform: 256; the README reports the full-split figure
    assert ppl == perplexity(model, ids, seq_len=256)  # deterministic


def test_models_package_imports_only_torch_safetensors_and_stdlib():
    allowed = {"torch", "safetensors", "spikelm"} | set(sys.stdlib_module_names)
    leaves = ("spikelm.errors", "spikelm.fileio", "spikelm.loss")  # shared, themselves light
    package = Path(spikelm.models.__file__).parent
    root = package.parent
    paths = [*package.glob("*.py"), *(root / f"{leaf.split('.')[1]}.py" for leaf in leaves)]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("spikelm"):
                    assert name in leaves or name.startswith("spikelm.models"), (
                        f"{path.name} imports {name}"
                    )
