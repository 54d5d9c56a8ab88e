"""Block-by-block calibration of a model built on the ``meta`` device, for streaming conversion
with calibrated thresholds (llm-compressor's sequential onloading, GPTQ's layer-by-layer catcher).

1. Capture: the modules outside the decoder blocks (embeddings, rotary frequencies, the final
   norm; not the output head) get their stored tensors, and one forward per calibration batch
   runs with each block's forward replaced by a recorder that keeps the block's arguments and
   hands the hidden states on unchanged; the last block needed stops the forward. The outer
   modules are emptied again, so the embedding is read once.
2. Per block, in order, when the converter first asks for one of its layers: its stored tensors
   are loaded in float32, observers (:func:`spikelm.calibrate.observe`) watch its target layers
   while every batch runs through it, and its outputs become the next block's inputs. The float
   layers and their observers go to :func:`spikelm.convert.spiking_layer`; the block is emptied
   when the next one loads.

The observers see what the in-memory path's calibration forward shows them: the float model's
activations of the same batches in the same order, computed by the same operations. Memory holds
one block in float32, the hidden states of the calibration batches and the blocks' other
arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from spikelm.adapters import Adapter
from spikelm.calibrate import observe
from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError, UnsupportedModelError
from spikelm.observers import ActivationObserver


class _Stop(Exception):
    """Raised by the last block's recorder: the capture forward goes no further."""


class BlockwiseCalibration:
    """The float layers of ``targets`` (qualified names, all inside the blocks), each with the
    observer of its calibration inputs, handed out block by block in the blocks' order.

    ``read(name)`` returns the stored tensor of state-dict entry ``name``.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        config: SpikeConfig,
        targets: Sequence[str],
        batches: Sequence[torch.Tensor],
        read: Callable[[str], torch.Tensor],
    ) -> None:
        blocks = adapter.blocks(model)
        if blocks is None:
            raise UnsupportedModelError(
                f"{adapter.name} models have no decoder block list, so they cannot be calibrated "
                "block by block; convert without streaming"
            )
        _check_batches(batches, model.config.vocab_size)
        self.model, self.adapter, self.config, self.read = model, adapter, config, read
        self.blocks = list(blocks)
        block_of = {id(m): i for i, block in enumerate(self.blocks) for m in block.modules()}
        self.block_of = {}
        for name in targets:
            index = block_of.get(id(model.get_submodule(name)))
            if index is None:
                raise ConfigError(
                    f"layer {name!r} is outside the decoder blocks, which is all that block-by-"
                    "block calibration reaches: keep it dense or convert without --stream"
                )
            self.block_of[name] = index
        self.names = {id(m): name for name, m in model.named_modules()}
        self.current = -1
        self.observers: dict[str, ActivationObserver] = {}
        self.hidden: list[torch.Tensor] = []
        self.calls: list[list[tuple[tuple, dict[str, Any]]]] = []
        self._capture(batches, max(self.block_of.values()))

    def layer(self, name: str) -> tuple[nn.Linear, ActivationObserver]:
        """Target ``name``'s float layer and its filled observer; its block (and any block before
        it not yet run) is loaded and calibrated first, and the block run before is emptied."""
        while self.current < self.block_of[name]:
            if self.current >= 0:
                _empty(self._modules(self.blocks[self.current]))
            self.current += 1
            self._calibrate(self.current)
        return self.model.get_submodule(name), self.observers.pop(name)

    def _modules(self, root: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(self.names[id(m)], m) for m in root.modules()]

    def _capture(self, batches: Sequence[torch.Tensor], last: int) -> None:
        """Record each block's arguments (up to block ``last``) and block 0's hidden states."""
        inside = {id(m) for block in self.blocks for m in block.modules()}
        head = self.adapter.output_head(self.model)
        inside.update(id(m) for m in (head.modules() if head is not None else ()))
        outer = [(n, m) for n, m in self.model.named_modules() if id(m) not in inside]
        self.calls = [[] for _ in range(last + 1)]

        def recorder(index: int) -> Callable[..., torch.Tensor]:
            def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
                if not args or not isinstance(args[0], torch.Tensor):
                    raise UnsupportedModelError(
                        f"{self.adapter.name}: block {index} is not called with the hidden "
                        "states first, so it cannot be calibrated block by block"
                    )
                if index == 0:
                    self.hidden.append(args[0])
                self.calls[index].append((args[1:], kwargs))
                if index == last:
                    raise _Stop
                return args[0]

            return forward

        self._load(outer)
        for index in range(last + 1):
            self.blocks[index].forward = recorder(index)
        try:
            kwargs = self.adapter.calibration_kwargs(self.model, all_logits=False)
            with torch.no_grad():
                for batch in batches:
                    try:
                        self.model(batch, **kwargs)
                    except _Stop:
                        pass
        finally:
            for index in range(last + 1):
                del self.blocks[index].forward
            _empty(outer)

    def _calibrate(self, index: int) -> None:
        """Load block ``index``, observe its targets on every batch, keep its outputs."""
        block = self.blocks[index]
        self._load(self._modules(block))
        targets = {n: self.model.get_submodule(n) for n, i in self.block_of.items() if i == index}
        record = observe(targets, self.config)
        try:
            with torch.no_grad():
                for number, (args, kwargs) in enumerate(self.calls[index]):
                    out = block(self.hidden[number], *args, **kwargs)
                    if not (
                        isinstance(out, torch.Tensor) and out.shape == self.hidden[number].shape
                    ):
                        raise UnsupportedModelError(
                            f"{self.adapter.name}: block {index} does not return the next hidden "
                            "states, so it cannot be calibrated block by block"
                        )
                    self.hidden[number] = out
        finally:
            record.release()
        self.observers.update(record.observers)

    @torch.no_grad()
    def _load(self, modules: list[tuple[str, nn.Module]]) -> None:
        """Give ``modules`` (each its own tensors only) storage: non-persistent buffers computed
        as the model's constructor does, everything else read from the checkpoint."""
        for name, module in modules:
            module.to_empty(device="cpu", recurse=False)
            computed = module._non_persistent_buffers_set
            if computed:
                for key in computed:
                    buffer = getattr(module, key)
                    if buffer is not None and buffer.is_floating_point():
                        buffer.fill_(float("nan"))  # so that a buffer left unwritten shows
                self.adapter.compute_buffers(self.model, module)
                for key in computed:
                    buffer = getattr(module, key)
                    if buffer is not None and not bool(torch.isfinite(buffer).all()):
                        raise UnsupportedModelError(
                            f"{self.adapter.name}: buffer {name}.{key} is not computed by the "
                            "family's initialisation, so the model cannot be built block by block"
                        )
            stored = [
                *module.named_parameters(recurse=False),
                *((k, b) for k, b in module.named_buffers(recurse=False) if k not in computed),
            ]
            for key, tensor in stored:
                tensor.copy_(self.read(f"{name}.{key}" if name else key))


def _empty(modules: list[tuple[str, nn.Module]]) -> None:
    """Free the storage of ``modules``' own tensors (back on the ``meta`` device)."""
    for _, module in modules:
        module.to_empty(device="meta", recurse=False)


def _check_batches(batches: Sequence[torch.Tensor], vocab_size: int) -> None:
    if not batches:
        raise ConfigError("the calibration set is empty: give at least one text or token batch")
    for number, batch in enumerate(batches):
        if not (
            isinstance(batch, torch.Tensor)
            and batch.dim() == 2
            and batch.numel() > 0
            and not batch.is_floating_point()
            and int(batch.min()) >= 0
            and int(batch.max()) < vocab_size
        ):
            raise ConfigError(
                f"calibration batch {number}: expected token ids [batch, length] in "
                f"[0, {vocab_size})"
            )


__all__ = ["BlockwiseCalibration"]
