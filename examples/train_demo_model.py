"""Train the built-in demo model (``spikelm/models/demo/``) on the CPU.

Data: the prose of CPython's ``pydoc_data.topics.topics`` (the language-reference help topics),
values concatenated in sorted-key order, whitespace normalised lightly. The text is cut into
consecutive blocks of ``--block-chars`` characters; of every 20 blocks, block 18 goes to the
calibration split, block 19 to the eval split and the rest to training (90 / 5 / 5 %).

Writes ``config.json``, ``model.safetensors``, ``calib.txt``, ``eval.txt`` and ``README.md``
(with the measured numbers) into ``--out``. Reproducible for a given seed, torch version, thread
count and Python version (the topics text differs between Python releases)::

    python examples/train_demo_model.py --out spikelm/models/demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch
import torch.nn.functional as F

from spikelm.models import ByteTokenizer, HybridConfig, HybridLM, perplexity

CALIB_BLOCK, EVAL_BLOCK, PERIOD = 18, 19, 20


def corpus_text() -> str:
    """The topics' values in sorted-key order; trailing spaces cut, tabs expanded, blank runs <= 1."""
    text = "\n\n".join(topics[key].strip("\n") for key in sorted(topics))
    text = "\n".join(line.rstrip() for line in text.expandtabs(4).splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def split_text(text: str, block_chars: int) -> tuple[str, str, str]:
    """``(train, calib, eval)`` by contiguous blocks, interleaved with period 20."""
    blocks = [text[i : i + block_chars] for i in range(0, len(text), block_chars)]
    parts: dict[int, list[str]] = {CALIB_BLOCK: [], EVAL_BLOCK: [], -1: []}
    for i, block in enumerate(blocks):
        parts.get(i % PERIOD, parts[-1]).append(block)
    return "".join(parts[-1]), "".join(parts[CALIB_BLOCK]), "".join(parts[EVAL_BLOCK])


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    ratio = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * ratio


def make_optimizer(model: HybridLM, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (projections, embedding) only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))


def train(
    model: HybridLM, data: torch.Tensor, monitor: torch.Tensor, args: argparse.Namespace
) -> list[str]:
    """Train on random windows of ``data``; returns log lines (``monitor`` perplexity)."""
    gen = torch.Generator().manual_seed(args.seed)
    opt = make_optimizer(model, args)
    log = []
    start = time.time()
    for step in range(args.steps):
        offsets = torch.randint(
            0, data.numel() - args.seq_len - 1, (args.batch_size,), generator=gen
        )
        window = torch.stack([data[o : o + args.seq_len + 1] for o in offsets.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        model.train()
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            model.eval()
            ppl = perplexity(model, monitor, seq_len=args.seq_len)
            line = (
                f"step {step + 1:5d}  train loss {loss.item():.3f}  calib ppl {ppl:.3f}  "
                f"{time.time() - start:.0f} s"
            )
            print(line, flush=True)
            log.append(line)
    return log


README = """# spikelm demo model

A byte-level hybrid language model (`spikelm.models.HybridLM`, SpikingBrain-shaped: gated linear
attention and sliding-window attention layers alternating) trained by
`examples/train_demo_model.py`. Load it with `spikelm.models.load_demo_model()`; the splits with
`spikelm.models.load_demo_texts()`.

## Data
- Source: the values of CPython's `pydoc_data.topics.topics` (the language-reference help
  topics) of Python {python_version}, concatenated in sorted-key order; tabs expanded, trailing
  spaces cut, runs of blank lines collapsed to one: {n_chars} characters, {n_bytes} UTF-8
  bytes, sha256 (first 16 hex digits) {sha256}.
- Split by consecutive blocks of {block_chars} characters: of every 20 blocks, block 18 is
  calibration and block 19 eval, the rest training. Train {n_train} bytes, calib {n_calib}
  bytes (`calib.txt`), eval {n_eval} bytes (`eval.txt`). The two small splits ship here, so the
  demo never depends on the local Python's text.

## Model
{n_params} parameters (float32), `model.safetensors` {weights_kb:.0f} KB. `config.json`:

    {config_line}

## Training
`{command}`

- AdamW, betas 0.9/0.95, weight decay {weight_decay} on matrices, gradient clip {clip}.
- Peak lr {lr}, {warmup} warm-up steps, cosine decay to {min_lr_ratio} x peak.
- Dropout {dropout} on the residual branches (training only; eval mode has none).
- {steps} steps of {batch_size} random windows of {seq_len_plus} bytes: {tokens_m:.1f} M tokens,
  about {epochs:.1f} passes over the training split.
- Seed {seed}; torch {torch_version}; {threads} torch thread(s).
- Wall time: {train_minutes:.1f} min ({sec_per_step:.2f} s per step, evaluations included) on a
  {cpus}-core {cpu} machine; 15-minute load average at the end: {load:.1f}.

```
{log}
```

## Evaluation (measured at the end of the run)
Byte-level perplexity, `spikelm.models.perplexity(model, ids, seq_len={seq_len})` (mean NLL over
non-overlapping windows):

| split | bytes | perplexity | bits per byte |
|---|---|---|---|
| eval | {n_eval} | {eval_ppl:.3f} | {eval_bpb:.3f} |
| calib | {n_calib} | {calib_ppl:.3f} | {calib_bpb:.3f} |
| train (first {n_train_eval} bytes) | {n_train_eval} | {train_ppl:.3f} | {train_bpb:.3f} |

A uniform guess over 256 bytes has perplexity 256 (8 bits per byte).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("spikelm/models/demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-lr-ratio", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--block-chars", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=6)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--intermediate-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--log-every", type=int, default=250)
    args = parser.parse_args()
    command = "python examples/train_demo_model.py " + " ".join(sys.argv[1:])

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = corpus_text()
    train_text, calib_text, eval_text = split_text(text, args.block_chars)
    tok = ByteTokenizer()
    train_ids, calib_ids, eval_ids = (
        torch.tensor(tok.encode(t), dtype=torch.long) for t in (train_text, calib_text, eval_text)
    )
    print(f"train {train_ids.numel()} calib {calib_ids.numel()} eval {eval_ids.numel()} bytes")

    config = HybridConfig(
        vocab_size=tok.vocab_size,
        hidden_size=args.hidden_size,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        head_dim=args.head_dim,
        intermediate_size=args.intermediate_size,
        window=args.window,
        dropout=args.dropout,
    )
    model = HybridLM(config)
    print(f"{model.num_parameters()} parameters")
    start = time.time()
    log = train(model, train_ids, calib_ids, args)
    train_minutes = (time.time() - start) / 60

    model.eval()
    n_train_eval = eval_ids.numel()
    ppl = {
        "eval": perplexity(model, eval_ids, seq_len=args.seq_len),
        "calib": perplexity(model, calib_ids, seq_len=args.seq_len),
        "train": perplexity(model, train_ids[:n_train_eval], seq_len=args.seq_len),
    }
    print(", ".join(f"{k} ppl {v:.3f}" for k, v in ppl.items()))

    model.save_pretrained(args.out)
    (args.out / "calib.txt").write_text(calib_text, encoding="utf-8")
    (args.out / "eval.txt").write_text(eval_text, encoding="utf-8")
    tokens = args.steps * args.batch_size * args.seq_len
    readme = README.format(
        python_version=platform.python_version(),
        n_chars=len(text),
        n_bytes=len(text.encode("utf-8")),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        block_chars=args.block_chars,
        n_train=train_ids.numel(),
        n_calib=calib_ids.numel(),
        n_eval=eval_ids.numel(),
        config_line=json.dumps(config.to_dict()),
        n_params=model.num_parameters(),
        weights_kb=(args.out / "model.safetensors").stat().st_size / 1024,
        weight_decay=args.weight_decay,
        lr=args.lr,
        warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        clip=args.clip,
        dropout=args.dropout,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len_plus=args.seq_len + 1,
        tokens_m=tokens / 1e6,
        epochs=tokens / train_ids.numel(),
        seed=args.seed,
        command=command,
        torch_version=torch.__version__,
        threads=args.threads,
        train_minutes=train_minutes,
        sec_per_step=train_minutes * 60 / args.steps,
        cpus=os.cpu_count(),
        load=os.getloadavg()[2],
        cpu=platform.processor() or platform.machine(),
        log="\n".join(log),
        seq_len=args.seq_len,
        eval_ppl=ppl["eval"],
        eval_bpb=math.log2(ppl["eval"]),
        calib_ppl=ppl["calib"],
        calib_bpb=math.log2(ppl["calib"]),
        n_train_eval=n_train_eval,
        train_ppl=ppl["train"],
        train_bpb=math.log2(ppl["train"]),
    )
    (args.out / "README.md").write_text(readme, encoding="utf-8")
    print(f"wrote {args.out} ({train_minutes:.1f} min of training)", file=sys.stderr)


if __name__ == "__main__":
    main()
