"""Peak memory of converting a >= 100M-parameter Llama-style model to spiking form.

A random ``transformers`` Llama (hidden 768, 12 layers, MLP 2048, vocab 32000, untied lm_head:
134M parameters, S = 536 MB in float32) is saved as safetensors into a temporary directory by a
subprocess of its own. Each measurement then runs in a fresh subprocess, so that its resident set
size says what that one job needed:

    import torch, transformers, spikelm                     -> baseline RSS
    spikelm.hf.load_causal_lm(dir)                          -> phase "load"
    spikelm.spiking(model, SpikeConfig(...), calib_batches) -> phases "calibrate" and "convert"
    spikelm.save(model, out_dir)                            -> phase "save"

Peaks are read from ``VmHWM`` in ``/proc/self/status``; the high-water mark is reset at the end of
every phase by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so each phase peak is its
own (calibration ends inside ``spiking()``: its ``run`` callback marks the last batch). The
figure that counts is the peak over load + calibrate + convert + save, above the baseline, divided
by S; the target is < 1.5. RSS counts both heap memory (``RssAnon``) and resident pages of mapped
files (``RssFile``): ``transformers`` memory-maps the safetensors file, so the float weights show
up as file pages once calibration has read them. The command line
(``python -m spikelm convert DIR --out OUT --calib-ids FILE``, default ``--seq-len 256
--calib-windows 32``) is measured twice: in-process through a wrapper that resets the high-water
mark after the imports, and from outside with ``/usr/bin/time -v`` (whose maximum RSS includes the
imports; a bare ``python -c "import ..."`` measured the same way is its baseline).

    python benchmarks/bench_convert_memory.py --out benchmarks/results/bench_convert_memory.txt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6
TARGET = 1.5
CLI_IMPORTS = "import torch, transformers, spikelm, spikelm.hf, spikelm.workflow, spikelm.cli"
PHASES = ("load", "calibrate", "convert", "save")

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


def anon_file() -> tuple[int, int]:
    """``(RssAnon, RssFile)`` bytes: heap memory, and resident pages of mapped files."""
    return _status_kb("RssAnon") * 1024, _status_kb("RssFile") * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False if the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return hwm() <= rss() + 256 * 1024


# --------------------------------------------------------------------------- subprocess jobs


def build_model(directory: str, hidden: int, layers: int, intermediate: int, vocab: int) -> dict:
    """Save a random Llama to ``directory`` (safetensors); its parameter counts."""
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
    converted = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    model.save_pretrained(directory)
    return {"params": params, "bytes": 4 * params, "converted_params": converted}


def measure(directory: str, out_dir: str, threshold: str, batches: int, seq: int) -> dict:
    """load -> spiking -> save in this (fresh) process: RSS, peak and time of every phase."""
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
    result["baseline_anon"], result["baseline_file"] = anon_file()
    phases: dict[str, dict] = {}
    clock = [time.perf_counter()]

    def phase(name: str) -> None:
        anon, mapped = anon_file()
        phases[name] = {
            "peak": hwm() - baseline,
            "after": rss() - baseline,
            "anon": anon - result["baseline_anon"],
            "file": mapped - result["baseline_file"],
            "s": time.perf_counter() - clock[0],
        }
        reset_hwm()
        clock[0] = time.perf_counter()

    seen = [0]

    def run(model, batch) -> None:  # spiking()'s default run, marking the end of calibration
        model(batch)
        seen[0] += 1
        if seen[0] == len(calib):
            phase("calibrate")

    model, _tokenizer = spikelm.hf.load_causal_lm(directory)
    phase("load")
    result["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    calib = [batch.clamp_max(model.config.vocab_size - 1) for batch in calib]
    clock[0] = time.perf_counter()
    model = spikelm.spiking(model, SpikeConfig(threshold=threshold), calib, run, progress=False)
    phase("convert")
    result["converted_bytes"] = sum(
        t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
    )
    spikelm.save(model, out_dir)
    phase("save")
    result["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(out_dir).iterdir())
    result["phases"] = phases
    result["peak"] = max(p["peak"] for p in phases.values())
    return result


def cli_wrapper(argv: list[str]) -> dict:
    """``spikelm.cli.main(argv)`` in this process: peak RSS above the post-import baseline."""
    exec(CLI_IMPORTS, {})
    import spikelm.cli

    can_reset = reset_hwm()
    baseline = rss()
    start = time.perf_counter()
    code = spikelm.cli.main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"spikelm {' '.join(argv)} exited {code}")
    return {"can_reset": can_reset, "baseline": baseline, "peak": hwm() - baseline, "s": seconds}


def _job(*args: str) -> dict:
    """Run this script with ``--job ARGS`` in a fresh interpreter; its JSON answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--job", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_v(command: list[str]) -> tuple[int, float]:
    """``(max RSS bytes, wall seconds)`` of ``command`` under ``/usr/bin/time -v``."""
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return kb * 1024, 3600 * hours + 60 * minutes + seconds


# --------------------------------------------------------------------------- the report


def _met(ratio: float) -> str:
    return "yes" if ratio < TARGET else "NO"


def report(args: argparse.Namespace) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import describe_machine

    work = Path(tempfile.mkdtemp(prefix="spikelm-bench-mem-"))
    try:
        model_dir = work / "llama"
        info = _job(
            "build",
            str(model_dir),
            *(str(v) for v in (args.hidden, args.layers, args.intermediate, args.vocab)),
        )
        runs = []
        for threshold in ("dynamic", "static_channel"):
            out = work / f"out-{threshold}"
            runs.append(
                _job(
                    "measure",
                    str(model_dir),
                    str(out),
                    threshold,
                    str(args.calib_batches),
                    str(args.seq_len),
                )
            )
            shutil.rmtree(out)

        rng = random.Random(0)
        ids_file = work / "calib_ids.txt"
        tokens = args.cli_seq_len * args.cli_windows
        ids_file.write_text(" ".join(str(rng.randrange(args.vocab)) for _ in range(tokens)) + "\n")
        cli_args = [
            "convert",
            str(model_dir),
            "--out",
            str(work / "out-cli"),
            "--calib-ids",
            str(ids_file),
            "--seq-len",
            str(args.cli_seq_len),
            "--calib-windows",
            str(args.cli_windows),
        ]
        wrapped = _job("cli", json.dumps(cli_args))
        shutil.rmtree(work / "out-cli")
        timed = None
        if Path("/usr/bin/time").is_file():
            imports_rss, _ = _time_v([sys.executable, "-c", CLI_IMPORTS])
            cli_rss, cli_wall = _time_v([sys.executable, "-m", "spikelm", *cli_args])
            timed = (imports_rss, cli_rss, cli_wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _table(args, info, runs, wrapped, timed, describe_machine())


def _table(args, info, runs, wrapped, timed, machine: str) -> str:
    size = info["bytes"]
    cli_batches = -(-args.cli_windows // 4)
    lines = [
        machine,
        "# spikelm conversion memory: peak RSS (VmHWM) above the post-import baseline, "
        "one fresh process per row",
        f"# model: random LlamaForCausalLM, hidden {args.hidden}, {args.layers} layers, MLP "
        f"{args.intermediate}, vocab {args.vocab}, untied lm_head: {info['params']:,} parameters "
        f"({info['converted_params']:,} in the nn.Linear layers converted), safetensors",
        f"# S = model size in float32 = {size / MB:.1f} MB; target: peak < {TARGET} S; "
        f"VmHWM reset per phase (/proc/self/clear_refs): {'yes' if runs[0]['can_reset'] else 'NO'}",
        f"# API rows: spikelm.hf.load_causal_lm -> spikelm.spiking(SpikeConfig(threshold=...)) "
        f"on {args.calib_batches} batches [1, {args.seq_len}] -> spikelm.save",
        f"# CLI rows: spikelm convert DIR --out OUT --calib-ids FILE --seq-len {args.cli_seq_len} "
        f"--calib-windows {args.cli_windows} ({cli_batches} batches [4, {args.cli_seq_len}])",
        "",
    ]
    header = (
        f"{'job':<30} {'base':>6} {'load':>6} {'calib':>6} {'conv':>6} {'save':>6} "
        f"{'peak':>6} {'peak/S':>6} {'after':>6} {'anon':>6} {'file':>6} "
        f"{'cal s':>6} {'conv s':>6} {'all s':>6} {'<1.5S':>5}"
    )
    lines += [header, "-" * len(header)]
    for run in runs:
        phases = run["phases"]
        save = phases["save"]
        lines.append(
            f"{'API spiking() ' + run['threshold']:<30} {run['baseline'] / MB:>6.0f} "
            + " ".join(f"{phases[name]['peak'] / MB:>6.0f}" for name in PHASES)
            + f" {run['peak'] / MB:>6.0f} {run['peak'] / size:>6.2f} {save['after'] / MB:>6.0f} "
            f"{save['anon'] / MB:>6.0f} {save['file'] / MB:>6.0f} "
            f"{phases['calibrate']['s']:>6.1f} {phases['convert']['s']:>6.1f} "
            f"{sum(p['s'] for p in phases.values()):>6.1f} {_met(run['peak'] / size):>5}"
        )
    blank = " ".join(f"{'-':>6}" for _ in PHASES)
    lines.append(
        f"{'CLI convert (in-process)':<30} {wrapped['baseline'] / MB:>6.0f} {blank} "
        f"{wrapped['peak'] / MB:>6.0f} {wrapped['peak'] / size:>6.2f} "
        f"{'-':>6} {'-':>6} {'-':>6} {'-':>6} {'-':>6} {wrapped['s']:>6.1f} "
        f"{_met(wrapped['peak'] / size):>5}"
    )
    if timed is not None:
        imports_rss, cli_rss, cli_wall = timed
        above = cli_rss - imports_rss
        lines.append(
            f"{'CLI python -m (time -v)':<30} {imports_rss / MB:>6.0f} {blank} "
            f"{above / MB:>6.0f} {above / size:>6.2f} "
            f"{'-':>6} {'-':>6} {'-':>6} {'-':>6} {'-':>6} {cli_wall:>6.1f} "
            f"{_met(above / size):>5}"
        )
    lines += [
        "",
        "MB throughout. base: RSS after the imports (time -v row: max RSS of a bare python -c "
        f'"{CLI_IMPORTS}").',
        "load/calib/conv/save: peak RSS during that phase, above base; peak: the largest; peak/S.",
        "after: RSS above base once saved, split into anon (heap) and file (resident pages of the",
        "mmap'd safetensors file, which stays mapped while any loaded tensor is alive).",
        "cal s / conv s / all s: seconds calibrating, converting, and in all (CLI: the whole "
        "command, time -v row including the imports).",
    ]
    for run in runs:
        phases = run["phases"]
        lines.append(
            f"{run['threshold']}: {run['model_bytes'] / MB:.1f} MB of parameters loaded -> "
            f"{run['converted_bytes'] / MB:.1f} MB of parameters + buffers converted "
            f"(checkpoint {run['checkpoint_bytes'] / MB:.1f} MB); anon/file MB at the end of "
            + ", ".join(
                f"{name} {phases[name]['anon'] / MB:.0f}/{phases[name]['file'] / MB:.0f}"
                for name in PHASES
            )
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
    parser.add_argument("--calib-batches", type=int, default=4, help="API rows: batches [1, L]")
    parser.add_argument("--seq-len", type=int, default=128, help="API rows: L")
    parser.add_argument("--cli-seq-len", type=int, default=256, help="CLI --seq-len (its default)")
    parser.add_argument(
        "--cli-windows", type=int, default=32, help="CLI --calib-windows (its default)"
    )
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
