"""The ONNX form of a :class:`~spikelm.layers.SpikingLinear`: neuron, spike planes, integer
matmul and the shared float64 epilogue, emitted as ONNX nodes by a TorchScript-exporter symbolic.

For the layer's input rows ``x [M, in]`` the subgraph computes, op for op as spikelm does:

    u      = x / d                                           Div (skipped when d is all ones)
    V_th   = fixed_order_sum(|u|) / in / k   (dynamic)  or the layer's constant (static)
    n      = clip(sign(u) * ceil(|u| / V_th - 1/2), lo, hi)  (0 where V_th <= 0)
    s_t    = the coder's spike train of n, int8 [T, M, in]   integer Div / Mod / Less, Cast
    P_t,g  = MatMulInteger(s_t[group g], W_q[group g]^T)     int8 x int8 -> int32, all t, g at once
    acc    = sum_t c_t P_t                                   Mul, ReduceSum (integers: exact)
    y      = float32(((acc_0 s_0 + acc_1 s_1) + ...) * V_out) + b   (float64, fixed order;
                                                        V_out = float32(g V_th), g the gain)

``fixed_order_sum`` adds the channels pairwise in a fixed tree (halves added elementwise, an odd
width padded with one zero): every add is one IEEE float32 operation, so any runtime gives the
same sum bit for bit. spikelm's own dynamic threshold is ``torch.mean``, whose reduction order is
torch's and CPU-dependent; see docs/onnx-export.md for what that means for exactness.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from onnx import TensorProto

from spikelm.backends import reference
from spikelm.backends.epilogue import epilogue
from spikelm.backends.events import accumulator_dtype
from spikelm.encoders import get_coder
from spikelm.errors import ConfigError
from spikelm.neurons import decode_level, exact_count_range

CODINGS = ("binary", "ternary", "bitwise", "bitwise_bidirectional", "bitwise_twos_complement")
"""Spike codings whose trains the graph builds from counts."""

_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What the subgraph of one spiking layer needs to know besides its weight tensors."""

    name: str
    in_features: int
    out_features: int
    groups: int
    coding: str
    steps: int
    k: float
    dynamic: bool
    bounds: tuple[float, float]
    step_weights: tuple[int, ...]
    wide_counts: bool
    wide_acc: bool
    divide: bool
    has_bias: bool
    spike_cost: float = 0.0
    gain: float = 1.0

    @classmethod
    def of(cls, layer: Any) -> LayerSpec:
        """The spec of ``layer``; :class:`ConfigError` for what the graph cannot express."""
        if layer.coding not in CODINGS:
            raise ConfigError(
                f"layer {layer.name!r}: coding {layer.coding!r} has no ONNX form; "
                f"codings: {', '.join(CODINGS)}"
            )
        lo, hi = layer.count_range
        span = max(abs(lo), abs(hi), 1 << layer.steps)
        return cls(
            name=layer.name,
            in_features=layer.in_features,
            out_features=layer.out_features,
            groups=layer.weight_scale.shape[1],
            coding=layer.coding,
            steps=layer.steps,
            k=float(layer.k),
            dynamic=layer.dynamic,
            bounds=exact_count_range(tuple(layer.count_range), torch.float32),
            step_weights=tuple(get_coder(layer.coding).step_weights(layer.steps).tolist()),
            wide_counts=span > _INT32_MAX,
            wide_acc=accumulator_dtype(layer) == torch.int64,
            divide=not bool((layer.input_divisor == 1).all()),
            has_bias=layer.bias is not None,
            spike_cost=float(layer.spike_cost),
            gain=float(layer.gain),
        )

    @property
    def count_dtype(self) -> torch.dtype:
        """Integer dtype of the counts as the graph exposes them."""
        return torch.int64 if self.wide_counts else torch.int32

    @property
    def acc_dtype(self) -> torch.dtype:
        """Integer dtype of the accumulators (that of spikelm's ``torch_events`` backend)."""
        return torch.int64 if self.wide_acc else torch.int32


_ONNX_TYPE = {
    torch.float32: TensorProto.FLOAT,
    torch.float64: TensorProto.DOUBLE,
    torch.int8: TensorProto.INT8,
    torch.int32: TensorProto.INT32,
    torch.int64: TensorProto.INT64,
}


def _const(g: Any, value: Any, dtype: torch.dtype) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _cast(g: Any, x: Any, dtype: torch.dtype) -> Any:
    return g.op("Cast", x, to_i=_ONNX_TYPE[dtype])


def _fixed_order_sum(g: Any, x: Any, width: int) -> Any:
    """``x [M, width]`` -> ``[M, 1]`` in the order of :func:`spikelm.neurons.fixed_order_sum`."""
    while width > 1:
        if width % 2:
            x = g.op("Pad", x, _const(g, [0, 0, 0, 1], torch.int64))
            width += 1
        width //= 2
        low, high = g.op("Split", x, _const(g, [width, width], torch.int64), axis_i=1, outputs=2)
        x = g.op("Add", low, high)
    return x


def _neuron(g: Any, rows: Any, divisor: Any, threshold: Any, spec: LayerSpec) -> tuple[Any, Any]:
    """``(counts float32 [M, in], V_th float32 [M, 1] or [1, 1])`` of the input rows."""
    u = g.op("Div", rows, divisor) if spec.divide else rows
    magnitude = g.op("Abs", u)
    if spec.dynamic:
        total = _fixed_order_sum(g, magnitude, spec.in_features)
        mean = g.op("Div", total, _const(g, float(spec.in_features), torch.float32))
        v_th = g.op("Div", mean, _const(g, spec.k, torch.float32))
    else:
        v_th = g.op("Reshape", threshold, _const(g, [1, 1], torch.int64))
    positive = g.op("Greater", v_th, _const(g, 0.0, torch.float32))
    safe = g.op("Where", positive, v_th, _const(g, 1.0, torch.float32))
    ratio = g.op("Div", magnitude, safe)
    if spec.spike_cost:
        ratio = g.op("Where", positive, ratio, _const(g, 0.0, torch.float32))
        counts = _error_aware(g, ratio, spec)
    else:
        counts = g.op("Ceil", g.op("Sub", ratio, _const(g, 0.5, torch.float32)))
    counts = g.op("Mul", g.op("Sign", u), counts)
    counts = g.op("Where", positive, counts, _const(g, 0.0, torch.float32))
    lo, hi = spec.bounds
    counts = g.op("Clip", counts, _const(g, lo, torch.float32), _const(g, hi, torch.float32))
    return counts, v_th


def _error_aware(g: Any, a: Any, spec: LayerSpec) -> Any:
    """The counts :func:`spikelm.neurons.error_aware_counts` picks for ``a = |u| / V_th >= 0``
    (float32): the candidate minimising ``(a - c)^2 + spike_cost * events(c)``, the first on a
    tie. Bits are taken by division and modulo and the lowest / highest set bit by an exclusive
    running sum (opset 11 operators), so every candidate is the integer the torch code makes."""
    f32, i64 = torch.float32, torch.int64
    high = int(max(spec.bounds[1], -spec.bounds[0]))
    ceiling = 1 << high.bit_length()  # the smallest power of two above high
    width = ceiling.bit_length()
    powers = g.op("Constant", value_t=torch.tensor([1 << t for t in range(width)], dtype=i64))
    zero = _const(g, 0, i64)

    def bits(n: Any) -> Any:  # [..., width] in {0, 1}
        return g.op("Mod", g.op("Div", g.op("Unsqueeze", n, _const(g, [-1], i64)), powers),
                    _const(g, 2, i64), fmod_i=0)  # fmt: skip

    def lone_bit(b: Any, reverse: int) -> Any:  # the lowest (highest) set bit's value
        before = g.op("CumSum", b, _const(g, -1, i64), exclusive_i=1, reverse_i=reverse)
        first = g.op("Mul", b, _cast(g, g.op("Equal", before, zero), i64))
        return g.op("ReduceSum", g.op("Mul", first, powers), _const(g, [-1], i64), keepdims_i=0)

    nearest_f = g.op("Clip", g.op("Ceil", g.op("Sub", a, _const(g, 0.5, f32))),
                     _const(g, 0.0, f32), _const(g, float(high), f32))  # fmt: skip
    nearest = _cast(g, nearest_f, i64)
    lowest = lone_bit(bits(nearest), 0)
    top = _const(g, high, i64)
    capped = g.op("Min", a, _const(g, float(ceiling), f32))
    below = lone_bit(bits(_cast(g, g.op("Floor", capped), i64)), 1)
    below_f = _cast(g, below, f32)
    power = g.op("Equal", capped, below_f)
    above = g.op("Max", g.op("Where", power, below, g.op("Mul", below, _const(g, 2, i64))),
                 _const(g, 1, i64))  # fmt: skip
    candidates = [
        nearest,
        g.op("Sub", nearest, lowest),  # lowest set bit dropped
        g.op("Min", g.op("Add", nearest, lowest), top),  # lowest set bit carried up
        g.op("Min", below, top),
        g.op("Min", above, top),
        g.op("Mul", nearest, zero),
    ]
    stacked = g.op("Concat", *[g.op("Unsqueeze", c, _const(g, [0], i64)) for c in candidates],
                   axis_i=0)  # fmt: skip
    if spec.coding in ("binary", "ternary"):
        events = stacked
    else:
        events = g.op("ReduceSum", bits(stacked), _const(g, [-1], i64), keepdims_i=0)
    values = _cast(g, stacked, f32)
    miss = g.op("Sub", g.op("Unsqueeze", a, _const(g, [0], i64)), values)
    cost = g.op("Add", g.op("Mul", miss, miss),
                g.op("Mul", _const(g, spec.spike_cost, f32), _cast(g, events, f32)))  # fmt: skip
    best = g.op("ArgMin", cost, axis_i=0, keepdims_i=1, select_last_index_i=0)
    return g.op("Squeeze", g.op("GatherElements", values, best, axis_i=0), _const(g, [0], i64))


def _spike_train(g: Any, counts: Any, spec: LayerSpec) -> Any:
    """The coder's train ``s_t`` (int8 ``[T, M, in]``) of integer ``counts [M, in]``."""
    dtype = spec.count_dtype
    steps = torch.arange(spec.steps, dtype=dtype).reshape(-1, 1, 1)
    if spec.coding in ("binary", "ternary"):
        magnitude = g.op("Abs", counts) if spec.coding == "ternary" else counts
        train = _cast(g, g.op("Less", g.op("Constant", value_t=steps), magnitude), dtype)
    else:
        if spec.coding == "bitwise_twos_complement":
            value = g.op("Mod", counts, _const(g, 1 << spec.steps, dtype), fmod_i=0)
        else:
            value = g.op("Abs", counts) if spec.coding == "bitwise_bidirectional" else counts
        powers = g.op("Constant", value_t=torch.ones_like(steps) << steps)
        train = g.op("Mod", g.op("Div", value, powers), _const(g, 2, dtype), fmod_i=0)
    if spec.coding in ("ternary", "bitwise_bidirectional"):
        train = g.op("Mul", train, g.op("Sign", counts))
    return _cast(g, train, torch.int8)


def _accumulators(g: Any, train: Any, weight_q: Any, spec: LayerSpec) -> Any:
    """Exact ``acc [G, M, out]`` of the train ``[T, M, in]``: MatMulInteger per step and group."""
    width = spec.in_features // spec.groups
    shape = _const(g, [spec.steps, -1, spec.groups, width], torch.int64)
    planes = g.op("Transpose", g.op("Reshape", train, shape), perm_i=[0, 2, 1, 3])
    weights = g.op(
        "Reshape", weight_q, _const(g, [spec.out_features, spec.groups, width], torch.int64)
    )
    weights = g.op("Transpose", weights, perm_i=[1, 2, 0])  # [G, width, out]
    per_step = g.op("MatMulInteger", planes, weights)  # [T, G, M, out] int32
    if spec.wide_acc:
        per_step = _cast(g, per_step, torch.int64)
    if any(c != 1 for c in spec.step_weights):
        c_t = torch.tensor(spec.step_weights, dtype=spec.acc_dtype).reshape(-1, 1, 1, 1)
        per_step = g.op("Mul", per_step, g.op("Constant", value_t=c_t))
    return g.op("ReduceSum", per_step, _const(g, [0], torch.int64), keepdims_i=0)


def _epilogue(g: Any, acc: Any, weight_scale: Any, v_th: Any, spec: LayerSpec) -> Any:
    """float32 ``[M, out]`` from ``acc [G, M, out]`` as :func:`spikelm.backends.epilogue.epilogue`."""
    scale = g.op("Transpose", _cast(g, weight_scale, torch.float64), perm_i=[1, 0])  # [G, out]
    scale = g.op("Unsqueeze", scale, _const(g, [1], torch.int64))  # [G, 1, out]
    products = g.op("Mul", _cast(g, acc, torch.float64), scale)
    if spec.groups == 1:
        y = products
    else:
        ones = _const(g, [1] * spec.groups, torch.int64)
        parts = g.op("Split", products, ones, axis_i=0, outputs=spec.groups)
        y = parts[0]
        for part in parts[1:]:  # g ascending, one elementwise add each
            y = g.op("Add", y, part)
    y = g.op("Squeeze", y, _const(g, [0], torch.int64))
    if spec.gain != 1.0:  # V_out = g * V_th, one float32 product (spikelm.neurons.decode_level)
        v_th = g.op("Mul", v_th, _const(g, spec.gain, torch.float32))
    y = g.op("Mul", y, _cast(g, v_th, torch.float64))
    return _cast(g, y, torch.float32)


def _transposed(g: Any, acc: Any) -> Any:
    return g.op("Transpose", acc, perm_i=[1, 0, 2])


def layer_symbolic(
    g: Any,
    x: Any,
    weight_q: Any,
    weight_scale: Any,
    input_divisor: Any,
    threshold: Any,
    bias: Any,
    spec: LayerSpec,
) -> tuple[Any, Any]:
    """Nodes of the whole layer on ``x [..., in]``: ``(y [..., out], counts [M, in])``."""
    rows = g.op("Reshape", x, _const(g, [-1, spec.in_features], torch.int64))
    counts, v_th = _neuron(g, rows, input_divisor, threshold, spec)
    integer = _cast(g, counts, spec.count_dtype)
    acc = _accumulators(g, _spike_train(g, integer, spec), weight_q, spec)
    y = _epilogue(g, acc, weight_scale, v_th, spec)
    if spec.has_bias:
        y = g.op("Add", y, bias)
    # Shape + Slice, not Shape(start, end): the exporter's shape inference ignores those two
    zero, last = _const(g, [0], torch.int64), _const(g, [-1], torch.int64)
    leading = g.op("Slice", g.op("Shape", x), zero, last)
    shape = g.op("Concat", leading, _const(g, [spec.out_features], torch.int64), axis_i=0)
    return g.op("Reshape", y, shape), integer


def spikes_symbolic(
    g: Any, spikes: Any, v_th: Any, weight_q: Any, weight_scale: Any, bias: Any, spec: LayerSpec
) -> tuple[Any, Any]:
    """Nodes of the layer driven by a spike train ``[T, M, in]``: ``(y [M, out], acc [M, G, out])``."""
    acc = _accumulators(g, spikes, weight_q, spec)
    y = _epilogue(g, acc, weight_scale, v_th, spec)
    if spec.has_bias:
        y = g.op("Add", y, bias)
    return y, _transposed(g, acc)


class SpikingLinearOp(torch.autograd.Function):
    """A spiking layer as one traced op: spikelm computes it, :func:`layer_symbolic` exports it."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight_q: torch.Tensor,
        weight_scale: torch.Tensor,
        input_divisor: torch.Tensor,
        threshold: torch.Tensor | None,
        bias: torch.Tensor | None,
        spec: LayerSpec,
        layer: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.reshape(-1, spec.in_features)
        counts, v_th = layer.spike_counts(rows)
        level = decode_level(v_th, spec.gain)
        y = epilogue(reference.accumulators(layer, counts), weight_scale, level)  # not counted
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], spec.out_features), counts.to(spec.count_dtype)

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        weight_q: Any,
        weight_scale: Any,
        input_divisor: Any,
        threshold: Any,
        bias: Any,
        spec: LayerSpec,
        layer: Any,
    ) -> tuple[Any, Any]:
        return layer_symbolic(g, x, weight_q, weight_scale, input_divisor, threshold, bias, spec)


class SpikesLinearOp(torch.autograd.Function):
    """A spiking layer fed a spike train, as one traced op (:func:`spikes_symbolic`)."""

    @staticmethod
    def forward(
        ctx: Any,
        spikes: torch.Tensor,
        v_th: torch.Tensor,
        weight_q: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        spec: LayerSpec,
        layer: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c_t = torch.tensor(spec.step_weights).view(-1, 1, 1)
        counts = (spikes.to(torch.int64) * c_t).sum(0)
        acc = reference.accumulators(layer, counts).to(spec.acc_dtype)
        y = epilogue(acc, weight_scale, decode_level(v_th, spec.gain).expand(counts.shape[0], 1))
        if bias is not None:
            y = y + bias
        return y, acc

    @staticmethod
    def symbolic(
        g: Any,
        spikes: Any,
        v_th: Any,
        weight_q: Any,
        weight_scale: Any,
        bias: Any,
        spec: LayerSpec,
        layer: Any,
    ) -> tuple[Any, Any]:
        return spikes_symbolic(g, spikes, v_th, weight_q, weight_scale, bias, spec)
