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
own (calibration ends inside ``spiking()``: a forward hook marks the last batch). The
figure that counts is the peak over load + calibrate + convert + save, above the baseline, divided
by S; the target is < 1.5. RSS counts both heap memory (``RssAnon``) and resident pages of mapped
files (``RssFile``): ``transformers`` memory-maps the safetensors file, so the float weights show
up as file pages once calibration has read them.

API rows: dynamic and static_channel thresholds calibrated on 4 x [1, 128] tokens, and dynamic on
the calibration shape of the command line (8 x [4, 256]). CLI row: ``python -m spikelm convert DIR
--out OUT --calib-ids FILE`` with its defaults (``--seq-len 256 --calib-windows 32``), measured from
outside with ``/usr/bin/time -v`` (or, without it, ``ru_maxrss`` of a wrapper's child); its maximum
RSS includes the imports, so a bare ``python -c "import ..."`` measured the same way is its
baseline.

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


def measure(
    directory: str, out_dir: str, threshold: str, batches: int, batch_size: int, seq: int
) -> dict:
    """load -> spiking -> save in this (fresh) process: RSS, peak and time of every phase."""
    import torch
    import transformers  # noqa: F401 - part of the baseline

    import spikelm
    import spikelm.hf
    from spikelm.config import SpikeConfig

    torch.set_grad_enabled(False)
    generator = torch.Generator().manual_seed(0)
    calib = [
        torch.randint(0, 32000, (batch_size, seq), generator=generator) for _ in range(batches)
    ]
    result: dict = {"threshold": threshold, "calib": f"{batches}x[{batch_size},{seq}]"}
    result["can_reset"] = reset_hwm()
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

    def last_forward(_module, _args, _output) -> None:  # marks the end of calibration
        seen[0] += 1
        if seen[0] == len(calib):
            phase("calibrate")

    model, _tokenizer = spikelm.hf.load_causal_lm(directory)
    phase("load")
    result["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    calib = [batch.clamp_max(model.config.vocab_size - 1) for batch in calib]
    clock[0] = time.perf_counter()
    hook = model.register_forward_hook(last_forward)
    model = spikelm.spiking(model, SpikeConfig(threshold=threshold), calib, progress=False)
    hook.remove()
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


def _job(*args: str) -> dict:
    """Run this script with ``--job ARGS`` in a fresh interpreter; its JSON answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--job", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_rss(command: list[str]) -> tuple[int, float]:
    """``(max RSS bytes, wall seconds)`` of ``command``: ``/usr/bin/time -v``, else a wrapper."""
    if Path("/usr/bin/time").is_file():
        done = subprocess.run(
            ["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
        hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
        return kb * 1024, 3600 * hours + 60 * minutes + seconds
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "time.perf_counter() - t, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=False
    )
    code, kb, seconds = done.stderr.strip().splitlines()[-1].split()
    if code != "0":
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return int(kb) * 1024, float(seconds)


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
        cli_batches = -(-args.cli_windows // 4)  # the CLI's windows, 4 per batch
        for threshold, batches, batch_size, seq in (
            ("dynamic", args.calib_batches, 1, args.seq_len),
            ("static_channel", args.calib_batches, 1, args.seq_len),
            ("dynamic", cli_batches, 4, args.cli_seq_len),
        ):
            out = work / "out-api"
            shape = (batches, batch_size, seq)
            runs.append(_job("measure", str(model_dir), str(out), threshold, *map(str, shape)))
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
        imports_rss, _ = _max_rss([sys.executable, "-c", CLI_IMPORTS])
        cli_rss, cli_wall = _max_rss([sys.executable, "-m", "spikelm", *cli_args])
        timed = (imports_rss, cli_rss, cli_wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _table(args, info, runs, timed, describe_machine())


def _table(args, info, runs, timed, machine: str) -> str:
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
        "# API rows: spikelm.hf.load_causal_lm -> spikelm.spiking(SpikeConfig(threshold=...)) "
        "on N x [B, L] random token ids -> spikelm.save",
        f"# CLI row: python -m spikelm convert DIR --out OUT --calib-ids FILE --seq-len "
        f"{args.cli_seq_len} --calib-windows {args.cli_windows} "
        f"({args.cli_seq_len * args.cli_windows} calibration tokens), max RSS from "
        + ("/usr/bin/time -v" if Path("/usr/bin/time").is_file() else "a wrapper's ru_maxrss"),
        "",
    ]
    header = (
        f"{'job':<36} {'base':>6} {'load':>6} {'calib':>6} {'conv':>6} {'save':>6} "
        f"{'peak':>6} {'peak/S':>6} {'after':>6} {'anon':>6} {'file':>6} "
        f"{'cal s':>6} {'conv s':>6} {'all s':>6} {'<1.5S':>5}"
    )
    lines += [header, "-" * len(header)]
    for run in runs:
        phases = run["phases"]
        save = phases["save"]
        lines.append(
            f"{'API ' + run['threshold'] + ' ' + run['calib']:<36} {run['baseline'] / MB:>6.0f} "
            + " ".join(f"{phases[name]['peak'] / MB:>6.0f}" for name in PHASES)
            + f" {run['peak'] / MB:>6.0f} {run['peak'] / size:>6.2f} {save['after'] / MB:>6.0f} "
            f"{save['anon'] / MB:>6.0f} {save['file'] / MB:>6.0f} "
            f"{phases['calibrate']['s']:>6.1f} {phases['convert']['s']:>6.1f} "
            f"{sum(p['s'] for p in phases.values()):>6.1f} {_met(run['peak'] / size):>5}"
        )
    imports_rss, cli_rss, cli_wall = timed
    above = cli_rss - imports_rss
    lines.append(
        f"{'CLI spikelm convert':<36} {imports_rss / MB:>6.0f} "
        + " ".join(f"{'-':>6}" for _ in PHASES)
        + f" {above / MB:>6.0f} {above / size:>6.2f} "
        + " ".join(f"{'-':>6}" for _ in range(5))
        + f" {cli_wall:>6.1f} {_met(above / size):>5}"
    )
    lines += [
        "",
        "MB throughout. base: RSS after the imports (CLI row: max RSS of a bare python -c "
        f'"{CLI_IMPORTS}").',
        "The CLI row's peak is its max RSS minus that baseline.",
        "load/calib/conv/save: peak RSS during that phase, above base; peak: the largest; peak/S.",
        "after: RSS above base once saved, split into anon (heap) and file (resident pages of the",
        "mmap'd safetensors file, which stays mapped while any loaded tensor is alive).",
        "cal s / conv s / all s: seconds calibrating, converting, and in all (CLI: the whole "
        "command, imports included).",
        f"The {cli_batches}x[4,{args.cli_seq_len}] row feeds the CLI's calibration windows through the "
        "API in 4-window batches: the activation memory of a calibration batch grows with B x L.",
    ]
    for run in runs:
        phases = run["phases"]
        lines.append(
            f"{run['threshold']} {run['calib']}: {run['model_bytes'] / MB:.1f} MB of parameters loaded -> "
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
            answer = measure(rest[0], rest[1], rest[2], *(int(v) for v in rest[3:]))
        else:
            raise SystemExit(f"unknown job {kind!r}")
        sys.stdout.flush()
        print(json.dumps(answer))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--calib-batches", type=int, default=4, help="API rows: N batches [1, L]")
    parser.add_argument("--seq-len", type=int, default=128, help="API rows: L")
    parser.add_argument("--cli-seq-len", type=int, default=256, help="CLI --seq-len (its default)")
    parser.add_argument(
        "--cli-windows", type=int, default=32, help="CLI --calib-windows (its default)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    text = report(args) + f"\n# benchmark wall time {time.perf_counter() - start:.0f} s"
    from _machine import emit

    emit(text, args.out)


if __name__ == "__main__":
    main()
