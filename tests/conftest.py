"""Shared test fixtures: a tiny hybrid model config, and one torch thread for tiny tensors."""

from __future__ import annotations

import pytest
import torch

from spikelm.models import HybridConfig

TINY_HYBRID = HybridConfig(
    vocab_size=256,
    hidden_size=64,
    n_layers=2,
    n_heads=2,
    head_dim=32,
    intermediate_size=128,
    window=8,
    layer_types=["gla", "swa"],
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run fastest on one thread, and a busy machine cannot stall its OpenMP team."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
