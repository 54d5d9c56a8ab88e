"""Export the spiking projections of a converted model to NIR (``nir`` 1.0.8, HDF5).

What NIR can hold exactly is the projection driven by a spike train. One token's coded train
``s_t [in]`` (T virtual steps) is unrolled into ``T * in`` channels, channel ``t * in + i``
carrying ``s_t[i]``, so each layer becomes a stateless chain (one NIR time step per token):

    input  Input    [T*in]       the coded spike train, values in {-1, 0, 1}
    steps  Scale    [T*in]       c_t of the coding (2^t for bitwise), int64
    weight Linear   [G*out, T*in] int8 codes W_q, tiled over the T steps and block-diagonal over
                                 the G weight-scale groups: outputs acc[g, o] at g*out + o
    weight_scale Scale [G*out]   the per-group weight scale, float32
    group_sum Linear [out, G*out] sums the groups (only when G > 1)
    threshold Scale [out]        the static V_th (static thresholds only)
    bias   Affine   [out, out]   identity + bias (static thresholds with a bias only)
    output Output   [out]

``input -> weight`` is integer arithmetic: its outputs equal ``spikelm.backends.reference``'s
accumulators. The neuron that makes the train (``s = clamp(round(x / (d V_th)))``, coded) has no
NIR primitive, nor has a per-token (dynamic) ``V_th``: both run outside the graph, as each
layer's metadata says. ``approximate=True`` adds an IF stand-in for the neuron per layer and
reports its measured count mismatch. Reference traces (NIRGraphData) share the file.
See ``docs/nir-export.md``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import nn

from spikelm import __version__
from spikelm.backends.reference import accumulators
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError, SpikelmError, require_extra
from spikelm.fileio import atomic_file, one_line
from spikelm.fusion import SharedInputSlice
from spikelm.layers import SpikingLinear, spiking_layers
from spikelm.neurons import decode_level

if TYPE_CHECKING:
    import nir

FORMAT = "spikelm-nir/1"
DEFAULT_REFERENCE = b"Spikes count; NIR sums."
"""Reference tokens when none are given: bytes, i.e. token ids of a byte-level model (the demo)."""
IF_SUFFIX = ".neuron_if"
"""Name suffix of a layer's IF approximation subgraph (``approximate=True``)."""
IF_WINDOW = 4
"""The IF approximation runs ``IF_WINDOW * max|count|`` NIR steps per token (longer: closer)."""

LAYOUT = (
    "per layer: input[T*in] -> steps (Scale c_t) -> weight (Linear int8 [G*out, T*in]) -> "
    "weight_scale (Scale [G*out]) -> group_sum (Linear, G > 1) -> threshold (Scale, static V_th) "
    "-> bias (Affine, static V_th with bias) -> output[out]"
)
TIME_AXIS = (
    "one NIR time step per token (dt = 1, no state); the T virtual steps of a spike train are "
    "unrolled into channels: input channel t*in + i carries step t of input channel i"
)
NEURON = (
    "spikelm's neuron s = clamp(round(x / (d V_th))) is a soft-reset IF whose "
    "membrane starts at V_th/2, collapsed over T steps, then coded into the train (bit planes "
    "for bitwise codings); NIR's IF resets hard to v_reset, fires on v > v_threshold, starts at "
    "0 and emits one unweighted spike per step, so it cannot produce these trains exactly"
)


@dataclasses.dataclass(frozen=True)
class NirExport:
    """What :func:`export_nir` wrote.

    ``not_expressible`` maps module names to why NIR cannot hold them. With ``approximate=True``,
    ``mismatch_rate`` maps each layer to the share of (token, input channel) pairs whose IF spike
    count differs from spikelm's exact count, and ``overall_mismatch_rate`` is that share over
    all layers together; both are ``None`` otherwise.
    """

    path: Path
    layers: tuple[str, ...]
    not_expressible: dict[str, str]
    notes: tuple[str, ...]
    file_size: int
    round_trip: str
    tokens: int
    mismatch_rate: dict[str, float] | None = None
    overall_mismatch_rate: float | None = None

    def summary(self) -> str:
        """A few lines for a terminal: what was exported, what was not and why."""
        lines = [
            f"NIR file {self.path} ({self.file_size} bytes): {len(self.layers)} spiking "
            f"projection(s) exported, integer part exact; {self.tokens} reference tokens traced",
            f"round trip: {self.round_trip}",
        ]
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.not_expressible.items():
            by_reason.setdefault(reason, []).append(name)
        if by_reason:
            lines.append(f"not expressible in NIR ({len(self.not_expressible)} modules):")
            for reason, names in by_reason.items():
                more = f", ... ({len(names)} in all)" if len(names) > 4 else ""
                lines.append(f"  {', '.join(names[:4])}{more}: {reason}")
        if self.mismatch_rate is not None:
            rates = self.mismatch_rate.values()
            lines.append(
                f"IF approximation: count mismatch {self.overall_mismatch_rate:.4f} overall "
                f"(per layer {min(rates):.4f} .. {max(rates):.4f})"
            )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclasses.dataclass
class _Trace:
    """One layer's reference run: counts, thresholds, neuron inputs and outputs, per token."""

    counts: torch.Tensor  # [M, in] whole numbers
    v_th: torch.Tensor  # [M, 1]
    u: torch.Tensor  # [M, in] x / d, the neuron input
    y: torch.Tensor  # [M, out] the layer's float output


def export_nir(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    layers: Sequence[str] | str = ("*",),
    reference_tokens: Sequence[int] | torch.Tensor | bytes | None = None,
    approximate: bool = False,
) -> NirExport:
    """Write the spiking projections of ``model`` matching ``layers`` (fnmatch) to NIR at ``path``.

    ``reference_tokens`` (token ids, or bytes for a byte-level model; default
    :data:`DEFAULT_REFERENCE`) are run through ``model`` once; each exported layer's input spike
    train, integer accumulators and outputs are stored in the same file as NIRGraphData. With
    ``approximate=True`` an IF subgraph per layer stands in for the neuron and its measured
    mismatch is reported. The file is written atomically and read back before it is published.
    """
    require_extra("nir", "nir", "spikelm export --format nir")
    target = _check_path(path)
    chosen = _select(model, (layers,) if isinstance(layers, str) else tuple(layers))
    ids = _reference_ids(model, reference_tokens, next(iter(chosen.values())).weight_q.device)
    traces = _record(model, chosen, ids)
    graph_nodes: dict[str, Any] = {}
    data: dict[str, Any] = {}
    rates: dict[str, float] = {}
    neurons: dict[str, int] = {}
    for name, layer in chosen.items():
        graph_nodes[name] = _layer_graph(name, layer)
        data[name] = _layer_data(layer, traces[name])
        if approximate:
            graph_nodes[name + IF_SUFFIX], rates[name] = _if_graph(name, layer, traces[name])
            neurons[name] = traces[name].counts.numel()
    not_expressible = _not_expressible(model)
    notes = _notes(model, chosen, rates)
    graph = _model_graph(graph_nodes, not_expressible, notes, ids, rates)
    with atomic_file(target) as staging:
        try:
            _write(staging, graph, data)
            checked = _check_round_trip(staging, graph, data)
        except OSError as exc:
            raise SpikelmError(f"{target}: cannot write NIR file ({one_line(exc)})") from exc
        size = staging.stat().st_size
    overall = sum(rates[n] * neurons[n] for n in rates) / sum(neurons.values()) if rates else None
    return NirExport(
        path=target,
        layers=tuple(chosen),
        not_expressible=not_expressible,
        notes=notes,
        file_size=size,
        round_trip=checked,
        tokens=ids.shape[1],
        mismatch_rate=rates if approximate else None,
        overall_mismatch_rate=overall,
    )


# --- inputs ------------------------------------------------------------------------------------


def _check_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"{target}: directory {target.parent} does not exist")
    if target.is_dir():
        raise ConfigError(f"{target}: is a directory; give a file name for the NIR file")
    return target


def _select(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, SpikingLinear]:
    layers = spiking_layers(model)
    if not layers:
        raise ConfigError("the model has no spiking layers to export; convert it first")
    names = list(layers)
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            more = f", ... ({len(names)} in all)" if len(names) > 6 else ""
            raise ConfigError(
                f"layer pattern {pattern!r} matches no spiking layer; layers: "
                f"{', '.join(names[:6])}{more}"
            )
    return {n: layers[n] for n in names if any(fnmatchcase(n, p) for p in patterns)}


def _reference_ids(model: nn.Module, tokens: Any, device: torch.device) -> torch.Tensor:
    """``[1, L]`` long token ids on ``device``."""
    if tokens is None:
        tokens = DEFAULT_REFERENCE
    if isinstance(tokens, (bytes, bytearray)):
        tokens = list(tokens)
    ids = torch.as_tensor(tokens)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or not ids.numel() or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ConfigError(
            f"reference_tokens must be a non-empty 1-D sequence of token ids (or bytes), got "
            f"{ids.dtype} of shape {tuple(ids.shape)}"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if int(ids.min()) < 0 or (isinstance(vocab, int) and int(ids.max()) >= vocab):
        raise ConfigError(f"reference_tokens hold ids outside the vocabulary [0, {vocab})")
    return ids.to(device=device, dtype=torch.long).unsqueeze(0)


@torch.no_grad()
def _record(
    model: nn.Module, layers: dict[str, SpikingLinear], ids: torch.Tensor
) -> dict[str, _Trace]:
    """Run ``model`` once on the token ids ``[1, L]`` and trace every layer in ``layers``."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}

    def hook(name: str):
        def save(module: SpikingLinear, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, module.in_features)
            seen[name].append((x, output.detach().reshape(-1, module.out_features)))

        return save

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    traces = {}
    for name, layer in layers.items():
        if not seen[name]:
            raise SpikelmError(f"layer {name!r} did not run on the reference tokens")
        x = torch.cat([x for x, _ in seen[name]])
        counts, v_th = layer.spike_counts(x)
        u, _ = layer.neuron_input(x)
        y = torch.cat([y for _, y in seen[name]])
        traces[name] = _Trace(*(t.float().cpu() for t in (counts, v_th, u, y)))
    return traces


# --- the graph ---------------------------------------------------------------------------------


def _layer_graph(name: str, layer: SpikingLinear) -> nir.NIRGraph:
    """The exact projection of ``layer`` on its unrolled spike train (module docstring)."""
    import nir

    steps = layer.steps
    weight_q = layer.weight_q.cpu().numpy()
    out_features, in_features = weight_q.shape
    groups = layer.weight_scale.shape[1]
    width = in_features // groups
    blocks = np.zeros((groups, out_features, in_features), dtype=np.int8)
    for g in range(groups):
        cols = slice(g * width, (g + 1) * width)
        blocks[g, :, cols] = weight_q[:, cols]
    step_weights = get_coder(layer.coding).step_weights(steps).numpy()
    nodes: dict[str, Any] = {
        "input": nir.Input(input_type={"input": np.array([steps * in_features])}),
        "steps": nir.Scale(scale=np.repeat(step_weights, in_features)),
        "weight": nir.Linear(weight=np.tile(blocks.reshape(-1, in_features), (1, steps))),
        "weight_scale": nir.Scale(scale=_scale_vector(layer)),
    }
    eye = np.eye(out_features, dtype=np.float32)
    if groups > 1:
        nodes["group_sum"] = nir.Linear(weight=np.tile(eye, (1, groups)))
    bias_in_graph = not layer.dynamic and layer.bias is not None
    if not layer.dynamic:
        nodes["threshold"] = nir.Scale(scale=np.full(out_features, _v_out(layer), np.float32))
    if bias_in_graph:
        nodes["bias"] = nir.Affine(weight=eye, bias=layer.bias.float().cpu().numpy())
    nodes["output"] = nir.Output(output_type={"output": np.array([out_features])})
    chain = list(nodes)
    return nir.NIRGraph(
        nodes=nodes,
        edges=list(zip(chain, chain[1:], strict=False)),
        metadata=_layer_metadata(name, layer, bias_in_graph),
    )


def _scale_vector(layer: SpikingLinear) -> np.ndarray:
    """``weight_scale`` as ``[G*out]`` float32, group-major (``g * out + o``)."""
    return layer.weight_scale.float().cpu().numpy().T.reshape(-1).copy()


def _v_th(layer: SpikingLinear) -> float:
    return float(layer.threshold.float().cpu())


def _v_out(layer: SpikingLinear) -> float:
    """A static layer's decode level ``V_out = g V_th`` (float32, as the layer computes it)."""
    return float(decode_level(layer.threshold.float().cpu(), layer.gain))


def _layer_metadata(name: str, layer: SpikingLinear, bias_in_graph: bool) -> dict[str, Any]:
    coder = get_coder(layer.coding)
    meta: dict[str, Any] = {
        "layer": name,
        "coding": layer.coding,
        "steps": layer.steps,
        "step_weights": coder.step_weights(layer.steps).numpy(),
        "count_range": np.array(coder.count_range(layer.steps), dtype=np.int64),
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "groups": layer.weight_scale.shape[1],
        "input_layout": "channel t*in + i carries step t of input channel i",
        "accumulator_layout": "weight output g*out + o is the integer accumulator of group g",
        "input_divisor": layer.input_divisor.float().cpu().numpy(),
        "neuron": "not in the graph: " + NEURON,
        "threshold_mode": "dynamic" if layer.dynamic else "static",
    }
    if layer.spike_cost:
        meta["spike_cost"] = float(layer.spike_cost)
        meta["rounding"] = (
            "error-aware: the count c among nearest, its lowest set bit dropped or carried, the "
            "powers of two around |x|/V_th and 0 that minimises (|x|/V_th - c)^2 + spike_cost * "
            "spikes(c) (spikelm.neurons.error_aware_counts), not round()"
        )
    gain = "gain * " if layer.gain != 1.0 else ""
    if gain:
        meta["gain"] = float(layer.gain)
    if layer.dynamic:
        meta["k"] = float(layer.k)
        meta["outside_graph"] = (
            f"y = {gain}v_th * output"
            + (" + bias" if layer.bias is not None else "")
            + ", v_th = mean(|x / input_divisor|) / k per token (dynamic, computed outside "
            "the graph)" + (" (gain * v_th one float32 product)" if gain else "")
        )
    else:
        meta["v_th"] = _v_th(layer)
        meta["outside_graph"] = "y = output"
    if layer.bias is not None and not bias_in_graph:
        meta["bias"] = layer.bias.float().cpu().numpy()
    return meta


def _model_graph(
    layer_graphs: dict[str, nir.NIRGraph],
    not_expressible: dict[str, str],
    notes: tuple[str, ...],
    ids: torch.Tensor,
    rates: dict[str, float],
) -> nir.NIRGraph:
    """Every layer graph between its own ``input_<name>`` and ``output_<name>`` nodes."""
    import nir

    nodes: dict[str, Any] = {}
    edges = []
    for name, sub in layer_graphs.items():
        nodes[f"input_{name}"] = nir.Input(
            input_type={"input": sub.nodes["input"].input_type["input"]}
        )
        nodes[name] = sub
        nodes[f"output_{name}"] = nir.Output(
            output_type={"output": sub.nodes["output"].output_type["output"]}
        )
        edges += [(f"input_{name}", name), (name, f"output_{name}")]
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "spikelm_version": __version__,
        "layout": LAYOUT,
        "time_axis": TIME_AXIS,
        "neuron": "not in the graph: " + NEURON,
        "layers": json.dumps([n for n in layer_graphs if not n.endswith(IF_SUFFIX)]),
        "not_expressible": json.dumps(not_expressible),
        "notes": json.dumps(list(notes)),
        "traces": "NIRGraphData in this file, per layer: nir.read_data(path)",
        "reference_tokens": ids[0].cpu().numpy(),
    }
    if rates:
        metadata["approximation"] = json.dumps({"if_count_mismatch_rate": rates})
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


# --- reference traces --------------------------------------------------------------------------


def _layer_data(layer: SpikingLinear, trace: _Trace) -> nir.NIRGraphData:
    """Input train, integer accumulators and outputs of one layer, one NIR step per token."""
    import nir

    coder = get_coder(layer.coding)
    rows = trace.counts.shape[0]
    spikes = coder.encode(trace.counts, layer.steps)  # [T, M, in] int8
    train = spikes.permute(1, 0, 2).reshape(rows, -1).numpy()
    acc = accumulators(layer, trace.counts).cpu()  # [M, G, out] int64
    graph_out = (acc.double() * layer.weight_scale.double().cpu().t()).sum(1)
    if not layer.dynamic:
        graph_out = graph_out * _v_out(layer)
        if layer.bias is not None:
            graph_out = graph_out + layer.bias.double().cpu()
    v_th = trace.v_th.expand(rows, layer.out_features)

    def grid(values: np.ndarray) -> nir.TimeGriddedData:
        return nir.TimeGriddedData(data=np.ascontiguousarray(values)[None], dt=1.0)

    return nir.NIRGraphData(
        nodes={
            "input": nir.NIRNodeData({"spikes": grid(train)}),
            "weight": nir.NIRNodeData({"accumulators": grid(acc.reshape(rows, -1).numpy())}),
            "output": nir.NIRNodeData(
                {
                    "value": grid(graph_out.numpy()),
                    "v_th": grid(v_th.numpy()),
                    "layer_output": grid(trace.y.numpy()),
                }
            ),
        }
    )


# --- the IF approximation ----------------------------------------------------------------------


def _if_graph(name: str, layer: SpikingLinear, trace: _Trace) -> tuple[nir.NIRGraph, float]:
    """An IF node per input neuron standing in for spikelm's neuron, and its measured mismatch.

    Each (signed: each +/-) input neuron gets the current ``I = theta * (+-u / V_th + 1/2)`` held
    for ``N = IF_WINDOW * max|count|`` steps of dt = 1; ``r = 1 / N``, ``v_threshold = theta`` (the static
    V_th, or 1 for dynamic thresholds, the division done outside). Its spike count (``+`` minus
    ``-``) replaces ``round(u / V_th)``; the rate returned is the share of (token, channel)
    pairs where the two differ, simulated with NIR's IF semantics (hard reset, ``v > theta``).
    """
    import nir

    low, high = get_coder(layer.coding).count_range(layer.steps)
    window = IF_WINDOW * max(-low, high)
    signed = low < 0
    signs = (1.0, -1.0) if signed else (1.0,)
    size = len(signs) * layer.in_features
    theta = 1.0 if layer.dynamic else _v_th(layer)
    node = nir.IF(
        r=np.full(size, 1.0 / window, np.float32),
        v_threshold=np.full(size, theta, np.float32),
        v_reset=np.zeros(size, np.float32),
    )
    v_th = trace.v_th.double()
    ratio = torch.where(v_th > 0, trace.u.double() / v_th, 0.0).numpy()
    current = np.concatenate([np.float32(theta) * (s * ratio + 0.5) for s in signs], axis=1)
    fired = _simulate_if(node, current, window).reshape(-1, len(signs), layer.in_features)
    counts = fired[:, 0] - fired[:, 1] if signed else fired[:, 0]
    rate = float((counts != trace.counts.numpy().astype(np.int64)).mean())
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([size])}),
            "neuron": node,
            "output": nir.Output(output_type={"output": np.array([size])}),
        },
        edges=[("input", "neuron"), ("neuron", "output")],
        metadata={
            "layer": name,
            "approximates": NEURON,
            "current": (
                "I = theta * (s * u / v_th + 1/2) held for window_steps steps (dt = 1) per "
                "token, u = x / input_divisor, s = +1 on channels [0, in)"
                + (" and -1 on [in, 2 in)" if signed else "")
            ),
            "theta": theta,
            "window_steps": window,
            "count": "spikes of channel i" + (" minus spikes of channel in + i" if signed else ""),
            "mismatch_rate": rate,
            "mismatch_definition": (
                "share of (token, input channel) pairs whose IF count differs from spikelm's "
                "exact count on the reference tokens"
            ),
        },
    )
    return graph, rate


def _simulate_if(node: nir.IF, current: np.ndarray, steps: int) -> np.ndarray:
    """Spike counts of NIR's IF (``v += r I``; spike if ``v > v_threshold``; ``v = v_reset``)."""
    v = np.broadcast_to(node.v_reset.astype(np.float64), current.shape).copy()
    drive = node.r.astype(np.float64) * current
    threshold = node.v_threshold.astype(np.float64)
    counts = np.zeros(current.shape, dtype=np.int64)
    for _ in range(steps):
        v += drive
        fired = v > threshold
        counts += fired
        v = np.where(fired, node.v_reset.astype(np.float64), v)
    return counts


# --- what NIR cannot hold ----------------------------------------------------------------------


def _not_expressible(model: nn.Module) -> dict[str, str]:
    """Modules outside the spiking projections, by name, with why NIR cannot hold them."""
    found = {}
    for name, module in model.named_modules():
        # a fused layer's member is its slice: exported with the fused projection
        if name and not isinstance(module, (SpikingLinear, SharedInputSlice)):
            reason = _reason(module)
            if reason:
                found[name] = reason
    return found


def _reason(module: nn.Module) -> str | None:
    kind = type(module).__name__.lower()
    if isinstance(module, nn.Embedding):
        return "token embedding: a table lookup by token id (no NIR primitive)"
    if isinstance(module, nn.Linear):
        return "kept dense: float weights on float activations, not a spiking projection"
    if "norm" in kind:
        return "normalization: divides by a per-token statistic (no NIR primitive)"
    if "rotary" in kind:
        return "rotary position embedding: position-dependent rotation (no NIR primitive)"
    if "attention" in kind and "linear" in kind:
        return (
            "linear attention: the state update S = diag(alpha) S + k^T v, its readout q S and "
            "the output gate are products of two activations (no NIR primitive); its "
            "projections are exported separately"
        )
    if "attention" in kind:
        return (
            "softmax attention: q k^T, softmax and the weighted sum of values are products of "
            "activations (no NIR primitive); its projections are exported separately"
        )
    if "mlp" in kind or "glu" in kind:
        return (
            "gated MLP: act(gate) * up is a product of two activations (no NIR primitive); its "
            "projections are exported separately"
        )
    if not any(module.children()) and not isinstance(module, (nn.Dropout, nn.Identity)):
        return f"{type(module).__name__}: no NIR primitive"
    return None


def _notes(
    model: nn.Module, chosen: dict[str, SpikingLinear], rates: dict[str, float]
) -> tuple[str, ...]:
    notes = [
        "each projection is a standalone subgraph named by its layer; residual connections "
        "and the wiring between layers are not exported",
        "the neuron is not in the graph: " + NEURON,
    ]
    if any(layer.dynamic for layer in chosen.values()):
        notes.append(
            "dynamic thresholds: V_th = mean|x / d| / k per token multiplies each graph output "
            "outside the graph (y = v_th * output + bias), see each layer's outside_graph"
        )
    skipped = len(spiking_layers(model)) - len(chosen)
    if skipped:
        notes.append(f"{skipped} spiking layer(s) not selected by the layer patterns")
    if rates:
        notes.append(
            f"approximate: an IF subgraph '<layer>{IF_SUFFIX}' per layer stands in for the "
            "neuron; it is not exact: its count mismatch on the reference tokens is measured"
        )
    return tuple(notes)


# --- writing and checking ----------------------------------------------------------------------


def _write(path: Path, graph: nir.NIRGraph, data: dict[str, nir.NIRGraphData]) -> None:
    """``nir.write`` the graph, then add the traces as NIRGraphData beside it in the same file.

    ``nir.write_data`` (1.0.8) recurses forever on nested NIRGraphData, so each layer's data is
    written by it into memory and copied in; ``nir.read_data`` reads the result as one tree.
    """
    import nir

    nir.write(path, graph)
    with h5py.File(path, "a") as file:
        file.attrs["__type__"] = "NIRGraphData"
        nodes = file.create_group("nodes")
        for name, layer_data in data.items():
            buffer = io.BytesIO()
            nir.write_data(buffer, layer_data)
            with h5py.File(buffer, "r") as part:
                group = nodes.create_group(name)
                group.attrs["__type__"] = part.attrs["__type__"]
                part.copy(part["nodes"], group, name="nodes")


def _check_round_trip(path: Path, graph: nir.NIRGraph, data: dict[str, Any]) -> str:
    """Read ``path`` back with ``nir.read`` / ``nir.read_data``; raise on any difference."""
    import nir

    read = nir.read(path)
    arrays = _compare(graph.to_dict(), read.to_dict(), "graph")
    traces = nir.read_data(path)
    written = {name: dataclasses.asdict(d) for name, d in data.items()}
    stored = {name: dataclasses.asdict(d) for name, d in traces.nodes.items()}
    trace_arrays = _compare(written, stored, "traces")
    _check_trace_shapes(read, traces)
    nodes = sum(len(sub.nodes) for sub in read.nodes.values() if isinstance(sub, nir.NIRGraph))
    return (
        f"nir.read gives {nodes} layer nodes and {arrays} arrays equal to those written "
        f"(dtypes kept, int8 weights); nir.read_data gives {trace_arrays} equal traces"
    )


def _check_trace_shapes(graph: nir.NIRGraph, traces: nir.NIRGraphData) -> None:
    """Each trace has as many neurons as its node has outputs.

    (``NIRGraphData.check_nodes`` does this in nir 1.0.8 but fails on every ``Linear``, whose
    ``output_type`` is a tuple.)
    """
    for name, layer_data in traces.nodes.items():
        for node_name, node_data in layer_data.nodes.items():
            size = int(np.prod(graph.nodes[name].nodes[node_name].output_type["output"]))
            for key, observable in node_data.observables.items():
                if observable.n_neurons != size:
                    raise SpikelmError(
                        f"NIR traces: {name}/{node_name}/{key} has {observable.n_neurons} "
                        f"neurons, the node has {size} outputs"
                    )


def _compare(written: Any, read: Any, where: str) -> int:
    """Number of arrays compared; :class:`SpikelmError` naming ``where`` at the first difference."""
    if isinstance(written, dict):
        if not isinstance(read, dict) or set(written) != set(read):
            raise SpikelmError(f"NIR round trip: keys differ at {where}")
        return sum(_compare(written[k], read[k], f"{where}.{k}") for k in written)
    if isinstance(written, (list, tuple)):
        if len(written) != len(read):
            raise SpikelmError(f"NIR round trip: lengths differ at {where}")
        pairs = enumerate(zip(written, read, strict=True))
        return sum(_compare(w, r, f"{where}[{i}]") for i, (w, r) in pairs)
    if isinstance(written, np.ndarray):
        if not (
            isinstance(read, np.ndarray)
            and read.dtype == written.dtype
            and np.array_equal(read, written)
        ):
            raise SpikelmError(f"NIR round trip: array differs at {where}")
        return 1
    if written != read:
        raise SpikelmError(f"NIR round trip: value differs at {where}")
    return 0
