"""Peak memory of ``spikelm simulate --record`` as the input grows from 1,000 to 10,000 tokens.

The model is the shipped demo model when ``spikelm/models/demo/`` exists, else a random
:class:`~spikelm.models.HybridLM` of the same shape (default ``HybridConfig``: 6 layers, hidden
128, ~1M parameters, byte vocabulary), converted with the default ``SpikeConfig`` (SpikingBrain's
recipe: bitwise-bidirectional, T = 8, k = 3, dynamic thresholds) and saved with ``spikelm.save``
into a temporary directory. The input is the demo eval split (or the repository's README and
docs), repeated to 10,000 bytes = tokens.

Each run is a fresh subprocess that imports spikelm, resets the resident-set high-water mark
(writing ``5`` to ``/proc/self/clear_refs``), notes its RSS (the baseline), then runs
``spikelm simulate CKPT --text FILE --max-tokens N --record FILE.h5 --threads 1`` through
``spikelm.cli.main`` (default backend), recording every spiking layer, and reads ``VmHWM`` from
``/proc/self/status``. A sampler thread also reads ``VmRSS`` every 0.2 s, which gives the RSS
over the course of the longest run. Memory is flat when the peak increase from 1,000 to 10,000
tokens is small next to the recording's dense size (``tokens x T x N`` int8 summed over the
recorded layers), which is what an implementation holding the recording in memory would need.

    python benchmarks/bench_simulate_memory.py --out benchmarks/results/bench_simulate_memory.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MB = 1e6
TOKEN_COUNTS = (1000, 3000, 10000)

_CHILD = textwrap.dedent(
    """
    import contextlib, io, json, sys, threading, time

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    import h5py, torch, tqdm  # noqa: F401  (imports count in the baseline)
    import spikelm
    import spikelm.simulate
    from spikelm.cli import main

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = status("VmRSS")
    samples, done = [], threading.Event()

    def sample():
        start = time.perf_counter()
        while not done.wait(0.2):
            samples.append((time.perf_counter() - start, status("VmRSS")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(sys.argv[1:])
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    print(json.dumps({"code": code, "baseline": baseline, "peak": status("VmHWM"),
                      "wall": wall, "stdout": out.getvalue(), "samples": samples}))
    """
)


def _model_dir(root: Path) -> tuple[Path, str, str]:
    """Convert and save the benchmark model; returns (checkpoint, description, text)."""
    import torch

    import spikelm
    from spikelm.models import HybridConfig, HybridLM, demo_dir

    if (demo_dir() / "config.json").is_file():
        from spikelm.models import load_demo_model, load_demo_texts

        model, text = load_demo_model(), load_demo_texts()[1]
        what = "the shipped demo model"
    else:
        torch.manual_seed(0)
        model = HybridLM(HybridConfig()).eval()
        text = "\n".join(
            p.read_text(encoding="utf-8")
            for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
            if p.is_file()
        )
        what = "a random HybridLM (no spikelm/models/demo/ yet)"
    params = model.num_parameters()
    cfg = model.config
    what += (
        f": {cfg.n_layers} layers {'/'.join(cfg.layer_types)}, hidden {cfg.hidden_size}, "
        f"{params / 1e6:.2f}M parameters"
    )
    spiking = spikelm.convert(spikelm.prepare(model, spikelm.SpikeConfig()))
    ckpt = spikelm.save(spiking, root / "ckpt")
    while len(text.encode("utf-8")) < max(TOKEN_COUNTS):
        text += "\n" + text
    return ckpt, what, text


def _run(ckpt: Path, text: Path, tokens: int, record: Path | None, threads: int) -> dict:
    argv = ["simulate", str(ckpt), "--text", str(text), "--max-tokens", str(tokens)]
    argv += ["--threads", str(threads)]
    if record is not None:
        argv += ["--record", str(record)]
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}  # numba's pool, like torch's
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, timeout=1200, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"child failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if data["code"] != 0:
        raise SystemExit(f"spikelm simulate exited {data['code']}: {result.stderr.strip()}")
    if record is not None:
        from spikelm.spikes import SpikeReader

        with SpikeReader(record) as reader:
            infos = [reader.info(layer) for layer in reader.layers]
        assert {info.n_tokens for info in infos} == {tokens}, infos
        data["layers"] = len(infos)
        data["events"] = sum(info.n_events for info in infos)
        data["dense"] = sum(info.n_tokens * info.steps * info.n_neurons for info in infos)
        data["file"] = record.stat().st_size
        record.unlink()
    return data


def _throughput(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("throughput:"))
    return line.split(":", 1)[1].split("(")[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        root = Path(tmp)
        ckpt, what, text = _model_dir(root)
        text_file = root / "input.txt"
        text_file.write_text(text, encoding="utf-8")
        runs = {"no record": _run(ckpt, text_file, TOKEN_COUNTS[0], None, args.threads)}
        for tokens in TOKEN_COUNTS:
            runs[tokens] = _run(ckpt, text_file, tokens, root / "rec.h5", args.threads)

    lines = [
        "spikelm simulate --record: peak memory vs tokens (benchmarks/bench_simulate_memory.py)",
        describe_machine(),
        f"# model: {what}; SpikeConfig() (bitwise_bidirectional, T=8, k=3, dynamic); "
        f"every spiking layer recorded; default backend (auto); --threads {args.threads} "
        f"(NUMBA_NUM_THREADS={args.threads}); load average {load:.1f} at start (the cores are "
        "shared with other processes, so wall times and throughput are noisy; memory is not)",
        "",
        f"{'tokens':>7} {'record':>7} {'layers':>6} {'events':>12} {'dense MB':>9} "
        f"{'file MB':>8} {'wall s':>7} {'baseline MB':>11} {'peak MB':>8} {'peak-base':>9}  "
        "throughput",
    ]
    for key, run in runs.items():
        tokens = TOKEN_COUNTS[0] if key == "no record" else key
        recorded = key != "no record"
        lines.append(
            f"{tokens:>7} {'yes' if recorded else 'no':>7} "
            f"{run.get('layers', '-')!s:>6} {run.get('events', '-')!s:>12} "
            + (
                f"{run['dense'] / MB:>9.1f} {run['file'] / MB:>8.1f} "
                if recorded
                else f"{'-':>9} {'-':>8} "
            )
            + f"{run['wall']:>7.1f} {run['baseline'] / MB:>11.1f} {run['peak'] / MB:>8.1f} "
            f"{(run['peak'] - run['baseline']) / MB:>9.1f}  {_throughput(run['stdout'])}"
        )
    small, large = runs[TOKEN_COUNTS[0]], runs[TOKEN_COUNTS[-1]]
    growth = (large["peak"] - large["baseline"]) - (small["peak"] - small["baseline"])
    samples = large["samples"]
    tenths = []
    for i in range(1, 11):
        cut = samples[-1][0] * i / 10 if samples else 0
        window = [rss for t, rss in samples if cut - samples[-1][0] / 10 < t <= cut]
        tenths.append(f"{max(window) / MB:.0f}" if window else "-")
    lines += [
        "",
        f"peak increase over baseline, {TOKEN_COUNTS[0]:,} -> {TOKEN_COUNTS[-1]:,} tokens: "
        f"{growth / MB:+.1f} MB, {100 * growth / large['dense']:.1f}% of the "
        f"{TOKEN_COUNTS[-1]:,}-token recording's dense size ({large['dense'] / MB:.0f} MB)",
        f"recording overhead at {TOKEN_COUNTS[0]:,} tokens (peak with vs without --record): "
        f"{(small['peak'] - runs['no record']['peak']) / MB:+.1f} MB",
        f"RSS (MB) in each tenth of the {TOKEN_COUNTS[-1]:,}-token run (0.2 s samples, max): "
        + " ".join(tenths),
        f"total benchmark time {time.perf_counter() - started:.0f} s",
    ]
    report = "\n".join(lines) + "\n"
    emit(report, args.out)


if __name__ == "__main__":
    main()
