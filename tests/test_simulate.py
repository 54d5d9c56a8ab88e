"""Whole-model simulation: token-by-token runs agree with the parallel forms and ``generate``;
recordings hold exactly the spikes of the layers' counts; ``spikelm simulate`` and its bad inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_HYBRID

import spikelm
from spikelm.backends import numba_available
from spikelm.cli import main
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError, SpikeFileError
from spikelm.layers import SpikingLinear
from spikelm.models import HybridLM
from spikelm.simulate import CHECK_TOKENS, NO_GPU_MESSAGE, backend_names, check_stepping, simulate
from spikelm.spikes import SpikeReader

CONFIG = TINY_HYBRID
PROMPT = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(1))  # > window
NEW = 8


# token-by-token runs are chains of tiny ops: one intra-op thread is fastest on a busy CPU
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny converted HybridLM saved with spikelm.save (SpikingBrain's recipe, group 32)."""
    torch.manual_seed(0)
    model = HybridLM(CONFIG).eval()
    config = spikelm.SpikeConfig(group_size=32)
    model = spikelm.convert(spikelm.prepare(model, config))
    return spikelm.save(model, tmp_path_factory.mktemp("sim") / "ckpt")


@pytest.fixture
def model(checkpoint: Path) -> HybridLM:
    return spikelm.load(checkpoint)


def _spiking(model) -> dict[str, SpikingLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SpikingLinear)}


def test_token_by_token_equals_parallel_form_and_generate(model) -> None:
    result = simulate(model, PROMPT, new_tokens=NEW, progress=False, return_logits=True)
    with torch.no_grad():
        parallel = model(PROMPT[None])[0]
        expected = model.generate(PROMPT[None], NEW)[0, len(PROMPT) :].tolist()
    assert result.generated == expected
    assert result.family == "spikelm_hybrid"
    assert result.tokens == len(PROMPT) + NEW - 1 == result.logits.shape[0]
    assert result.input_tokens == len(PROMPT)
    torch.testing.assert_close(result.logits[: len(PROMPT)], parallel, atol=1e-4, rtol=0)
    assert [int(x) for x in result.logits[len(PROMPT) - 1 :].argmax(-1)] == expected
    # statistics: every spiking layer saw every token once; the pooled events are their sum
    assert set(result.layer_stats) == set(_spiking(model))
    assert {s.tokens for s in result.layer_stats.values()} == {result.tokens}
    assert result.events == sum(s.events for s in result.layer_stats.values()) > 0
    assert (
        0 < result.stats.firing_rate < 1 and result.stats.sparsity == 1 - result.stats.firing_rate
    )
    assert result.tokens_per_second > 0 and result.events_per_second > 0
    assert all(layer.probe is None for layer in _spiking(model).values())  # detached


def test_recording_holds_each_tokens_spikes(model, tmp_path: Path) -> None:
    layers = _spiking(model)
    chosen = [n for n in layers if n.startswith("layers.0.") or n.endswith("down_proj")]
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in chosen}
    hooks = [
        layers[name].register_forward_pre_hook(
            lambda _m, args, name=name: inputs[name].append(args[0].detach().clone())
        )
        for name in chosen
    ]
    path = tmp_path / "rec.h5"
    try:
        result = simulate(
            model,
            PROMPT,
            new_tokens=4,
            record=path,
            layers=["layers.0.*", "*.down_proj"],
            progress=False,
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert result.record == path and list(result.recorded_layers) == chosen
    # before the run, the stepping check calls each layer once in parallel and once per step
    checked = 1 + min(len(PROMPT), CHECK_TOKENS)
    inputs = {name: calls[checked:] for name, calls in inputs.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.h5"]  # no temporaries left
    with SpikeReader(path) as reader:
        assert reader.layers == chosen
        for name in chosen:
            layer, info = layers[name], reader.info(name)
            assert info.n_tokens == result.tokens == len(inputs[name])
            assert (info.n_neurons, info.steps, info.coding) == (
                layer.in_features,
                layer.steps,
                layer.coding,
            )
            assert info.n_events == result.layer_stats[name].events
            coder = get_coder(layer.coding)
            for token in (0, 7, result.tokens - 1):
                counts, _ = layer.spike_counts(inputs[name][token].reshape(-1, layer.in_features))
                dense = reader.read(name, range(token, token + 1)).to_dense()  # [1, T, N]
                decoded = coder.decode(torch.from_numpy(dense[0]))
                assert torch.equal(decoded, counts[0].to(torch.int64)), (name, token)


def test_stepping_check_runs_an_exact_backend(model) -> None:
    """A float backend rounds one row and many differently, so a count can flip between the two
    forms; the check holds the adapter's state to account on an exact backend, then restores."""
    from spikelm.adapters import adapter_for
    from spikelm.backends import backend, exact_backend_name

    layers = _spiking(model)
    seen = []
    for layer in layers.values():
        layer.backend = "torch"
        layer.register_forward_pre_hook(lambda m, _args: seen.append(m.backend))
    assert check_stepping(adapter_for(model), model, PROMPT) <= 1e-3
    assert seen and set(seen) == {exact_backend_name("cpu")} and backend(seen[0]).exact
    assert {layer.backend for layer in layers.values()} == {"torch"}


def test_bad_options_fail_before_any_work(model, tmp_path: Path) -> None:
    calls = []
    first = next(iter(_spiking(model).values()))
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(
        ConfigError, match="unknown backend 'nope'; choose one of: " + ", ".join(backend_names())
    ):
        simulate(model, PROMPT, backend="nope", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"CUDA requested but no GPU is available"):
            simulate(model, PROMPT, device="cuda", progress=False)
    missing = tmp_path / "missing" / "rec.h5"
    with pytest.raises(SpikeFileError, match=f"directory {tmp_path / 'missing'} does not exist"):
        simulate(model, PROMPT, record=missing, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        simulate(model, [], progress=False)
    with pytest.raises(ConfigError, match="token id 300 is outside"):
        simulate(model, [1, 300], progress=False)
    with pytest.raises(ConfigError, match="matches no spiking layer"):
        simulate(model, PROMPT, record=tmp_path / "x.h5", layers=["nothing*"], progress=False)
    with pytest.raises(ConfigError, match="not spiking"):
        simulate(HybridLM(CONFIG), PROMPT, progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_every_backend_runs_the_model(model) -> None:
    """Same greedy tokens and logits (to float rounding) on every backend, set on every layer."""
    runs = {}
    for name in backend_names():
        runs[name] = simulate(
            model, PROMPT[:12], new_tokens=4, backend=name, progress=False, return_logits=True
        )
        assert runs[name].backend == name
        assert {layer.backend for layer in _spiking(model).values()} == {name}
    dense = runs["torch"]
    for name, result in runs.items():
        assert result.generated == dense.generated, name
        torch.testing.assert_close(result.logits, dense.logits, atol=1e-4, rtol=0)
        assert result.events == dense.events, name  # the counts do not depend on the backend
    if numba_available():  # numba's kernels are compiled (or loaded) before the timed loop
        assert runs["numba"].compile_seconds > 0
    assert runs["torch"].compile_seconds == 0.0
    # every layer call of every token is counted under the path that ran it
    calls = runs["torch"].tokens * len(_spiking(model))
    assert runs["torch"].paths == {"torch": calls}
    assert runs["reference"].paths == {"reference": calls}
    if numba_available():
        assert set(runs["numba"].paths) <= {"numba.counts", "numba.events"}
        assert sum(runs["numba"].paths.values()) == calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_record_the_cpu_spikes_bit_for_bit(checkpoint: Path, tmp_path: Path) -> None:
    """On the GPU the exact backend, run twice, records the spikes of every layer bit for bit as
    the CPU run does; the dense float backend generates the same tokens."""
    kwargs = {"new_tokens": NEW, "progress": False}
    cpu = simulate(spikelm.load(checkpoint), PROMPT, record=tmp_path / "cpu.h5", **kwargs)
    with SpikeReader(tmp_path / "cpu.h5") as reader:
        expected = {n: reader.read(n, range(cpu.tokens)).to_dense() for n in reader.layers}
    for run_index, backend in enumerate(("torch_events", "torch_events", "torch")):
        path = tmp_path / f"{run_index}.h5"
        run = simulate(
            spikelm.load(checkpoint), PROMPT, backend=backend, device="cuda", record=path, **kwargs
        )
        assert run.device.startswith("cuda") and run.generated == cpu.generated, backend
        if backend == "torch":
            continue
        with SpikeReader(path) as reader:
            assert reader.layers == list(expected)
            for name, dense in expected.items():
                assert np.array_equal(reader.read(name, range(run.tokens)).to_dense(), dense), name


def test_a_failing_run_leaves_no_recording(model, tmp_path: Path, monkeypatch) -> None:
    from spikelm.adapters.hybrid import HybridAdapter

    original = HybridAdapter.step
    seen = []

    def failing(self, model, token, state):
        seen.append(1)
        if len(seen) == CHECK_TOKENS + 5:  # past the stepping check: the recording is open
            raise RuntimeError("boom")
        return original(self, model, token, state)

    monkeypatch.setattr(HybridAdapter, "step", failing)
    with pytest.raises(RuntimeError, match="boom"):
        simulate(model, PROMPT, record=tmp_path / "rec.h5", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert all(layer.probe is None for layer in _spiking(model).values())


# --- transformers families ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    import hf_tiny

    from spikelm.hf import load_causal_lm

    root = tmp_path_factory.mktemp("hf")
    cache = {}

    def get(family: str):
        if family not in cache:
            model, _ = load_causal_lm(hf_tiny.save_tiny(family, root / family, tokenizer=False))
            calib = [
                torch.randint(
                    4, hf_tiny.VOCAB_SIZE, (2, 32), generator=torch.Generator().manual_seed(i)
                )
                for i in range(2)
            ]
            cache[family] = spikelm.spiking(model, spikelm.SpikeConfig(), calib, progress=False)
        return cache[family]

    return get


HF_FAMILIES = ("llama", "qwen2", "qwen3_next", "minimax", "rwkv", "mamba2", "recurrent_gemma")
HF_PROMPT = torch.randint(4, 320, (1, 20), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_hf_family_steps_with_its_cache(family: str, hf_models) -> None:
    """20 prompt tokens: past recurrent_gemma's window (16) and minimax's block (16)."""
    model = hf_models(family)
    result = simulate(
        model, HF_PROMPT, new_tokens=6, progress=False, return_logits=True, stop_ids=[2]
    )
    with torch.no_grad():
        parallel = model(HF_PROMPT).logits[0]
        expected = model.generate(HF_PROMPT, max_new_tokens=6, do_sample=False)
    assert result.family == family
    assert result.generated == expected[0, HF_PROMPT.shape[1] :].tolist()
    torch.testing.assert_close(result.logits[: HF_PROMPT.shape[1]], parallel, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "mamba2"])
def test_a_forward_that_ignores_its_cache_is_a_clear_error(
    family: str, hf_models, tmp_path: Path, monkeypatch
) -> None:
    """A forward that drops the cache keyword (as a renamed keyword swallowed by **kwargs does)
    decodes every token without its state: simulate refuses before generating or recording."""
    from spikelm.adapters.transformers import cache_keyword

    model = hf_models(family)
    forward = type(model).forward
    keyword = cache_keyword(model)

    @functools.wraps(forward)
    def stateless(self, *args, **kwargs):
        kwargs.pop(keyword, None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", stateless)
    record = tmp_path / "spikes.h5"
    with pytest.raises(ConfigError) as error:
        simulate(model, HF_PROMPT, new_tokens=4, progress=False, record=record)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{family}: stepping")
    assert "state is lost" in message and "transformers " in message
    assert not record.exists() and not list(tmp_path.iterdir())


# --- the command line ----------------------------------------------------------------------------


def test_cli_simulate_prints_throughput_and_firing(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    text = tmp_path / "input.txt"
    text.write_text("spiking language models, token by token.\n")
    record = tmp_path / "rec.h5"
    argv = ["simulate", str(checkpoint), "--text", str(text), "--tokens", "3"]
    argv += ["--record", str(record), "--layers", "*.q_proj", "--backend", "torch"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tokens = len(text.read_bytes()) + 2
    assert f"simulated {tokens} tokens ({tokens - 2} input, 3 generated)" in out
    for label in ("tokens/s", "spike events/s", "firing rate", "sparsity", "spikes/channel"):
        assert label in out
    assert "execution paths (layer rows): torch " in out
    assert "silent share" in out and "generated text: " in out
    with SpikeReader(record) as reader:
        assert reader.layers == [  # the layers q_proj was fused into (a member's name selects)
            "layers.0.attn.{q_proj,k_proj,v_proj,g_proj}",
            "layers.1.attn.{q_proj,k_proj,v_proj}",
        ]
        assert {reader.n_tokens(layer) for layer in reader.layers} == {tokens}

    assert main(["simulate", str(checkpoint), "--prompt", "ab", "--max-tokens", "1"]) == 0
    out = capsys.readouterr().out
    assert "simulated 32 tokens (1 input, 32 generated)" in out  # --prompt: 32 new by default


def _bad_cases(checkpoint: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    ann = tmp_path / "ann"
    HybridLM(CONFIG).save_pretrained(ann)
    cases = {
        "not_spiking": (
            [str(ann)],
            f"{ann}: not a spiking checkpoint (no spikelm.json); convert it first",
        ),
        "unknown_backend": (
            [str(checkpoint), "--backend", "nope"],
            "unknown backend 'nope'; choose one of: " + ", ".join(backend_names()),
        ),
        "missing_directory": (
            [str(checkpoint), "--record", str(tmp_path / "missing" / "rec.h5")],
            f"directory {tmp_path / 'missing'} does not exist",
        ),
    }
    if not torch.cuda.is_available():
        cases["cuda_without_gpu"] = ([str(checkpoint), "--device", "cuda"], NO_GPU_MESSAGE)
    return cases


def test_cli_bad_inputs_are_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    for name, (args, expected) in _bad_cases(checkpoint, tmp_path).items():
        out_dir = tmp_path / f"out-{name}"
        out_dir.mkdir()
        argv = ["simulate", *args, "--prompt", "hello"]
        if "--record" not in args:
            argv += ["--record", str(out_dir / "rec.h5")]
        assert main(argv) == 1, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spikelm: error: "), (name, captured.err)
        assert expected in lines[0] and "Traceback" not in captured.err, (name, lines[0])
        assert captured.out == "" and list(out_dir.iterdir()) == [], name
    assert not (tmp_path / "missing").exists()
    assert not list(tmp_path.glob("**/*.h5")) and not list(tmp_path.glob("**/.*partial*"))
    assert np.all([p.is_dir() for p in tmp_path.iterdir()])


def test_cli_hides_transformers_warnings_unless_debug(hf_models, tmp_path: Path) -> None:
    """mamba2 without its optional kernels: transformers warns that it falls back to torch; the
    CLI keeps that off its output unless --debug (a fresh process: the setting acts at import)."""
    import subprocess
    import sys

    import hf_tiny

    ckpt = spikelm.save(hf_models("mamba2"), tmp_path / "ckpt", tokenizer=hf_tiny.build_tokenizer())
    command = [sys.executable, "-m", "spikelm", "simulate", str(ckpt), "--tokens", "2"]
    command += ["--prompt", "hello"]
    quiet = subprocess.run(command, capture_output=True, text=True)
    loud = subprocess.run([*command[:3], "--debug", *command[3:]], capture_output=True, text=True)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "throughput" in quiet.stdout
    assert "falling back" not in quiet.stderr.lower()
    assert "falling back" in loud.stderr.lower()
