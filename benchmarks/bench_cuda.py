"""The CUDA paths on a GPU: one spiking layer and whole-model decode, against dense fp32, bf16, int8.

The CPU benchmark (``bench_backends.py``) times numba; this one times what runs on a GPU, with
the same layers, firing and models:

1. One ``SpikingLinear`` (SpikingBrain's coding: bitwise-bidirectional, T=8, int8 weights, group
   128) at 4096x4096 and 4096x11008, batch 1 and 16, demo firing (the converted demo model's real
   counts) and 90% / 99% sparsity; a ``cold`` row writes 512 MiB (several times the GPU's L2)
   before each timed call. Columns: the layer's forward on backend ``torch_events`` (exact,
   event-driven ``index_add_``), on ``torch`` (dense pseudo-spiking, float32), dense fp32
   ``F.linear``, bf16 ``F.linear``, and W8A8 int8 (``torch._int_mm`` on int8 weights, the
   activation quantized per row in the call, rows padded to 32 as cuBLASLt requires). Each
   exact output is checked against the CPU reference backend (max abs difference printed).
2. Whole-model greedy decode, batch 1, 64 prompt + 64 new tokens: the demo model and the
   1024-wide HybridLM and ``transformers`` Llama of ``bench_backends.py`` (random weights,
   SpikingBrain's recipe, projections fused), the fp32 ANN stepped through its adapter on the GPU
   against the spiking copy under ``simulate(device="cuda")`` on ``torch`` and ``torch_events``;
   the greedy tokens are compared with the CPU run of the same model (numba, or reference where numba does not import).

Times are wall-clock with the GPU synchronised before and after each call (what a caller waits
for): at batch 1 every path here is bound by kernel launches and host synchronisation, not by
the GPU's arithmetic or memory.

    python benchmarks/bench_cuda.py --out benchmarks/results/bench_cuda.txt
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402
from bench_backends import (  # noqa: E402
    WIDE,
    Report,
    ann_decode,
    demo_counts,
    fmt_ms,
    sample_demo,
    sample_sparsity,
    wide_models,
)

from spikelm.backends import get_backend  # noqa: E402
from spikelm.config import SpikeConfig  # noqa: E402
from spikelm.convert import spiking, spiking_layer  # noqa: E402
from spikelm.fidelity import token_batches  # noqa: E402
from spikelm.models import ByteTokenizer, load_demo_model, load_demo_texts  # noqa: E402
from spikelm.simulate import simulate  # noqa: E402

SIZES = ((4096, 4096), (4096, 11008))
BATCHES = (1, 16)
SPARSITIES = (0.90, 0.99)
INT_MM_MIN_ROWS = 32  # cuBLASLt's int8 GEMM wants more than 16 rows
DEVICE = torch.device("cuda")  # --device cpu: a dry run of the script where there is no GPU


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def cpu_exact_backend() -> str:
    """numba where it imports (an image's numba may not support its numpy), else reference."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return "reference"
    return "numba"


CPU_EXACT = cpu_exact_backend()


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def gpu_time(fn: Callable[[], object], reps: int, before: Callable[[], None] | None = None):
    """Seconds per call (GPU synchronised around each), after three warm-up calls."""
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(reps):
        if before is not None:
            before()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def int8_gemm(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | str:
    """W8A8 on the GPU: per-output-channel int8 weights, per-row int8 activations, int32
    ``torch._int_mm``; or why it cannot run here."""
    scale = weight.abs().amax(1).clamp(min=1e-12) / 127
    w_q = torch.round(weight / scale[:, None]).to(torch.int8)  # [out, in]
    w_t = w_q.t()  # [in, out], column-major: the layout cuBLASLt's int8 GEMM takes

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        x_scale = x.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
        x_q = torch.round(x / x_scale).to(torch.int8)
        if rows < INT_MM_MIN_ROWS:
            x_q = F.pad(x_q, (0, 0, 0, INT_MM_MIN_ROWS - rows))
        acc = torch._int_mm(x_q, w_t)[:rows]
        return acc.to(torch.float32) * x_scale * scale

    try:
        run(torch.ones(1, weight.shape[1], device=weight.device))
    except RuntimeError as error:
        return f"torch._int_mm unavailable: {str(error).splitlines()[0]}"
    return run


def layer_section(args, report: Report, pool: torch.Tensor) -> dict:
    config = SpikeConfig()
    flush = torch.empty(512 << 20, dtype=torch.uint8, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    report(
        "ms per call, min/median of the reps; every spiking column is the layer's whole forward "
        "from the float input x (neuron, kernel, epilogue; static threshold V = 0.01 and "
        "x = counts x V, so the neuron fires exactly the sampled counts); 'x fp32' / 'x bf16' / "
        "'x int8' = that baseline's median over torch_events' (>1: the event path is faster); "
        "'diff' = max |torch_events - CPU reference| over the outputs"
    )
    header = (
        f"{'in x out':>11} {'B':>2} {'counts':>6} | {'torch_events':>13} {'torch dense':>13} "
        f"{'fp32 F.linear':>13} {'bf16 F.linear':>13} {'int8 _int_mm':>13} | {'x fp32':>6} "
        f"{'x bf16':>6} {'x int8':>6} | {'diff':>8}"
    )
    key = {}
    for in_f, out_f in SIZES:
        torch.manual_seed(0)
        cpu_layer = spiking_layer(nn.Linear(in_f, out_f, bias=False), config, "bench")
        cpu_layer.dynamic, cpu_layer.threshold = False, torch.tensor(0.01)
        layer = copy.deepcopy(cpu_layer).to(DEVICE)
        weight = layer.dequantized_weight()
        weight_bf16 = weight.to(torch.bfloat16)
        int8 = int8_gemm(weight)
        if isinstance(int8, str):
            report(int8)
        report()
        report(header)
        report("-" * len(header))
        for batch in BATCHES:
            kinds = [("demo", None), ("cold", None)] if batch == 1 else [("demo", None)]
            kinds += [(f"{int(s * 100)}%", s) for s in SPARSITIES]
            for label, sparsity in kinds:
                if sparsity is None:
                    counts = sample_demo(pool, batch, in_f, gen)
                else:
                    counts = sample_sparsity(sparsity, batch, in_f, config.steps, gen)
                x_cpu = counts * 0.01
                x = x_cpu.to(DEVICE)
                before = flush.zero_ if label == "cold" else None
                times = {}
                with torch.no_grad():
                    for name in ("torch_events", "torch"):
                        layer.backend = name
                        times[name] = gpu_time(functools.partial(layer, x), args.reps, before)
                    layer.backend = "torch_events"
                    exact = layer(x).cpu()
                    cpu_layer.backend = "reference"
                    diff = float((exact - cpu_layer(x_cpu)).abs().max())
                    times["fp32"] = gpu_time(
                        functools.partial(F.linear, x, weight), args.reps, before
                    )
                    bf16 = functools.partial(F.linear, x.to(torch.bfloat16), weight_bf16)
                    times["bf16"] = gpu_time(bf16, args.reps, before)
                    times["int8"] = (
                        gpu_time(functools.partial(int8, x), args.reps, before)
                        if callable(int8)
                        else None
                    )
                med = {k: statistics.median(v) for k, v in times.items() if v}
                ev = med["torch_events"]
                ratios = [
                    med[k] / ev if k in med else float("nan") for k in ("fp32", "bf16", "int8")
                ]
                report(
                    f"{f'{in_f}x{out_f}':>11} {batch:>2} {label:>6} | "
                    f"{fmt_ms(times['torch_events']):>13} {fmt_ms(times['torch']):>13} "
                    f"{fmt_ms(times['fp32']):>13} {fmt_ms(times['bf16']):>13} "
                    f"{fmt_ms(times['int8']):>13} | {ratios[0]:>6.2f} {ratios[1]:>6.2f} "
                    f"{ratios[2]:>6.2f} | {diff:>8.1e}"
                )
                key[(in_f, out_f, batch, label)] = (med, diff)
    del flush
    return key


def decode_section(args, report: Report) -> dict:
    tokenizer = ByteTokenizer()
    calib_text, eval_text = load_demo_texts()
    calib = token_batches(torch.tensor(tokenizer.encode(calib_text)), 256, 4, 8)
    demo_prompt = torch.tensor(tokenizer.encode(eval_text)[: args.prompt_tokens])
    random_prompt = torch.randint(
        0, 256, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)
    )
    models = {"demo model": (load_demo_model(), calib, demo_prompt)}
    for name, model in wide_models().items():
        models[name.replace(" (adapter step)", "")] = (
            model,
            [random_prompt.view(1, -1)],
            random_prompt,
        )
    report(
        f"batch 1, {args.prompt_tokens} prompt + {args.new_tokens} new tokens (greedy), tok/s "
        "median of the reps; 'ANN fp32' = the adapter's step loop on the GPU; 'SNN <backend>' = "
        "spikelm.simulate(device='cuda') on that backend (statistics included); 'same' = every "
        f"GPU run on that backend generates the CPU {CPU_EXACT} run's tokens (torch is float "
        "pseudo-spiking: a count that flips at its rounding boundary can change them)"
    )
    header = (
        f"{'model':<20} {'params':>7} {'ANN fp32':>8} {'SNN torch':>9} {'SNN events':>10} | "
        f"{'x fp32 torch':>12} {'x fp32 events':>13} | {'spk/ch':>6} {'same: torch':>11} "
        f"{'torch_events':>12}"
    )
    report(header)
    report("-" * len(header))
    results = {}
    for name, (ann, batches, prompt) in models.items():
        snn = spiking(copy.deepcopy(ann), SpikeConfig(), batches, progress=False)
        cpu = simulate(snn, prompt, new_tokens=args.new_tokens, backend=CPU_EXACT, progress=False)
        gpu_ann = copy.deepcopy(ann).to(DEVICE)
        gpu_prompt = prompt.to(DEVICE)
        ann_tps = []
        for _ in range(args.decode_reps + 1):
            sync()
            seconds, tokens = ann_decode(gpu_ann, gpu_prompt, args.new_tokens)
            sync()
            ann_tps.append(tokens / seconds)
        tps, same, spc = {}, {}, float("nan")
        for backend in ("torch", "torch_events"):
            runs = [
                simulate(
                    snn,
                    prompt,
                    new_tokens=args.new_tokens,
                    backend=backend,
                    device=DEVICE,
                    progress=False,
                )
                for _ in range(args.decode_reps + 1)
            ]
            tps[backend] = statistics.median(r.tokens / r.seconds for r in runs[1:])
            same[backend] = all(r.generated == cpu.generated for r in runs)
            spc = runs[-1].stats.spikes_per_channel
        snn.cpu()
        a = statistics.median(ann_tps[1:])
        params = sum(p.numel() for p in ann.parameters())
        report(
            f"{name:<20} {params / 1e6:>6.1f}M {a:>8.1f} {tps['torch']:>9.1f} "
            f"{tps['torch_events']:>10.1f} | {tps['torch'] / a:>12.2f} "
            f"{tps['torch_events'] / a:>13.2f} | {spc:>6.3f} {yes(same['torch']):>11} "
            f"{yes(same['torch_events']):>12}"
        )
        results[name] = (a, tps, same)
        del gpu_ann, snn
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per layer case")
    parser.add_argument("--decode-reps", type=int, default=3, help="timed decodes per model")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    args = parser.parse_args()
    args.prompt_tokens, args.new_tokens = 64, 64
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
    get_backend("torch_events", device=DEVICE)
    report = Report()
    report(
        "# bench_cuda: the CUDA paths (torch_events, torch) vs dense fp32, bf16 and int8 on a GPU"
    )
    report(describe_machine())
    if DEVICE.type == "cuda":
        props = torch.cuda.get_device_properties(DEVICE)
        gpu = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} "
            f"SMs, CUDA {torch.version.cuda}"
        )
    else:
        gpu = "none: a dry run on the CPU (--device cpu), not a GPU measurement"
    report(f"# GPU: {gpu}; coding {SpikeConfig().coding}, T=8, k=3")
    wall = time.perf_counter()
    report()
    report("## 1. one spiking linear layer on the GPU")
    pool, demo_stats = demo_counts(SpikeConfig(), 4)
    report(
        f"demo firing: {demo_stats.spikes_per_channel:.3f} spikes/channel, sparsity "
        f"{demo_stats.sparsity:.1%}, silent share {demo_stats.silent_share:.1%}"
    )
    key = layer_section(args, report, pool)
    report()
    report("## 2. whole-model decode on the GPU")
    decode = decode_section(args, report)
    report()
    report("## key ratios")
    for batch, label in ((1, "demo"), (1, "cold"), (16, "demo")):
        med, diff = key[(4096, 4096, batch, label)]
        report(
            f"4096x4096, batch {batch}, demo firing{', caches flushed' if label == 'cold' else ''}: "
            f"torch_events {med['torch_events'] * 1e3:.3f} ms = {med['fp32'] / med['torch_events']:.2f}x "
            f"the speed of fp32 F.linear, {med['bf16'] / med['torch_events']:.2f}x bf16"
            + (f", {med['int8'] / med['torch_events']:.2f}x int8" if "int8" in med else "")
            + f"; torch dense {med['fp32'] / med['torch']:.2f}x fp32; max diff to the CPU "
            f"reference {diff:.1e}"
        )
    for name, (a, tps, same) in decode.items():
        hidden = f", hidden {WIDE['hidden']}" if name != "demo model" else ""
        report(
            f"decode ({name}{hidden}): torch_events {tps['torch_events'] / a:.2f}x, torch "
            f"{tps['torch'] / a:.2f}x the fp32 ANN's tok/s on the GPU; the CPU's tokens: "
            f"torch_events {yes(same['torch_events'])}, torch {yes(same['torch'])}"
        )
    report(f"# wall {time.perf_counter() - wall:.0f} s")
    report.save(args.out)


if __name__ == "__main__":
    main()
