"""Perplexity of a language model over a token sequence (deterministic, no sampling)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from spikelm.errors import ConfigError
from spikelm.loss import next_token_nll


@torch.no_grad()
def perplexity(
    model: Callable[[torch.Tensor], torch.Tensor],
    token_ids: Sequence[int] | torch.Tensor,
    seq_len: int = 256,
    batch_size: int = 8,
) -> float:
    """``exp(mean NLL)`` over non-overlapping windows of ``seq_len`` tokens.

    The ids are cut into consecutive windows (the last may be shorter); inside each window every
    token but the first is predicted from the tokens before it in that window, and the NLL is
    averaged over all predicted tokens. ``model`` maps ids [B, L] to logits [B, L, V]; any
    module with that signature (e.g. a converted spiking model) can be measured.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if seq_len < 2 or batch_size < 1:
        raise ConfigError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    if ids.numel() < 2:
        raise ConfigError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    windows = [w for w in ids.split(seq_len) if w.numel() >= 2]
    full = [w for w in windows if w.numel() == seq_len]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w.unsqueeze(0) for w in windows if w.numel() < seq_len]
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(_device_of(model))
        total += next_token_nll(model(batch), batch).item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def _device_of(model: Callable[[torch.Tensor], torch.Tensor]) -> torch.device:
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    first = next(params, None)
    return first.device if first is not None else torch.device("cpu")
