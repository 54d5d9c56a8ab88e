"""The prefill graph: the decode step run by an ONNX ``Loop`` over a prompt, from the empty state.

    inputs   input_ids [batch, sequence] (int64)
    outputs  logits [batch, sequence, vocab], present.* (the state after the prompt, named as the
             decode graph names it), spike_counts.* ([sequence, batch, in], if exposed)

The loop body is the decode graph itself, its values renamed under ``step/`` and its weights
left in the outer graph (a body reads outer values by name), so every token of the prompt goes
through the same nodes as a decode step: the prefill's outputs equal stepping the decode graph
token by token, bit for bit. The initial state is built in the graph (``ConstantOfShape`` with
the prompt's batch), with the values the decode graph's ``spikelm.initial_state`` metadata names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from spikelm.errors import ConfigError

STEP = "step/"


def _renamed(name: str, inner: set[str]) -> str:
    return STEP + name if name in inner else name


def _body(decode: onnx.GraphProto, state: Sequence[str], present: Sequence[str]) -> onnx.GraphProto:
    """The decode graph as a Loop body: ``(iteration, cond, *state) -> (cond, *state', *scans)``."""
    graph_inputs = [i.name for i in decode.input]
    inner = set(graph_inputs)
    for node in decode.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise ConfigError("the decode graph has nested graphs; export with prefill=False")
        inner.update(o for o in node.output if o)
    axis = helper.make_tensor(STEP + "axis/value", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Constant", [], [STEP + "axis"], value=axis),
        helper.make_node("Gather", ["input_ids", STEP + "iteration"], [STEP + "token"], axis=1),
        helper.make_node("Unsqueeze", [STEP + "token", STEP + "axis"], [STEP + "input_ids"]),
        helper.make_node("Identity", [STEP + "cond"], [STEP + "cond_out"]),
    ]
    for node in decode.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [_renamed(n, inner) if n else n for n in node.input]
        copy.output[:] = [_renamed(n, inner) if n else n for n in node.output]
        nodes.append(copy)
    types = {v.name: v.type for v in (*decode.input, *decode.output)}
    inputs = [
        helper.make_tensor_value_info(STEP + "iteration", TensorProto.INT64, []),
        helper.make_tensor_value_info(STEP + "cond", TensorProto.BOOL, []),
    ]
    for name in state:
        inputs.append(helper.make_value_info(STEP + name, types[name]))
    outputs = [helper.make_tensor_value_info(STEP + "cond_out", TensorProto.BOOL, [])]
    scans = [o.name for o in decode.output if o.name not in present]
    for name in (*present, *scans):
        outputs.append(helper.make_value_info(STEP + name, types[name]))
    return helper.make_graph(nodes, "step", inputs, outputs)


def _initial(spec: Any) -> list[onnx.NodeProto]:
    """Nodes making ``initial/<name>``: the empty state for the prompt's batch."""
    name = "initial/" + spec.name
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    if not spec.shape:
        value = helper.make_tensor(name + "/value", dtype, [], [spec.fill])
        return [helper.make_node("Constant", [], [name], value=value)]
    rest = helper.make_tensor(
        name + "/rest", TensorProto.INT64, [len(spec.shape) - 1], spec.shape[1:]
    )
    fill = helper.make_tensor(name + "/fill", dtype, [1], [spec.fill])
    return [
        helper.make_node("Constant", [], [name + "/rest"], value=rest),
        helper.make_node("Concat", ["prefill/batch", name + "/rest"], [name + "/shape"], axis=0),
        helper.make_node("ConstantOfShape", [name + "/shape"], [name], value=fill),
    ]


def prefill_model(decode: onnx.ModelProto, specs: Sequence[Any]) -> onnx.ModelProto:
    """The prefill model built around ``decode`` (whose state inputs ``specs`` describes)."""
    graph = decode.graph
    state = [spec.name for spec in specs]
    outputs = [o.name for o in graph.output]
    present = outputs[1 : 1 + len(state)]
    counts = outputs[1 + len(state) :]
    body = _body(graph, state, present)

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        tensor = helper.make_tensor(name + "/value", TensorProto.INT64, [len(values)], values)
        return helper.make_node("Constant", [], [name], value=tensor)

    index = helper.make_tensor("prefill/one/value", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["prefill/shape"]),
        const("prefill/zero", [0]),
        const("prefill/one_1d", [1]),
        helper.make_node(
            "Slice", ["prefill/shape", "prefill/zero", "prefill/one_1d"], ["prefill/batch"]
        ),
        helper.make_node("Constant", [], ["prefill/one"], value=index),
        helper.make_node("Gather", ["prefill/shape", "prefill/one"], ["prefill/length"], axis=0),
    ]
    for spec in specs:
        nodes.extend(_initial(spec))
    nodes.append(
        helper.make_node(
            "Loop",
            ["prefill/length", "", *("initial/" + n for n in state)],
            [*present, "prefill/logits", *counts],
            body=body,
        )
    )
    nodes.append(const("prefill/axis2", [2]))
    nodes.append(
        helper.make_node("Squeeze", ["prefill/logits", "prefill/axis2"], ["prefill/logits2"])
    )
    nodes.append(helper.make_node("Transpose", ["prefill/logits2"], ["logits"], perm=[1, 0, 2]))
    rows = graph.input[0].type.tensor_type.shape.dim[0]  # "batch", or a fixed batch size
    batch = rows.dim_value or rows.dim_param
    types = {o.name: o.type for o in graph.output}
    vocab = types["logits"].tensor_type.shape.dim[-1]
    logits = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, [batch, "sequence", vocab.dim_value or "vocab"]
    )
    outs = [logits, *(helper.make_value_info(n, types[n]) for n in present)]
    for name in counts:
        tensor = types[name].tensor_type
        channels = tensor.shape.dim[-1].dim_value
        outs.append(
            helper.make_tensor_value_info(name, tensor.elem_type, ["sequence", batch, channels])
        )
    prompt = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "sequence"])
    outer = helper.make_graph(nodes, "prefill", [prompt], outs, list(graph.initializer))
    model = helper.make_model(outer, opset_imports=list(decode.opset_import))
    model.ir_version = decode.ir_version
    return model
