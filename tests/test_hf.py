"""Tests of ``spikelm.hf``: loading tiny checkpoints of every supported family, and the errors."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import hf_tiny  # noqa: E402  (tests/ is on sys.path under pytest's rootdir-based import)

import spikelm  # noqa: E402
from spikelm.adapters import adapter_for  # noqa: E402
from spikelm.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    SpikelmError,
    UnsupportedModelError,
)
from spikelm.hf import (  # noqa: E402
    load_causal_lm,
    load_token_ids,
    load_tokenizer,
    model_from_config,
    supported_model_types,
)

SUPPORTED_MODEL_TYPES = supported_model_types()

FAMILIES = hf_tiny.FAMILIES
IDS = torch.randint(4, hf_tiny.VOCAB_SIZE, (2, 40), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny checkpoint (with tokenizer) per family, shared by the module."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: hf_tiny.save_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture
def llama_copy(saved: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the tiny llama checkpoint that a test may damage."""
    return Path(shutil.copytree(saved["llama"], tmp_path / "llama"))


def _logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _edit_config(directory: Path, **changes: object) -> None:
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))


def test_supported_types_are_the_tiny_families() -> None:
    assert set(SUPPORTED_MODEL_TYPES) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_matches_in_memory_model(family: str, saved: dict[str, Path]) -> None:
    reference, config = hf_tiny.build_tiny(family)
    model, tokenizer = load_causal_lm(saved[family])

    assert model.config.model_type == family == config.model_type
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    layers = adapter_for(model).linear_layers(model)
    before = {name: m.weight.clone() for name, m in layers.items()}
    logits = _logits(model)
    # a forward pass must not change projection weights (RWKV rescales them once, at load)
    assert all(torch.equal(m.weight, before[name]) for name, m in layers.items())
    assert logits.shape == (*IDS.shape, hf_tiny.VOCAB_SIZE)
    torch.testing.assert_close(logits, _logits(reference), rtol=0, atol=1e-6)
    assert tokenizer is not None
    assert len(tokenizer("hello world")["input_ids"]) == len("hello world")

    assert layers and all(isinstance(m, torch.nn.Linear) for m in layers.values())
    head = model.get_output_embeddings()
    assert head not in layers.values()
    every = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert every == [*layers.values(), head]  # every nn.Linear but the head, in module order


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_deterministic_across_loads(family: str, saved: dict[str, Path]) -> None:
    prompt = IDS[:1, :8]
    first, _ = load_causal_lm(saved[family])
    second, _ = load_causal_lm(saved[family])
    out = first.generate(prompt, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 13)
    assert torch.equal(out, second.generate(prompt, max_new_tokens=5, do_sample=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_model_from_config_takes_a_loaded_state_dict(family: str, saved: dict[str, Path]) -> None:
    """The skeleton + the state dict of a loaded model = the loaded model (RWKV rescaling included)."""
    loaded, _ = load_causal_lm(saved[family])
    skeleton = model_from_config(saved[family])
    assert not skeleton.training
    skeleton.load_state_dict(loaded.state_dict())
    torch.testing.assert_close(_logits(skeleton), _logits(loaded), rtol=0, atol=0)


def test_rwkv_weights_are_rescaled_at_load(saved: dict[str, Path]) -> None:
    reference, config = hf_tiny.build_tiny("rwkv")
    model, _ = load_causal_lm(saved["rwkv"])
    for i in range(config.num_hidden_layers):
        scale = 2 ** (i // config.rescale_every)
        for name in (f"rwkv.blocks.{i}.attention.output", f"rwkv.blocks.{i}.feed_forward.value"):
            expected = reference.get_submodule(name).weight / scale
            torch.testing.assert_close(model.get_submodule(name).weight, expected, rtol=0, atol=0)


def test_dtype_is_applied(saved: dict[str, Path]) -> None:
    model, _ = load_causal_lm(saved["qwen2"], dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_sharded_checkpoint(tmp_path: Path) -> None:
    reference, _ = hf_tiny.build_tiny("mamba2")
    reference.save_pretrained(tmp_path, max_shard_size="60KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    model, tokenizer = load_causal_lm(tmp_path)
    assert tokenizer is None
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=0, atol=1e-6)

    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=rf"{shards[-1].name}: weight shard .* missing"):
        load_causal_lm(tmp_path)


def test_no_tokenizer(tmp_path: Path) -> None:
    """A checkpoint without tokenizer files loads with ``tokenizer=None``; token ids still work."""
    directory = hf_tiny.save_tiny("rwkv", tmp_path / "bare", tokenizer=False)
    model, tokenizer = load_causal_lm(directory)
    assert tokenizer is None

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("5 6 7 8\n\n9 10\n")
    seqs = load_token_ids(ids_file, vocab_size=model.config.vocab_size)
    assert [s.tolist() for s in seqs] == [[5, 6, 7, 8], [9, 10]]
    assert _logits(model, seqs[0][None]).shape == (1, 4, hf_tiny.VOCAB_SIZE)


def test_load_tokenizer(saved: dict[str, Path], tmp_path: Path) -> None:
    assert load_tokenizer(tmp_path) is None
    tokenizer = load_tokenizer(saved["qwen3_next"])
    assert tokenizer is not None and tokenizer.decode(tokenizer("héllo")["input_ids"]) == "héllo"


def test_unreadable_tokenizer(llama_copy: Path) -> None:
    (llama_copy / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="llama: tokenizer files present but unreadable"):
        load_causal_lm(llama_copy)


def test_load_token_ids_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.arange(4, 10, dtype=np.int32))
    np.save(tmp_path / "two.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    assert [s.tolist() for s in load_token_ids(tmp_path / "one.npy")] == [[4, 5, 6, 7, 8, 9]]
    assert [s.tolist() for s in load_token_ids(tmp_path / "two.npy")][2] == [8, 9, 10, 11]
    assert load_token_ids(tmp_path / "two.npy")[0].dtype == torch.long

    np.save(tmp_path / "float.npy", np.ones(3))
    with pytest.raises(ConfigError, match=r"float\.npy: expected a 1-D or 2-D integer array"):
        load_token_ids(tmp_path / "float.npy")


@pytest.mark.parametrize(
    ("text", "vocab_size", "message"),
    [
        ("1 2 3\n4 five\n", None, r"ids\.txt:2: not whitespace-separated ints"),
        ("1 2 -3\n", None, r"ids\.txt: sequence 0: token id -3 outside >= 0"),
        ("1 2\n3 400\n", 320, r"ids\.txt: sequence 1: token id 400 outside \[0, 320\)"),
        ("\n  \n", None, r"ids\.txt: no token ids"),
    ],
)
def test_load_token_ids_errors(
    tmp_path: Path, text: str, vocab_size: int | None, message: str
) -> None:
    path = tmp_path / "ids.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_token_ids(path, vocab_size=vocab_size)


def test_load_token_ids_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token-id file not found"):
        load_token_ids(tmp_path / "nope.npy")


def test_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    for path in (tmp_path, tmp_path / "missing", tmp_path / "file.txt"):
        with pytest.raises(CheckpointError, match=r"not a model directory \(no config.json\)$"):
            load_causal_lm(path)


def test_bad_config_json(llama_copy: Path) -> None:
    (llama_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not a valid JSON config"):
        load_causal_lm(llama_copy)


def test_missing_weights(llama_copy: Path) -> None:
    (llama_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors or model.safetensors.index"):
        load_causal_lm(llama_copy)


def test_truncated_safetensors(llama_copy: Path) -> None:
    weights = llama_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    expected = rf"model.safetensors: truncated safetensors file \({len(data) - 1000} of {len(data)} bytes\)"
    with pytest.raises(CheckpointError, match=expected):
        load_causal_lm(llama_copy)
    weights.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_causal_lm(llama_copy)


@pytest.mark.parametrize(
    ("offset", "junk"),
    [(0, b"\xff" * 8), (8, b"garbage!")],
    ids=["length", "json"],
)
def test_corrupt_safetensors_header(llama_copy: Path, offset: int, junk: bytes) -> None:
    weights = llama_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[offset : offset + len(junk)] = junk
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt safetensors header"):
        load_causal_lm(llama_copy)


def test_inconsistent_safetensors_header(llama_copy: Path) -> None:
    """A header that parses and covers the file, but whose shape disagrees with its offsets."""
    weights = llama_copy / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["lm_head.weight"]["shape"] = [hf_tiny.VOCAB_SIZE // 2, hf_tiny.HIDDEN]
    edited = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(edited) == length
    weights.write_bytes(data[:8] + edited + data[8 + length :])
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: corrupt safetensors file: .*shape"
    ):
        load_causal_lm(llama_copy)

    weights.write_bytes(data + b"xx")
    with pytest.raises(CheckpointError, match=r"\(2 bytes after the last tensor\)"):
        load_causal_lm(llama_copy)


@pytest.mark.parametrize("model_type", ["bert", "frobnicator"])
def test_unsupported_model_type(llama_copy: Path, model_type: str) -> None:
    _edit_config(llama_copy, model_type=model_type)
    with pytest.raises(UnsupportedModelError) as info:
        load_causal_lm(llama_copy)
    message = str(info.value)
    assert f"model_type '{model_type}' is not supported" in message
    assert "\n" not in message and all(t in message for t in SUPPORTED_MODEL_TYPES)


def test_config_does_not_match_weights(llama_copy: Path) -> None:
    _edit_config(llama_copy, intermediate_size=48)
    with pytest.raises(CheckpointError) as info:
        load_causal_lm(llama_copy)
    message = str(info.value)
    assert "config.json does not match the weights" in message and "\n" not in message
    assert (
        "mlp.down_proj.weight is (32, 64) in the checkpoint but (32, 48) per the config" in message
    )

    _edit_config(llama_copy, intermediate_size=64, num_hidden_layers=3)
    with pytest.raises(
        CheckpointError, match=r"weights missing from the checkpoint: model\.layers\.2\."
    ):
        load_causal_lm(llama_copy)


@pytest.fixture
def transformers_records():
    """Records reaching the ``transformers`` library logger's handlers during a test."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    library, handler = logging.getLogger("transformers"), Keep()
    library.addHandler(handler)
    yield records
    library.removeHandler(handler)


def test_load_report_is_held_back_only_when_it_is_an_error(
    llama_copy: Path, transformers_records: list
) -> None:
    """A mismatch ends in one line (no LOAD REPORT); an accepted report still reaches the log."""
    from safetensors.torch import load_file, save_file
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    _edit_config(llama_copy, intermediate_size=48)
    with pytest.raises(CheckpointError, match="config.json does not match the weights"):
        load_causal_lm(llama_copy)
    assert not any("LOAD REPORT" in r.getMessage() for r in transformers_records)
    assert hf_logging.is_progress_bar_enabled() == bars  # restored after hiding it

    _edit_config(llama_copy, intermediate_size=64)
    tensors = load_file(llama_copy / "model.safetensors")
    tensors["model.extra.weight"] = torch.ones(3)
    save_file(tensors, llama_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not used by the llama architecture"):
        load_causal_lm(llama_copy)  # an unused tensor is an error by default
    model, _ = load_causal_lm(llama_copy, allow_unused_weights=True)
    reports = [r.getMessage() for r in transformers_records if "LOAD REPORT" in r.getMessage()]
    assert len(reports) == 1 and "model.extra.weight" in reports[0] and "UNEXPECTED" in reports[0]
    assert hf_logging.is_progress_bar_enabled() == bars


def test_config_fails_validation(saved: dict[str, Path], tmp_path: Path) -> None:
    directory = Path(shutil.copytree(saved["mamba2"], tmp_path / "mamba2"))
    _edit_config(directory, num_heads=4)
    with pytest.raises(CheckpointError) as info:
        load_causal_lm(directory)
    message = str(info.value)
    assert "mamba2: cannot load config:" in message and "Inconsistent configuration" in message
    assert "\n" not in message


def test_errors_are_spikelm_errors() -> None:
    assert issubclass(CheckpointError, SpikelmError) and issubclass(CheckpointError, OSError)
    assert issubclass(UnsupportedModelError, SpikelmError)
    assert issubclass(UnsupportedModelError, ValueError)
    assert spikelm.CheckpointError is CheckpointError
    assert spikelm.UnsupportedModelError is UnsupportedModelError
    assert spikelm.hf.CheckpointError is CheckpointError  # hf raises the shared classes


def test_import_spikelm_does_not_import_transformers() -> None:
    code = "import sys, spikelm; assert 'transformers' not in sys.modules and 'spikelm.hf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
