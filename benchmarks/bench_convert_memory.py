"""Peak memory of converting a >= 100M-parameter Llama-style model to spiking form.

A random ``transformers`` Llama (hidden 768, 12 layers, MLP 2048, vocab 32000, untied lm_head:
134M parameters, 536 MB in float32) is saved as safetensors into a temporary directory by a
subprocess of its own. Each measurement then runs in a fresh subprocess, so that its resident set
size says what that one job needed:

    import torch, transformers, spikelm                     -> baseline RSS
    spikelm.hf.load_causal_lm(dir)                          -> the float model, S bytes
    spikelm.spiking(model, SpikeConfig(...), calib_batches) -> prepare, calibrate, convert
    spikelm.save(model, out_dir)                            -> the spiking checkpoint

The peak RSS of each phase is read from ``VmHWM`` in ``/proc/self/status``; the high-water mark is
reset between phases by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so every phase
peak is its own. The reported figure is the peak over load + convert + save, above the baseline,
divided by S: the target is < 1.5. The same is measured for the command line
(``python -m spikelm convert DIR --out OUT --calib-ids FILE``): in-process through a wrapper that
resets the high-water mark after imports, and from outside with ``/usr/bin/time -v`` (whose
maximum RSS includes the imports; a bare ``python -c "import ..."`` is measured the same way as
its baseline).

    python benchmarks/bench_convert_memory.py --out benchmarks/results/bench_convert_memory.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6
CLI_IMPORTS = "import torch, transformers, spikelm, spikelm.hf, spikelm.workflow, spikelm.cli"


# --------------------------------------------------------------------------- /proc readers


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss() -> int:
    """Current resident set size, bytes."""
    return _status_kb("VmRSS") * 1024


def hwm() -> int:
    """Peak resident set size since start or since the last :func:`reset_hwm`, bytes."""
    return _status_kb("VmHWM") * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False if the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return hwm() <= rss() + 64 * 1024


# --------------------------------------------------------------------------- subprocess jobs


def build_model(directory: str, hidden: int, layers: int, intermediate: int, vocab: int) -> dict:
    """Save a random Llama to ``directory`` (safetensors); its parameter count and fp32 bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    linear = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head"
    )
    model.save_pretrained(directory, safe_serialization=True)
    return {"params": params, "bytes": 4 * params, "converted_params": linear}


def measure(directory: str, out_dir: str, threshold: str, batches: int, seq: int) -> dict:
    """load -> spiking -> save in this (fresh) process, with RSS and peak per phase."""
    import torch
    import transformers  # noqa: F401 - part of the baseline

    import spikelm
    import spikelm.hf
    from spikelm.config import SpikeConfig

    torch.set_grad_enabled(False)
    generator = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, 32000, (1, seq), generator=generator) for _ in range(batches)]
    result: dict = {"threshold": threshold, "can_reset": reset_hwm()}
    baseline = rss()
    result["baseline"] = baseline
    phases = {}

    def phase(name: str, start: float) -> None:
        phases[name] = {"peak": hwm() - baseline, "after": rss() - baseline, "s": time.perf_counter() - start}
        reset_hwm()

    start = time.perf_counter()
    model, _tokenizer = spikelm.hf.load_causal_lm(directory)
    phase("load", start)
    result["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    calib = [batch.clamp_max(model.config.vocab_size - 1) for batch in calib]

    start = time.perf_counter()
    model = spikelm.spiking(model, SpikeConfig(threshold=threshold), calib, progress=False)
    phase("convert", start)
    result["converted_bytes"] = sum(
        t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
    )

    start = time.perf_counter()
    spikelm.save(model, out_dir)
    phase("save", start)
    result["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(out_dir).iterdir())
    result["phases"] = phases
    result["peak"] = max(p["peak"] for p in phases.values())
    return result


def cli_wrapper(argv: list[str]) -> dict:
    """``spikelm.cli.main(argv)`` in this process, peak RSS above the post-import baseline."""
    exec(CLI_IMPORTS, {})
    import spikelm.cli

    can_reset = reset_hwm()
    baseline = rss()
    start = time.perf_counter()
    code = spikelm.cli.main(argv)
    seconds = time.perf_counter() - start
    return {
        "code": code,
        "can_reset": can_reset,
        "baseline": baseline,
        "peak": hwm() - baseline,
        "after": rss() - baseline,
        "s": seconds,
    }


def _job(*args: str) -> dict:
    """Run this script with ``--job ARGS`` in a fresh interpreter; its JSON answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--job", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_v(command: list[str]) -> tuple[int, float, str]:
    """``(max RSS bytes, wall seconds, output)`` of ``command`` under ``/usr/bin/time -v``."""
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return kb * 1024, 3600 * hours + 60 * minutes + seconds, done.stdout


# --------------------------------------------------------------------------- the report


def report(args: argparse.Namespace) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import describe_machine

    work = Path(tempfile.mkdtemp(prefix="spikelm-bench-mem-"))
    try:
        model_dir = work / "llama"
        info = _job(
            "build", str(model_dir), str(args.hidden), str(args.layers), str(args.intermediate),
            str(args.vocab),
        )
        size = info["bytes"]
        runs = []
        for threshold in ("dynamic", "static_channel"):
            runs.append(
                _job(
                    "measure", str(model_dir), str(work / f"out-{threshold}"), threshold,
                    str(args.calib_batches), str(args.seq_len),
                )
            )
            shutil.rmtree(work / f"out-{threshold}")

        ids_file = work / "calib_ids.txt"
        with open(ids_file, "w", encoding="ascii") as ids:
            import random

            rng = random.Random(0)
            for _ in range(args.calib_batches):
                ids.write(" ".join(str(rng.randrange(args.vocab)) for _ in range(args.seq_len)) + "\n")
        cli_args = [
            "convert", str(model_dir), "--out", str(work / "out-cli"), "--calib-ids", str(ids_file),
            "--seq-len", str(args.seq_len), "--calib-windows", str(args.calib_batches),
        ]
        wrapped = _job("cli", json.dumps(cli_args))
        shutil.rmtree(work / "out-cli")
        time_v = shutil.which("time") and Path("/usr/bin/time").exists()
        if time_v:
            imports_rss, _, _ = _time_v([sys.executable, "-c", CLI_IMPORTS])
            cli_rss, cli_wall, _ = _time_v([sys.executable, "-m", "spikelm", *cli_args])
            shutil.rmtree(work / "out-cli")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        describe_machine(),
        "# spikelm conversion memory: peak RSS (VmHWM) above the post-import baseline, fresh process per row",
        f"# model: random LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, MLP "
        f"{args.intermediate}, vocab {args.vocab}, untied lm_head: {info['params']:,} parameters "
        f"({info['converted_params']:,} in converted nn.Linear layers)",
        f"# S = model size in float32 = {size / MB:.1f} MB; calibration: {args.calib_batches} "
        f"batches of [1, {args.seq_len}] random token ids (CLI: --seq-len {args.seq_len} "
        f"--calib-windows {args.calib_batches}); target: peak above baseline < 1.5 S",
        f"# VmHWM reset between phases via /proc/self/clear_refs: {'yes' if runs[0]['can_reset'] else 'NO'}",
        "",
    ]
    header = (
        f"{'job':<34} {'base MB':>8} {'load pk':>8} {'conv pk':>8} {'save pk':>8} "
        f"{'peak MB':>8} {'peak/S':>7} {'after MB':>9} {'conv s':>7} {'total s':>8} {'met':>4}"
    )
    lines += [header, "-" * len(header)]
    for run in runs:
        phases = run["phases"]
        ratio = run["peak"] / size
        lines.append(
            f"{'API spiking(), ' + run['threshold']:<34} {run['baseline'] / MB:>8.0f} "
            f"{phases['load']['peak'] / MB:>8.0f} {phases['convert']['peak'] / MB:>8.0f} "
            f"{phases['save']['peak'] / MB:>8.0f} {run['peak'] / MB:>8.0f} {ratio:>7.2f} "
            f"{phases['save']['after'] / MB:>9.0f} {phases['convert']['s']:>7.1f} "
            f"{sum(p['s'] for p in phases.values()):>8.1f} {'yes' if ratio < 1.5 else 'NO':>4}"
        )
    ratio = wrapped["peak"] / size
    lines.append(
        f"{'CLI spikelm convert (in-process)':<34} {wrapped['baseline'] / MB:>8.0f} {'-':>8} "
        f"{'-':>8} {'-':>8} {wrapped['peak'] / MB:>8.0f} {ratio:>7.2f} "
        f"{wrapped['after'] / MB:>9.0f} {'-':>7} {wrapped['s']:>8.1f} "
        f"{'yes' if ratio < 1.5 else 'NO':>4}"
    )
    if time_v:
        above = cli_rss - imports_rss
        lines.append(
            f"{'CLI python -m spikelm (time -v)':<34} {imports_rss / MB:>8.0f} {'-':>8} {'-':>8} "
            f"{'-':>8} {above / MB:>8.0f} {above / size:>7.2f} {'-':>9} {'-':>7} "
            f"{cli_wall:>8.1f} {'yes' if above / size < 1.5 else 'NO':>4}"
        )
    lines += [
        "",
        "base MB: RSS after imports (time -v row: max RSS of a bare `python -c \"" + CLI_IMPORTS + "\"`).",
        "load/conv/save pk: peak RSS of that phase above the baseline; peak MB: the largest of them;",
        "after MB: RSS above baseline once the checkpoint is saved (float embeddings + lm_head + int8",
        "layers + whatever the allocator kept). Sizes in the model after conversion / on disk:",
    ]
    for run in runs:
        lines.append(
            f"  {run['threshold']}: S = {run['model_bytes'] / MB:.1f} MB loaded -> "
            f"{run['converted_bytes'] / MB:.1f} MB of parameters and buffers after conversion; "
            f"checkpoint {run['checkpoint_bytes'] / MB:.1f} MB; phase after-RSS "
            + ", ".join(f"{k} {v['after'] / MB:.0f}" for k, v in run["phases"].items())
            + " MB"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--job":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "build":
            answer = build_model(rest[0], *(int(v) for v in rest[1:]))
        elif kind == "measure":
            answer = measure(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        else:
            answer = cli_wrapper(json.loads(rest[0]))
        sys.stdout.flush()
        print(json.dumps(answer))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    text = report(args) + f"\n# benchmark wall time {time.perf_counter() - start:.0f} s"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
