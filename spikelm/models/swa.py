"""Sliding-window softmax attention (SWA) with rotary position embeddings.

Token t attends to the ``W`` most recent tokens, itself included (t - W < s <= t):

    o_t = sum_s softmax_s(q_t . k_s / sqrt(d)) v_s,   q_t = RoPE(W_q x_t, t), k_s = RoPE(W_k x_s, s)
    RoPE(x, p) = x * cos(p * f) + rotate_half(x) * sin(p * f),   f_i = theta^(-2i/d)

The recurrent form keeps a ring buffer of the last W rotated keys and values: position p lives in
slot ``p mod W``. Softmax is order-free and RoPE is applied before caching, so slot order does not
matter and memory stays constant however many tokens are generated.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class SWAState(NamedTuple):
    """Ring buffer of one SWA layer: rotated keys ``k`` and values ``v``, each [B, H, W, d]."""

    k: torch.Tensor
    v: torch.Tensor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., L, d] (or [..., d] with a 0-d ``positions``) by its positions."""
    angles = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return x * angles.cos().to(x.dtype) + rotate_half(x) * angles.sin().to(x.dtype)


class SlidingWindowAttention(nn.Module):
    """Causal softmax attention over a window of ``window`` tokens: ``q/k/v/o_proj``."""

    def __init__(
        self, hidden_size: int, n_heads: int, head_dim: int, window: int, rope_theta: float
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.window = window
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        inv_freq = rope_theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[..., H*d] -> [..., H, d]."""
        return t.unflatten(-1, (self.n_heads, self.head_dim))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SWAState:
        """An empty ring buffer (zeros; slots not yet written are masked out by position)."""
        shape = (batch_size, self.n_heads, self.window, self.head_dim)
        return SWAState(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SWAState]:
        """Whole sequence from position 0: x [B, L, D] -> (y [B, L, D], ring buffer after x_L)."""
        B, L, _ = x.shape
        pos = torch.arange(L, device=x.device)
        q = apply_rope(self._heads(self.q_proj(x)).transpose(1, 2), pos, self.inv_freq)
        k = apply_rope(self._heads(self.k_proj(x)).transpose(1, 2), pos, self.inv_freq)
        v = self._heads(self.v_proj(x)).transpose(1, 2)
        offset = pos.unsqueeze(1) - pos.unsqueeze(0)  # t - s
        mask = (offset >= 0) & (offset < self.window)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.o_proj(o.transpose(1, 2).flatten(-2))

        kept = pos[max(0, L - self.window) :]
        state = self.init_state(B, device=x.device, dtype=k.dtype)
        state.k[:, :, kept % self.window] = k[:, :, kept]
        state.v[:, :, kept % self.window] = v[:, :, kept]
        return y, state

    def step(
        self, x: torch.Tensor, state: SWAState, pos: torch.Tensor
    ) -> tuple[torch.Tensor, SWAState]:
        """One token at position ``pos`` (0-d long): x [B, D] -> (y [B, D], new ring buffer)."""
        q = apply_rope(self._heads(self.q_proj(x)), pos, self.inv_freq)
        k = apply_rope(self._heads(self.k_proj(x)), pos, self.inv_freq)
        v = self._heads(self.v_proj(x))
        slots = torch.arange(self.window, device=x.device)
        write = (slots == pos % self.window).unsqueeze(-1)  # [W, 1]
        k_buf = torch.where(write, k.unsqueeze(-2), state.k)
        v_buf = torch.where(write, v.unsqueeze(-2), state.v)
        valid = slots <= pos  # slots fill in order 0, 1, ..., W-1, then all stay valid
        o = F.scaled_dot_product_attention(
            q.unsqueeze(-2), k_buf, v_buf, attn_mask=valid.unsqueeze(0)
        )
        return self.o_proj(o.squeeze(-2).flatten(-2)), SWAState(k_buf, v_buf)
