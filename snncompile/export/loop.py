"""The sequence model as an ONNX `Loop` over one exported time step.

Unrolling puts T copies of the neuron updates into the graph: right for short
simulations (every runtime optimizes straight-line graphs best), but the graph
and the export time grow with T. Past `UNROLL_STEPS` the sequence model is
assembled from three traced pieces instead, with the same inputs and outputs:

    x -> Loop over T: one step (the step model: direct encoding feeds the
         frame x at every step, other encodings x[t]), neuron states carried,
         spk and mem collected -> decoding -> scores

(A direct-encoded model's time-invariant layers thus run at every step of the
Loop: the same values, but T times the work of the unrolled graph's once.)

The pieces are exported by the chosen exporter (TorchScript or dynamo); this module only
renames their values apart and wires them together with onnx.helper.
"""

from __future__ import annotations

import io

import onnx
import torch
from onnx import TensorProto, helper

from .wrappers import Decode, StepModel, state_names

UNROLL_STEPS = 100  # longer simulations get a Loop


def _trace(model, args, inputs, outputs, opset, exporter) -> onnx.ModelProto:
    from .onnx import _torch_export

    axes = {name: {0: "batch"} for name in inputs + outputs}
    if isinstance(model, Decode):
        axes = {"spk": {1: "batch"}, "mem": {1: "batch"}, "scores": {0: "batch"}}
    buffer = io.BytesIO()
    _torch_export(model, args, buffer, opset, (inputs, outputs, axes), exporter)
    return onnx.load_from_string(buffer.getvalue())


def _rename(graph: onnx.GraphProto, prefix: str, keep=()) -> None:
    """Prefix every value name of a (subgraph-free) graph, except those in `keep`."""
    new = lambda name: name if (not name or name in keep) else prefix + name
    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = prefix + node.name
    for group in (graph.input, graph.output, graph.value_info):
        for value in group:
            value.name = new(value.name)
    for tensor in graph.initializer:
        tensor.name = new(tensor.name)


def _float(name: str, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def looped_model(net, opset: int, exporter: str = "torchscript") -> onnx.ModelProto:
    """The sequence model of `net` (eval mode, hard spikes) with a Loop over time."""
    graph = net.graph
    steps, classes = graph.steps, graph.num_classes
    direct = graph.encoding["type"] == "direct"
    cur_shape = tuple(graph.input_shape)
    states = state_names(graph)
    names = [name for _, _, name in states]

    # one step: (h_t, *states) -> (spk, mem, *new states)
    zeros = [torch.zeros((2,) + tuple(node.out_shape)) for node, _, _ in states]
    step = _trace(
        StepModel(net),
        (torch.zeros((2,) + cur_shape), *zeros),
        ["h_t", *names],
        ["spk", "mem", *(f"{n}_out" for n in names)],
        opset,
        exporter,
    )
    body = step.graph
    _rename(body, "step/")
    if direct:
        first = helper.make_node("Identity", ["x"], ["step/h_t"], name="step/feed")
    else:
        first = helper.make_node(
            "Gather", ["x", "iter"], ["step/h_t"], axis=0, name="step/feed"
        )
    body_outputs = {value.name: value for value in body.output}
    out_names = [f"step/{n}_out" for n in names] + ["step/spk", "step/mem"]
    loop_body = helper.make_graph(
        [first, *body.node, helper.make_node("Identity", ["cond"], ["cond_out"])],
        "step",
        [  # declared here: the exporter drops state inputs a step does not read
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            *(
                _float(f"step/{n}", ["batch", *node.out_shape])
                for (node, _, n) in states
            ),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
        + [body_outputs[n] for n in out_names],
        initializer=list(body.initializer),
    )

    nodes, initializers = [], []
    # zero initial states [B, *shape], B read from x
    batch_axis = 0 if direct else 1
    initializers += [
        helper.make_tensor("loop/batch_axis", TensorProto.INT64, [1], [batch_axis]),
        helper.make_tensor("loop/steps", TensorProto.INT64, [], [steps]),
        helper.make_tensor("loop/true", TensorProto.BOOL, [], [True]),
    ]
    nodes += [
        helper.make_node("Shape", ["x"], ["loop/x_shape"]),
        helper.make_node("Gather", ["loop/x_shape", "loop/batch_axis"], ["loop/B"]),
    ]
    for node, _, name in states:
        initializers.append(
            helper.make_tensor(
                f"loop/{name}_dims",
                TensorProto.INT64,
                [len(node.out_shape)],
                node.out_shape,
            )
        )
        nodes += [
            helper.make_node(
                "Concat",
                ["loop/B", f"loop/{name}_dims"],
                [f"loop/{name}_shape"],
                axis=0,
            ),
            helper.make_node(
                "ConstantOfShape",
                [f"loop/{name}_shape"],
                [f"loop/{name}_0"],
                value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
            ),
        ]
    nodes.append(
        helper.make_node(
            "Loop",
            ["loop/steps", "loop/true", *(f"loop/{n}_0" for n in names)],
            [*(f"loop/{n}_last" for n in names), "spk", "mem"],
            body=loop_body,
            name="time_loop",
        )
    )

    # (spk, mem) -> scores
    decode = _trace(
        Decode(graph),
        (torch.zeros(steps, 2, classes), torch.zeros(steps, 2, classes)),
        ["spk", "mem"],
        ["scores"],
        opset,
        exporter,
    ).graph
    _rename(decode, "dec/", keep=("spk", "mem", "scores"))
    nodes += decode.node
    initializers += decode.initializer

    x_dims = (
        ["batch", *graph.input_shape]
        if direct
        else [steps, "batch", *graph.input_shape]
    )
    main = helper.make_graph(
        nodes,
        f"{graph.name}_sequence",
        [_float("x", x_dims)],
        [
            _float("scores", ["batch", classes]),
            _float("spk", [steps, "batch", classes]),
            _float("mem", [steps, "batch", classes]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        main, opset_imports=list(step.opset_import), producer_name="snncompile"
    )
    model.ir_version = step.ir_version
    return model
