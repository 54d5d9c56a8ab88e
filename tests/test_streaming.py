"""Streaming conversion (``spikelm convert --stream``): tensor by tensor from a sharded bf16
checkpoint, the same spiking model as the in-memory path, bounded memory, clean refusals."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import hf_tiny  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import spikelm  # noqa: E402
from spikelm.checkpoint import INDEX, SHARDED_VERSION, VERSION  # noqa: E402
from spikelm.cli import main  # noqa: E402
from spikelm.errors import CheckpointError, ConfigError, UnsupportedModelError  # noqa: E402
from spikelm.estimators.counters import summarize  # noqa: E402
from spikelm.hf import load_causal_lm  # noqa: E402
from spikelm.layers import collect_stats, spiking_layers  # noqa: E402
from spikelm.learn import kl_divergence  # noqa: E402
from spikelm.simulate import simulate  # noqa: E402
from spikelm.streaming import convert_streaming  # noqa: E402
from spikelm.workflow import calibration_windows  # noqa: E402

IDS = torch.randint(4, hf_tiny.VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(0))


def _source(root: Path, family: str = "llama", shard: str = "20KB", **changes: object) -> Path:
    """A tiny ``family`` checkpoint (its config's fields ``changes`` set) saved in bf16, sharded,
    with its tokenizer."""
    config = hf_tiny.tiny_config(family)
    config.update(changes)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = root / f"{family}-src"
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size=shard)
    hf_tiny.build_tokenizer().save_pretrained(out)
    return out


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name)


@pytest.mark.parametrize("family", ["llama", "mamba2"])
def test_streaming_gives_the_in_memory_conversion(family: str, tmp_path: Path) -> None:
    """Same tensors, logits and spikes, bit for bit, as loading the model in float32 and
    converting it in memory (unfused); the output sharded with an index."""
    source = _source(tmp_path, family)
    assert (source / INDEX).is_file()
    streamed = convert_streaming(source, tmp_path / "streamed", shard_bytes=30_000, progress=False)
    manifest = json.loads((streamed / "spikelm.json").read_text())
    assert manifest["version"] == SHARDED_VERSION and (streamed / INDEX).is_file()
    assert not (streamed / "model.safetensors").exists()
    assert _leftovers(tmp_path) == []
    ann, _ = load_causal_lm(source)
    config = spikelm.SpikeConfig()
    in_memory = spikelm.save(
        spikelm.convert(spikelm.prepare(ann, config), fuse=False), tmp_path / "in-memory"
    )
    _assert_same_spiking_model(streamed, in_memory)


def _assert_same_spiking_model(streamed: Path, in_memory: Path) -> None:
    """The same tensors, logits and spikes, bit for bit."""
    a, b = spikelm.load(streamed), spikelm.load(in_memory)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    with torch.no_grad():
        assert torch.equal(a(IDS).logits, b(IDS).logits)
    runs = [simulate(m, IDS[0], new_tokens=4, backend="reference", progress=False) for m in (a, b)]
    assert runs[0].generated == runs[1].generated
    assert all(
        runs[0].layer_stats[n].events == runs[1].layer_stats[n].events for n in runs[1].layer_stats
    )
    assert runs[0].stats.events == runs[1].stats.events > 0


CALIBRATED = [
    ("llama", {}, {"threshold": "static_channel", "rule": "percentile", "smooth_alpha": 0.5}),
    # sliding-window layers: the blocks get different masks, so each block's own are recorded
    (
        "qwen2",
        {
            "use_sliding_window": True,
            "sliding_window": 8,
            "layer_types": ["full_attention", "sliding_attention"],
        },
        {"threshold": "static_tensor"},
    ),
    ("mamba2", {}, {"threshold": "static_tensor", "rule": "max", "smooth_alpha": 0.0}),
    ("recurrent_gemma", {}, {"threshold": "static_channel"}),  # rotary buffers in a block
]


@pytest.mark.filterwarnings("ignore::spikelm.saturation.SaturationWarning")  # in-memory only
@pytest.mark.parametrize("family, changes, fields", CALIBRATED, ids=[c[0] for c in CALIBRATED])
def test_calibrated_streaming_gives_the_in_memory_conversion(
    family: str, changes: dict, fields: dict, tmp_path: Path
) -> None:
    """Block-by-block calibration sees the activations the in-memory calibration forward sees
    (same batches, same order, same operations on the same float32 inputs), so thresholds,
    divisors, tensors, logits and spikes are equal bit for bit."""
    source = _source(tmp_path, family, **changes)
    config = spikelm.SpikeConfig(**fields)
    ids = torch.randint(4, hf_tiny.VOCAB_SIZE, (200,), generator=torch.Generator().manual_seed(1))
    batches = [w.repeat(2, 1) for w in calibration_windows(ids, 32, 5)]  # [2, 32] each
    streamed = convert_streaming(
        source, tmp_path / "streamed", config, calibration=batches, progress=False
    )
    ann, _ = load_causal_lm(source)
    spiking = spikelm.spiking(ann, config, batches, fuse=False, progress=False)
    _assert_same_spiking_model(streamed, spikelm.save(spiking, tmp_path / "in-memory"))


def _recipe_batches() -> list[torch.Tensor]:
    ids = torch.randint(4, hf_tiny.VOCAB_SIZE, (400,), generator=torch.Generator().manual_seed(1))
    return [w.repeat(2, 1) for w in calibration_windows(ids, 32, 6)]  # [2, 32] each


def _neurons(path: Path) -> dict[str, dict]:
    return {n: e.get("neuron", {}) for n, e in _manifest(path)["layers"].items()}


def _manifest(path: Path) -> dict:
    return json.loads((path / "spikelm.json").read_text())


@pytest.mark.filterwarnings("ignore::spikelm.saturation.SaturationWarning")
def test_the_spikelm_recipe_streams_block_by_block(tmp_path: Path, monkeypatch) -> None:
    """``recipe="spikelm"`` streams: the weights are the in-memory conversion's bit for bit, only
    neuron parameters are learned (every layer's k and gain recorded, checkpoint version 5), one
    block is loaded while a block learns, and the result is the same file twice."""
    import spikelm.blockwise as blockwise

    source = _source(tmp_path, "qwen2")  # tied embeddings: the head is the embedding, read again
    config = spikelm.SpikeConfig(recipe="spikelm")
    batches = _recipe_batches()
    loaded: list[list[int]] = []  # the blocks holding tensors while one learns
    learn = blockwise.BlockwiseCalibration._learn

    def watched(self, *args):
        real = [any(t.device.type != "meta" for t in b.state_dict().values()) for b in self.blocks]
        loaded.append([i for i, is_real in enumerate(real) if is_real])
        amplification.update(self.amplification)
        return learn(self, *args)

    amplification: dict[int, float] = {}

    monkeypatch.setattr(blockwise.BlockwiseCalibration, "_learn", watched)
    streamed = convert_streaming(
        source, tmp_path / "streamed", config, calibration=batches, progress=False
    )
    assert loaded == [[0], [1]]
    # the last block's error reaches the head through no later block: measured exactly once
    assert amplification[1] == pytest.approx(1.0, abs=1e-3) and amplification[0] != 1.0
    again = convert_streaming(source, tmp_path / "again", config, calibration=batches,
                              progress=False)  # fmt: skip
    for file in ("spikelm.json", *(p.name for p in streamed.glob("*.safetensors"))):
        assert (streamed / file).read_bytes() == (again / file).read_bytes(), file
    manifest = _manifest(streamed)
    assert manifest["version"] == 5 and manifest["spike_config"]["recipe"] == "spikelm"
    neurons = _neurons(streamed)
    assert all("k" in n and "gain" in n for n in neurons.values()), neurons
    assert all(n["k"] != config.k for n in neurons.values())  # learned from k = 3
    assert any(n["gain"] != 1 for n in neurons.values())
    ann, _ = load_causal_lm(source)
    plain = spikelm.SpikeConfig(spike_cost=0.3)  # the same coding, no recipe: the same weights
    converted = spikelm.convert(spikelm.prepare(ann, plain), fuse=False)
    weights, learned = spikelm.load(streamed).state_dict(), converted.state_dict()
    assert weights.keys() == learned.keys()
    assert [k for k in weights if not torch.equal(weights[k], learned[k])] == []


@pytest.mark.filterwarnings("ignore::spikelm.saturation.SaturationWarning")
@pytest.mark.parametrize("family", ["mamba2", "recurrent_gemma"])
def test_the_recipe_streams_on_the_other_streaming_families(family: str, tmp_path: Path) -> None:
    """The head is reached through the family's own forward (its blocks stood in for), so the
    recipe streams wherever calibration does: every layer learned, the checkpoint loads and runs."""
    source = _source(tmp_path, family)
    config = spikelm.SpikeConfig(recipe="spikelm")
    out = convert_streaming(source, tmp_path / "out", config, calibration=_recipe_batches()[:3],
                            progress=False)  # fmt: skip
    assert all(n["k"] != config.k and "gain" in n for n in _neurons(out).values())
    with torch.no_grad():
        assert torch.isfinite(spikelm.load(out)(IDS).logits).all()


def test_the_streamed_recipe_names_the_layers_that_still_clamp(tmp_path: Path, monkeypatch) -> None:
    """Saturation is never silent when streaming either: with no steps added (binary coding over
    one step clamps every negative count), the blocks' own measurement warns, naming layers."""
    import spikelm.recipes as recipes
    from spikelm.saturation import SaturationWarning

    monkeypatch.setattr(recipes, "widen_saturated", lambda *args, **kwargs: {})
    config = spikelm.SpikeConfig(recipe="spikelm", coding="binary", steps=1)
    with pytest.warns(SaturationWarning, match=r"model\.layers\.1\.mlp\.down_proj"):
        convert_streaming(_source(tmp_path), tmp_path / "out", config,
                          calibration=_recipe_batches()[:2], progress=False)  # fmt: skip


@pytest.mark.filterwarnings("ignore::spikelm.saturation.SaturationWarning")
def test_block_learning_trades_fidelity_for_spikes(tmp_path: Path) -> None:
    """The streamed recipe's knob works as the whole-model recipe's does: a larger spike weight
    gives fewer spikes per channel on the calibration text, and a smaller one a smaller KL to the
    ANN than SpikingBrain's conversion with the same coding."""
    source = _source(tmp_path, "llama")
    batches = _recipe_batches()
    ann, _ = load_causal_lm(source)
    with torch.no_grad():
        target = [torch.log_softmax(ann(b).logits, -1) for b in batches]

    def measured(config: spikelm.SpikeConfig, name: str) -> tuple[float, float]:
        calibration = batches if config.needs_calibration else None
        out = convert_streaming(source, tmp_path / name, config, calibration=calibration,
                                progress=False)  # fmt: skip
        model = spikelm.load(out)
        kl = 0.0
        with torch.no_grad(), collect_stats(model) as stats:
            for b, t in zip(batches, target, strict=True):
                kl += float(kl_divergence(t, model(b).logits))
        total = summarize(stats.values())
        return kl / len(batches), total.spikes_per_channel

    plain = spikelm.SpikeConfig(recipe="spikingbrain", spike_cost=0.3)
    kl_plain, _ = measured(plain, "plain")
    kl_faithful, spikes_faithful = measured(
        spikelm.SpikeConfig(recipe="spikelm", spike_weight=0.0), "w0"
    )
    _, spikes_frugal = measured(spikelm.SpikeConfig(recipe="spikelm", spike_weight=1.0), "w1")
    assert kl_faithful < kl_plain
    assert spikes_frugal < 0.9 * spikes_faithful


@pytest.mark.filterwarnings("ignore::spikelm.saturation.SaturationWarning")
def test_cli_calibrated_stream_matches_the_in_memory_cli(tmp_path: Path, capsys) -> None:
    """``convert --stream --calib TEXT`` and ``convert --no-fuse --calib TEXT``: one checkpoint
    (qwen2: tied embeddings, q/k/v biases)."""
    source = _source(tmp_path, "qwen2")
    text = tmp_path / "calib.txt"
    text.write_text("Calibration text, tokenized by the checkpoint's own tokenizer. " * 12)
    common = ["--calib", str(text), "--seq-len", "64", "--calib-windows", "6",
              "--threshold", "static_tensor", "--rule", "percentile"]  # fmt: skip
    capsys.readouterr()
    assert main(["convert", str(source), "--out", str(tmp_path / "s"), "--stream", *common]) == 0
    assert "streamed block by block with calibration" in capsys.readouterr().out
    assert main(["convert", str(source), "--out", str(tmp_path / "m"), "--no-fuse", *common]) == 0
    _assert_same_spiking_model(tmp_path / "s", tmp_path / "m")
    for out in ("s", "m"):  # both record the model converted, for spikelm eval's baselines
        manifest = json.loads((tmp_path / out / "spikelm.json").read_text())
        assert manifest["metadata"]["source"] == str(source.resolve())


@pytest.mark.filterwarnings("ignore::spikelm.saturation.SaturationWarning")
def test_cli_streams_the_spikelm_recipe(tmp_path: Path, capsys) -> None:
    source = _source(tmp_path, "llama")
    text = tmp_path / "calib.txt"
    text.write_text("Calibration text, tokenized by the checkpoint's own tokenizer. " * 12)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["convert", str(source), "--out", str(out), "--stream", "--recipe", "spikelm",
                 "--calib", str(text), "--seq-len", "32", "--calib-windows", "4"]) == 0  # fmt: skip
    assert "block by block with calibration, neurons learned per block" in capsys.readouterr().out
    neurons = _neurons(out)
    assert _manifest(out)["version"] == 5 and all("gain" in n for n in neurons.values())
    assert spikelm.load(out) is not None


def test_a_small_model_streams_into_one_file(tmp_path: Path) -> None:
    source = _source(tmp_path)
    out = convert_streaming(source, tmp_path / "out", progress=False)
    assert json.loads((out / "spikelm.json").read_text())["version"] == VERSION
    assert (out / "model.safetensors").is_file() and not (out / INDEX).exists()
    assert (out / "tokenizer.json").is_file()
    model, tokenizer = spikelm.load(out, with_tokenizer=True)
    assert tokenizer is not None and len(spikelm.layers.spiking_layers(model)) > 0


def test_the_writer_holds_one_shard_or_one_tensor(tmp_path: Path, monkeypatch) -> None:
    """What the writer holds never exceeds the shard size, except a single larger tensor."""
    from spikelm.checkpoint import ShardWriter

    held = []
    original = ShardWriter.add

    def add(self, name: str, tensor: torch.Tensor) -> None:
        original(self, name, tensor)
        held.append((self.pending_bytes, len(self.pending)))

    monkeypatch.setattr(ShardWriter, "add", add)
    convert_streaming(_source(tmp_path), tmp_path / "out", shard_bytes=8_000, progress=False)
    assert all(size <= 8_000 or count == 1 for size, count in held), held
    assert max(count for _, count in held) > 1 and max(size for size, _ in held) > 8_000
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 3


def _bf16_llama(directory: Path, layers: int) -> Path:
    """A random 1024-wide Llama (MLP 2816, 8 heads) of ``layers`` blocks, saved in 30 MB bf16
    shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory, max_shard_size="30MB")
    return directory


def test_peak_memory_follows_a_tensor_not_the_model(tmp_path: Path) -> None:
    """A 50M-parameter Llama (100 MB in bf16, 200 MB in float32) converts in a subprocess whose
    peak RSS grows by well under the model's float32 size over the libraries' own."""
    source = _bf16_llama(tmp_path / "src", layers=4)
    fp32_mib = sum(f.stat().st_size for f in source.glob("*.safetensors")) * 2 / 2**20
    script = textwrap.dedent(
        f"""
        import resource, transformers, torch
        from spikelm.streaming import convert_streaming
        from spikelm.hf import meta_model
        meta_model({str(source)!r})  # the libraries and their caches, before the baseline
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        convert_streaming({str(source)!r}, {str(tmp_path / "out")!r}, shard_bytes=16 << 20,
                          progress=False)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    assert growth_mib < fp32_mib / 2, (growth_mib, fp32_mib)
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 2


def test_load_maps_the_int8_codes_instead_of_copying_them(tmp_path: Path) -> None:
    """``spikelm.load`` of a 4-block Llama (51 MB of int8 codes) grows a subprocess's peak RSS by
    less than half the codes: they are the shards' memory maps, read when first used. The maps
    are copy-on-write: a change to a loaded model never reaches the checkpoint."""
    source = _bf16_llama(tmp_path / "src", layers=4)
    out = convert_streaming(source, tmp_path / "out", progress=False)
    model = spikelm.load(out)
    layers = spiking_layers(model)
    codes_mib = sum(layer.weight_q.numel() for layer in layers.values()) / 2**20
    script = textwrap.dedent(
        f"""
        import resource, spikelm
        from spikelm.hf import meta_model
        meta_model({str(source)!r})  # the libraries and their caches, before the baseline
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model = spikelm.load({str(out)!r})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    assert growth_mib < codes_mib / 2, (growth_mib, codes_mib)
    name, layer = next(iter(layers.items()))
    before = layer.weight_q.clone()
    layer.weight_q.add_(1)
    assert torch.equal(spiking_layers(spikelm.load(out))[name].weight_q, before)


def test_peak_memory_of_calibration_follows_a_block_not_the_model(tmp_path: Path) -> None:
    """A 12-block Llama (150M parameters, 600 MB in float32, 50 MB per block) converts with
    calibrated thresholds (percentile reservoirs, outlier migration; 8 windows of 128 tokens) in
    a subprocess whose peak RSS grows by less than four blocks' float32 size.

    glibc serves the 4-12 MB tensors of this scaled-down block from its heap and keeps what is
    freed there for reuse (the peak is then about 265 MB, the same for 8 and 12 blocks); a fixed
    mmap threshold makes RSS follow what the conversion holds. A 7B block's tensors are above
    glibc's largest threshold anyway (benchmarks/bench_convert_large.py)."""
    source = _bf16_llama(tmp_path / "src", layers=12)
    block_mib = (4 * 1024 * 1024 + 3 * 1024 * 2816) * 4 / 2**20
    script = textwrap.dedent(
        f"""
        import resource, torch, spikelm
        from spikelm.streaming import convert_streaming
        from spikelm.hf import meta_model
        meta_model({str(source)!r})  # the libraries and their caches, before the baseline
        ids = torch.randint(0, 256, (8, 128), generator=torch.Generator().manual_seed(0))
        config = spikelm.SpikeConfig(threshold="static_tensor", rule="percentile",
                                     smooth_alpha=0.5)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        convert_streaming({str(source)!r}, {str(tmp_path / "out")!r}, config,
                          calibration=list(ids.split(1)), shard_bytes=16 << 20, progress=False)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
    )
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    assert growth_mib < 4 * block_mib, (growth_mib, block_mib)
    manifest = json.loads((tmp_path / "out" / "spikelm.json").read_text())
    assert (
        manifest["spike_config"]["threshold"] == "static_tensor" and len(manifest["layers"]) == 84
    )


@pytest.mark.parametrize(
    "family, match",
    [
        ("rwkv", "rwkv checkpoints are changed when they load"),
        ("qwen3_next", "qwen3_next checkpoints are changed when they load"),
    ],
)
def test_families_that_change_on_load_are_refused(family: str, match: str, tmp_path) -> None:
    source = _source(tmp_path, family)
    with pytest.raises(UnsupportedModelError, match=match):
        convert_streaming(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _ids_file(root: Path, ids: list[int]) -> str:
    path = root / "ids.txt"
    path.write_text(" ".join(map(str, ids)) + "\n")
    return str(path)


BAD_CALIBRATION = [
    (["--threshold", "static_tensor"], "need calibration data: pass --calib FILE"),
    (["--calib-ids", "IDS"], "the dynamic threshold rule uses no calibration data"),
    (["--threshold", "static_tensor", "--calib-ids", "EMPTY"], "no token ids in file"),
    (["--threshold", "static_tensor", "--calib-ids", "IDS", "--seq-len", "512"],
     "the calibration set is empty: it needs at least 512 tokens (got 300)"),
    (["--threshold", "static_tensor", "--calib-ids", "BIG"], "token id 999 outside [0, 320)"),
    (["--threshold", "static_tensor", "--fisher-power", "0.5", "--calib-ids", "IDS"],
     "streaming calibrates one block at a time, and fisher_power needs the gradients"),
    (["--recipe", "spikelm"], "recipe=spikelm learns from calibration data: pass --calib"),
]  # fmt: skip


@pytest.mark.parametrize("args, message", BAD_CALIBRATION)
def test_bad_calibration_is_one_line_and_writes_nothing(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:
    source = _source(tmp_path)
    files = {
        "IDS": _ids_file(tmp_path, list(range(4, 304))),
        "EMPTY": str(tmp_path / "empty.txt"),
        "BIG": str(tmp_path / "big.txt"),
    }
    Path(files["EMPTY"]).write_text("\n")
    Path(files["BIG"]).write_text("5 999 7\n")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["convert", str(source), "--out", str(out), "--stream",
                 *(files.get(a, a) for a in args)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("spikelm: error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "batches, message",
    [
        ([], "the calibration set is empty"),
        (
            [torch.zeros(1, 8)],
            "calibration batch 0: expected token ids [batch, length] in [0, 320)",
        ),
        ([torch.ones(1, 8, dtype=torch.long), torch.arange(8)], "calibration batch 1: expected"),
    ],
)
def test_bad_calibration_batches_are_refused(batches: list, message: str, tmp_path: Path) -> None:
    config = spikelm.SpikeConfig(threshold="static_tensor")
    with pytest.raises(ConfigError, match=re.escape(message)):
        convert_streaming(
            _source(tmp_path), tmp_path / "out", config, calibration=batches, progress=False
        )
    assert not (tmp_path / "out").exists()


def _index(source: Path) -> dict:
    return json.loads((source / INDEX).read_text())


def _truncate_first_shard(source: Path) -> str:
    shard = sorted(source.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    return f"{shard.name}: truncated safetensors file"


def _drop_a_shard(source: Path) -> str:
    shard = sorted(source.glob("model-*.safetensors"))[-1]
    shard.unlink()
    return f"{shard.name}: weight shard listed in {INDEX} is missing"


def _name_a_ghost_tensor(source: Path) -> str:
    index = _index(source)
    shard = next(iter(index["weight_map"].values()))
    index["weight_map"]["model.layers.0.ghost.weight"] = shard
    (source / INDEX).write_text(json.dumps(index))
    return f"tensor model.layers.0.ghost.weight is not in its shard {shard}"


def _poison_a_weight(source: Path) -> str:
    from safetensors.torch import load_file, save_file

    index = _index(source)
    name = "model.layers.0.mlp.down_proj.weight"
    shard = source / index["weight_map"][name]
    tensors = load_file(shard)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    return f"tensor {name} holds NaN or infinite values"


@pytest.mark.parametrize(
    "damage", [_truncate_first_shard, _drop_a_shard, _name_a_ghost_tensor, _poison_a_weight]
)
def test_a_damaged_source_is_one_line_and_writes_nothing(damage, tmp_path: Path, capsys) -> None:
    source = _source(tmp_path)
    expected = damage(source)
    out = tmp_path / "out"
    capsys.readouterr()  # transformers' own progress bars while saving the source
    assert main(["convert", str(source), "--out", str(out), "--stream"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("spikelm: error: ")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cli_streams_and_refuses_what_needs_the_float_model(tmp_path: Path, capsys) -> None:
    source = _source(tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    args = ["convert", str(source), "--out", str(out), "--stream", "--shard-size", "30KB"]
    assert main(args) == 0
    assert "streamed tensor by tensor" in capsys.readouterr().out
    assert (out / INDEX).is_file() and spikelm.load(out) is not None
    text = tmp_path / "eval.txt"
    text.write_text("some text " * 20)
    assert main([*args[:-2], "--overwrite", "--eval", str(text)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stream never holds the whole float model: --eval" in err[0], err
    assert main([*args[:-1], "lots"]) == 1
    assert "expected a size like 500MB" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_full_disk_leaves_no_checkpoint(tmp_path: Path) -> None:
    """Writing past a file-size limit (a full disk, as the writer sees it): one line, exit 1, no
    output directory and no temporaries."""
    source = _source(tmp_path)
    out = tmp_path / "out"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run(
        [sys.executable, "-m", "spikelm", "convert", str(source), "--out", str(out), "--stream"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("spikelm: error: ")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and "cannot write spiking checkpoint" in errors[0], result.stderr
    assert "File too large" in errors[0]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_damaged_sharded_checkpoint_does_not_load(tmp_path: Path) -> None:
    source = _source(tmp_path)
    out = convert_streaming(source, tmp_path / "out", shard_bytes=30_000, progress=False)
    shard = sorted(out.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"{shard.name}: truncated safetensors file"):
        spikelm.load(out)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: weight shard listed in"):
        spikelm.load(out)
