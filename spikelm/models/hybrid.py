"""The reference hybrid language model: GLA and sliding-window attention layers, SpikingBrain style.

Each block is pre-norm: ``x = x + mixer(norm(x)); x = x + mlp(norm(x))`` where the mixer is
:class:`~spikelm.models.gla.GatedLinearAttention` or
:class:`~spikelm.models.swa.SlidingWindowAttention` as ``config.layer_types`` says, and the MLP is
SwiGLU. Every projection is a plain ``nn.Linear``; norms, the recurrence and softmax are float.

Two forms compute the same logits:

- parallel: :meth:`HybridLM.forward` (chunked GLA, masked softmax) for a prompt;
  :meth:`HybridLM.prefill` is the same pass and also returns the recurrent state after the prompt;
- recurrent: :meth:`HybridLM.step`, one token at a time with a state of constant size
  (:class:`HybridState`: per GLA layer ``S`` [B, H, d, d], per SWA layer a ring buffer [B, H, W, d]).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from spikelm.errors import ConfigError, ShapeError, SpikelmError
from spikelm.fileio import atomic_directory
from spikelm.models.gla import GatedLinearAttention, GLAState
from spikelm.models.layers import RMSNorm, SwiGLU
from spikelm.models.swa import SlidingWindowAttention, SWAState

MODEL_TYPE = "spikelm_hybrid"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LAYER_TYPES = ("gla", "swa")


@dataclass
class HybridConfig:
    """Shape of a :class:`HybridLM`.

    ``layer_types`` (one of ``"gla"``, ``"swa"`` per layer) defaults to alternating, GLA first.
    Both mixers use ``n_heads`` heads of ``head_dim`` (GLA: dk = dv = head_dim). ``window`` is the
    SWA span (the current token included), ``gate_rank`` the rank of GLA's ``gk_proj`` and
    ``gate_logit_normalizer`` the divisor of its log-sigmoid. ``chunk_size`` is the default GLA
    chunk of the parallel form (speed only; 8 is fastest on CPU). ``dropout`` acts in training.
    """

    vocab_size: int = 256
    hidden_size: int = 128
    n_layers: int = 6
    n_heads: int = 4
    head_dim: int = 32
    intermediate_size: int = 256
    window: int = 64
    layer_types: list[str] | None = None
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    gate_rank: int = 16
    gate_logit_normalizer: float = 16.0
    chunk_size: int = 8
    dropout: float = 0.0
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        if self.layer_types is None and isinstance(self.n_layers, int):
            self.layer_types = [LAYER_TYPES[i % 2] for i in range(self.n_layers)]
        if not isinstance(self.layer_types, (list, tuple)) or not all(
            isinstance(t, str) for t in self.layer_types
        ):
            raise ConfigError(f"layer_types must be a list of strings, got {self.layer_types!r}")
        self.layer_types = list(self.layer_types)
        if self.model_type != MODEL_TYPE:
            raise ConfigError(f"model_type is {self.model_type!r}, expected {MODEL_TYPE!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "n_layers",
            "n_heads",
            "head_dim",
            "intermediate_size",
            "window",
            "gate_rank",
            "chunk_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "rms_eps", "gate_logit_normalizer"):
            value = getattr(self, name)
            if not _number(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not _number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even (RoPE), got {self.head_dim}")
        if len(self.layer_types) != self.n_layers or not set(self.layer_types) <= set(LAYER_TYPES):
            raise ConfigError(
                f"layer_types must list {self.n_layers} entries from {LAYER_TYPES}, "
                f"got {self.layer_types!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HybridConfig:
        """Inverse of :meth:`to_dict`; unknown keys or another ``model_type`` raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ConfigError(f"model_type is {data['model_type']!r}, expected {MODEL_TYPE!r}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)


def _number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class HybridState(NamedTuple):
    """Recurrent state of a :class:`HybridLM`: tokens consumed (0-d long) and one state per layer."""

    pos: torch.Tensor
    layers: tuple[GLAState | SWAState, ...]


class HybridBlock(nn.Module):
    """Pre-norm block: ``x += attn(attn_norm(x)); x += mlp(mlp_norm(x))``.

    In training mode each branch output goes through dropout (``config.dropout``); in eval mode,
    the mode every spiking conversion and test uses, the block is exactly the formula above.
    """

    def __init__(self, config: HybridConfig, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.dropout = config.dropout
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_eps)
        if layer_type == "gla":
            self.attn: GatedLinearAttention | SlidingWindowAttention = GatedLinearAttention(
                config.hidden_size,
                config.n_heads,
                config.head_dim,
                config.gate_rank,
                config.gate_logit_normalizer,
                config.rms_eps,
            )
        else:
            self.attn = SlidingWindowAttention(
                config.hidden_size,
                config.n_heads,
                config.head_dim,
                config.window,
                config.rope_theta,
            )
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, GLAState | SWAState]:
        if self.layer_type == "gla":
            h, state = self.attn(self.attn_norm(x), chunk_size)
        else:
            h, state = self.attn(self.attn_norm(x))
        x = x + self._drop(h)
        return x + self._drop(self.mlp(self.mlp_norm(x))), state

    def step(
        self, x: torch.Tensor, state: GLAState | SWAState, pos: torch.Tensor
    ) -> tuple[torch.Tensor, GLAState | SWAState]:
        h, state = self.attn.step(self.attn_norm(x), state, pos)
        x = x + self._drop(h)
        return x + self._drop(self.mlp(self.mlp_norm(x))), state

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.dropout, self.training)


class HybridLM(nn.Module):
    """Decoder-only LM: ``embed_tokens``, :class:`HybridBlock` s, ``norm``, untied ``lm_head``."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(HybridBlock(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """N(0, 0.02) weights, zero biases; residual outputs scaled by 1/sqrt(2 n_layers)."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02
                if name.endswith(("o_proj", "down_proj")):
                    std /= (2 * self.config.n_layers) ** 0.5
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def _check_ids(self, input_ids: torch.Tensor, ndim: int) -> None:
        if input_ids.ndim != ndim or input_ids.dtype != torch.long:
            raise ShapeError(
                f"input_ids must be a {ndim}-d long tensor, "
                f"got shape {tuple(input_ids.shape)} dtype {input_ids.dtype}"
            )

    def prefill(
        self, input_ids: torch.Tensor, chunk_size: int | None = None
    ) -> tuple[torch.Tensor, HybridState]:
        """Parallel pass from the empty state: ids [B, L] -> (logits [B, L, V], state after L).

        ``chunk_size`` (GLA chunk length) defaults to ``config.chunk_size``; it changes speed and
        memory, not the result. Stepping on from the returned state continues the sequence.
        """
        self._check_ids(input_ids, 2)
        chunk_size = chunk_size or self.config.chunk_size
        x = self.embed_tokens(input_ids)
        states = []
        for layer in self.layers:
            x, state = layer(x, chunk_size)
            states.append(state)
        pos = torch.tensor(input_ids.shape[1], device=input_ids.device)
        return self.lm_head(self.norm(x)), HybridState(pos, tuple(states))

    def forward(self, input_ids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Parallel form: ids [B, L] -> logits [B, L, V] (see :meth:`prefill`)."""
        return self.prefill(input_ids, chunk_size)[0]

    def init_state(self, batch_size: int) -> HybridState:
        """The empty state (no tokens consumed) for ``batch_size`` sequences."""
        param = self.embed_tokens.weight  # (the head may be swapped, e.g. quantized)
        layers = tuple(
            layer.attn.init_state(batch_size, device=param.device, dtype=param.dtype)
            for layer in self.layers
        )
        return HybridState(torch.tensor(0, device=param.device), layers)

    def step(self, input_ids: torch.Tensor, state: HybridState) -> tuple[torch.Tensor, HybridState]:
        """Recurrent form: one token per sequence, ids [B] -> (logits [B, V], new state).

        Pure: ``state`` is not modified. Memory per step is constant (see :class:`HybridState`).
        """
        self._check_ids(input_ids, 1)
        batch = state.layers[0][0].shape[0]
        if input_ids.shape[0] != batch:
            raise ShapeError(f"input_ids has batch {input_ids.shape[0]}, state has batch {batch}")
        x = self.embed_tokens(input_ids)
        new_states = []
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            x, layer_state = layer.step(x, layer_state, state.pos)
            new_states.append(layer_state)
        return self.lm_head(self.norm(x)), HybridState(state.pos + 1, tuple(new_states))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: prefill ids [B, L], then step; returns [B, L + max_new_tokens]."""
        logits, state = self.prefill(input_ids)
        out = [input_ids]
        next_ids = logits[:, -1].argmax(-1)
        for i in range(max_new_tokens):
            out.append(next_ids.unsqueeze(1))
            if i + 1 < max_new_tokens:
                logits, state = self.step(next_ids, state)
                next_ids = logits.argmax(-1)
        return torch.cat(out, dim=1)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``.

        Both files are first written into a temporary directory beside ``path``
        (:func:`spikelm.fileio.atomic_directory` with ``merge``). A new ``path`` is then created by
        one ``os.replace`` of that directory; into an existing ``path`` each file is moved by its
        own ``os.replace`` (weights first), keeping any other files there. Files and a new directory get the
        modes the umask gives. Nothing is left half-written on failure.
        """
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        try:
            with atomic_directory(path, merge=(WEIGHTS_NAME, CONFIG_NAME)) as tmp:
                save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
                (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise SpikelmError(f"{path}: cannot save model ({e})") from e

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> HybridLM:
        """Load a directory written by :meth:`save_pretrained`.

        Raises :class:`SpikelmError` (missing or unreadable files), :class:`ConfigError` (bad
        config or another ``model_type``) or :class:`ShapeError` (tensors that do not fit the
        config); every message names the offending path.
        """
        path = Path(path)
        if not path.is_dir():
            raise SpikelmError(f"{path}: no such model directory")
        config = _read_config(path / CONFIG_NAME)
        tensors = _read_tensors(path / WEIGHTS_NAME, device)
        model = cls(config).to(device)
        _check_tensors(path / WEIGHTS_NAME, tensors, model.state_dict())
        model.load_state_dict(tensors)
        return model


def _read_config(path: Path) -> HybridConfig:
    if not path.is_file():
        raise SpikelmError(f"{path}: missing model config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpikelmError(f"{path}: cannot read config ({e})") from e
    try:
        return HybridConfig.from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from e


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpikelmError(f"{path}: missing weights file")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise SpikelmError(f"{path}: cannot read safetensors file ({e})") from e


def _check_tensors(
    path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SpikelmError(
            f"{path}: tensors do not match the config (missing: {missing or 'none'}; "
            f"unexpected: {unexpected or 'none'})"
        )
    for name, ref in expected.items():
        if tensors[name].shape != ref.shape:
            raise ShapeError(
                f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                f"config expects {tuple(ref.shape)}"
            )
