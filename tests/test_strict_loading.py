"""Strict loading in ``spikelm.hf``: unused, non-float and non-finite weights, and bad sources.

Also the weight quantizer's refusal of non-finite weights (``spikelm.quant``). Every failure is a
one-line :class:`~spikelm.errors.SpikelmError` naming the tensor, and a failed load leaves the
source directory as it was. No test reaches the network: sources that pass the offline checks
are only ever sent to a closed local port.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import hf_tiny  # noqa: E402  (tests/ is on sys.path under pytest's rootdir-based import)
from huggingface_hub import constants as hub_constants  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from spikelm.errors import CheckpointError, NonFiniteError  # noqa: E402
from spikelm.hf import check_source, load_causal_lm  # noqa: E402
from spikelm.quant import W8A8Linear, quantize_weight  # noqa: E402

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: hf_tiny.save_tiny(f, root / f, tokenizer=False) for f in ("llama", "qwen2")}


def _copy(saved: dict[str, Path], family: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[family], tmp_path / family))


def _edit_weights(directory: Path, edit) -> None:
    tensors = load_file(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})


def _hashes(directory: Path) -> dict[str, str]:
    return {
        str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(directory.rglob("*"))
        if f.is_file()
    }


def _load_error(directory: Path, **kwargs: object) -> str:
    """The one-line CheckpointError message of loading ``directory``, which must stay unchanged."""
    before = _hashes(directory)
    with pytest.raises(CheckpointError) as info:
        load_causal_lm(directory, **kwargs)
    assert _hashes(directory) == before
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight(saved: dict[str, Path], tmp_path: Path, value: float) -> None:
    directory = _copy(saved, "llama", tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name][5, 7] = value

    _edit_weights(directory, poison)
    message = _load_error(directory)
    assert f"weight {name} holds non-finite values ({value} at index (5, 7))" in message


def test_non_finite_tied_embedding(saved: dict[str, Path], tmp_path: Path) -> None:
    """qwen2 ties its head to the embedding: the one stored tensor is checked once."""
    directory = _copy(saved, "qwen2", tmp_path)
    _edit_weights(directory, lambda t: t["model.embed_tokens.weight"][0].fill_(float("nan")))
    assert "weight model.embed_tokens.weight holds non-finite values" in _load_error(directory)


def test_integer_weight(saved: dict[str, Path], tmp_path: Path) -> None:
    directory = _copy(saved, "llama", tmp_path)
    name = "model.layers.0.self_attn.o_proj.weight"

    def to_int(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name].to(torch.int64)

    _edit_weights(directory, to_int)
    message = _load_error(directory)
    assert message.endswith(
        f"{WEIGHTS}: tensor {name} has dtype I64; model weights must be floating point"
    )


def test_unused_weights(saved: dict[str, Path], tmp_path: Path) -> None:
    """A qwen2 checkpoint labelled llama: llama has no q/k/v biases, so 6 tensors go unused."""
    directory = _copy(saved, "qwen2", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (directory / "config.json").write_text(json.dumps(config))

    message = _load_error(directory)
    assert "6 checkpoint tensor(s) not used by the llama architecture" in message
    assert "first model.layers.0.self_attn.k_proj.bias" in message

    before = _hashes(directory)
    model, _ = load_causal_lm(directory, allow_unused_weights=True)
    assert _hashes(directory) == before
    assert model.config.model_type == "llama"
    assert model.model.layers[0].self_attn.k_proj.bias is None


def test_strict_load_accepts_the_clean_checkpoint(saved: dict[str, Path]) -> None:
    model, _ = load_causal_lm(saved["llama"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- sources: neither a directory nor a usable hub id ------------------------------------------


def _source_error(src: str) -> str:
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_causal_lm(src)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{src}: ")
    return message


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache; no proxy; offline mode off unless a test turns it on."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.mark.parametrize(
    "src",
    [
        "./no-such-dir",
        "no/such/deep/path",
        "bad..id",
        "org/bad--id",
        "-org/name",
        "org/name.",
        "org/name.git",
        "~nobody-here/model",
        "/no/such/absolute",
        "org/" + "n" * 97,
        "org/näme",
    ],
)
def test_not_a_directory_nor_a_hub_id(src: str, hub_cache: Path) -> None:
    message = _source_error(src)
    assert message.endswith(
        "no such model directory, and not a Hugging Face hub id (expected 'org/name')"
    )


def test_existing_directory_prefix_is_a_mistyped_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    message = _source_error("models/llama-tiny")
    assert "no such model directory (taken as a local path: 'models' is a local directory)" in (
        message
    )


@pytest.mark.parametrize("src", ["someorg/not-cached-model", "plain_name.v1"])
def test_offline_and_not_cached(src: str, hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _source_error(src)
    assert "not in the local cache while offline mode is on (HF_HUB_OFFLINE)" in message


def test_offline_and_cached_passes_the_source_check(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "0" * 40
    repo = hub_cache / "models--someorg--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_source("someorg/cached-model")


def test_unreachable_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, not cached, hub unreachable: one request to a closed local port, no retries."""
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(
            hub_constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}"
        )
        message = _source_error("someorg/some-model")
    assert "the Hugging Face hub is unreachable and the model is not in the local cache" in message


def test_path_objects_are_always_local(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"not a model directory \(no config.json\)$"):
        load_causal_lm(Path("org/name"))


# --- quantization never sees a non-finite weight -----------------------------------------------


@pytest.mark.parametrize(("value", "kind"), [(float("nan"), "NaN"), (float("inf"), "infinite")])
@pytest.mark.parametrize("group_size", [None, 16])
def test_quantize_refuses_non_finite(value: float, kind: str, group_size: int | None) -> None:
    weight = torch.randn(8, 32)
    weight[3, 20] = value
    with pytest.raises(NonFiniteError) as info:
        quantize_weight(weight, 8, group_size, name="model.layers.0.mlp.up_proj")
    assert str(info.value) == (
        f"model.layers.0.mlp.up_proj: cannot quantize a weight with {kind} values "
        "(first in output row 3)"
    )
    with pytest.raises(NonFiniteError, match=r"^weight: cannot quantize"):
        quantize_weight(weight, 8, group_size)
    linear = torch.nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight.copy_(weight)
    with pytest.raises(NonFiniteError, match=r"^head: cannot quantize"):
        W8A8Linear(linear, name="head")


def test_quantize_overflowing_float64_is_non_finite() -> None:
    weight = torch.ones(2, 4, dtype=torch.float64)
    weight[1, 0] = 1e300  # inf in the float32 working copy
    with pytest.raises(NonFiniteError, match=r"infinite values \(first in output row 1\)"):
        quantize_weight(weight, 8, None)


def test_quantize_zero_row_keeps_a_finite_scale() -> None:
    weight = torch.randn(4, 32)
    weight[2] = 0
    codes, scale = quantize_weight(weight, 8, 16)
    assert torch.isfinite(scale).all() and torch.equal(scale[2], torch.ones(2))
    assert not codes[2].any()
