"""Fidelity per spike: perplexity against mean spikes per channel, recipe against recipe.

Models: the demo model (shipped) and two ``transformers`` families of the tests (Llama, Qwen2),
small byte-level models trained in this run on the demo corpus' training split
(``benchmarks/_tiny_lms.py``). Evaluation text is the demo eval split, which neither training,
calibration nor threshold learning sees.

Recipes (``SpikeConfig(recipe=...)``), at equal coding (bitwise-bidirectional, T=8, int8 weights,
group 128):
  - ``spikingbrain``: dynamic per-token threshold mean|x|/k, one k for every layer, swept;
  - ``spikelm``: the same conversion, then per-layer steps where counts saturate and per-layer k
    and decode gain learned against the ANN's next-token distribution with error-aware rounding
    (spike_cost 0.3), its knob ``spike_weight`` swept (the same grid and settings on every model);
  - ``spikelm, streamed`` (transformers models): the same recipe as ``convert --stream`` runs
    it on the saved checkpoint, learned block by block (``spikelm.blockwise``), unfused;
  - on the demo model, for reference, the best earlier post-hoc recipes: error-aware rounding
    alone and Fisher-weighted static thresholds.
Spikes per channel are counted over the neurons of the model as converted, two ways:
  - unfused (``fuse=False``): one neuron per projection, every projection's input train
    counted, as SpikingBrain counts them; every recipe, the earlier ones too (their per-layer
    divisors cannot fuse);
  - fused (``spikelm convert``'s default): projections that read one input share one neuron,
    whose train is counted once, as a chip would send it once to all of them; the two main
    recipes (``spikelm`` then learns one k and one gain per shared input).
For each recipe: the fewest spikes per channel within +1% perplexity of the ANN (linear
interpolation along the sweep), and its ratio to ``spikingbrain``'s counted the same way.

Steps: both recipes at their defaults (k=3; spike_weight=0.04) with T = 8, 6, 5: perplexity,
spikes, the steps the counts used and the share of counts clamped at the range (never silent).
Cost: conversion time and peak memory (VmHWM) of each recipe on the demo model and, with
``--large``, on a 100M-parameter Llama (random weights), in memory and streamed.

    python benchmarks/bench_fidelity.py --large --out benchmarks/results/bench_fidelity.txt \
        --plot benchmarks/results/fidelity_per_spike.png
"""

from __future__ import annotations

import argparse
import copy
import gc
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, emit  # noqa: E402
from _tiny_lms import FAMILIES, train_tiny  # noqa: E402

import spikelm  # noqa: E402
from spikelm.adapters import adapter_for  # noqa: E402
from spikelm.config import SpikeConfig  # noqa: E402
from spikelm.convert import spiking  # noqa: E402
from spikelm.fidelity import compare, token_batches  # noqa: E402
from spikelm.layers import spiking_layers  # noqa: E402
from spikelm.models import ByteTokenizer, load_demo_model, load_demo_texts  # noqa: E402
from spikelm.streaming import convert_streaming  # noqa: E402

BUDGET = 1.01
SWEEPS: dict[str, tuple[str, tuple[float, ...], dict]] = {
    # label: (swept field, values, other fields)
    "spikingbrain": ("k", (1.5, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0), {}),
    "spikelm": ("spike_weight", (0.02, 0.035, 0.04, 0.045, 0.05, 0.065), {"recipe": "spikelm"}),
}
STREAMED = {"spikelm, streamed": SWEEPS["spikelm"]}
"""transformers models only: the spikelm recipe as ``convert --stream`` runs it, block by block."""
DEMO_ONLY = {
    "error-aware rounding (cost .3)": ("k", (3.0, 4.0), {"spike_cost": 0.3}),
    "Fisher static (p=1/2)": ("k", (2.0, 2.5, 3.0), {"threshold": "static_tensor", "fisher_power": 0.5}),
}  # fmt: skip
STEPS = (8, 6, 5)
Point = tuple[float, float, float, int, int, float]  # value, ppl, spikes, used, T, clamped


def _texts(args) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    tokenizer = ByteTokenizer()
    calib_text, eval_text = load_demo_texts()
    calib = token_batches(torch.tensor(tokenizer.encode(calib_text)), 256, 4, args.calib_windows)
    evaluation = token_batches(torch.tensor(tokenizer.encode(eval_text)), 256, 8, args.eval_windows)
    return calib, evaluation


def _score(
    ann: nn.Module, config: SpikeConfig, calib, evaluation, fuse: bool = False
) -> tuple[float, Point]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saturation is in the table's clamp column
        snn = spiking(copy.deepcopy(ann), config, calib, progress=False, fuse=fuse)
    return _stats_point(ann, snn, evaluation)


def _streamed(source: Path, calib) -> Callable[[SpikeConfig], nn.Module]:
    """Converts the checkpoint ``source`` with ``convert_streaming`` and loads the result."""

    def convert(config: SpikeConfig) -> nn.Module:
        out = source.parent / "streamed"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert_streaming(source, out, config, calibration=calib, overwrite=out.exists(),
                              progress=False)  # fmt: skip
        return spikelm.load(out)

    return convert


def _stats_point(ann: nn.Module, snn: nn.Module, evaluation) -> tuple[float, Point]:
    reference, scored = compare(ann, {"spiking": snn}, evaluation)
    stats = scored.stats
    top = max(layer.steps for layer in spiking_layers(snn).values())
    point = (0.0, scored.perplexity, stats.spikes_per_channel, stats.steps_used, top,
             stats.clipped_share)  # fmt: skip
    return reference.perplexity, point


def sweep(
    ann: nn.Module,
    recipes: dict,
    calib,
    evaluation,
    fuse: bool = False,
    convert: Callable[[SpikeConfig], nn.Module] | None = None,
) -> tuple[float, dict[str, list]]:
    """``convert``: how a config becomes the spiking model (default: :func:`_score`'s in-memory
    conversion of ``ann``)."""
    curves: dict[str, list[Point]] = {}
    ann_ppl = float("nan")
    for label, (field, values, options) in recipes.items():
        curves[label] = []
        for value in values:
            config = SpikeConfig(**{field: value}, **options)
            if convert is None:
                ann_ppl, point = _score(ann, config, calib, evaluation, fuse)
            else:
                ann_ppl, point = _stats_point(ann, convert(config), evaluation)
            curves[label].append((value, *point[1:]))
    return ann_ppl, curves


def spikes_at_budget(points: list[Point], limit: float) -> float | None:
    """Fewest spikes/channel with ppl <= limit, interpolating linearly along the sweep."""
    ordered = sorted(points, key=lambda p: p[2])
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a[1] <= limit:
            return a[2]
        if b[1] <= limit:
            return a[2] + (b[2] - a[2]) * (a[1] - limit) / (a[1] - b[1])
    return ordered[-1][2] if ordered and ordered[-1][1] <= limit else None


def _rows(label: str, ann_ppl: float, curves: dict[str, list[Point]]) -> list[str]:
    lines = [f"### {label}: ANN perplexity {ann_ppl:.4f}, budget (+1%) {ann_ppl * BUDGET:.4f}"]
    header = (f"{'recipe':<32} {'knob':>18} {'ppl':>8} {'d ppl':>8} {'spk/ch':>7} "
              f"{'steps':>5} {'clamp':>7}")  # fmt: skip
    lines += [header, "-" * len(header)]
    for recipe, points in curves.items():
        field = {**SWEEPS, **STREAMED, **DEMO_ONLY}[recipe][0]
        for value, ppl, spikes, used, top, clamped in points:
            lines.append(
                f"{recipe:<32} {field + '=' + format(value, 'g'):>18} {ppl:>8.4f} "
                f"{100 * (ppl / ann_ppl - 1):>+7.2f}% {spikes:>7.3f} {used:>2}/{top:<2} "
                f"{clamped:>7.3%}"
            )
    baseline = spikes_at_budget(curves["spikingbrain"], ann_ppl * BUDGET)
    lines.append("fewest spikes per channel within +1% perplexity (target for spikelm: <= 0.80x):")
    for recipe, points in curves.items():
        need = spikes_at_budget(points, ann_ppl * BUDGET)
        ratio = f"  {need / baseline:.3f}x spikingbrain's" if need and baseline else ""
        shown = f"{need:.3f}" if need is not None else "not reached in the sweep"
        lines.append(f"  {recipe:<32} {shown}{ratio}")
    return lines


def steps_section(ann: nn.Module, calib, evaluation) -> list[str]:
    lines = ["### fewer steps: both recipes at their defaults, T = " + ", ".join(map(str, STEPS))]
    header = (
        f"{'recipe':<14} {'T':>2} {'ppl':>8} {'d ppl':>8} {'spk/ch':>7} {'steps':>5} {'clamp':>7}"
    )
    lines += [header, "-" * len(header)]
    for recipe in ("spikingbrain", "spikelm"):
        for steps in STEPS:
            config = SpikeConfig(recipe=recipe, steps=steps)
            ann_ppl, (_, ppl, spikes, used, top, clamped) = _score(ann, config, calib, evaluation)
            lines.append(
                f"{recipe:<14} {steps:>2} {ppl:>8.4f} {100 * (ppl / ann_ppl - 1):>+7.2f}% "
                f"{spikes:>7.3f} {used:>2}/{top:<2} {clamped:>7.3%}"
            )
    lines.append("(steps: the most the counts used / the most any layer holds; the spikelm recipe "
                 "gives a layer more steps where its counts clamp)")  # fmt: skip
    return lines


def _vm_hwm_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def cost_section(models: dict[str, tuple[nn.Module, list]], workdir: Path) -> list[str]:
    lines = ["### cost of a conversion (calibration, recipe, saturation check; one thread)"]
    header = (f"{'model':<26} {'params':>8} {'recipe':<18} {'seconds':>8} {'peak MiB':>9} "
              f"{'+ MiB':>7}")  # fmt: skip
    lines += [header, "-" * len(header)]
    for name, (model, calib) in models.items():
        params = sum(p.numel() for p in model.parameters())
        ways = {recipe: _in_memory(model, calib) for recipe in ("spikingbrain", "spikelm")}
        if adapter_for(model).streams:  # a transformers family that converts tensor by tensor
            source = workdir / "cost" / "src"
            model.save_pretrained(source)
            ways["spikelm, streamed"] = _streamed(source, calib)
        for label, convert in ways.items():
            recipe = label.split(",")[0]
            gc.collect()
            _reset_peak()
            held = _vm_hwm_mib()
            start = time.perf_counter()
            snn = convert(SpikeConfig(recipe=recipe))
            seconds = time.perf_counter() - start
            peak = _vm_hwm_mib()
            del snn
            lines.append(f"{name:<26} {params / 1e6:>7.1f}M {label:<18} {seconds:>8.1f} "
                         f"{peak:>9.0f} {peak - held:>7.0f}")  # fmt: skip
    lines.append("(peak: process VmHWM during the conversion; the process holds the float model "
                 "given throughout. In memory, the conversion adds its copy being converted and, "
                 "for spikelm, the reference copy it learns against; streamed, it reads the "
                 "saved checkpoint one block at a time (its load included). + MiB: above the "
                 "RSS before it)")  # fmt: skip
    return lines


def _in_memory(model: nn.Module, calib) -> Callable[[SpikeConfig], nn.Module]:
    def convert(config: SpikeConfig) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spiking(copy.deepcopy(model), config, calib, progress=False)

    return convert


def _large_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                         max_position_embeddings=512)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def plot(results: dict[str, tuple[float, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2))
    for ax, (label, (ann_ppl, curves)) in zip(axes, results.items(), strict=True):
        for recipe, points in curves.items():
            points = sorted(points, key=lambda p: p[2])
            ax.plot([p[2] for p in points], [p[1] for p in points], marker="o", label=recipe)
        ax.axhline(ann_ppl, color="black", linewidth=0.8, label="ANN fp32")
        ax.axhline(ann_ppl * BUDGET, color="grey", linestyle="--", linewidth=0.8, label="ANN +1%")
        ax.set_ylim(ann_ppl * 0.995, ann_ppl * 1.05)
        ax.set_xlabel("mean spikes per channel")
        ax.set_ylabel("perplexity (demo eval split)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Fidelity per spike: bitwise-bidirectional, T=8, int8 weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def keep(lines: list[str], section: list[str]) -> None:
    """Add ``section`` to the report, and show it on stderr as soon as it is measured."""
    lines.extend(section)
    print("\n".join(section), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-windows", type=int, default=64)
    parser.add_argument(
        "--eval-windows",
        type=int,
        default=None,
        help="evaluation windows of 256 tokens (default: the whole eval split, 88; with 40 the "
        "interpolated spike ratio moved by up to ~0.04 between settings that differ by noise)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large", action="store_true", help="also the 100M-parameter cost row")
    parser.add_argument("--out", help="write the table here too")
    parser.add_argument("--plot", help="write the perplexity-vs-spikes plot (PNG) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    calib, evaluation = _texts(args)
    demo = load_demo_model()
    models: dict[str, nn.Module] = {"demo model (HybridLM, 1.1M)": demo}
    trained = {}
    for family in FAMILIES:
        model, seconds = train_tiny(family)
        models[f"transformers {family} (trained here)"] = model
        trained[family] = seconds
    results, lines = {}, [describe_machine()]
    lines.append(
        f"# calibration {len(calib)} batches of 4 x 256 tokens (calib split), evaluation "
        f"{sum(b.shape[0] for b in evaluation)} windows of 256 tokens (eval split); "
        + ", ".join(f"{f} trained in {s:.0f} s" for f, s in trained.items())
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench_fidelity-"))
    for label, model in models.items():
        recipes = {**SWEEPS, **(DEMO_ONLY if model is demo else {})}
        ann_ppl, curves = sweep(model, recipes, calib, evaluation)
        if model is not demo:  # a transformers checkpoint: the recipe streamed as well
            source = workdir / label.split()[1] / "src"
            model.save_pretrained(source)
            _, streamed = sweep(
                model, STREAMED, calib, evaluation, convert=_streamed(source, calib)
            )
            curves.update(streamed)
        results[label] = (ann_ppl, curves)
        keep(lines, ["", *_rows(f"{label}, unfused", ann_ppl, curves)])
        _, fused = sweep(model, SWEEPS, calib, evaluation, fuse=True)
        keep(lines, ["", *_rows(f"{label}, fused (shared inputs: one neuron)", ann_ppl, fused)])
    keep(lines, ["", *steps_section(demo, calib, evaluation)])
    cost_models = {"demo model": (demo, calib)}
    if args.large:
        cost_models["Llama 100M (random)"] = (_large_llama(), [b[:, :128] for b in calib[:4]])
    keep(lines, ["", *cost_section(cost_models, workdir)])
    shutil.rmtree(workdir)
    lines.append(f"# wall {time.perf_counter() - start:.0f} s")
    emit("\n".join(lines), args.out)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
