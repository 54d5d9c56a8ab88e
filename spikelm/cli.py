"""The ``spikelm`` command line: argparse sub-commands; the only module that prints for a person.

Errors a user can cause print one line, ``spikelm: error: ...``, and exit 1; an unexpected
failure prints one line too and exits 3. ``--debug`` re-raises, showing the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from spikelm import __version__
from spikelm.errors import SpikelmError

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3
OVERWRITE_HELP = "replace an existing spikelm output of the same kind (never anything else)"

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's promise for usage errors too: one line, exit 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"spikelm: error: {self.prog}: {message}\n")


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _parse_token_range(text: str) -> slice:
    """``"a:b"``, ``"a:"`` or ``":b"`` -> ``slice(a, b)`` of tokens."""
    start, sep, stop = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"token range must look like A:B, got {text!r}")
    try:
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"token range must hold integers, got {text!r}") from None


def _cmd_info(args: argparse.Namespace) -> int:
    from spikelm.spikes import SpikeReader

    with SpikeReader(args.file) as reader:
        print(f"{args.file}: spikelm spike recording, format version {reader.attrs['version']}")
        print(f"{'layer':<32} {'neurons':>8} {'T':>4} {'tokens':>8} {'events':>12} {'rate':>8}")
        for layer in reader.layers:
            info = reader.info(layer)
            slots = info.n_tokens * info.steps * info.n_neurons
            rate = info.n_events / slots if slots else 0.0
            print(
                f"{layer:<32} {info.n_neurons:>8} {info.steps:>4} {info.n_tokens:>8} "
                f"{info.n_events:>12} {rate:>8.4f}"
            )
    return 0


def _cmd_raster(args: argparse.Namespace) -> int:
    from spikelm.errors import require_extra
    from spikelm.outputs import check_output

    require_extra("plot", "matplotlib", "spikelm raster")
    check_output(args.out, "plot", overwrite=args.overwrite, sources=[args.file])
    from spikelm.plot import raster
    from spikelm.spikes import SpikeReader

    with SpikeReader(args.file) as reader:
        # all layers by default, less those that recorded no token (nothing to draw)
        layers = args.layer or [n for n in reader.layers if reader.n_tokens(n)] or reader.layers
        trains = {}
        for layer in layers:
            trains[layer] = reader.read(layer, tokens=args.tokens)  # drawn from its events
    path = raster(trains, args.out, title=f"{args.file}")
    print(f"wrote {path}")
    return 0


def _fidelity_table(result) -> str:
    """The fidelity table of a conversion, as text (clamp: the share of spike counts at the
    coding's range, :mod:`spikelm.saturation`; layers over the limit are named below it)."""
    from spikelm.saturation import saturation_note

    header = (
        f"{'model':<18} {'ppl':>9} {'d ppl':>8} {'top-1':>7} {'cos':>7} "
        f"{'fire rate':>9} {'silent':>7} {'spk/ch':>7} {'steps':>5} {'clamp':>7}"
    )
    lines = [header, "-" * len(header)]
    notes = []
    ann = result.scores[0].perplexity
    for score in result.scores:
        stats = score.stats
        firing = (
            f"{stats.firing_rate:>9.4f} {stats.silent_share:>7.3f} "
            f"{stats.spikes_per_channel:>7.3f} {stats.steps_used:>2}/{stats.steps:<2} "
            f"{stats.clipped_share:>7.3%}"
            if stats
            else f"{'-':>9} {'-':>7} {'-':>7} {'-':>5} {'-':>7}"
        )
        lines.append(
            f"{score.name:<18} {score.perplexity:>9.4f} {100 * (score.perplexity / ann - 1):>+7.2f}% "
            f"{score.top1_agreement:>7.4f} {score.logit_cosine:>7.4f} {firing}"
        )
        note = saturation_note(score.layer_stats) if score.layer_stats else None
        if note:
            notes.append(f"{score.name}: {note}")
    config = result.config
    recipe = (
        f"recipe=spikelm (per-layer k and decode gain learned from k={config.k}, spike_weight="
        f"{config.spike_weight}, spike_cost={config.spike_cost}; steps added where counts clamp)"
        if config.recipe == "spikelm"
        else f"recipe={config.recipe}"
    )
    lines.append(
        f"{recipe} coding={config.coding} T={config.steps} k={config.k} "
        f"threshold={config.threshold} weights=int{config.weight_bits}/group {config.group_size}; "
        f"{result.eval_tokens} eval tokens, {result.calib_tokens} calibration tokens"
    )
    return "\n".join(lines + notes)


def _spike_config(args: argparse.Namespace):
    from spikelm.config import SpikeConfig

    defaults = () if args.no_default_keep_dense else SpikeConfig().keep_dense
    keep = (*defaults, *(args.keep_dense or ()))
    return SpikeConfig(
        coding=args.coding,
        steps=args.steps,
        k=args.k,
        threshold=args.threshold,
        rule=args.rule,
        percentile=args.percentile,
        weight_bits=args.weight_bits,
        group_size=None if args.group_size == 0 else args.group_size,
        smooth_alpha=args.smooth_alpha,
        fisher_power=args.fisher_power,
        spike_cost=args.spike_cost,
        keep_dense=keep,
        recipe=args.recipe,
        spike_weight=args.spike_weight,
        spike_budget=args.spike_budget,
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from spikelm.outputs import check_output
    from spikelm.workflow import convert_model, load_source, token_ids

    config = _spike_config(args)
    if args.stream:
        return _convert_streaming(args, config)
    check_output(args.out, "checkpoint", overwrite=args.overwrite, sources=[args.src])
    model, tokenizer = load_source(args.src, allow_unused_weights=args.allow_unused_weights)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    calib = token_ids(
        tokenizer,
        text_file=args.calib,
        ids_file=args.calib_ids,
        source=args.src,
        what="calib",
        vocab_size=vocab,
    )
    evaluation = token_ids(
        tokenizer,
        text_file=args.eval,
        ids_file=args.eval_ids,
        source=args.src,
        what="eval",
        vocab_size=vocab,
    )
    result = convert_model(
        model,
        config,
        args.out,
        tokenizer=tokenizer,
        calib_ids=calib,
        eval_ids=evaluation,
        seq_len=args.seq_len,
        calib_windows=args.calib_windows,
        eval_windows=args.eval_windows,
        overwrite=args.overwrite,
        source=args.src,
        patterns={"--keep-dense": args.keep_dense or ()},
        fuse=not args.no_fuse,
    )
    if result.scores:
        print(_fidelity_table(result))
    print(f"spiking checkpoint written to {result.out_dir}")
    return 0


def _convert_streaming(args: argparse.Namespace, config) -> int:
    from spikelm.errors import ConfigError
    from spikelm.outputs import check_output
    from spikelm.streaming import convert_streaming
    from spikelm.workflow import calibration_windows, token_ids

    given = [
        option
        for option, value in (
            ("--eval", args.eval),
            ("--eval-ids", args.eval_ids),
            ("--allow-unused-weights", args.allow_unused_weights),
        )
        if value
    ]
    if given:
        raise ConfigError(
            f"--stream never holds the whole float model: {', '.join(given)} needs it in memory "
            "(convert without --stream, or evaluate the checkpoint afterwards with spikelm report)"
        )
    check_output(args.out, "checkpoint", overwrite=args.overwrite, sources=[args.src])
    calibration = None
    if args.calib or args.calib_ids:
        from spikelm.hf import load_tokenizer, meta_model

        src = os.path.expanduser(args.src)
        vocab = meta_model(src).config.vocab_size  # checks that src is a model directory
        ids = token_ids(
            load_tokenizer(src) if args.calib else None,
            text_file=args.calib,
            ids_file=args.calib_ids,
            source=args.src,
            what="calib",
            vocab_size=vocab,
        )
        calibration = calibration_windows(ids, args.seq_len, args.calib_windows)
    out = convert_streaming(
        args.src,
        args.out,
        config,
        calibration=calibration,
        shard_bytes=args.shard_size,
        overwrite=args.overwrite,
        keep_dense_patterns=tuple(args.keep_dense or ()),
    )
    how = "tensor by tensor"
    if calibration:
        learned = ", neurons learned per block" if config.recipe != "spikingbrain" else ""
        how = f"block by block with calibration{learned}"
    print(f"spiking checkpoint written to {out} (streamed {how}, layers not fused)")
    return 0


def _byte_size(text: str) -> int:
    """An argparse type: a size such as ``500MB``, ``2GB`` or a plain number of bytes."""
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "B": 1}
    upper = text.strip().upper()
    unit = next((u for u in units if upper.endswith(u)), "B")
    try:
        value = float(upper[: len(upper) - len(unit)] if upper.endswith(unit) else upper)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 500MB or 2GB, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return int(value * units[unit])


def _cmd_demo(args: argparse.Namespace) -> int:
    from spikelm.workflow import demo

    print(
        "converting the built-in demo model (SpikingBrain recipe: bitwise-bidirectional, T=8, k=3)"
    )
    result = demo(args.out)
    print(_fidelity_table(result))
    print(f"spiking checkpoint written to {result.out_dir}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from spikelm.saturation import saturation_note
    from spikelm.simulate import backend_names
    from spikelm.workflow import simulate_checkpoint

    backend = args.backend or ("auto" if "auto" in backend_names() else None)
    run = simulate_checkpoint(
        args.ckpt,
        text_file=args.text,
        prompt=args.prompt,
        new_tokens=args.tokens,
        max_tokens=args.max_tokens,
        backend=backend,
        device=args.device,
        record=args.record,
        layers=args.layers or ("*",),
        threads=args.threads,
        overwrite=args.overwrite,
    )
    result, stats = run.result, run.result.stats
    print(
        f"simulated {result.tokens} tokens ({result.input_tokens} input, "
        f"{len(result.generated)} generated) token by token ({result.family} state), "
        f"backend {result.backend}, device {result.device}"
    )
    print(
        f"throughput: {result.tokens_per_second:.1f} tokens/s, "
        f"{result.events_per_second:,.0f} spike events/s "
        f"({result.events:,} events in {result.seconds:.2f} s"
        + (
            f"; {result.compile_seconds:.2f} s compiling/loading kernels before that"
            if result.compile_seconds
            else ""
        )
        + ")"
    )
    print(
        f"firing rate {stats.firing_rate:.4f}, sparsity {stats.sparsity:.4f}, "
        f"spikes/channel {stats.spikes_per_channel:.3f}, silent share {stats.silent_share:.3f}, "
        f"clamped share {stats.clipped_share:.3%}, steps used {stats.steps_used}/{stats.steps} "
        f"({len(result.layer_stats)} spiking layers)"
    )
    note = saturation_note(result.layer_stats)
    if note:
        print(f"saturation: {note}")
    print(
        "execution paths (layer rows): " + ", ".join(f"{k} {v:,}" for k, v in result.paths.items())
    )
    if result.record is not None:
        print(
            f"recorded {len(result.recorded_layers)} layers x {result.tokens} tokens "
            f"to {result.record}"
        )
    if run.text is not None:
        print(f"generated text: {run.text}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from spikelm.outputs import check_output
    from spikelm.report import DEFAULT_MODELS
    from spikelm.workflow import report

    if args.format == "html":
        from spikelm.errors import require_extra

        require_extra("plot", "matplotlib", "spikelm report --format html")
    if args.out is not None:
        check_output(args.out, "report", overwrite=args.overwrite, sources=[args.src])
    result = report(
        args.src,
        models=args.energy or DEFAULT_MODELS,
        text_file=args.text,
        prompt=args.prompt,
        new_tokens=args.tokens,
        max_tokens=args.max_tokens,
        backend=args.backend,
        sweep_file=args.sweep,
    )
    text = _report_text(result, args.format)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from spikelm.fileio import atomic_file

    with atomic_file(args.out) as staging:
        staging.write_text(text, encoding="utf-8")
    print(f"wrote {args.format} report to {args.out}")
    return 0


def _report_text(result, form: str) -> str:
    import json

    from spikelm.report.formats import to_data, to_markdown, to_table

    if form == "json":
        return json.dumps(to_data(result), indent=1) + "\n"
    if form == "md":
        return to_markdown(result)
    if form == "html":
        from spikelm.report.html import to_html

        return to_html(result)
    return to_table(result)


def _cmd_eval(args: argparse.Namespace) -> int:
    from spikelm.harness.evaluate import evaluate
    from spikelm.outputs import check_output

    check_output(args.out, "eval", overwrite=args.overwrite, sources=[args.ckpt])
    baselines = [] if args.baseline == "none" else [b for b in args.baseline.split(",") if b]
    result = evaluate(
        args.ckpt,
        [t for t in args.tasks.split(",") if t],
        include_path=args.include_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        baselines=baselines,
        source=args.source,
        backend=args.backend,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(_eval_table(result))
    import json

    from spikelm.fileio import atomic_file

    with atomic_file(args.out) as staging:
        staging.write_text(json.dumps(result.to_data(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _eval_table(result) -> str:
    """One line per (task, metric): each model's score, the spiking score's standard error (as
    lm-eval computes it), spiking minus ANN, spikes per channel."""
    names = {"ann": "ANN", "w8a8": "W8A8", "spiking": "spiking"}
    width = max([24, *(len(r.task) for r in result.rows)])
    header = f"{'task':<{width}} {'metric':<16}" + "".join(
        f" {names[m]:>10}" for m in result.models
    ) + f" {'± se':>7} {'delta':>18} {'spk/ch':>7}"  # fmt: skip
    lines = [header, "-" * len(header)]
    for row in result.rows:
        cells = "".join(f" {row.scores.get(m, float('nan')):>10.4f}" for m in result.models)
        delta = "-" if row.delta is None else f"{row.delta:+.4f}"
        if row.delta is not None and row.scores.get("ann"):
            delta += f" ({100 * row.delta / abs(row.scores['ann']):+.1f}%)"
        spikes = "-" if row.spikes_per_channel is None else f"{row.spikes_per_channel:.3f}"
        error = row.stderr.get("spiking")
        error = "-" if error is None else f"{error:.4f}"
        lines.append(
            f"{row.task:<{width}} {row.metric:<16}{cells} {error:>7} {delta:>18} {spikes:>7}"
        )
    limit = f", first {result.limit:g} documents per task" if result.limit else ""
    shots = "" if result.num_fewshot is None else f", {result.num_fewshot}-shot"
    lines.append(f"backend {result.backend}{limit}{shots}; baselines from {result.source or '-'}")
    return "\n".join(lines)


def _cmd_export(args: argparse.Namespace) -> int:
    import spikelm
    from spikelm.outputs import check_output

    check_output(args.out, args.format, overwrite=args.overwrite, sources=[args.ckpt])
    model = spikelm.load(args.ckpt)
    if args.format == "nir":
        from spikelm.export.nir import export_nir

        print(export_nir(model, args.out, layers=args.layers or ("*",)).summary())
        return 0
    from spikelm.export.onnx import export_layer_onnx, export_onnx
    from spikelm.layers import spiking_layers

    if not args.layers:
        print(export_onnx(model, args.out, opset=args.opset).summary())
        return 0
    from spikelm.targets import select_layers

    chosen = select_layers(spiking_layers(model), args.layers, "--layers")
    out = Path(args.out)
    for name, layer in chosen.items():  # one spiking-layer graph per layer
        target = out.with_name(f"{out.stem}.{name}{out.suffix}")
        check_output(target, "onnx", overwrite=args.overwrite, sources=[args.ckpt])
        print(export_layer_onnx(layer, target, opset=args.opset).summary())
    return 0


def _add_conversion_options(parser: argparse.ArgumentParser) -> None:
    from spikelm.config import RECIPES
    from spikelm.encoders import CODERS

    group = parser.add_argument_group("spiking configuration")
    group.add_argument(
        "--recipe",
        default="spikingbrain",
        choices=list(RECIPES),
        help="spikingbrain: SpikingBrain's recipe (default); spikelm: adds steps where counts "
        "saturate and learns per-layer thresholds and decode gains from the calibration data "
        "(needs --calib; with --stream, learned block by block)",
    )
    group.add_argument("--coding", default="bitwise_bidirectional", choices=sorted(CODERS))
    group.add_argument("--steps", type=_count(1), default=8, help="time steps T (default 8)")
    group.add_argument("--k", type=float, default=3.0, help="threshold divisor k (default 3)")
    group.add_argument(
        "--threshold", default="dynamic", choices=["dynamic", "static_tensor", "static_channel"]
    )
    group.add_argument("--rule", default="mean_abs", choices=["mean_abs", "percentile", "max"])
    group.add_argument("--percentile", type=float, default=99.9)
    group.add_argument("--weight-bits", type=int, default=8)
    group.add_argument("--group-size", type=int, default=128, help="0 = one scale per row")
    group.add_argument(
        "--smooth-alpha", type=float, default=None, help="outlier migration strength"
    )
    group.add_argument(
        "--fisher-power",
        type=float,
        default=None,
        help="loss-aware thresholds V ~ F^-p from the Fisher of the next-token loss (try 0.5)",
    )
    group.add_argument(
        "--spike-cost",
        type=float,
        default=None,
        help="error-aware rounding cost (0 = nearest; default: the recipe's, 0 or 0.3)",
    )
    group.add_argument(
        "--spike-weight",
        type=float,
        default=0.04,
        help="spikelm recipe: weight of spikes against fidelity in what it learns (default 0.04)",
    )
    group.add_argument(
        "--spike-budget",
        type=float,
        default=None,
        help="spikelm recipe: spikes per channel to aim at instead of a fixed --spike-weight",
    )
    group.add_argument(
        "--keep-dense",
        action="append",
        metavar="PATTERN",
        help="layer pattern kept dense, added to the defaults (repeatable; must match a layer)",
    )
    group.add_argument(
        "--no-default-keep-dense",
        action="store_true",
        help="drop the default keep-dense patterns (lm_head, *.lm_head, head)",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--calib", help="calibration text file")
    data.add_argument("--calib-ids", help="calibration token ids (.npy or text of integers)")
    data.add_argument("--eval", help="evaluation text file (prints the fidelity table)")
    data.add_argument("--eval-ids", help="evaluation token ids (.npy or text of integers)")
    data.add_argument("--seq-len", type=_count(2), default=256, help="tokens per window")
    data.add_argument("--calib-windows", type=_count(1), default=32)
    data.add_argument("--eval-windows", type=_count(1), default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spikelm",
        description="Turn language models into spiking neural networks; run, measure, export.",
    )
    parser.add_argument("--version", action="version", version=f"spikelm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="convert the built-in model and print its fidelity")
    demo.add_argument("--out", default="spikelm-demo-out", help="checkpoint directory to write")
    demo.set_defaults(handler=_cmd_demo)

    convert = commands.add_parser("convert", help="convert a checkpoint to spiking form")
    convert.add_argument("src", help="model directory (spikelm or Hugging Face) or hub id")
    convert.add_argument("--out", required=True, help="spiking checkpoint directory to write")
    convert.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    convert.add_argument(
        "--allow-unused-weights",
        action="store_true",
        help="accept checkpoint tensors the architecture does not use (default: an error)",
    )
    convert.add_argument(
        "--no-fuse",
        action="store_true",
        help="keep every projection a separate spiking layer (default: layers that read one "
        "input and share their neuron are fused into one, e.g. 'attn.{q_proj,k_proj,v_proj}')",
    )
    convert.add_argument(
        "--stream",
        action="store_true",
        help="convert a local safetensors checkpoint tensor by tensor (memory: one tensor and one "
        "output shard, not the model; with --calib, calibrated (and with --recipe spikelm, "
        "learned) block by block: one block and the calibration activations; layers not fused)",
    )
    convert.add_argument(
        "--shard-size",
        type=_byte_size,
        default="1GB",
        metavar="SIZE",
        help="with --stream: largest output shard, e.g. 500MB (default 1GB)",
    )
    _add_conversion_options(convert)
    convert.set_defaults(handler=_cmd_convert)

    info = commands.add_parser("info", help="summarise a spike recording (HDF5)")
    info.add_argument("file", help="spike recording written by spikelm (.h5)")
    info.set_defaults(handler=_cmd_info)

    raster = commands.add_parser("raster", help="draw a time x neuron raster of a recording (PNG)")
    raster.add_argument("file", help="spike recording written by spikelm (.h5)")
    raster.add_argument("--layer", action="append", help="layer to draw (repeatable; default all)")
    raster.add_argument(
        "--tokens",
        type=_parse_token_range,
        default=slice(0, 1),
        help="token range A:B (default 0:1)",
    )
    raster.add_argument("--out", required=True, help="PNG file to write")
    raster.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    raster.set_defaults(handler=_cmd_raster)

    simulate = commands.add_parser(
        "simulate", help="run a spiking checkpoint token by token; throughput, firing, recording"
    )
    simulate.add_argument("ckpt", metavar="CKPT", help="spiking checkpoint directory")
    source = simulate.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", metavar="FILE", help="text file fed token by token")
    source.add_argument("--prompt", metavar="STR", help="prompt to continue")
    simulate.add_argument(
        "--tokens",
        type=_count(0),
        default=None,
        metavar="N",
        help="new tokens to generate greedily (default 0 with --text, 32 with --prompt)",
    )
    simulate.add_argument(
        "--max-tokens",
        type=_count(1),
        default=None,
        metavar="N",
        help="use only the first N input tokens",
    )
    simulate.add_argument("--backend", default=None, help="spiking backend (default auto)")
    simulate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    simulate.add_argument(
        "--threads",
        type=_count(1),
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's; 1 is often fastest for small models)",
    )
    simulate.add_argument(
        "--record", metavar="FILE.h5", help="stream spike trains to this HDF5 file"
    )
    simulate.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    simulate.add_argument(
        "--layers",
        action="append",
        metavar="PATTERN",
        help="fnmatch pattern of layers to record (repeatable; default all)",
    )
    simulate.set_defaults(handler=_cmd_simulate)

    report = commands.add_parser(
        "report", help="energy and sparsity of a spiking checkpoint's run or of a recording"
    )
    report.add_argument("src", metavar="SRC", help="spiking checkpoint directory or recording .h5")
    given = report.add_mutually_exclusive_group()
    given.add_argument("--text", metavar="FILE", help="text file fed token by token")
    given.add_argument("--prompt", metavar="STR", help="prompt to continue")
    report.add_argument("--tokens", type=_count(0), default=None, metavar="N",
                        help="new tokens to generate (default 0 with --text, 32 with --prompt)")  # fmt: skip
    report.add_argument("--max-tokens", type=_count(1), default=None, metavar="N",
                        help="use only the first N input tokens")  # fmt: skip
    report.add_argument("--backend", default=None, help="spiking backend (default the model's)")
    report.add_argument(
        "--energy",
        action="append",
        metavar="MODEL|PROFILE.json",
        help="energy model name or hardware profile file (repeatable; default spikingbrain, "
        "horowitz45, lemaire; known: spikingbrain, horowitz45[-int8|-fp16|-fp32], lemaire, "
        "loihi, truenorth, spinnaker2, odin, darwin3)",
    )
    report.add_argument("--format", default="table", choices=["table", "json", "md", "html"])
    report.add_argument("--sweep", metavar="FILE.json", help="k sweep for the trade-off plot")
    report.add_argument("--out", metavar="FILE", help="write the report here (default: stdout)")
    report.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    report.set_defaults(handler=_cmd_report)

    evaluation = commands.add_parser(
        "eval",
        help="lm-evaluation-harness tasks on a spiking checkpoint beside its ANN and W8A8",
        description="Runs lm-eval tasks on the spiking checkpoint and on baselines rebuilt from "
        "the model it was converted from; prints one table and writes JSON. Offline tasks: "
        "spikelm_choice, spikelm_text (the demo model's held-out text).",
    )
    evaluation.add_argument("ckpt", metavar="CKPT", help="spiking checkpoint directory")
    evaluation.add_argument("--tasks", required=True, metavar="LIST",
                            help="comma-separated lm-eval task or group names")  # fmt: skip
    evaluation.add_argument("--include-path", metavar="DIR",
                            help="a directory of your own lm-eval task files")  # fmt: skip
    evaluation.add_argument("--limit", type=float, default=None, metavar="N",
                            help="first N documents per task (a fraction if below 1)")  # fmt: skip
    evaluation.add_argument("--num-fewshot", type=_count(0), default=None, metavar="N",
                            help="examples before each question (default: each task's own)")  # fmt: skip
    evaluation.add_argument("--baseline", default="ann,w8a8", metavar="LIST",
                            help="baselines beside the spiking model: ann, w8a8, or none "
                            "(default ann,w8a8)")  # fmt: skip
    evaluation.add_argument("--source", metavar="SRC",
                            help="the model the checkpoint was converted from (default: the one "
                            "its manifest records)")  # fmt: skip
    evaluation.add_argument("--backend", default="auto", help="spiking backend (default auto)")
    evaluation.add_argument("--batch-size", type=_count(1), default=8, metavar="N")
    evaluation.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluation.add_argument("--out", default="spikelm-eval.json", metavar="FILE.json",
                            help="write the results here (default spikelm-eval.json)")  # fmt: skip
    evaluation.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    evaluation.set_defaults(handler=_cmd_eval)

    export = commands.add_parser("export", help="export a spiking checkpoint to ONNX or NIR")
    export.add_argument("ckpt", metavar="CKPT", help="spiking checkpoint directory")
    export.add_argument("--format", required=True, choices=["onnx", "nir"])
    export.add_argument("--out", required=True, metavar="PATH", help="file to write")
    export.add_argument(
        "--layers",
        action="append",
        metavar="PATTERN",
        help="spiking layers to export (repeatable; NIR: the projections in the file; ONNX: one "
        "spiking-layer graph per layer, PATH's stem + '.<layer>' instead of the whole model)",
    )
    export.add_argument("--opset", type=_count(1), default=18, help="ONNX opset (default 18)")
    export.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    export.set_defaults(handler=_cmd_export)
    return parser


@contextlib.contextmanager
def _library_warnings(shown: bool) -> Iterator[None]:
    """Hide the libraries' warnings unless ``shown`` (``--debug``): transformers' log warnings
    (e.g. an optional fast kernel not installed) and Python's deprecation warnings (e.g.
    transformers' renamed keywords), which are for spikelm's developers, not its users.

    transformers' through its environment variable, which it reads when first imported (the
    commands import it lazily); both are restored afterwards, so a caller of :func:`main` keeps
    its environment and warning filters.
    """
    key = "TRANSFORMERS_VERBOSITY"
    previous = os.environ.get(key)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        if not shown:
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            if previous is None:
                os.environ[key] = "error"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(key, None)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """spikelm's own warnings (e.g. saturation) as one line on stderr; others as Python shows
    them."""
    from spikelm.saturation import SaturationWarning

    if issubclass(category, SaturationWarning):
        print(f"spikelm: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every partial output is cleaned up on the way out."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; SIGINT and SIGTERM stop it within a step, removing partial files."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        # a shell starting spikelm in the background ignores SIGINT for it; `kill -INT` must work
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return int(done.code or 0)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        with _library_warnings(shown=args.debug):
            return handler(args)
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, _Terminated)
        print(f"spikelm: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SpikelmError as error:
        if args.debug:
            raise
        print(f"spikelm: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # noqa: BLE001 - the CLI's promise is one line, not a traceback
        if args.debug:
            raise
        print(
            f"spikelm: internal error: {type(error).__name__}: {error} (rerun with --debug)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
