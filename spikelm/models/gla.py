"""Gated linear attention (GLA, Yang et al. 2023), the linear-attention half of the hybrid model.

Per head, with a data-dependent per-key-channel forget gate ``alpha_t`` in (0, 1)^dk:

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t          S_t in R^{dk x dv}, S_0 = 0
    o_t = q_t S_t                                    q_t scaled by dk^-1/2
    log alpha_t = logsigmoid(gk_proj(x_t)) / gate_logit_normalizer

``gk_proj`` is low rank (two ``nn.Linear``). The head outputs are RMS-normed per head, gated by
``silu(g_proj(x_t))`` and mixed by ``o_proj``. :func:`gla_step` is the recurrence itself (the
specification); :func:`gla_chunked` computes the same outputs chunk by chunk for a whole prompt.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spikelm.models.layers import RMSNorm


class GLAState(NamedTuple):
    """Recurrent state of one GLA layer: ``S`` of shape [B, H, dk, dv]."""

    S: torch.Tensor


def gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor, S: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step: ``S' = diag(alpha) S + k^T v``, ``o = q S'``.

    ``q``, ``k``, ``log_alpha``: [B, H, dk]; ``v``: [B, H, dv]; ``S``: [B, H, dk, dv].
    Returns ``(o [B, H, dv], S')``.
    """
    S = log_alpha.exp().unsqueeze(-1) * S + k.unsqueeze(-1) * v.unsqueeze(-2)
    return (q.unsqueeze(-2) @ S).squeeze(-2), S


def gla_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The GLA recurrence from ``S_0 = 0`` over a whole sequence, in chunks of ``chunk_size``.

    Inputs are [B, H, L, d]. With ``b_t`` the cumulative sum of ``log alpha`` inside a chunk
    (inclusive) and ``S`` the state at the chunk start:

        o_t  = (q_t * exp(b_t)) S  +  sum_{s<=t} [sum_d q_td k_sd exp(b_td - b_sd)] v_s
        S'   = diag(exp(b_C)) S  +  sum_s (k_s * exp(b_C - b_s))^T v_s

    Every exponent is <= 0, so no decay, however strong, overflows. The intra-chunk term builds a
    [C, C, dk] decay tensor per chunk: cost grows with ``chunk_size``, exactness does not change.
    Returns ``(o [B, H, L, dv], S_L [B, H, dk, dv])``.
    """
    B, H, L, dk = q.shape
    dv = v.shape[-1]
    C = max(1, min(chunk_size, L))  # a chunk longer than the sequence would only pad it
    pad = (-L) % C
    if pad:  # zero keys and zero log-decay at the end leave outputs and final state unchanged
        q, k, v, log_alpha = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, log_alpha))
    N = (L + pad) // C
    q, k, log_alpha = (t.reshape(B, H, N, C, dk) for t in (q, k, log_alpha))
    v = v.reshape(B, H, N, C, dv)

    b = log_alpha.cumsum(-2)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (b.unsqueeze(-2) - b.unsqueeze(-3)).masked_fill(~causal.unsqueeze(-1), float("-inf"))
    scores = (q.unsqueeze(-2) * k.unsqueeze(-3) * diff.exp()).sum(-1)  # [B, H, N, C, C]
    o = scores @ v

    b_last = b[..., -1:, :]
    q_decayed = q * b.exp()
    k_decayed = k * (b_last - b).exp()
    chunk_decay = b_last.squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, dk, 1]
    S = q.new_zeros(B, H, dk, dv)
    inter = []
    for q_n, k_n, v_n, decay_n in zip(
        q_decayed.unbind(2), k_decayed.unbind(2), v.unbind(2), chunk_decay.unbind(2), strict=True
    ):
        inter.append(q_n @ S)
        S = decay_n * S + k_n.transpose(-1, -2) @ v_n
    o = o + torch.stack(inter, dim=2)
    return o.reshape(B, H, N * C, dv)[:, :, :L], S


class GatedLinearAttention(nn.Module):
    """GLA token mixer: projections ``q/k/v/g_proj``, low-rank ``gk_proj``, ``o_proj``."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        head_dim: int,
        gate_rank: int,
        gate_logit_normalizer: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.gate_logit_normalizer = gate_logit_normalizer
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(hidden_size, gate_rank, bias=False), nn.Linear(gate_rank, inner, bias=True)
        )
        self.o_norm = RMSNorm(head_dim, eps)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[..., H*d] -> [..., H, d]."""
        return t.unflatten(-1, (self.n_heads, self.head_dim))

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q (scaled), k, v, log alpha, each [..., H, d], from x [..., D]."""
        q = self._heads(self.q_proj(x)) * self.head_dim**-0.5
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        log_alpha = self._heads(F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer)
        return q, k, v, log_alpha

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``o_proj(rmsnorm(o) * silu(g_proj(x)))`` with o [..., H, dv], x [..., D]."""
        gated = self.o_norm(o) * F.silu(self._heads(self.g_proj(x)))
        return self.o_proj(gated.flatten(-2))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> GLAState:
        """The zero state ``S_0``."""
        d = self.head_dim
        return GLAState(torch.zeros(batch_size, self.n_heads, d, d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, GLAState]:
        """Whole sequence from the zero state: x [B, L, D] -> (y [B, L, D], state after x_L)."""
        q, k, v, log_alpha = (t.transpose(1, 2) for t in self._inputs(x))
        o, S = gla_chunked(q, k, v, log_alpha, chunk_size)
        return self._output(o.transpose(1, 2), x), GLAState(S)

    def step(
        self, x: torch.Tensor, state: GLAState, pos: torch.Tensor
    ) -> tuple[torch.Tensor, GLAState]:
        """One token: x [B, D] -> (y [B, D], new state). ``pos`` is unused (GLA has no positions)."""
        del pos
        q, k, v, log_alpha = self._inputs(x)
        o, S = gla_step(q, k, v, log_alpha, state.S)
        return self._output(o, x), GLAState(S)
