"""spikelm in lm-evaluation-harness: the ``spikelm`` lm-eval model, ``spikelm eval`` and its
offline tasks, on the demo model and on a tiny transformers Llama (nothing is downloaded)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")
transformers = pytest.importorskip("transformers")

from hf_tiny import save_tiny  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import spikelm  # noqa: E402
from spikelm.cli import main  # noqa: E402
from spikelm.fidelity import compare  # noqa: E402
from spikelm.harness.evaluate import TASKS_DIR, evaluate  # noqa: E402
from spikelm.harness.lm import SpikelmLM  # noqa: E402
from spikelm.harness.tasks import demo_data  # noqa: E402
from spikelm.models import ByteTokenizer, load_demo_model  # noqa: E402
from spikelm.workflow import demo  # noqa: E402


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory) -> Path:
    return demo(tmp_path_factory.mktemp("demo") / "ckpt", progress=False).out_dir


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny transformers Llama with a tokenizer, and its spiking conversion (CLI)."""
    root = tmp_path_factory.mktemp("llama")
    src = save_tiny("llama", root / "src")
    assert main(["convert", str(src), "--out", str(root / "ckpt")]) == 0
    return src, root / "ckpt"


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


PAIRS = [
    ("The quick brown", " fox"),
    ("def main():", "\n    return 0"),
    ("a", "bcdefgh"),
    ("Spikes are events", " on a chip"),
    ("x" * 40, " y"),
]


def test_the_model_is_registered_with_lm_eval():
    assert get_model("spikelm") is SpikelmLM


def test_ann_loglikelihoods_equal_lm_evals_own_hf_model(llama):
    """The baseline path (a plain module in SpikelmLM) scores requests as lm-eval's ``hf`` model
    does on the same checkpoint: log-likelihoods within 1e-4, the same greedy flags."""
    from lm_eval.models.huggingface import HFLM

    src, _ = llama
    from spikelm.workflow import load_source

    model, tokenizer = load_source(str(src))
    ours = SpikelmLM(model=model, tokenizer=tokenizer, batch_size=3, name="ann", progress=False)
    theirs = HFLM(pretrained=str(src), dtype="float32", batch_size=3, device="cpu")
    mine = ours.loglikelihood(_requests("loglikelihood", PAIRS))
    ref = theirs.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (a, greedy_a), (b, greedy_b) in zip(mine, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
        assert greedy_a == greedy_b
    docs = [("Spiking language models count events. " * 3,), ("short",)]
    rolling = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", docs))
    rolling_ref = theirs.loglikelihood_rolling(
        _requests("loglikelihood_rolling", docs), disable_tqdm=True
    )
    assert rolling == pytest.approx(rolling_ref, abs=1e-4)
    assert all(math.isfinite(v) and v < 0 for v in rolling)


def test_local_tasks_run_through_lm_eval_with_the_spikelm_model(demo_ckpt):
    """lm-eval's own ``simple_evaluate`` with ``model="spikelm"`` and model_args, as a user's
    script would: the demo model picks the true continuation far above chance (1/4)."""
    out = simple_evaluate(
        model="spikelm",
        model_args=f"path={demo_ckpt},backend=numba",
        tasks=["spikelm_choice"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=24,
        log_samples=False,
        batch_size=4,
    )
    acc = out["results"]["spikelm_choice"]["acc,none"]
    assert 0.5 <= acc <= 1.0
    firing = out["config"]["spikelm_firing"]  # beside the scores, in lm-eval's own results
    assert 0 < firing["spikes_per_channel"] < 8 and firing["events"] > 0
    assert out["config"]["spikelm_backend"] == "numba"


def test_lm_eval_command_line_with_spikelm_registered(demo_ckpt):
    run = subprocess.run(
        [sys.executable, "-m", "spikelm.harness", "run", "--model", "spikelm",
         "--model_args", f"path={demo_ckpt},backend=numba", "--tasks", "spikelm_choice",
         "--limit", "8", "--batch_size", "4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "spikelm_choice" in run.stdout and "acc" in run.stdout


def test_spiking_scores_differ_from_the_ann_as_the_fidelity_table_says(demo_ckpt):
    """The check: on the perplexity task, lm-eval's byte perplexity of the ANN and of the spiking
    model each equal :func:`spikelm.fidelity.compare`'s perplexity on the same documents (each
    preceded by the separator token lm-eval puts in front; one window each; relative 1e-6), so
    the spiking-minus-ANN delta in the table is the fidelity table's delta on that text."""
    limit = 4
    result = evaluate(
        demo_ckpt, ["spikelm_text"], limit=limit, baselines=["ann"], backend="auto",
        batch_size=1, progress=False,
    )  # fmt: skip
    row = next(r for r in result.rows if r.metric == "byte_perplexity")
    texts = demo_data.text()["test"]["text"][:limit]
    separator = SpikelmLM(model=load_demo_model(), tokenizer=ByteTokenizer()).prefix_token_id
    batches = [torch.tensor([[separator, *ByteTokenizer().encode(t)]]) for t in texts]
    spiking = spikelm.load(demo_ckpt, backend="auto")
    scores = {s.name: s for s in compare(load_demo_model(), {"spiking": spiking}, batches)}
    assert row.scores["ann"] == pytest.approx(scores["ANN (fp32)"].perplexity, rel=1e-6)
    assert row.scores["spiking"] == pytest.approx(scores["spiking"].perplexity, rel=1e-6)
    assert row.delta == pytest.approx(
        scores["spiking"].perplexity - scores["ANN (fp32)"].perplexity, rel=1e-4
    )
    # lm-eval feeds each window without its last token (nothing follows it to predict)
    spikes = scores["spiking"].stats.spikes_per_channel
    assert row.spikes_per_channel == pytest.approx(spikes, rel=1e-3)
    assert 0 < row.spikes_per_channel < 8


def test_spikelm_eval_prints_one_table_and_writes_json(demo_ckpt, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["eval", str(demo_ckpt), "--tasks", "spikelm_choice,spikelm_text", "--limit", "4",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header[:5] == ["task", "metric", "ANN", "W8A8", "spiking"]
    data = json.loads(out.read_text())
    assert list(data)[0] == "generator" and data["models"] == ["ann", "w8a8", "spiking"]
    firing = data["firing"]["spikelm_choice"]  # the spiking model's run on that task
    assert firing["events"] > 0 and 0 < firing["firing_rate"] < 1 and firing["steps"] == 8
    assert data["source"] == "spikelm:demo"
    metrics = {(r["task"], r["metric"]) for r in data["rows"]}
    assert {("spikelm_choice", "acc"), ("spikelm_text", "byte_perplexity")} <= metrics
    for row in data["rows"]:
        assert set(row["scores"]) == {"ann", "w8a8", "spiking"}
        assert row["delta"] == pytest.approx(row["scores"]["spiking"] - row["scores"]["ann"])
        assert row["spikes_per_channel"] > 0
        assert f"{row['scores']['spiking']:.4f}" in table
    assert main(argv) == 1  # its own earlier output is not replaced without --overwrite
    assert main([*argv, "--overwrite"]) == 0
    shots = ["eval", str(demo_ckpt), "--tasks", "spikelm_choice", "--limit", "4", "--baseline",
             "none", "--num-fewshot", "1", "--out", str(out), "--overwrite"]  # fmt: skip
    assert main(shots) == 0
    data = json.loads(out.read_text())
    assert data["num_fewshot"] == 1 and data["models"] == ["spiking"]
    assert "1-shot" in capsys.readouterr().out


def test_padding_is_not_counted_as_firing(demo_ckpt):
    """Batched requests are padded on the right; the firing statistics count the real tokens
    only: the same token-channel slots as one request at a time, and the same spikes but for
    counts that flip at their rounding boundary when the batch shape changes the float sums."""
    pairs = _requests("loglikelihood", PAIRS)
    stats = []
    for batch_size in (1, len(PAIRS)):
        lm = SpikelmLM(str(demo_ckpt), backend="auto", batch_size=batch_size, progress=False)
        lm.loglikelihood(pairs, disable_tqdm=True)
        stats.append(lm.firing())
    assert stats[0].slots == stats[1].slots
    assert stats[1].events == pytest.approx(stats[0].events, rel=1e-3)


def test_generation_is_the_simulated_greedy_continuation(demo_ckpt):
    """``generate_until`` (full forward per token) gives the tokens :func:`spikelm.simulate`
    (stepped, with state) generates, cut at the stop string."""
    from spikelm.simulate import simulate

    lm = SpikelmLM(str(demo_ckpt), backend="numba", progress=False)
    prompt = "The result of the operation is"
    [text] = lm.generate_until(
        _requests("generate_until", [(prompt, {"until": ["\n"], "max_gen_toks": 12})])
    )
    stepped = simulate(lm.model, ByteTokenizer().encode(prompt), new_tokens=12, backend="numba",
                       progress=False)  # fmt: skip
    assert text == ByteTokenizer().decode(stepped.generated).split("\n")[0]
    assert lm.firing().events > 0


def test_baselines_come_from_the_recorded_source_and_are_checked(llama, tmp_path):
    src, ckpt = llama
    manifest = json.loads((ckpt / "spikelm.json").read_text())
    assert manifest["metadata"]["source"] == str(src.resolve())
    other = save_tiny("llama", tmp_path / "other", seed=1)
    with pytest.raises(spikelm.ConfigError, match="not those .* was converted from"):
        evaluate(ckpt, ["spikelm_choice"], source=str(other), limit=2, progress=False)
    result = evaluate(ckpt, ["spikelm_choice"], limit=4, batch_size=2, progress=False)
    assert result.models == ["ann", "w8a8", "spiking"] and result.source == str(src.resolve())


def _cli_error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spikelm: error:")
    return err


def test_bad_input_gets_one_line_errors(demo_ckpt, llama, tmp_path, capsys):
    src, _ = llama
    out = ["--out", str(tmp_path / "e.json")]
    assert "unknown task 'no_such_task'" in _cli_error(
        ["eval", str(demo_ckpt), "--tasks", "no_such_task", *out], capsys
    )
    assert "not a spiking checkpoint" in _cli_error(
        ["eval", str(src), "--tasks", "spikelm_choice", *out], capsys
    )
    assert "unknown baseline 'fp16'" in _cli_error(
        ["eval", str(demo_ckpt), "--tasks", "spikelm_choice", "--baseline", "fp16", *out], capsys
    )
    assert "--limit must be a positive" in _cli_error(
        ["eval", str(demo_ckpt), "--tasks", "spikelm_choice", "--limit", "0", *out], capsys
    )
    assert "no such directory" in _cli_error(
        ["eval", str(demo_ckpt), "--tasks", "spikelm_choice", "--include-path",
         str(tmp_path / "missing"), *out], capsys,
    )  # fmt: skip
    theirs = tmp_path / "theirs.json"
    theirs.write_text("{}")
    assert "did not write" in _cli_error(
        ["eval", str(demo_ckpt), "--tasks", "spikelm_choice", "--out", str(theirs)], capsys
    )
    assert theirs.read_text() == "{}"
    bare = tmp_path / "bare"
    spikelm.save(spikelm.load(demo_ckpt), bare)  # no recorded source
    assert "--source SRC" in _cli_error(
        ["eval", str(bare), "--tasks", "spikelm_choice", *out], capsys
    )
    assert not (tmp_path / "e.json").exists()


def test_a_task_needing_a_download_says_so_offline(demo_ckpt, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_task.yaml").write_text(
        "task: spikelm_hub_task\ndataset_path: spikelm-tests/not-a-dataset\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: ['a', 'b']\ndoc_to_target: 0\nmetric_list:\n  - metric: acc\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "spikelm", "eval", str(demo_ckpt), "--tasks", "spikelm_hub_task",
         "--include-path", str(tasks), "--out", str(tmp_path / "e.json")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("spikelm: error: task 'spikelm_hub_task' needs a download")
    assert "offline" in last and "Traceback" not in run.stderr
    assert not (tmp_path / "e.json").exists()
