"""How much a converted model keeps: perplexity, agreement with the ANN, and how it fires.

For token windows ``w`` and next-token logits ``z_ann``, ``z`` of the ANN and a candidate:

    perplexity   = exp(mean_w,i NLL(z[w, i], w[i + 1]))
    top-1 agree  = mean_w,i [argmax z[w, i] == argmax z_ann[w, i]]
    logit cosine = mean_w,i cos(z[w, i], z_ann[w, i])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spikelm.estimators import SpikeStats, summarize
from spikelm.layers import collect_stats, spiking_layers
from spikelm.loss import next_token_nll


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, L, V]`` of a model returning a tensor or an object with ``.logits``."""
    out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


def token_batches(
    ids: torch.Tensor, seq_len: int, batch_size: int = 8, max_windows: int | None = None
) -> list[torch.Tensor]:
    """Consecutive full windows of ``seq_len`` tokens, stacked into batches ``[B, seq_len]``."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    count = ids.numel() // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        return []
    windows = ids[: count * seq_len].view(count, seq_len)
    return list(windows.split(batch_size))


@dataclass
class Score:
    """One model's row of the fidelity table."""

    name: str
    perplexity: float
    top1_agreement: float
    logit_cosine: float
    stats: SpikeStats | None = None
    layer_stats: dict[str, SpikeStats] | None = None  # per spiking layer (clamped share etc.)


@torch.no_grad()
def compare(
    reference: nn.Module,
    candidates: Mapping[str, nn.Module],
    batches: Iterable[torch.Tensor],
) -> list[Score]:
    """Score ``reference`` (first row) and each candidate on the same batches of token ids."""
    models = {"ANN (fp32)": reference, **candidates}
    nll = dict.fromkeys(models, 0.0)
    agree = dict.fromkeys(models, 0.0)
    cosine = dict.fromkeys(models, 0.0)
    predicted = 0
    stats: dict[str, dict[str, SpikeStats]] = {}
    with contextlib.ExitStack() as stack:
        for name, model in models.items():
            if spiking_layers(model):
                stats[name] = stack.enter_context(collect_stats(model))
        for batch in batches:
            ann_logits = logits_of(reference, batch)
            ann = ann_logits[:, :-1].flatten(0, 1)
            for name, model in models.items():
                logits = ann_logits if model is reference else logits_of(model, batch)
                z = logits[:, :-1].flatten(0, 1)
                nll[name] += next_token_nll(logits, batch).item()
                agree[name] += (z.argmax(-1) == ann.argmax(-1)).sum().item()
                cosine[name] += F.cosine_similarity(z, ann, dim=-1).sum().item()
            predicted += batch[:, 1:].numel()
    if predicted == 0:
        raise ValueError("no complete evaluation window: give more evaluation tokens")
    return [
        Score(
            name,
            math.exp(nll[name] / predicted),
            agree[name] / predicted,
            cosine[name] / predicted,
            summarize(stats[name].values()) if stats.get(name) else None,
            dict(stats[name]) if stats.get(name) else None,
        )
        for name in models
    ]
