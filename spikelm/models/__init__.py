"""Reference models: the hybrid GLA + sliding-window LM, its byte tokenizer and the demo model.

Plain torch + safetensors; nothing here imports transformers.
"""

from __future__ import annotations

from spikelm.models.demo import demo_dir, load_demo_model, load_demo_texts
from spikelm.models.eval import perplexity
from spikelm.models.gla import GatedLinearAttention, GLAState, gla_chunked, gla_step
from spikelm.models.hybrid import HybridBlock, HybridConfig, HybridLM, HybridState
from spikelm.models.layers import RMSNorm, SwiGLU
from spikelm.models.swa import SlidingWindowAttention, SWAState
from spikelm.models.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "GLAState",
    "GatedLinearAttention",
    "HybridBlock",
    "HybridConfig",
    "HybridLM",
    "HybridState",
    "RMSNorm",
    "SWAState",
    "SlidingWindowAttention",
    "SwiGLU",
    "demo_dir",
    "gla_chunked",
    "gla_step",
    "load_demo_model",
    "load_demo_texts",
    "perplexity",
]
