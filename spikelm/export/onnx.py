"""ONNX export of a spiking LM: a decode-step graph with explicit state, a prefill graph, and
single spiking-layer graphs.

    result = export_onnx(model, "out/lm.onnx")          # out/lm.onnx + out/lm.prefill.onnx
    print(result.summary())

The decode graph is one token step: ``input_ids [batch, 1]`` (plus ``position`` where the family
needs it) and every piece of recurrent state as inputs (``past_key_values.{i}.key`` ...), and
``logits [batch, 1, vocab]`` plus the new state (``present.{i}.key`` ...) as outputs. The prefill
graph runs that step in an ONNX ``Loop`` over a prompt ``input_ids [batch, sequence]`` from the
empty state. Spiking layers are computed inside the graphs from int8 weight initializers:
threshold, rounding and clamping as compare/round ops, the coder's spike planes, MatMulInteger
(int8 x int8 -> int32) and the float64 epilogue (:mod:`spikelm.export.onnx_spiking`).

Exporter: PyTorch's TorchScript-based ``torch.onnx.export(..., dynamo=False)``, which traces the
adapter's ``step`` with every ``SpikingLinear`` replaced by a traced op whose ONNX nodes
spikelm writes itself. The dynamo exporter needs ``onnxscript``, which spikelm does not depend
on. See docs/onnx-export.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch
from torch import nn

from spikelm import __version__
from spikelm.adapters import ADAPTERS, Adapter, TransformersAdapter, adapter_for
from spikelm.errors import ConfigError
from spikelm.export.onnx_prefill import prefill_model
from spikelm.export.onnx_spiking import LayerSpec, SpikesLinearOp, SpikingLinearOp
from spikelm.layers import SpikingLinear, spiking_layers

EXPORTER = "torchscript"
"""The torch.onnx exporter used: ``torch.onnx.export(..., dynamo=False)``."""
DEFAULT_OPSET = 18
OPSETS = (17, 18, 19, 20)
"""Opsets the export accepts (the TorchScript exporter's range that has every op used)."""
EXPERT_KEYS = ("num_experts", "num_local_experts")
"""Config keys of routed mixture-of-experts models, which the exporter refuses: their experts loop
in Python over the experts the tokens pick, and a trace would freeze one routing."""
EXTERNAL_DATA_BYTES = 2**31 - 2**26
"""Initializers above this many bytes go to one external data file (protobuf's limit is 2 GiB)."""
COUNTS_PREFIX = "spike_counts."
TRACE_BATCH = 2
TRACE_TOKENS = 3


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One state input: its empty value is ``full(shape, fill)`` (``None`` in shape: the batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    fill: float

    def empty(self, batch: int) -> np.ndarray:
        """The empty (no token consumed) value for ``batch`` sequences."""
        shape = tuple(batch if d is None else d for d in self.shape)
        return np.full(shape, self.fill, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """One written ONNX file."""

    kind: str
    path: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    bytes: int
    external_data: Path | None = None


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    family: str
    exporter: str
    opset: int
    graphs: tuple[OnnxGraph, ...]
    spiking_layers: tuple[str, ...]
    state: tuple[StateSpec, ...]
    batch: int | None
    """The batch size the graphs take, or ``None`` when any batch size works."""
    float32_bytes: int
    """Bytes the model's tensors would take in float32 (what the int8 files are measured by)."""

    def graph(self, kind: str) -> OnnxGraph:
        """The graph of ``kind`` (``decode``, ``prefill`` or ``layer``)."""
        for graph in self.graphs:
            if graph.kind == kind:
                return graph
        raise KeyError(kind)

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """The decode graph's state inputs before any token (``position`` included if any)."""
        if self.batch is not None and batch != self.batch:
            raise ConfigError(f"the {self.family} graphs take batch {self.batch}, not {batch}")
        return {spec.name: spec.empty(batch) for spec in self.state}

    def summary(self) -> str:
        """A few lines for a terminal: files, sizes, names, opset and exporter."""
        what = (
            f"spiking layer {self.spiking_layers[0]!r}"
            if self.family == "layer"
            else f"a {self.family} model ({len(self.spiking_layers)} spiking layers)"
        )
        lines = [
            f"ONNX export of {what}: exporter {self.exporter}, opset {self.opset}, "
            + ("int8 weights" if self.spiking_layers else "float32 weights (not spiking)")
        ]
        for graph in self.graphs:
            extra = f" + {graph.external_data.name}" if graph.external_data else ""
            lines.append(
                f"  {graph.kind:8s} {graph.path}{extra}: {graph.bytes / 2**20:.2f} MiB, "
                f"{len(graph.inputs)} inputs, {len(graph.outputs)} outputs"
            )
            shown = [n for n in graph.outputs if not n.startswith(COUNTS_PREFIX)]
            counts = len(graph.outputs) - len(shown)
            lines.append(f"           in: {', '.join(graph.inputs)}")
            lines.append(
                f"           out: {', '.join(shown)}"
                + (f" + {counts} {COUNTS_PREFIX}* outputs" if counts else "")
            )
        lines.append(f"  the same tensors in float32: {self.float32_bytes / 2**20:.2f} MiB")
        return "\n".join(lines)


def present_name(name: str) -> str:
    """The output name of state input ``name``: ``past_key_values.{i}.x`` -> ``present.{i}.x``,
    ``position`` -> ``present.position``."""
    if name.startswith("past_key_values."):
        return "present." + name[len("past_key_values.") :]
    return "present." + name


# --- checks -----------------------------------------------------------------------------------


def _check_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"{path}: an ONNX file name must end in .onnx")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give an ONNX file name")
    return path


def _check_opset(opset: int) -> int:
    if opset not in OPSETS:
        raise ConfigError(
            f"opset {opset!r} is not supported; choose one of {', '.join(map(str, OPSETS))}"
        )
    return opset


def _refusal(adapter: Adapter, config: Any) -> str | None:
    """Why a model of ``adapter``'s family with ``config`` cannot be traced faithfully, or None."""
    if not adapter.steps:
        return "it has no token-by-token step"
    if (
        isinstance(adapter, TransformersAdapter)
        and type(adapter).step_inputs is not TransformersAdapter.step_inputs
    ):
        return "its step passes positions as Python ints, which a trace would freeze"
    if any(getattr(config, key, None) for key in EXPERT_KEYS):
        return "its routed experts loop in Python over the experts a token picks"
    return None


def families() -> tuple[str, ...]:
    """The model families :func:`export_onnx` handles: those whose step a trace holds, judged
    for the transformers families (when transformers is installed) by their default config."""
    names = []
    for adapter in ADAPTERS:
        config = None
        if isinstance(adapter, TransformersAdapter):
            if find_spec("transformers") is None:
                continue
            from transformers import AutoConfig

            try:
                config = AutoConfig.for_model(adapter.model_types[0])
            except (KeyError, ValueError):  # a model type this transformers does not know
                continue
        if _refusal(adapter, config) is None:
            names.append(adapter.name)
    return tuple(names)


def _check_model(model: nn.Module, dense: bool = False) -> tuple[Adapter, dict[str, SpikingLinear]]:
    adapter = adapter_for(model)
    reason = _refusal(adapter, getattr(model, "config", None))
    if reason:
        raise ConfigError(
            f"cannot export a {adapter.name!r} model ({type(model).__name__}) to ONNX: {reason}; "
            f"families the exporter handles: {', '.join(families())}"
        )
    layers = spiking_layers(model)
    if not layers and not dense:
        raise ConfigError("the model has no spiking layers: convert it first (spikelm.convert)")
    floats = {t.dtype for t in model.parameters() if t.is_floating_point()}
    if floats - {torch.float32} or any(t.device.type != "cpu" for t in model.parameters()):
        raise ConfigError("export a float32 model on the CPU: call model.float().cpu() first")
    if model.training:
        raise ConfigError("export a model in eval mode: call model.eval() first")
    for layer in layers.values():
        LayerSpec.of(layer)
    return adapter, layers


# --- tracing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _traced_layers(layers: Mapping[str, SpikingLinear], counts: list) -> Iterator[None]:
    """Route every spiking layer's forward through :class:`SpikingLinearOp` for the block;
    ``counts`` collects ``(name, counts)`` in call order."""
    saved = {name: layer.__dict__.get("forward") for name, layer in layers.items()}

    def routed(name: str, layer: SpikingLinear, spec: LayerSpec):
        def forward(x: torch.Tensor) -> torch.Tensor:
            y, n = SpikingLinearOp.apply(
                x,
                layer.weight_q,
                layer.weight_scale,
                layer.input_divisor,
                layer.threshold,
                layer.bias,
                spec,
                layer,
            )
            counts.append((name, n))
            return y

        return forward

    try:
        for name, layer in layers.items():
            layer.forward = routed(name, layer, LayerSpec.of(layer))
        yield
    finally:
        for name, layer in layers.items():
            if saved[name] is None:
                del layer.forward
            else:
                layer.forward = saved[name]


def _log_sigmoid(g: Any, x: Any) -> Any:
    """``log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))``: the exporter's own ``Log(Sigmoid)``
    loses the value where onnxruntime's approximate Sigmoid reaches 0 (x below about -18)."""
    zero = g.op("Constant", value_t=torch.tensor(0.0))
    one = g.op("Constant", value_t=torch.tensor(1.0))
    tail = g.op("Log", g.op("Add", one, g.op("Exp", g.op("Neg", g.op("Abs", x)))))
    return g.op("Sub", g.op("Min", x, zero), tail)


def _copy(g: Any, target: Any, source: Any, non_blocking: Any) -> Any:
    """``target.copy_(source)`` of a whole tensor (transformers' caches update their states so)."""
    return g.op("Expand", g.op("CastLike", source, target), g.op("Shape", target))


_SYMBOLICS = {"aten::log_sigmoid": _log_sigmoid, "aten::copy": _copy}
"""Symbolics that replace the TorchScript exporter's own during an export (opset 9 and up)."""


@contextlib.contextmanager
def _symbolics() -> Iterator[None]:
    """Register :data:`_SYMBOLICS` for the block, then remove them again."""
    for name, function in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, function, 9)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, 9)


class _DecodeStep(nn.Module):
    """``forward(input_ids [B, 1], *state) -> (logits [B, 1, V], *new state, *counts)``."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        names: tuple[str, ...],
        position: bool,
        counts: list,
        expose: bool,
    ) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter
        self.names = names
        self.position = position
        self.counts = counts
        self.expose = expose

    def forward(self, input_ids: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = dict(zip(self.names, inputs, strict=True))
        if not self.position:  # read by the adapter as a Python int only: not part of the graph
            state["position"] = torch.zeros((), dtype=torch.long)
        self.counts.clear()
        logits, new = self.adapter.step(self.model, input_ids.reshape(-1), state)
        out = [logits.unsqueeze(1)]
        for name in self.names:
            out.append(state[name] + 1 if name == "position" else new[name])
        if self.expose:
            out.extend(n for _, n in self.counts)
        return tuple(out)


def _sample_ids(batch: int) -> torch.Tensor:
    """Token ids ``[batch, TRACE_TOKENS + 1]``, another sequence in each row."""
    return torch.arange(1, batch * (TRACE_TOKENS + 1) + 1).reshape(batch, -1)


def _sample_states(
    model: nn.Module, adapter: Adapter, batch: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """States after ``TRACE_TOKENS - 1`` and ``TRACE_TOKENS`` tokens, and the next token."""
    ids = _sample_ids(batch)
    state = adapter.init_state(model, batch)
    states = []
    with torch.no_grad():
        for t in range(TRACE_TOKENS):
            _, state = adapter.step(model, ids[:, t], state)
            states.append(state)
    return states[-2], states[-1], ids[:, TRACE_TOKENS : TRACE_TOKENS + 1]


def _rows_independent(model: nn.Module, adapter: Adapter, batched: Mapping) -> bool:
    """Whether the step keeps the rows of a batch apart: the next token's logits of row 0 alone
    against row 0 of the batch (a step that broadcasts rows against each other fails this; such
    a family is exported for batch 1)."""
    ids = _sample_ids(TRACE_BATCH)
    state = adapter.init_state(model, 1)
    with torch.no_grad():
        for t in range(TRACE_TOKENS - 1):
            _, state = adapter.step(model, ids[:1, t], state)
        alone, _ = adapter.step(model, ids[:1, TRACE_TOKENS - 1], state)
        together, _ = adapter.step(model, ids[:, TRACE_TOKENS - 1], dict(batched))
    scale = 1 + float(alone.abs().max())
    return together.shape[0] == TRACE_BATCH and bool(
        (together[:1] - alone).abs().max() <= 1e-3 * scale
    )


def _state_specs(
    model: nn.Module,
    adapter: Adapter,
    before: Mapping,
    after: Mapping,
    position: bool,
    batch: int | None,
) -> tuple[tuple[StateSpec, ...], dict[str, int]]:
    """The state inputs (empty values from the adapter's ``init_state``, or zeros with the
    growing axis empty) and each one's growing (sequence) axis, if any. ``batch``: the fixed
    batch size, or ``None`` for a batch axis of any size."""
    init = adapter.init_state(model, 1)
    specs, growing = [], {}
    for name, tensor in after.items():
        if name == "position" and not position:
            continue
        if tensor.dim() == 0:
            shape: tuple[int | None, ...] = ()
        else:
            if tensor.shape[0] != (batch or TRACE_BATCH):
                raise ConfigError(
                    f"state {name!r} of shape {tuple(tensor.shape)} has no batch axis"
                )
            axes = [
                i
                for i, (a, b) in enumerate(zip(before[name].shape, tensor.shape, strict=True))
                if a != b
            ]
            if len(axes) > 1:
                raise ConfigError(f"state {name!r} grows along more than one axis")
            if axes:
                growing[name] = axes[0]
            shape = tuple(
                batch if i == 0 else 0 if i in axes else d for i, d in enumerate(tensor.shape)
            )
        fill = 0.0
        if name in init:
            values = init[name].flatten()
            if values.numel() and not bool((values == values[0]).all()):
                raise ConfigError(f"state {name!r}: its initial value is not one constant")
            fill = float(values[0]) if values.numel() else 0.0
        dtype = str(tensor.dtype).removeprefix("torch.")
        specs.append(StateSpec(name, dtype, shape, fill))
    return tuple(specs), growing


def _check_caches(adapter: Adapter, model: nn.Module, state: Mapping) -> None:
    """Refuse caches whose layers keep a window by position (the trace would freeze it)."""
    cache = adapter.to_cache(model, state, 0) if hasattr(adapter, "to_cache") else None
    for layer in getattr(cache, "layers", ()):
        if hasattr(layer, "cumulative_length"):
            raise ConfigError(
                "sliding-window KV caches cannot be exported to ONNX yet (their position is a "
                "Python int in the step); disable the sliding window in the model config"
            )


class _Trace(NamedTuple):
    """What tracing the decode step found."""

    specs: tuple[StateSpec, ...]
    shapes: dict[str, tuple]
    """Output name -> shape (dynamic axes by name)."""
    called: tuple[str, ...]
    """The spiking layers a step runs, in order."""
    batch: int | None


def _trace_decode(
    model: nn.Module,
    adapter: Adapter,
    layers: Mapping[str, SpikingLinear],
    file: Path,
    opset: int,
    expose_counts: bool,
) -> _Trace:
    """Trace one decode step into ``file``."""
    # a transformers step reads the position as a Python int (KV caches carry it in their
    # length); spikelm's own models take it as a tensor: then it is an input of the graph
    position = not isinstance(adapter, TransformersAdapter)
    before, after, token = _sample_states(model, adapter, TRACE_BATCH)
    batch = None if _rows_independent(model, adapter, before) else 1
    if batch:
        before, after, token = _sample_states(model, adapter, batch)
    if not position:
        _check_caches(adapter, model, after)
    specs, growing = _state_specs(model, adapter, before, after, position, batch)
    names = tuple(spec.name for spec in specs)
    counts: list = []
    # eval: the exporter restores the wrapper's mode afterwards, recursively into the model
    step = _DecodeStep(model, adapter, names, position, counts, expose_counts).eval()
    args = (token, *(after[name] for name in names))
    with _traced_layers(layers, counts), torch.no_grad():
        sample = step(*args)  # a dry run: which layers a step calls, in order, and the shapes
        called = tuple(name for name, _ in counts)
        if len(set(called)) != len(called):
            raise ConfigError(
                "a spiking layer runs more than once per step; cannot name its counts"
            )
        inputs = ("input_ids", *names)
        outputs = ("logits", *(present_name(n) for n in names))
        if expose_counts:
            outputs += tuple(COUNTS_PREFIX + name for name in called)
        rows = {} if batch else {0: "batch"}
        axes = {name: dict(rows) for name in (*inputs, *outputs) if "position" not in name}
        for name, axis in growing.items():
            axes[name][axis] = "past_sequence_length"
            axes[present_name(name)][axis] = "total_sequence_length"
        with warnings.catch_warnings(), _symbolics():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                step,
                args,
                str(file),
                dynamo=False,
                opset_version=opset,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    shapes = {
        name: tuple(axes.get(name, {}).get(i, d) for i, d in enumerate(tensor.shape))
        for name, tensor in zip(outputs, sample, strict=True)
    }
    return _Trace(specs, shapes, called, batch)


def _set_output_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple]) -> None:
    """Give the graph outputs the shapes of the dry run (the tracer leaves some unnamed)."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[output.name]:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def _tidy_initializers(model: onnx.ModelProto, called: tuple[str, ...]) -> None:
    """Name the initializers as the model's ``state_dict`` does (the tracer prefixes the wrapper's
    ``model.``), each spiking layer's weights ``<layer>.weight_q`` (int8 ``[G, in/G, out]``) and
    ``<layer>.weight_scale`` (``[G, 1, out]``), and store the scales as float32 with a ``Cast``
    to float64 in the graph (constant folding left them float64: twice the bytes).

    The tracer emits nodes in call order, so the i-th ``MatMulInteger`` is the i-th layer called.
    """
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    taken = {*tensors, *(o for n in graph.node for o in n.output), *(i.name for i in graph.input)}
    new = {name: name.removeprefix("model.") for name in tensors}
    scopes = {}
    for node, layer in zip(
        (n for n in graph.node if n.op_type == "MatMulInteger"), called, strict=True
    ):
        scopes[node.name.rpartition("/")[0]] = layer
        if len(consumers.get(node.input[1], ())) == 1 and node.input[1] in tensors:
            new[node.input[1]] = layer + ".weight_q"
    for name, tensor in tensors.items():
        users = consumers.get(name, [])
        if tensor.data_type != onnx.TensorProto.DOUBLE or len(users) != 1:
            continue
        layer = scopes.get(users[0].name.rpartition("/")[0])
        values = onnx.numpy_helper.to_array(tensor)
        if layer and np.array_equal(values.astype(np.float32).astype(np.float64), values):
            new[name] = layer + ".weight_scale"
    renamed = {old: name for old, name in new.items() if name != old and name not in taken}
    inputs = dict(renamed)
    casts = []
    for old, name in renamed.items():
        tensor = tensors[old]
        if tensor.data_type == onnx.TensorProto.DOUBLE:
            narrow = onnx.numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(onnx.numpy_helper.from_array(narrow, name))
            inputs[old] = name + ".float64"
            casts.append(
                onnx.helper.make_node("Cast", [name], [inputs[old]], to=onnx.TensorProto.DOUBLE)
            )
        else:
            tensor.name = name
    for node in graph.node:
        node.input[:] = [inputs.get(n, n) for n in node.input]
    for cast in reversed(casts):
        graph.node.insert(0, cast)


# --- writing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target``, removed when the block ends."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    model.producer_name = "spikelm"
    model.producer_version = __version__
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(
        int(np.prod(t.dims, dtype=np.int64))
        * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in model.graph.initializer
    )


def _save(model: onnx.ModelProto, file: Path, data: str | None = None) -> None:
    """Write ``model`` to ``file`` (its initializers to the file ``data`` beside it, if given:
    ``model`` then refers to that file), then check it in full."""
    if data is None:
        onnx.save_model(model, str(file))
    else:
        onnx.save_model(
            model,
            str(file),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data,
            size_threshold=0,
        )
    onnx.checker.check_model(str(file), full_check=True)


def _publish(staging: Path, target: Path, names: list[str]) -> None:
    """Move the staged files into ``target``'s directory, one ``os.replace`` each, in order."""
    for name in names:
        os.replace(staging / name, target.parent / name)


def _float32_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors (each storage once) if they were all float32."""
    storages = {t.untyped_storage().data_ptr(): t.numel() for t in model.state_dict().values()}
    return 4 * sum(storages.values())


def _graph(kind: str, path: Path, model: onnx.ModelProto, external: Path | None) -> OnnxGraph:
    size = path.stat().st_size + (external.stat().st_size if external else 0)
    return OnnxGraph(
        kind=kind,
        path=path,
        inputs=tuple(i.name for i in model.graph.input),
        outputs=tuple(o.name for o in model.graph.output),
        bytes=size,
        external_data=external,
    )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    prefill: bool = True,
    expose_counts: bool = False,
    external_data: bool | None = None,
    dense: bool = False,
) -> OnnxExport:
    """Export a converted spiking LM to ONNX: the decode step at ``path`` and, with ``prefill``,
    the prompt graph at ``<stem>.prefill.onnx`` beside it.

    ``expose_counts`` adds each spiking layer's counts as outputs ``spike_counts.<layer>``
    (``[batch, in]``; ``[sequence, batch, in]`` in the prefill graph). ``external_data`` keeps
    the weights in ``<file>.data`` (one file, shared by both graphs); ``None`` does so when they
    exceed 2 GB. ``dense=True`` also takes a model that is not spiking (the ANN it came from,
    exported the same way: a baseline). Every file is checked with ``onnx.checker`` (full check) before it replaces
    anything; a failure leaves no file behind. Raises :class:`ConfigError` for a bad path or
    opset, an unconverted or non-float32 model, or a family the exporter does not handle.
    """
    path = _check_path(path)
    opset = _check_opset(opset)
    adapter, layers = _check_model(model, dense)
    with _staging(path) as staging:
        raw = staging / "traced.onnx"
        trace = _trace_decode(model, adapter, layers, raw, opset, expose_counts)
        specs, called = trace.specs, trace.called
        decode = onnx.load(str(raw))
        raw.unlink()
        _set_output_shapes(decode, trace.shapes)
        _tidy_initializers(decode, called)
        if external_data is None:
            external_data = _initializer_bytes(decode) > EXTERNAL_DATA_BYTES
        data = path.name + ".data" if external_data else None
        metadata = {
            "spikelm.family": adapter.name,
            "spikelm.exporter": EXPORTER,
            "spikelm.spiking_layers": json.dumps(list(called)),
            "spikelm.initial_state": json.dumps(
                [dataclasses.asdict(spec) for spec in specs], separators=(",", ":")
            ),
        }
        _metadata(decode, {**metadata, "spikelm.graph": "decode"})
        _save(decode, staging / path.name, data)  # with data: decode now refers to that file
        models, files = {"decode": decode}, {"decode": path}
        if prefill:
            models["prefill"] = prefill_model(decode, specs)  # shares the decode's weights
            files["prefill"] = path.with_name(path.stem + ".prefill.onnx")
            _metadata(models["prefill"], {**metadata, "spikelm.graph": "prefill"})
            _save(models["prefill"], staging / files["prefill"].name)
        order = [name for name in (data,) if name] + [f.name for f in files.values()][::-1]
        _publish(staging, path, order)
    graphs = tuple(
        _graph(kind, files[kind], models[kind], path.with_name(data) if data else None)
        for kind in models
    )
    return OnnxExport(
        family=adapter.name,
        exporter=EXPORTER,
        opset=opset,
        graphs=graphs,
        spiking_layers=called,
        state=specs,
        batch=trace.batch,
        float32_bytes=_float32_bytes(model),
    )


# --- one spiking layer ------------------------------------------------------------------------


class _SpikesLayer(nn.Module):
    """``forward(spikes [T, M, in] int8, threshold [M, 1]) -> (y [M, out], acc [M, G, out])``."""

    def __init__(self, layer: SpikingLinear, spec: LayerSpec) -> None:
        super().__init__()
        self.layer = layer
        self.spec = spec

    def forward(self, spikes: torch.Tensor, *threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layer = self.layer
        v_th = threshold[0] if threshold else layer.threshold.reshape(1, 1)
        return SpikesLinearOp.apply(
            spikes, v_th, layer.weight_q, layer.weight_scale, layer.bias, self.spec, layer
        )


def export_layer_onnx(
    layer: SpikingLinear, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET
) -> OnnxExport:
    """Export one spiking layer driven by spikes: inputs ``spikes`` (int8 ``[T, tokens, in]``, the
    coder's train) and, for a dynamic threshold, ``threshold`` (float32 ``[tokens, 1]``); outputs
    ``output`` (float32 ``[tokens, out]``, bias included) and ``accumulators`` (int32 or int64
    ``[tokens, groups, out]``: ``sum_t c_t W_q s_t`` per weight-scale group, exact).

    A static threshold is a constant of the graph. The input divisor is not part of this graph:
    it acts before the neuron, and the spikes are the neuron's output.
    """
    path = _check_path(path)
    opset = _check_opset(opset)
    if not isinstance(layer, SpikingLinear):
        raise ConfigError(f"export_layer_onnx needs a SpikingLinear, got {type(layer).__name__}")
    spec = LayerSpec.of(layer)
    tokens = 2
    spikes = torch.zeros(spec.steps, tokens, spec.in_features, dtype=torch.int8)
    args: tuple[torch.Tensor, ...] = (spikes,)
    inputs = ["spikes"]
    axes: dict[str, dict[int, str]] = {"spikes": {1: "tokens"}}
    if spec.dynamic:
        args += (torch.ones(tokens, 1),)
        inputs.append("threshold")
        axes["threshold"] = {0: "tokens"}
    outputs = ["output", "accumulators"]
    axes.update({"output": {0: "tokens"}, "accumulators": {0: "tokens"}})
    with _staging(path) as staging, torch.no_grad():
        file = staging / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _SpikesLayer(layer, spec).train(layer.training),
                args,
                str(file),
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        proto = onnx.load(str(file))
        _metadata(
            proto,
            {
                "spikelm.graph": "layer",
                "spikelm.exporter": EXPORTER,
                "spikelm.layer": spec.name,
                "spikelm.coding": spec.coding,
                "spikelm.steps": str(spec.steps),
                "spikelm.step_weights": json.dumps(list(spec.step_weights)),
            },
        )
        _save(proto, file)
        _publish(staging, path, [path.name])
    return OnnxExport(
        family="layer",
        exporter=EXPORTER,
        opset=opset,
        graphs=(_graph("layer", path, proto, None),),
        spiking_layers=(spec.name,),
        state=(),
        batch=None,
        float32_bytes=4 * layer.weight_q.numel(),
    )


__all__ = [
    "DEFAULT_OPSET",
    "EXPORTER",
    "families",
    "OPSETS",
    "OnnxExport",
    "OnnxGraph",
    "StateSpec",
    "export_layer_onnx",
    "export_onnx",
    "present_name",
]
