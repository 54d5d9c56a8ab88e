"""The next-token loss shared by perplexity, fidelity scoring and Fisher calibration."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of predicting ``ids[:, 1:]`` from ``logits[:, :-1]``.

    ``logits`` is ``[B, L, V]`` (any float dtype; cast to float32), ``ids`` is ``[B, L]``. Returns
    a float32 scalar tensor; it is differentiable, so callers that only measure wrap it in
    ``torch.no_grad``.
    """
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum"
    )
