"""Dense PyTorch backend: time collapsed to integer counts, one float matmul.

Because ``sum_t c_t s_t = s_int`` for an exact coder, the spike train's layer output is

    y = V_th * (s_int @ W_hat^T),        W_hat = W_q * scale   (dequantized once, cached)

This is SpikingBrain's "pseudo-spiking" form; it runs on CPU and CUDA. Float summation order
differs from the integer reference, so outputs agree to float tolerance, not bit for bit.
"""

from __future__ import annotations

import torch

from spikelm.backends.base import Backend, ran


def linear(layer, counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, out]`` (float32) of ``layer`` for counts ``[M, in]`` and thresholds ``[M, 1]``."""
    ran("torch", counts.shape[0])
    return (counts @ layer.dequantized_weight().t()) * v_th


BACKEND = Backend(
    name="torch",
    devices=None,
    exact=False,
    linear=linear,
    note="dense, time collapsed: (s_int @ W_hat^T) * V_th in float32 (pseudo-spiking; equal to "
    "the reference within float rounding)",
)
