"""Block-by-block calibration of a model built on the ``meta`` device, for streaming conversion
with calibrated thresholds (llm-compressor's sequential onloading, GPTQ's layer-by-layer catcher)
and the ``spikelm`` recipe learned block by block (BRECQ's block reconstruction).

1. Capture: the modules outside the decoder blocks (embeddings, rotary frequencies, the final
   norm; not the output head) get their stored tensors, and one forward per calibration batch
   runs with each block's forward replaced by a recorder that keeps the block's arguments and
   hands the hidden states on unchanged; the last block needed stops the forward. The outer
   modules are emptied again, so the embedding is read once.
2. Per block, in order, when the converter first asks for one of its layers: its stored tensors
   are loaded in float32, observers (:func:`spikelm.calibrate.observe`) watch its target layers
   while every batch runs through it, its outputs become the next block's inputs, and its
   target layers are converted (:func:`spikelm.convert.spiking_layer`); the block is emptied
   when the next one loads.

The observers see what the in-memory path's calibration forward shows them: the float model's
activations of the same batches in the same order, computed by the same operations. Memory holds
one block in float32, the hidden states of the calibration batches and the blocks' other
arguments.

With ``recipe="spikelm"``, a float pass through every block first keeps the float model's last
hidden states ``h`` and measures each block's amplification ``a_b`` (its conversion error on
batch 0 carried by the float blocks after it, against the same error added to ``h``: the ratio
of the two KLs at the head). Then each block ``b``, once converted, runs the recipe's steps
(:func:`spikelm.recipes.recipe_steps`) on the hidden states the spiking blocks before it give,
``x_b``, and learns its layers' thresholds and gains (:func:`spikelm.learn.fit_neurons`) on

    a_b KL( p(. | h) || p(. | h + f~_b(x_b) - f_b(x_b^ann)) )  +  lambda (C_b / C) S_b

the block's error carried to the output head along the residual stream (the later blocks'
growth of it taken from ``a_b``; the outer modules and the head are loaded for it), plus its
spikes per channel weighted by its share ``C_b / C`` of the model's input channels, so that
``lambda`` (``spike_weight``) and the budget mean what they mean for the whole-model recipe.
Memory holds one block, the outer modules and the head, four hidden states per batch and two
per block for batch 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spikelm.adapters import Adapter
from spikelm.calibrate import calibration_logits, observe
from spikelm.config import SpikeConfig
from spikelm.convert import spiking_layer
from spikelm.errors import ConfigError, UnsupportedModelError
from spikelm.estimators.counters import SpikeStats
from spikelm.layers import SpikingLinear
from spikelm.learn import LearnReport, fit_neurons, frozen, kl_divergence
from spikelm.recipes import SATURATION_BATCHES, learn_options, recipe_steps
from spikelm.saturation import measure_saturation
from spikelm.targets import set_submodule

MAX_AMPLIFICATION = 16.0
"""The most (and one over the least) a block's measured amplification weighs its KL."""


class _Stop(Exception):
    """Raised by the last block's recorder: the capture forward goes no further."""


class BlockwiseCalibration:
    """The spiking layers of ``targets`` (qualified names, all inside the blocks), each converted
    from its float layer with the observer of its calibration inputs (and, for the ``spikelm``
    recipe, its neuron learned), handed out block by block in the blocks' order.

    ``read(name)`` returns the stored tensor of state-dict entry ``name``. After the last layer,
    :attr:`saturation` holds the learned layers' firing statistics on the calibration data.
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
        self.batches = list(batches)
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
        self.channels = sum(model.get_submodule(name).in_features for name in targets)
        self.current = -1
        self.ready: dict[str, SpikingLinear] = {}
        self.saturation: dict[str, SpikeStats] = {}
        self.hidden: list[torch.Tensor] = []
        self.calls: list[list[tuple[tuple, dict[str, Any]]]] = []
        self.recipe = config.recipe != "spikingbrain"
        self.learns = self.recipe and adapter.output_head(model) is not None
        last = len(self.blocks) - 1 if self.learns else max(self.block_of.values())
        self.tail = self._capture(last)
        self.amplification: dict[int, float] = {}
        if self.learns:
            self._float_pass()
        self.spiking = list(self.hidden)

    def layer(self, name: str) -> SpikingLinear:
        """Target ``name``'s spiking layer; its block (and any block before it not yet run) is
        loaded, calibrated and converted first, and the block run before is emptied."""
        while self.current < self.block_of[name]:
            if self.current >= 0:
                _empty(self._modules(self.blocks[self.current]))
            self.current += 1
            self._convert(self.current)
        return self.ready.pop(name)

    def _modules(self, root: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(self.names[id(m)], m) for m in root.modules()]

    def _capture(self, last: int) -> list[tuple[str, nn.Module]]:
        """Record each block's arguments (up to block ``last``) and block 0's hidden states;
        returns the modules outside the blocks (the output head's too)."""
        inside = {id(m) for block in self.blocks for m in block.modules()}
        head = self.adapter.output_head(self.model)
        heads = [(self.names[id(m)], m) for m in (head.modules() if head is not None else ())]
        inside.update(id(m) for _, m in heads)
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
                for batch in self.batches:
                    try:
                        self.model(batch, **kwargs)
                    except _Stop:
                        pass
        finally:
            for index in range(last + 1):
                del self.blocks[index].forward
            _empty(outer)
        return outer + heads

    def _forward(self, index: int, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Block ``index`` (loaded) on ``inputs``, those of the first ``len(inputs)`` batches,
        without gradients."""
        block, outputs = self.blocks[index], []
        with torch.no_grad():
            for hidden, (args, kwargs) in zip(inputs, self.calls[index], strict=False):
                out = block(hidden, *args, **kwargs)
                if not (isinstance(out, torch.Tensor) and out.shape == hidden.shape):
                    raise UnsupportedModelError(
                        f"{self.adapter.name}: block {index} does not return the next hidden "
                        "states, so it cannot be calibrated block by block"
                    )
                outputs.append(out)
        return outputs

    def _calibrated(
        self, index: int, inputs: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], dict[str, SpikingLinear]]:
        """Block ``index`` (loaded) on the float model's ``inputs``, observed: its outputs and
        its targets converted."""
        floats = {n: self.model.get_submodule(n) for n, i in self.block_of.items() if i == index}
        record = observe(floats, self.config)
        try:
            outputs = self._forward(index, inputs)
        finally:
            record.release()
        layers = {
            name: spiking_layer(linear, self.config, name, record.observers[name])
            for name, linear in floats.items()
        }
        return outputs, layers

    @contextlib.contextmanager
    def _installed(self, layers: dict[str, SpikingLinear]) -> Iterator[None]:
        """The spiking ``layers`` in the model in place of its float ones for the block."""
        floats = {name: self.model.get_submodule(name) for name in layers}
        try:
            for name, layer in layers.items():
                set_submodule(self.model, name, layer)
            yield
        finally:
            for name, linear in floats.items():
                set_submodule(self.model, name, linear)

    def _float_pass(self) -> None:
        """Every block once, in float32: the float model's last hidden states, and each block's
        amplification on batch 0, ``KL(h + e_b carried by the float blocks after it) /
        KL(h + e_b)``, ``e_b`` the error of the block as converted, before learning."""
        self.final = list(self.hidden)
        carried: dict[int, torch.Tensor] = {}  # block -> batch 0's last hidden states, e_b added
        errors: dict[int, torch.Tensor] = {}  # block -> e_b on batch 0
        for index, block in enumerate(self.blocks):
            self._load(self._modules(block))
            for source, hidden in carried.items():
                carried[source] = self._forward(index, [hidden])[0]
            outputs, layers = self._calibrated(index, self.final)
            if layers:
                with self._installed(layers):
                    carried[index] = self._forward(index, self.final[:1])[0]
                errors[index] = carried[index] - outputs[0]
            self.final = outputs
            _empty(self._modules(block))
        self._load(self.tail)
        with torch.no_grad():
            teacher = F.log_softmax(self._logits(0, self.final[0]), dim=-1)
            for index, hidden in carried.items():
                direct = float(
                    kl_divergence(teacher, self._logits(0, self.final[0] + errors[index]))
                )
                through = float(kl_divergence(teacher, self._logits(0, hidden)))
                ratio = through / direct if direct > 0 else 1.0
                self.amplification[index] = min(
                    max(ratio, 1 / MAX_AMPLIFICATION), MAX_AMPLIFICATION
                )

    def _convert(self, index: int) -> None:
        """Load block ``index``, observe its targets on every batch, keep its outputs, convert its
        targets (and run the recipe on them)."""
        block = self.blocks[index]
        self._load(self._modules(block))
        outputs, layers = self._calibrated(index, self.hidden)
        if self.recipe:
            with self._installed(layers):
                if layers:
                    self._recipe(index, layers, outputs)
                self.spiking = self._forward(index, self.spiking)
        if self.learns and index == max(self.block_of.values()):
            _empty(self.tail)
        self.hidden = outputs
        self.ready.update(layers)

    def _run(self, block: nn.Module, number: int) -> torch.Tensor:
        """``block`` on batch ``number``'s hidden states from the spiking blocks before it."""
        args, kwargs = self.calls[self.current][number]
        return block(self.spiking[number], *args, **kwargs)

    def _recipe(self, index: int, layers: dict[str, SpikingLinear], outputs: list) -> None:
        """The recipe's steps on block ``index``, its spiking ``layers`` in place (``outputs``:
        the float block's on the float model's hidden states)."""
        block, numbers = self.blocks[index], range(len(self.calls[index]))
        measured = list(numbers[:SATURATION_BATCHES])
        learn = None
        if self.learns:

            def learn() -> LearnReport:
                return self._learn(index, layers, outputs)

        recipe_steps(block, measured, self._run, learn)
        prefix = self.names[id(block)]
        stats = measure_saturation(block, measured, self._run)
        self.saturation.update({f"{prefix}.{name}": s for name, s in stats.items()})

    def _learn(
        self, index: int, layers: dict[str, SpikingLinear], outputs: list[torch.Tensor]
    ) -> LearnReport:
        """Fit ``layers``' neurons against block ``index``'s error carried to the output head."""
        block, amplification = self.blocks[index], self.amplification[index]

        def distortion(number: int) -> torch.Tensor:
            error = self._run(block, number) - outputs[number]
            with torch.no_grad():
                teacher = F.log_softmax(self._logits(number, self.final[number]), dim=-1)
            kl = kl_divergence(teacher, self._logits(number, self.final[number] + error))
            return amplification * kl

        share = sum(layer.in_features for layer in layers.values()) / self.channels
        options = learn_options(self.config)
        with frozen(self.model):
            return fit_neurons(layers, len(self.batches), distortion, options, share=share)

    def _logits(self, number: int, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, L - 1, V]`` of batch ``number`` with ``hidden`` as the last
        block's output: the model's own forward, its first block returning ``hidden`` and the
        others passing it on."""

        def first(*args: Any, **kwargs: Any) -> torch.Tensor:
            return hidden

        def through(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return x

        try:
            for index, block in enumerate(self.blocks):
                block.forward = first if index == 0 else through
            logits = calibration_logits(self.model, self.batches[number])
        finally:
            for block in self.blocks:
                block.__dict__.pop("forward", None)
        return logits[:, :-1].float()

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
