"""Small ``transformers`` language models trained in the benchmark run, so that the fidelity of a
recipe is measured on real (trained) models of the transformers families the tests use.

Each is a byte-level model (vocabulary 256) of one family, trained from a seed on the training
split of the demo model's corpus (``examples/train_demo_model.py``: CPython's help topics; the
demo's calibration and evaluation splits are held out), on the CPU, in about a minute.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from train_demo_model import corpus_text, split_text  # noqa: E402

FAMILIES = ("llama", "qwen2")
SHAPE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
TRAIN = {"steps": 600, "batch": 16, "seq": 128, "lr": 3e-3, "warmup": 50, "block_chars": 2000}


def _model(family: str) -> nn.Module:
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    config = config_class(vocab_size=256, max_position_embeddings=512, **SHAPE)
    return model_class(config)


def train_tiny(family: str, seed: int = 0) -> tuple[nn.Module, float]:
    """``(model, seconds)``: a ``family`` model trained on the corpus' training split."""
    torch.manual_seed(seed)
    train_text, _, _ = split_text(corpus_text(), TRAIN["block_chars"])
    data = torch.tensor(list(train_text.encode("utf-8")), dtype=torch.long)
    model = _model(family).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(TRAIN["steps"]):
        warm = min(1.0, (step + 1) / TRAIN["warmup"])
        cosine = 0.5 * (1 + math.cos(math.pi * step / TRAIN["steps"]))
        for group in optimizer.param_groups:
            group["lr"] = TRAIN["lr"] * warm * max(cosine, 0.05)
        starts = torch.randint(0, data.numel() - TRAIN["seq"] - 1, (TRAIN["batch"],),
                               generator=generator)  # fmt: skip
        batch = torch.stack([data[s : s + TRAIN["seq"] + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval(), time.perf_counter() - start
