"""Decode speed of the exported spiking demo model in onnxruntime, against spikelm's own backends
and against the ANN exported to ONNX the same way, the fp32 ANN in torch and the same ANN with
int8 linear layers (torch's dynamic quantization), in one run.

    python benchmarks/bench_export.py --out benchmarks/results/bench_export.txt

Greedy decode, batch 1: a prompt fed token by token, then new tokens; tokens/s over the whole
loop, the best of ``--reps`` runs. spikelm rows run ``spikelm.simulate`` (no recording; its
stepping check excluded from the timing); onnxruntime rows run the decode-step graph with the
state fed back, on ``--threads`` intra-op threads (torch likewise). The spiking graph's greedy
tokens are checked against spikelm's before anything is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, emit  # noqa: E402
from bench_backends import int8_baseline  # noqa: E402

import spikelm  # noqa: E402
from spikelm.adapters import adapter_for  # noqa: E402
from spikelm.backends import numba_available  # noqa: E402
from spikelm.export.onnx import export_onnx  # noqa: E402
from spikelm.models import ByteTokenizer, load_demo_model  # noqa: E402
from spikelm.simulate import simulate  # noqa: E402


def ort_decode(path: Path, result, prompt: list[int], new: int, threads: int) -> tuple[float, list]:
    """Seconds for the decode loop in onnxruntime, and its greedy tokens."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = result.initial_state(1)
    generated: list[int] = []
    start = time.perf_counter()
    token = prompt[0]
    for t in range(len(prompt) + new - 1):
        feed = {"input_ids": np.array([[token]], dtype=np.int64), **state}
        out = dict(zip(names, session.run(None, feed), strict=True))
        state = {k: out["present." + k.removeprefix("past_key_values.")] for k in state}
        if t + 1 < len(prompt):
            token = prompt[t + 1]
        else:
            token = int(out["logits"][0, -1].argmax())
            generated.append(token)
    return time.perf_counter() - start, generated


def torch_decode(model, prompt: list[int], new: int) -> float:
    """Seconds for the same loop through the family adapter's step in torch (the ANN)."""
    adapter = adapter_for(model)
    with torch.no_grad():
        start = time.perf_counter()
        state = adapter.init_state(model, 1)
        token = torch.tensor([prompt[0]])
        for t in range(len(prompt) + new - 1):
            logits, state = adapter.step(model, token, state)
            nxt = prompt[t + 1] if t + 1 < len(prompt) else int(logits[0].argmax())
            token = torch.tensor([nxt])
    return time.perf_counter() - start


def best(run, reps: int) -> float:
    run()  # warm-up: one-time costs (session setup, kernel compilation) are not timed
    return min(run() for _ in range(reps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = describe_machine()
    prompt = ByteTokenizer().encode("The import statement binds names in the module ")
    prompt = (prompt * 4)[: args.prompt_tokens]
    new = args.new_tokens
    tokens = len(prompt) + new - 1
    ann = load_demo_model().eval()
    snn = spikelm.convert(spikelm.prepare(load_demo_model(), spikelm.SpikeConfig()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spiking = export_onnx(snn, Path(tmp) / "snn.onnx")
        dense = export_onnx(ann, Path(tmp) / "ann.onnx", dense=True)
        seconds, generated = ort_decode(Path(tmp) / "snn.onnx", spiking, prompt, new, args.threads)
        reference = simulate(snn, prompt, new_tokens=new, progress=False, backend="torch")
        if generated != reference.generated:
            raise SystemExit("the ONNX graph's greedy tokens differ from spikelm's")
        rows.append(("onnxruntime, spiking graph (int8 MatMulInteger on spike planes)",
                     best(lambda: ort_decode(Path(tmp) / "snn.onnx", spiking, prompt, new,
                                             args.threads)[0], args.reps)))  # fmt: skip
        rows.append(("onnxruntime, ANN graph (fp32, exported the same way)",
                     best(lambda: ort_decode(Path(tmp) / "ann.onnx", dense, prompt, new,
                                             args.threads)[0], args.reps)))  # fmt: skip
    backends = ["torch", "torch_events", "reference"] + (["numba"] if numba_available() else [])
    for backend in backends:

        def run(backend=backend) -> float:
            result = simulate(
                snn, prompt, new_tokens=new, progress=False, backend=backend, threads=args.threads
            )
            assert result.generated == reference.generated, backend
            return result.seconds

        rows.append((f"spikelm simulate, backend {backend}", best(run, args.reps)))
    rows.append(("torch ANN (the adapter's step, fp32)", best(lambda: torch_decode(ann, prompt,
                                                                                    new), args.reps)))  # fmt: skip
    quantized = int8_baseline(ann)
    rows.append(("torch ANN int8 (dynamic quantization W8A8, same step)",
                 best(lambda: torch_decode(quantized, prompt, new), args.reps)))  # fmt: skip
    ann_ort, ann_torch, ann_int8 = rows[1][1], rows[-2][1], rows[-1][1]
    width = max(len(name) for name, _ in rows)
    lines = [
        "bench_export: decode speed of the exported spiking demo model (benchmarks/bench_export.py)",
        header,
        f"# demo model (1.1M parameters), SpikingBrain recipe (bitwise_bidirectional, T=8, k=3); "
        f"greedy decode, batch 1: {len(prompt)} prompt tokens fed one by one + {new} new "
        f"({tokens} steps); best of {args.reps} after a warm-up; {args.threads} thread(s); "
        "the ONNX graph's greedy tokens equal spikelm's; 'x ...' = that row's tokens/s over the "
        "baseline's (the ANN exported to ONNX, the fp32 ANN in torch, the same ANN with int8 "
        "linear layers: torch's dynamic quantization, fbgemm)",
        "",
        f"{'path':<{width}}  {'tokens/s':>9}  {'ms/token':>9}  {'x ORT ANN':>9}  {'x fp32':>7}  "
        f"{'x int8':>7}",
        "-" * (width + 51),
    ]
    for name, seconds in rows:
        lines.append(f"{name:<{width}}  {tokens / seconds:>9.1f}  {1e3 * seconds / tokens:>9.3f}  "
                     f"{ann_ort / seconds:>8.2f}x  {ann_torch / seconds:>6.2f}x  "
                     f"{ann_int8 / seconds:>6.2f}x")  # fmt: skip
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
