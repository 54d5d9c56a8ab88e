"""Fused projections that share an input: one ``SpikingLinear`` where several read one tensor.

Several linear layers often read the very same tensor (the query, key and value projections of an
attention block, the gate and up projections of a gated MLP). When their spiking layers have the
same neuron (the same input divisor, threshold mode and value, ``k``, coding, ``T``, count range,
spike cost, weight bits, weight-scale groups, device and backend), one ``SpikingLinear`` whose
``weight_q`` / ``weight_scale`` / ``bias`` are theirs concatenated along the output dimension
computes the concatenation of their outputs bit for bit: every output is accumulated on its own
from the same spike counts. The fused layer computes one threshold and one set of counts and makes
one backend call instead of one per member.

Detection (:class:`SharedInputTracer`) is generic: forward pre-hooks record, for every call of
every candidate layer, the identity of its input (the tensor object itself, its ``_version``,
``data_ptr``, shape and stride). Sibling layers (children of one module) whose inputs were the
same tensor on every call, each called once per input before the next input arrives, form a
group. It runs on the calibration batches when calibration runs (:func:`spikelm.spiking`), or on
one short traced forward of a few tokens through the family adapter's ``logits`` otherwise
(:func:`trace_shared_inputs`).

Fusion (:func:`fuse`) then replaces each group whose spiking layers have identical neuron
parameters; groups that differ stay unfused, with the reason logged (logger ``spikelm.fusion``):

    <parent>.{a,b,c}   FusedSpikingLinear: the members' weights concatenated in the order listed
                       (module order); ``spiking_layers`` lists it once, fan-out = sum of theirs
    <parent>.a         SharedInputSlice: returns outputs [0, out_a) of the fused layer
    <parent>.b         SharedInputSlice: outputs [out_a, out_a + out_b) ...

The first member called with a tensor runs the fused layer and keeps its output until every
member has taken its slice of that same input (same tensor object, same ``_version``), then drops
it: nothing is kept between tokens. A member called with another input (or a repeated call)
recomputes, so the result is right whatever the call pattern. Inputs without a version counter
(inference-mode tensors) cannot be checked for in-place changes: a member then computes its own
slice alone, from views of the fused weights. :func:`unfuse` restores the separate layers exactly.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from spikelm.config import SpikeConfig
from spikelm.errors import ConfigError
from spikelm.layers import SpikingLinear

log = logging.getLogger("spikelm.fusion")

PER_OUTPUT = ("weight_q", "weight_scale", "bias")
"""Buffers of a ``SpikingLinear`` indexed by output (concatenated when fused); every other buffer
must be equal in all members of a group."""
PER_LAYER = frozenset({"in_features", "out_features", "name", "probe", "training"})
"""Plain attributes allowed to differ between members (every other one describes the neuron)."""
TRACE_TOKENS = 8
"""Tokens of the traced forward that finds shared inputs when no calibration data runs."""

Token = tuple
"""What identifies one call's input: (tensor serial, version, data_ptr, shape, stride)."""


# --- names ---------------------------------------------------------------------------------------


def fused_name(members: Sequence[str]) -> str:
    """``<parent>.{a,b,c}`` for the sibling layers ``<parent>.a``, ``<parent>.b``, ...

    :class:`ConfigError` unless there are at least two distinct siblings.
    """
    parents = {name.rpartition(".")[0] for name in members}
    children = [name.rpartition(".")[2] for name in members]
    if len(members) < 2 or len(parents) != 1 or len(set(children)) != len(children):
        raise ConfigError(f"cannot fuse {list(members)}: fusion needs two or more sibling layers")
    if not all(children) or any(c in ("{", "}", ",") or _braced(c) for c in children):
        raise ConfigError(f"cannot fuse {list(members)}: a member's name is not a plain name")
    parent = parents.pop()
    return (parent + "." if parent else "") + "{" + ",".join(children) + "}"


def member_names(name: str) -> list[str]:
    """``[name]``, plus the members' names for a fused ``<parent>.{a,b}``: the names a layer
    pattern may match it by (``*.q_proj`` selects the layer that q_proj was fused into)."""
    parent, _, child = name.rpartition(".")
    if not (child.startswith("{") and child.endswith("}")):
        return [name]
    prefix = parent + "." if parent else ""
    return [name, *(prefix + member for member in child[1:-1].split(","))]


def _braced(name: str) -> bool:
    return any(ch in name for ch in "{},")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


# --- detection -----------------------------------------------------------------------------------


def _version(x: torch.Tensor) -> int | None:
    try:
        return x._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class SharedInputTracer:
    """Records, per call of each named layer, which tensor it read; see :meth:`groups`.

    Holds no tensor: inputs are told apart by weak references, so tracing a long calibration run
    keeps no activation alive. Use as a context manager, or call :meth:`remove`.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.calls: dict[str, list[tuple[int, Token | None]]] = {name: [] for name in layers}
        self._serials: dict[int, tuple[weakref.ref, int]] = {}
        self._next = 0
        self._order = 0
        self._handles = [
            module.register_forward_pre_hook(self._hook(name), prepend=True)
            for name, module in layers.items()
        ]

    def __enter__(self) -> SharedInputTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Detach the hooks (what was recorded stays)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._serials.clear()

    def _serial(self, x: torch.Tensor) -> int:
        key = id(x)
        entry = self._serials.get(key)
        if entry is not None and entry[0]() is x:
            return entry[1]

        def forget(ref: weakref.ref, key: int = key) -> None:
            found = self._serials.get(key)
            if found is not None and found[0] is ref:
                del self._serials[key]

        serial = self._next
        self._next += 1
        self._serials[key] = (weakref.ref(x, forget), serial)
        return serial

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0] if len(args) == 1 else None
            token = None
            if isinstance(x, torch.Tensor):
                version = _version(x)
                if version is not None:
                    token = (
                        self._serial(x), version, x.data_ptr(), tuple(x.shape), tuple(x.stride())
                    )  # fmt: skip
            self.calls[name].append((self._order, token))
            self._order += 1

        return hook

    def groups(self) -> list[tuple[str, ...]]:
        """Groups of sibling layers (module order within each) that read the same tensor on every
        call, each member once per input before the next input; layers never called, or called
        with anything but one tensor, are in no group."""
        candidates: dict[tuple, list[str]] = {}
        for name, calls in self.calls.items():
            tokens = tuple(token for _, token in calls)
            if not tokens or any(token is None for token in tokens):
                continue
            candidates.setdefault((name.rpartition(".")[0], tokens), []).append(name)
        found = []
        for members in candidates.values():
            if len(members) < 2:
                continue
            if not self._in_blocks(members):
                log.debug("not fusing %s: their calls interleave across inputs", members)
                continue
            try:
                fused_name(members)
            except ConfigError as error:
                log.debug("not fusing %s: %s", members, error)
                continue
            found.append(tuple(members))
        return found

    def _in_blocks(self, members: Sequence[str]) -> bool:
        """Whether the members' calls come in blocks: every member once with one input, then the
        next input."""
        merged = sorted(
            (order, token, name) for name in members for order, token in self.calls[name]
        )
        size = len(members)
        for start in range(0, len(merged), size):
            block = merged[start : start + size]
            if len({token for _, token, _ in block}) != 1 or len({n for *_, n in block}) != size:
                return False
        return True


@contextlib.contextmanager
def tracing(layers: Mapping[str, nn.Module]) -> Iterator[SharedInputTracer]:
    """A :class:`SharedInputTracer` on ``layers`` for the block (e.g. around ``calibrate``)."""
    tracer = SharedInputTracer(layers)
    try:
        yield tracer
    finally:
        tracer.remove()


def trace_shared_inputs(
    model: nn.Module, layers: Mapping[str, nn.Module], tokens: int = TRACE_TOKENS
) -> list[tuple[str, ...]]:
    """The shared-input groups among ``layers`` from one forward of ``tokens`` token ids through
    the family adapter's ``logits``; none for a plain module (its input is unknown) or when that
    forward fails (logged)."""
    from spikelm.adapters import MODULE, adapter_for

    adapter = adapter_for(model)
    if adapter is MODULE:
        log.debug("no shared-input trace for a plain module: its input is unknown")
        return []
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    ids = (torch.arange(1, tokens + 1, device=device) % _vocab_size(model)).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with tracing(layers) as tracer, torch.no_grad():
            adapter.logits(model, ids, **adapter.calibration_kwargs(model, all_logits=False))
    except Exception as error:  # fusion is an optimisation: a failed trace only skips it
        log.warning("shared inputs not traced, layers stay unfused: %s", error)
        return []
    finally:
        model.train(was_training)
    return tracer.groups()


def _vocab_size(model: nn.Module) -> int:
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    size = getattr(embeddings, "num_embeddings", None)
    if not isinstance(size, int):
        size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else 1


# --- the fused layer -----------------------------------------------------------------------------


class _Shared:
    """The fused output of one input, split into the members' slices (views), until every member
    has taken its slice."""

    __slots__ = ("input", "slices", "taken", "version")

    def __init__(self, x: torch.Tensor, version: int, slices: tuple[torch.Tensor, ...]) -> None:
        self.input, self.version, self.slices = x, version, slices
        self.taken = 0  # bit i: member i has taken its slice


class FusedSpikingLinear(SpikingLinear):
    """The ``SpikingLinear`` of sibling layers that read one input, their outputs concatenated.

    ``parts`` are the members' names relative to the common parent (module order), ``splits``
    their output widths; ``out_features = sum(splits)``. Called directly it is a plain
    ``SpikingLinear``; its members (:class:`SharedInputSlice`) call :meth:`take`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: SpikeConfig,
        *,
        parts: Sequence[str],
        splits: Sequence[int],
        bias: bool = True,
        backend: str = "torch",
        name: str = "",
    ) -> None:
        if len(parts) != len(splits) or len(parts) < 2 or sum(splits) != out_features:
            raise ConfigError(
                f"fused layer {name!r}: parts {list(parts)} and widths {list(splits)} do not "
                f"make {out_features} outputs"
            )
        super().__init__(in_features, out_features, config, bias=bias, backend=backend, name=name)
        self.parts = tuple(parts)
        self.splits = tuple(int(s) for s in splits)
        ends = [sum(self.splits[: i + 1]) for i in range(len(self.splits))]
        self.bounds = tuple(zip([0, *ends[:-1]], ends, strict=True))
        self._everyone = (1 << len(self.parts)) - 1  # every member's bit in _Shared.taken
        self._spike_config = config
        self._hold(None)
        self._views: dict[int, tuple[tuple, SpikingLinear]] = {}

    def member_names(self, name: str | None = None) -> tuple[str, ...]:
        """The members' qualified names, for the fused layer at ``name`` (default its own)."""
        parent = (self.name if name is None else name).rpartition(".")[0]
        return tuple((parent + "." if parent else "") + part for part in self.parts)

    @property
    def pending(self) -> bool:
        """Whether a fused output is held for members that have not taken their slice yet."""
        return self._shared is not None

    def release(self) -> None:
        """Drop a held fused output (after a forward that stopped half way, e.g. on an error)."""
        self._hold(None)

    def _hold(self, shared: _Shared | None) -> None:
        # straight into __dict__: nn.Module.__setattr__ costs ~3 us, three times per token
        self.__dict__["_shared"] = shared

    def take(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s output for input ``x``: its slice of the fused output, computed by
        the first member that reads ``x`` and dropped once every member has taken its slice."""
        shared, bit = self._shared, 1 << index
        if (
            shared is None
            or shared.input is not x
            or shared.taken & bit
            or shared.version != x._version  # x is the held input: it has a version counter
        ):
            shared = self._compute(x)
        if shared is None:  # cannot tell whether x changes in place later: no sharing
            return self.member_layer(index, probe=self.probe)(x)
        shared.taken |= bit
        if shared.taken == self._everyone:
            self._hold(None)
        return shared.slices[index].contiguous()  # a view of one row is contiguous already

    def _compute(self, x: torch.Tensor) -> _Shared | None:
        """The fused output of ``x``, held for the members; ``None`` (nothing computed) when ``x``
        keeps no version counter."""
        version = _version(x)
        if version is None:
            return None
        self._hold(None)  # release the old output before computing the new one
        shared = _Shared(x, version, self(x).split(self.splits, -1))
        self._hold(shared)
        return shared

    def _apply(self, fn, recurse: bool = True):  # .to(), .float(), ...: new buffers
        self._hold(None)
        self._views = {}
        return super()._apply(fn, recurse)

    def member_layer(self, index: int, *, copy: bool = False, probe: Any = None) -> SpikingLinear:
        """Member ``index`` as a separate ``SpikingLinear``: views of the fused buffers (cached
        while the buffers stay the same), or independent copies with ``copy=True``."""
        token = tuple(
            (t.device, t.data_ptr(), _version(t)) if t is not None else None
            for t in self._buffers.values()
        )
        cached = None if copy else self._views.get(index)
        if cached is not None and cached[0] == token:
            layer = cached[1]
        else:
            start, stop = self.bounds[index]
            layer = _layer_like(
                SpikingLinear,
                self,
                self._spike_config,
                stop - start,
                self.member_names()[index],
            )
            for key, buffer in self._buffers.items():
                value = buffer
                if key in PER_OUTPUT and buffer is not None:
                    value = buffer[start:stop]
                if copy and value is not None:
                    value = value.clone()
                layer.register_buffer(
                    key, value, persistent=key not in self._non_persistent_buffers_set
                )
            if not copy:
                self._views[index] = (token, layer)
        for key, value in _plain_attributes(self).items():  # backend etc. may change later
            if key not in ("parts", "splits", "bounds"):
                setattr(layer, key, value)
        layer.train(self.training)
        layer.probe = probe
        return layer

    def extra_repr(self) -> str:
        return super().extra_repr() + f", parts={list(self.parts)}, splits={list(self.splits)}"


class SharedInputSlice(nn.Module):
    """Stands where a fused member was: its slice of a :class:`FusedSpikingLinear`'s output.

    Holds the fused layer without registering it (it is registered once, under its own name), so
    state dicts, ``spiking_layers`` and ``model.to`` see it once.
    """

    def __init__(self, fused: FusedSpikingLinear, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "fused", fused)
        self.index = index
        self.in_features = fused.in_features
        self.out_features = fused.splits[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.take(self.index, x)

    def extra_repr(self) -> str:
        start, stop = self.fused.bounds[self.index]
        return f"of={self.fused.name!r}, outputs=[{start}:{stop}]"


# --- fusing and unfusing -------------------------------------------------------------------------


def _plain_attributes(layer: nn.Module) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(layer).items()
        if not key.startswith("_") and key not in PER_LAYER
    }


def _layer_like(
    cls: type, template: SpikingLinear, config: SpikeConfig, out_features: int, name: str, **extra
) -> SpikingLinear:
    """A ``cls`` layer with ``template``'s neuron attributes (buffers are the caller's)."""
    layer = cls(
        template.in_features,
        out_features,
        config,
        bias=template.bias is not None,
        backend=template.backend,
        name=name,
        **extra,
    )
    for key, value in _plain_attributes(template).items():
        if key not in ("parts", "splits", "bounds"):  # a fused template's own
            setattr(layer, key, value)
    layer.train(template.training)
    return layer


def mismatch(layers: Sequence[nn.Module]) -> str | None:
    """Why ``layers`` cannot be fused (one line), or ``None`` when they can."""
    if any(type(layer) is not SpikingLinear for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        return f"not all plain SpikingLinear layers ({', '.join(kinds)})"
    first = layers[0]
    if any(True for layer in layers for _ in layer.parameters()):
        return "a layer holds parameters"
    attributes = _plain_attributes(first)
    for layer in layers[1:]:
        if layer.in_features != first.in_features:
            return f"input widths differ ({first.in_features} vs {layer.in_features})"
        other = _plain_attributes(layer)
        for key in sorted(set(attributes) | set(other)):
            if not _same(attributes.get(key), other.get(key)):
                return f"{key} differs ({attributes.get(key)!r} vs {other.get(key)!r})"
        if set(first._buffers) != set(layer._buffers):
            return "their buffers differ"
        for key, mine in first._buffers.items():
            theirs = layer._buffers[key]
            if (mine is None) != (theirs is None):
                return f"{key} is set in some layers only"
            if mine is None:
                continue
            if mine.device != theirs.device or mine.dtype != theirs.dtype:
                return f"{key} differs in device or dtype"
            if key in PER_OUTPUT:
                if mine.shape[1:] != theirs.shape[1:]:
                    return f"{key} differs in shape beyond the output dimension"
            elif mine.shape != theirs.shape or not torch.equal(mine, theirs):
                return f"{key} values differ"
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.device == b.device
            and bool(torch.equal(a, b))
        )
    return type(a) is type(b) and a == b


def fused_layer(
    members: Sequence[str], layers: Sequence[SpikingLinear], config: SpikeConfig
) -> FusedSpikingLinear:
    """The fused layer of sibling ``layers`` named ``members`` (checked with :func:`mismatch`)."""
    reason = mismatch(layers)
    if reason:
        raise ConfigError(f"cannot fuse {list(members)}: {reason}")
    name = fused_name(members)
    first = layers[0]
    fused = _layer_like(
        FusedSpikingLinear,
        first,
        config,
        sum(layer.out_features for layer in layers),
        name,
        parts=[m.rpartition(".")[2] for m in members],
        splits=[layer.out_features for layer in layers],
    )
    with torch.no_grad():
        for key, buffer in first._buffers.items():
            value = buffer
            if key in PER_OUTPUT and buffer is not None:
                value = torch.cat([layer._buffers[key] for layer in layers])
            fused.register_buffer(
                key, value, persistent=key not in first._non_persistent_buffers_set
            )
    return fused


def install(model: nn.Module, fused: FusedSpikingLinear, name: str | None = None) -> None:
    """Put ``fused`` into ``model`` at ``name`` (default ``fused.name``), listed just before its
    first member, and a :class:`SharedInputSlice` at each member's place."""
    name = fused.name if name is None else name
    parent, child = _parent(model, name)
    members = fused.member_names(name)
    first = members[0].rpartition(".")[2]
    if first not in parent._modules:
        raise ConfigError(f"cannot fuse into {name!r}: the model has no layer {members[0]!r}")
    order = list(parent._modules.items())
    parent._modules.clear()
    for key, module in order:
        if key == first:
            parent._modules[child] = fused
        if key != child:
            parent._modules[key] = module
    for index, member in enumerate(members):
        setattr(parent, member.rpartition(".")[2], SharedInputSlice(fused, index))


def fuse(
    model: nn.Module, groups: Iterable[Sequence[str]], config: SpikeConfig | None = None
) -> dict[str, tuple[str, ...]]:
    """Fuse each group of sibling spiking layers of ``model`` (names) that share an input and
    have identical neuron parameters, in place; returns ``{fused name: members}``. A group that
    fails the check stays as it is (logged at INFO with the reason)."""
    config = config or getattr(model, "_spikelm_config", None)
    if config is None:
        raise ConfigError("fuse() needs a converted model (no spike config found)")
    done: dict[str, tuple[str, ...]] = {}
    for members in groups:
        members = tuple(members)
        try:
            layers = [model.get_submodule(m) for m in members]
        except AttributeError:
            log.info("not fusing %s: a layer is missing", list(members))
            continue
        reason = mismatch(layers)
        if reason is None:
            try:
                fused_name(members)
            except ConfigError as error:
                reason = str(error)
        if reason:
            log.info("not fusing %s: %s", list(members), reason)
            continue
        fused = fused_layer(members, layers, config)
        del layers
        install(model, fused)
        done[fused.name] = members
        log.debug("fused %s", fused.name)
    return done


def fused_layers(model: nn.Module) -> dict[str, FusedSpikingLinear]:
    """Every :class:`FusedSpikingLinear` of ``model`` by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FusedSpikingLinear)}


def spiking_projections(model: nn.Module) -> dict[str, nn.Module]:
    """Every converted projection of ``model`` under its own name, in module order: separate
    ``SpikingLinear`` layers and the members (:class:`SharedInputSlice`) of fused ones."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, SharedInputSlice)
        or (isinstance(module, SpikingLinear) and not isinstance(module, FusedSpikingLinear))
    }


def unfuse(model: nn.Module) -> nn.Module:
    """Put the separate ``SpikingLinear`` layers back (exact copies of their slices), in place;
    returns ``model``."""
    for name, fused in fused_layers(model).items():
        parent, child = _parent(model, name)
        for index, member in enumerate(fused.member_names(name)):
            layer = fused.member_layer(index, copy=True)
            layer.name = member
            setattr(parent, member.rpartition(".")[2], layer)
        delattr(parent, child)
    return model


def release(model: nn.Module) -> None:
    """Drop every fused output still held (see :meth:`FusedSpikingLinear.release`)."""
    for fused in fused_layers(model).values():
        fused.release()


__all__ = [
    "FusedSpikingLinear",
    "SharedInputSlice",
    "SharedInputTracer",
    "fuse",
    "fused_layer",
    "fused_layers",
    "fused_name",
    "install",
    "mismatch",
    "release",
    "spiking_projections",
    "trace_shared_inputs",
    "tracing",
    "unfuse",
]
