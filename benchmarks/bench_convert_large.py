"""A 7B-shaped checkpoint on this machine: streaming conversion (dynamic and calibrated),
loading, a short decode.

1. ``write``: a Llama-2-7B-shaped checkpoint (vocab 32000, hidden 4096, MLP 11008, 32 layers,
   32 heads, untied head: 6.74B parameters) with random bf16 weights (normal, std 0.02) is written
   as ~1 GB safetensors shards with an index, one shard in memory at a time, into a temporary
   directory (``--workdir``; about 13.5 GB of source and 7 GB of output on disk, one output at
   a time).
2. ``convert``: ``spikelm convert SRC --out OUT --stream`` (SpikingBrain's recipe: dynamic k=3,
   bitwise-bidirectional T=8, int8 weights in groups of 128).
3. ``load``: ``spikelm.load(OUT)``: the skeleton's float weights are never written, the spiking
   layers' tensors are the shards' memory maps (read when first used), the dense tensors are
   copied shard by shard.
4. ``decode``: ``spikelm.simulate`` of 4 prompt + 5 new tokens (8 forward passes) on backend
   ``numba``, after loading.
5. ``convert_calib``: the same conversion with calibrated thresholds, block by block
   (``--stream --calib-ids``: 8 windows of 128 random token ids; static per-tensor thresholds at
   the 99.9th percentile with outlier migration, ``smooth_alpha`` 0.5).
6. with ``--recipe``: ``--stream --recipe spikelm`` on the same windows, the neurons learned
   block by block (150 steps of one block and the head per block: run it with few ``--layers``
   on a small machine; the random weights make its fidelity meaningless, its time and memory
   are what it measures).

Each phase runs in a subprocess of its own and reports its peak RSS (``ru_maxrss``) and that of a
bare ``import torch, transformers, spikelm`` (the baseline); wall times and disk use are printed.
Everything written is deleted at the end. ``--layers N`` runs the same shapes with fewer layers.

    python benchmarks/bench_convert_large.py --out benchmarks/results/bench_convert_large.txt
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _machine import describe_machine  # noqa: E402

LLAMA_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
SHARD_BYTES = 1 << 30
TARGETS_GB = {"convert": 4.0, "convert_calib": 6.0, "convert_recipe": 6.0, "load": 3.0}
# load: over the int8 size
CALIB_WINDOWS, CALIB_LEN = 8, 128
CALIB_OPTIONS = ["--threshold", "static_tensor", "--rule", "percentile", "--smooth-alpha", "0.5"]

WRITE = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from transformers import LlamaConfig
from spikelm.hf import meta_model
out, shape, shard_bytes = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
LlamaConfig(**shape).save_pretrained(out)
names = {n: tuple(t.shape) for n, t in meta_model(out).state_dict().items()}
gen = torch.Generator().manual_seed(0)
shards, pending, size = [], {}, 0
def flush():
    global pending, size
    shards.append(list(pending)); number = len(shards)
    save_file(pending, str(out / f"part-{number}.safetensors"), metadata={"format": "pt"})
    pending, size = {}, 0
for name, shape in names.items():
    tensor = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    if "norm" in name:
        tensor = torch.ones(shape, dtype=torch.bfloat16)
    if pending and size + tensor.numel() * 2 > shard_bytes:
        flush()
    pending[name] = tensor; size += tensor.numel() * 2
flush()
count, weight_map = len(shards), {}
for number, names_in in enumerate(shards, start=1):
    final = f"model-{number:05d}-of-{count:05d}.safetensors"
    (out / f"part-{number}.safetensors").rename(out / final)
    weight_map.update(dict.fromkeys(names_in, final))
(out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
print(sum(p.numel() for p in meta_model(out).parameters()))
"""

PEAK = """
import resource
print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
for line in open('/proc/self/status'):
    if line.startswith(('RssAnon:', 'RssFile:')):
        print(line.split(':')[0].upper()[3:] + '_KB', line.split()[1])
"""
BASELINE = f"import torch, transformers, spikelm, spikelm.hf, spikelm.cli\n{PEAK}"
CONVERT = f"""
import sys
from spikelm.cli import main
code = main(["convert", sys.argv[1], "--out", sys.argv[2], "--stream", *sys.argv[3:]])
{PEAK}
sys.exit(code)
"""
LOAD = f"""
import sys, time, torch, spikelm
start = time.perf_counter()
model = spikelm.load(sys.argv[1])
print("SECONDS", time.perf_counter() - start)
{PEAK}
"""
DECODE = f"""
import sys, time, torch, spikelm
from spikelm.simulate import simulate
model = spikelm.load(sys.argv[1])
prompt = torch.tensor([1, 306, 4966, 278])
result = simulate(model, prompt, new_tokens=5, backend="numba", progress=False)
print("SECONDS", result.seconds, "TOKENS", result.tokens, "COMPILE", result.compile_seconds)
print("SPIKES", result.stats.spikes_per_channel)
{PEAK}
"""


def run(script: str, *args: str) -> tuple[float, dict[str, float], str]:
    """Run ``script`` in a fresh interpreter: (wall seconds, its KEY value lines, stdout)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"phase failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    values = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        for key, value in zip(parts[::2], parts[1::2], strict=False):
            if key.isupper():
                values[key] = float(value)
    return wall, values, result.stdout


def resident(values: dict[str, float]) -> str:
    """The phase's memory at its end: anonymous (its own) and file-backed (mapped shards and
    libraries: page cache, reclaimable), in GB."""
    return f" {values['ANON_KB'] / 2**20:>8.2f} {values['FILE_KB'] / 2**20:>8.2f}"


def limit_of(phase: str) -> str:
    return f"<= {TARGETS_GB[phase]:.1f} GB"


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (temporary)")
    parser.add_argument("--layers", type=int, default=LLAMA_7B["num_hidden_layers"])
    parser.add_argument("--recipe", action="store_true", help="also stream --recipe spikelm")
    args = parser.parse_args()
    shape = {**LLAMA_7B, "num_hidden_layers": args.layers}
    lines: list[str] = []

    def report(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    report(
        "# bench_convert_large: a 7B-shaped checkpoint streamed to spiking form (dynamic and "
        "calibrated thresholds), loaded, decoded"
    )
    report(describe_machine())
    work = Path(tempfile.mkdtemp(prefix="spikelm-large-", dir=args.workdir))
    try:
        source, output = work / "src", work / "out"
        wall, _, stdout = run(WRITE, str(source), json.dumps(shape), str(SHARD_BYTES))
        params = int(stdout.split()[-1])
        report(
            f"# Llama-2-7B shapes, {args.layers} layers: {params / 1e9:.2f}B parameters; source "
            f"{disk_bytes(source) / 1e9:.1f} GB of bf16 shards, written in {wall:.0f} s"
        )
        _, base, _ = run(BASELINE)
        base_gb = base["PEAK_KB"] / 2**20
        report(f"# baseline (import torch, transformers, spikelm): {base_gb:.2f} GB RSS")
        report()
        report(
            f"{'phase':<34} {'wall s':>7} {'peak GB':>8} {'over base':>9} {'target':>14} "
            f"{'anon GB':>8} {'file GB':>8}"
        )
        wall, conv, _ = run(CONVERT, str(source), str(output))
        peak = conv["PEAK_KB"] / 2**20
        written = disk_bytes(output)
        report(
            f"{'convert --stream (dynamic k=3)':<34} {wall:>7.0f} {peak:>8.2f} "
            f"{peak - base_gb:>9.2f} {limit_of('convert'):>14}{resident(conv)}"
        )
        wall, load, _ = run(LOAD, str(output))
        peak = load["PEAK_KB"] / 2**20
        limit = written / 2**30 + TARGETS_GB["load"]
        report(
            f"{'load (spikelm.load)':<34} {wall:>7.0f} {peak:>8.2f} {peak - base_gb:>9.2f} "
            f"{f'<= {limit:.1f} GB':>14}{resident(load)}"
        )
        wall, dec, _ = run(DECODE, str(output))
        peak = dec["PEAK_KB"] / 2**20
        report(
            f"{'load + decode 8 tokens (numba)':<34} {wall:>7.0f} {peak:>8.2f} "
            f"{peak - base_gb:>9.2f} {'-':>14}{resident(dec)}"
        )
        shards = len(list(output.glob("*.safetensors")))
        shutil.rmtree(output)  # the calibrated output takes its place on disk
        ids = work / "calib-ids.txt"
        count = CALIB_WINDOWS * CALIB_LEN
        random_ids = torch.randint(
            shape["vocab_size"], (count,), generator=torch.Generator().manual_seed(0)
        )
        ids.write_text(" ".join(map(str, random_ids.tolist())))
        calib_args = ["--calib-ids", str(ids), "--seq-len", str(CALIB_LEN),
                      "--calib-windows", str(CALIB_WINDOWS), *CALIB_OPTIONS]  # fmt: skip
        wall, calib, _ = run(CONVERT, str(source), str(output), *calib_args)
        peak = calib["PEAK_KB"] / 2**20
        calib_written = disk_bytes(output)
        report(
            f"{'convert --stream --calib-ids':<34} {wall:>7.0f} {peak:>8.2f} "
            f"{peak - base_gb:>9.2f} {limit_of('convert_calib'):>14}{resident(calib)}"
        )
        if args.recipe:
            shutil.rmtree(output)
            recipe_args = ["--calib-ids", str(ids), "--seq-len", str(CALIB_LEN),
                           "--calib-windows", str(CALIB_WINDOWS), "--recipe", "spikelm"]  # fmt: skip
            wall, recipe, _ = run(CONVERT, str(source), str(output), *recipe_args)
            peak = recipe["PEAK_KB"] / 2**20
            report(
                f"{'convert --stream --recipe spikelm':<34} {wall:>7.0f} {peak:>8.2f} "
                f"{peak - base_gb:>9.2f} {limit_of('convert_recipe'):>14}{resident(recipe)}"
            )
        report()
        report(
            f"output: {written / 1e9:.2f} GB on disk ({shards} "
            f"shards); load {load['SECONDS']:.0f} s; decode {dec['TOKENS']:.0f} forward passes "
            f"in {dec['SECONDS']:.1f} s ({dec['TOKENS'] / dec['SECONDS']:.2f} tok/s, numba "
            f"kernels {dec['COMPILE']:.1f} s before), {dec['SPIKES']:.3f} spikes per channel"
        )
        report(
            "anon/file: resident memory at the end of the phase; spikelm.load maps the int8 codes "
            "from the shards (file pages: shared, reclaimable, read when first used), and at "
            "decode numba's kernel layout, built per layer on its first call, is a second "
            "(anonymous) copy of them"
        )
        report(
            f"calibrated: {CALIB_WINDOWS} windows of {CALIB_LEN} random token ids through one "
            f"decoder block at a time (float32), {' '.join(CALIB_OPTIONS)}; "
            f"{calib_written / 1e9:.2f} GB on disk"
        )
        if args.recipe:
            report(
                "recipe: the same windows, dynamic k=3, the spikelm recipe's neurons learned "
                "block by block (150 steps per block, each one window through one block, the "
                "final norm and the head, forward and backward)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
