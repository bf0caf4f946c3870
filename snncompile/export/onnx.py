"""ONNX export of a spec's network, checked and optionally verified in onnxruntime.

Two graphs, both float32 with a dynamic batch axis, inference only (every neuron
fires by plain comparison, `hard = True`; dropout off, batch norm on running
statistics):

- ``sequence``: input ``x`` ([B, *shape] for direct encoding, else the already
  encoded spike train [T, B, *shape]: rate and latency coding are random or
  stateful preprocessing and stay outside the model); outputs ``scores`` [B, C]
  (the spec's decoding), ``spk`` and ``mem`` [T, B, C] of the output layer.
- ``step``: one time step; inputs ``x_t`` [B, *shape] (the raw frame for direct
  encoding, else the spike frame at step t) and every neuron state
  ``<layer>_<state>``; outputs ``spk``, ``mem`` [B, C] and ``<layer>_<state>_out``.
  States start at zero; their per-sample shapes are in the metadata. (The layers
  before the first neuron run at every step here: nothing is hoisted.)

Two exporters, both tracing the rendered functions above (never a copy of the
forward): ``torchscript`` (the default: ``dynamo=False``, about a second per
spec; deprecated by PyTorch) and ``dynamo``, PyTorch's maintained exporter
(``torch.export`` + onnxscript; opset 18 and up; measured here 8-45 s for an
unrolled sequence model and 3-5 s for a step model on 2 cores). Plan off the
deprecated path: ``dynamo`` becomes the default when its unrolled export takes
seconds (or when PyTorch removes TorchScript export); both are verified alike.
The wrappers loop over time in Python, so tracing sees straight-line tensor
code (no data-dependent control flow, every shape static but the batch). Up to
`UNROLL_STEPS` steps the sequence graph is unrolled (what runtimes optimize
best); past it, it is an ONNX Loop over one traced step
(snncompile/export/loop.py), so its size does not grow with T.

The file is written to a temporary name next to the target, checked with
``onnx.checker`` (full check), verified if asked, and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..lower import checkpoint as ckpt
from ..quiet import quiet_stderr, quiet_stdout
from ..spec.errors import UserError, first_line
from ..spec.load import as_spec
from .loop import UNROLL_STEPS, looped_model
from .wrappers import ENCODING_NOTES, SequenceModel, StepModel, state_names

MODES = ("sequence", "step")
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 17  # supported by onnxruntime >= 1.14 and most device runtimes
# the opsets each exporter writes (dynamo: natively from 18 on)
OPSETS = {"torchscript": (9, 20), "dynamo": (18, 23)}
DYNAMO_OPSET = 18
MIN_OPSET, MAX_OPSET = OPSETS["torchscript"]


# --------------------------------------------------------------------------- loading
def load_net(spec_or_net, checkpoint=None, seed: int | None = None):
    """A built net in inference mode and a note on where its weights came from."""
    import snncompile

    if isinstance(spec_or_net, nn.Module):
        net = spec_or_net
        if not hasattr(net, "graph"):
            raise UserError("export_onnx needs a net built by snncompile.build()")
        if any(t.device.type != "cpu" for t in net.state_dict().values()):
            raise UserError("export_onnx traces on the CPU: move the net there first")
        weights = "weights of the given module"
    else:
        spec = as_spec(spec_or_net)
        seed = spec.train.seed if seed is None else seed
        net = snncompile.build(spec, seed=seed)
        weights = (
            f"random initialization (seed {seed}), untrained: "
            "pass --checkpoint FILE for trained weights"
        )
    if checkpoint is not None:
        weights = ckpt.load_into(net, checkpoint)
    return net, weights


# --------------------------------------------------------------------------- export
class _Inference:
    """Eval mode with hard (comparison) spikes; restores the net's flags after."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __enter__(self):
        self.training = self.net.training
        self.hard = {m: m.hard for m in self.net.modules() if hasattr(m, "hard")}
        self.net.eval()
        for module in self.hard:
            module.hard = True
        return self.net

    def __exit__(self, *exc):
        self.net.train(self.training)
        for module, hard in self.hard.items():
            module.hard = hard


def io_names(graph, mode: str) -> tuple[list[str], list[str], dict]:
    """Input names, output names and dynamic (batch) axes of a mode's graph."""
    if mode == "sequence":
        batch_axis = 1 if graph.encoding["type"] != "direct" else 0
        inputs, outputs = ["x"], ["scores", "spk", "mem"]
        axes = {"x": {batch_axis: "batch"}, "scores": {0: "batch"}}
        axes.update({"spk": {1: "batch"}, "mem": {1: "batch"}})
        return inputs, outputs, axes
    states = [name for _, _, name in state_names(graph)]
    inputs = ["x_t", *states]
    outputs = ["spk", "mem", *(f"{s}_out" for s in states)]
    return inputs, outputs, {name: {0: "batch"} for name in inputs + outputs}


def example_inputs(graph, mode: str, batch: int = 2) -> tuple[torch.Tensor, ...]:
    shape = tuple(graph.input_shape)
    if mode == "step":
        states = [torch.zeros((batch,) + n.out_shape) for n, _, _ in state_names(graph)]
        return (torch.zeros((batch,) + shape), *states)
    if graph.encoding["type"] == "direct":
        return (torch.zeros((batch,) + shape),)
    return (torch.zeros((graph.steps, batch) + shape),)


@contextlib.contextmanager
def _quiet_exporter():
    """Exporter chatter off: warnings (the TorchScript exporter's deprecation
    notice), the dynamo exporter's loggers, and what C++ code writes to the
    process's stdout and stderr (on a failure the TorchScript exporter dumps the
    whole traced graph there); the error itself is reported by the caller."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), quiet_stdout(), quiet_stderr():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _torch_export(model, args, target, opset, names, exporter="torchscript") -> None:
    inputs, outputs, axes = names
    model.eval()
    with _quiet_exporter():
        if exporter == "torchscript":
            torch.onnx.export(
                model,
                args,
                target,
                dynamo=False,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
            return
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            verbose=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=_dynamic_shapes(model, args, inputs, axes),
            opset_version=opset,
        )
        for node in program.model.graph.all_nodes():
            node.metadata_props.clear()  # stack traces with this machine's paths
        program.save(target, external_data=False)


def _dynamic_shapes(model, args, inputs, axes):
    """torch.export's dynamic shapes for the forward's parameters: the batch
    axis of each input (a *states parameter takes a tuple of them)."""
    import inspect

    from torch.export import Dim

    batch = Dim("batch")
    spec = {}
    names = iter(inputs)
    for name, param in inspect.signature(model.forward).parameters.items():
        if param.kind is param.VAR_POSITIONAL:
            rest = [next(names) for _ in range(len(args) - len(spec))]
            spec[name] = tuple({next(iter(axes[n])): batch} for n in rest)
        else:
            axis = next(iter(axes.get(next(names), {0: None})))
            spec[name] = {axis: batch}
    return spec


def _culprit(net, graph, opset: int) -> str | None:
    """Export each layer alone; the first one that fails names the problem."""

    class OneStep(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, cur, *state):
            return self.layer.step(cur, state)

    for node in graph.nodes:
        if node.descriptor.role == "merge":
            continue  # no module of its own: plain tensor operations
        layer = getattr(net, node.name)
        cur = torch.zeros((2,) + tuple(node.in_shape))
        if node.stateful:
            model = OneStep(layer)
            args = (cur, *(torch.zeros_like(cur) for _ in node.states))
        else:
            model, args = layer, (cur,)
        try:
            _torch_export(model, args, io.BytesIO(), min(opset, 17), ([], [], {}))
        except Exception as err:  # noqa: BLE001
            return (
                f"layer '{node.name}' ({node.type}) cannot be exported to ONNX "
                f"opset {opset}: {first_line(err)}"
            )
    return None


def _metadata(graph, mode: str, weights: str) -> dict[str, str]:
    from .. import __version__

    enc = graph.encoding["type"]
    shape = ", ".join(str(s) for s in graph.input_shape)
    if mode == "sequence":
        layout = (
            f"x: [B, {shape}]"
            if enc == "direct"
            else f"x: [T={graph.steps}, B, {shape}]"
        )
        outputs = "scores [B, C], spk [T, B, C], mem [T, B, C]"
    else:
        layout = f"x_t: [B, {shape}] at each of T={graph.steps} steps, then the states"
        outputs = "spk [B, C], mem [B, C], then each state as <name>_out"
    states = [
        {
            "name": name,
            "layer": node.name,
            "state": state,
            "shape": list(node.out_shape),
        }
        for node, state, name in state_names(graph)
    ]
    return {
        "snncompile_version": __version__,
        "spec_name": graph.name,
        "mode": mode,
        "steps": str(graph.steps),
        "classes": str(graph.num_classes),
        "decoding": graph.decoding,
        "encoding": json.dumps(dict(graph.encoding)),
        "encoding_note": ENCODING_NOTES[enc],
        "input_layout": layout,
        "outputs": outputs,
        "states": json.dumps(states),
        "weights": weights,
        "spec": graph.spec_json,
    }


def _trace(net, mode: str, looped: bool, opset: int, tmp: str, exporter: str):
    """The ONNX model of `net` in `mode` (a proto; `tmp` is scratch space)."""
    import onnx

    graph = net.graph
    if looped:
        return looped_model(net, opset, exporter)
    model = SequenceModel(net) if mode == "sequence" else StepModel(net)
    names = io_names(graph, mode)
    _torch_export(model, example_inputs(graph, mode), tmp, opset, names, exporter)
    proto = onnx.load(tmp)
    if mode == "step":
        _keep_state_inputs(proto, graph)
    _static_output_dims(proto, graph, mode)
    return proto


def _static_output_dims(proto, graph, mode: str) -> None:
    """Name the batch axis `batch` and write every other output axis as its size
    (the exporter leaves generated symbols such as `ReduceSum..._dim_1`)."""
    classes, steps = graph.num_classes, graph.steps
    if mode == "sequence":
        shapes = {
            "scores": (None, classes),
            "spk": (steps, None, classes),
            "mem": (steps, None, classes),
        }
    else:
        shapes = {"spk": (None, classes), "mem": (None, classes)}
        for node, _, name in state_names(graph):
            shapes[f"{name}_out"] = (None, *node.out_shape)
    for output in proto.graph.output:
        want = shapes.get(output.name)
        dims = output.type.tensor_type.shape.dim
        if want is None or len(dims) != len(want):
            continue
        for dim, size in zip(dims, want):
            if size is None:
                dim.dim_param = "batch"
            else:
                dim.dim_value = size


def export_onnx(
    spec_or_net,
    path,
    mode: str = "sequence",
    checkpoint=None,
    opset: int | None = None,
    verify: bool = False,
    seed: int | None = None,
    loop: bool | None = None,
    exporter: str = "torchscript",
) -> dict[str, Any]:
    """Export a spec (Spec, spec file path, or a net from `snncompile.build`) to ONNX.

    The sequence model unrolls its T steps up to UNROLL_STEPS and loops (an ONNX
    Loop over one step) beyond; `loop` True or False forces either.
    Returns a report: path, mode, opset, inputs/outputs, nodes, size, seconds and,
    with `verify`, the onnxruntime-vs-PyTorch comparison (see `verify_onnx`).
    Raises UserError on a layer that cannot be exported or a failed verification;
    `path` is then left untouched (nothing half-written remains).
    """
    import onnx

    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if exporter not in EXPORTERS:
        raise UserError(
            f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}"
        )
    default = DEFAULT_OPSET if exporter == "torchscript" else DYNAMO_OPSET
    opset = default if opset is None else int(opset)
    low, high = OPSETS[exporter]
    if not low <= opset <= high:
        raise UserError(
            f"opset must be between {low} and {high} for the {exporter} exporter, "
            f"not {opset}"
        )
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"output directory {path.parent} does not exist")
    net, weights = load_net(spec_or_net, checkpoint, seed)
    graph = net.graph
    if mode == "sequence" and not graph.steps:
        raise UserError(
            f"{graph.name} has `steps: auto` over sequences of different lengths: a "
            "sequence graph needs a fixed T; export --mode step (one step per call, "
            "any T), or set `steps` to a number (it caps T)"
        )
    looped = mode == "sequence" and (
        graph.steps > UNROLL_STEPS if loop is None else loop
    )
    if looped and opset < 11:
        raise UserError(f"the time Loop needs opset 11 or newer, not {opset}")
    started = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _Inference(net), torch.no_grad():
            try:
                proto = _trace(net, mode, looped, opset, tmp, exporter)
            except Exception as err:  # noqa: BLE001
                reason = _culprit(net, graph, opset)
                raise UserError(
                    reason or f"cannot export '{graph.name}' to ONNX: {first_line(err)}"
                ) from None
        meta = _metadata(graph, mode, weights)
        meta["time_loop"] = "ONNX Loop" if looped else "unrolled"
        meta["exporter"] = exporter
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"snncompile {mode} model of spec '{graph.name}'"
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as err:  # noqa: BLE001
            raise UserError(
                f"exported model fails onnx.checker: {first_line(err)}"
            ) from None
        onnx.save(proto, tmp)
        report = {
            "path": str(path),
            "spec": graph.name,
            "mode": mode,
            "time_loop": meta["time_loop"] if mode == "sequence" else None,
            "opset": opset,
            "exporter": exporter,
            "weights": weights,
            "inputs": _signature(proto.graph.input),
            "outputs": _signature(proto.graph.output),
            "nodes": len(proto.graph.node),
            "bytes": os.path.getsize(tmp),
            "export_seconds": round(time.perf_counter() - started, 3),
        }
        if mode == "sequence" and not looped and graph.steps > UNROLL_STEPS:
            report["note"] = (
                f"{graph.steps} steps unrolled into one graph; --loop keeps it small"
            )
        if verify:
            from .verify import verify_onnx

            result = verify_onnx(net, tmp, mode)
            report["verification"] = result
            if not result["passed"]:
                raise VerificationError(report)
        os.replace(tmp, path)
        return report
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _keep_state_inputs(proto, graph) -> None:
    """Put back state inputs the exporter dropped as unused (e.g. the membrane of an
    alpha neuron without reset): a device feeds every state in metadata order."""
    import onnx

    present = {value.name: value for value in proto.graph.input}
    wanted = [("x_t", tuple(graph.input_shape))]
    wanted += [(name, tuple(node.out_shape)) for node, _, name in state_names(graph)]
    inputs = [
        present.get(name)
        or onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, ["batch", *shape]
        )
        for name, shape in wanted
    ]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


def _signature(values) -> list[str]:
    """'name [batch, 1, 28, 28]' for each graph input or output."""
    out = []
    for value in values:
        dims = value.type.tensor_type.shape.dim
        shape = ", ".join(d.dim_param or str(d.dim_value) for d in dims)
        out.append(f"{value.name} [{shape}]")
    return out


class VerificationError(UserError):
    """onnxruntime disagrees with PyTorch; `report` holds the figures."""

    def __init__(self, report: dict):
        self.report = report
        problems = "; ".join(report["verification"]["failures"])
        super().__init__(
            f"verification failed, {report['path']} not written: {problems}"
        )
