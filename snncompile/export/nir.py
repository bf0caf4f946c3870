"""NIR: export a spec's network to the Neuromorphic Intermediate Representation
and import NIR graphs as specs with checkpoints (`snncompile export -o X.nir`,
`snncompile import X.nir -o spec.yaml`).

Discretization (one for every file read or written; the reference simulation
in nir_sim.py runs exactly this):

- Time advances in steps of `dt` (default 1.0, `--dt`); every state is zero at
  the start; the input node's value at step t is the network input at step t.
- Forward Euler of each NIR equation, in this order within a step:
    CubaLIF/CubaLI: I += dt/tau_syn * (-I + w_in * x)           (current first)
                    v += dt/tau_mem * (v_leak - v + r * I)      (the new current)
    LIF/LI:         v += dt/tau * (v_leak - v + r * x)
    IF/I:           v += dt * r * x
  then z = (v > v_threshold) and, where z, v = v_reset (the reset takes effect
  in the step that fires). LI, I and CubaLI output v; the others output z.
- Edges into one node are summed. A neuron's output that reaches the neuron
  again through a cycle arrives one step later (zeros at the first step); the
  nodes in between compute on it in that later step (so an Affine's bias is
  present from the first step, as in snnTorch's RLeaky).

snnTorch's leaky update mem[t] = beta * mem[t-1] + I[t] is this LIF equation
with tau = dt / (1 - beta), r = tau / dt, v_leak = 0: then dt/tau = 1 - beta and
v + (1 - beta) * (0 - v + I / (1 - beta)) = beta * v + I. Its zero reset,
mem[t] = beta * (1 - reset[t]) * mem[t-1] + I[t] with reset[t] = spk[t-1], is
v_reset = 0 applied at the firing step: snncompile's `mem` is v before the
reset. So `leaky` and `if` with `reset: zero` are exact (IF: r = 1 / dt), and so
are `li` (LI; beta 1: I) and `alif`/`ralif` with `adapt: 0` and zero reset
(ralif's feedback is a cycle LIF -> Affine -> LIF). Likewise `cuba` with zero
reset is CubaLIF with tau_syn = dt / (1 - alpha), tau_mem = dt / (1 - beta),
w_in = tau_syn / dt, r = tau_mem / dt: then NIR's current is cuba's syn[t] =
alpha syn[t-1] + x[t], and its v is cuba's mem[t] = beta (1 - reset[t])
mem[t-1] + syn[t], the membrane before the reset, which acts in the step that
fires. (`leaky` with zero reset is `cuba` with alpha 0: tau_syn = dt.)

Not exact, refused unless `--approximate` (one line naming the layer):
- `reset: subtract` or `none` (NIR's LIF resets to v_reset): exported as zero reset;
- `rleaky` and `synaptic` with any reset: snnTorch's RLeaky and Synaptic reset
  to zero one step late (reset[t] = spk[t-1] zeroes the whole update of step
  t, input included), which NIR's LIF and CubaLIF do not; exported as a LIF
  with a recurrent Affine cycle, and as a CubaLIF (as `cuba` above), in NIR's
  semantics (`cuba` and `ralif` with adapt 0 are the exact forms);
- avgpool2d with padding (NIR leaves the divisor open): exported as AvgPool2d;
  the reference averages over the whole window (PyTorch's count_include_pad);
- batch norm (no NIR node): folded with its running statistics into the linear
  or conv layer it alone follows (exact in the reals, rounded to float32);
- maxpool2d of anything but spikes (NIR has no max): exported as AvgPool2d
  over the same windows, marked in its metadata, so snncompile reads it back
  as maxpool2d. Max pooling of a spiking layer's 0/1 output (or of its max
  pooling) is exact: the
  window's max is 1 exactly when its sum exceeds 0.5, so it is a SumPool2d and
  a Threshold(0.5) node (imported back, from any tool, as maxpool2d when the
  threshold lies in [0, g), g the pooled value of one spike).
Always refused: concat, iand, alpha, lapicque, rsynaptic, adaptive
thresholds (adapt != 0), conv recurrence, beta 1 for only some neurons of a
layer, batch norm after anything else. Dropout is exported as the identity
(inference). `--verify` runs both sides in float64 on random input.

Metadata: the graph's `metadata["snncompile"]` (JSON text) holds the format,
dt, steps and the whole spec; each node's holds its layer type, resolved
parameters and, for a neuron, every constant of its module (beta, threshold,
alpha, reset mode through the params, ...). Reading its own file, snncompile
takes these where they agree with the NIR parameters, so a spec comes back
exactly (also one exported with `--approximate`).

Import of other tools' files: r different from tau/dt, w_in and the gain of a
SumPool2d (an AvgPool2d times kh*kw) are folded into the weights (and bias) of
the Affine, Linear or Conv2d layer before the neuron, exact up to float32
rounding of the folded weights; a nonzero v_leak becomes the bias
dt/tau * v_leak of that layer (or of the recurrent Affine). A LIF with a
recurrent Affine or Linear becomes `ralif` with `adapt: 0` (snncompile's
rleaky resets late, see above). The input shape comes from the Input node;
the spec's input is `spikes` (the graph's input at each step, used as is).
CubaLIF is imported as `cuba` (reset zero), exactly: r * dt/tau_mem *
w_in * dt/tau_syn folded into the layer before it; with tau_syn = dt, as
`leaky` (the same dynamics). Threshold, Delay and CubaLI nodes, hidden LI/I
nodes, v_reset != 0, a CubaLIF's v_leak != 0, a CubaLIF in a cycle, tau < dt
(beyond float32 rounding: a tau that rounds dt counts as dt) and anything
else snncompile cannot represent are refused with the node's name and type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import keyword
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..jsonout import dumps
from ..spec.errors import SpecError, UserError, first_line
from . import nir_sim
from .nir_sim import ANALOG, FIRING, kind, shape_text
from .wrappers import membranes

FORMAT = "snncompile-nir-1"
META = "snncompile"
DEFAULT_DT = 1.0
DEFAULT_STEPS = 50  # an imported graph without snncompile metadata
ONE = 1e-9  # a gain within this of 1 (a bias within this of 0) is exactly that
FLOAT32 = 1e-6  # relative rounding of a float32 parameter (tau of dt)
SPIKING_TYPES = ("leaky", "if", "alif", "ralif", "rleaky", "synaptic", "cuba")


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("NIR support needs the nir package: pip install nir") from None
    return nir


class NIRVerificationError(UserError):
    """--verify found a difference; carries the report (exit 1, file not written)."""

    def __init__(self, report: dict):
        super().__init__("verification failed")
        self.report = report


# =========================================================================== export
def _plain(value):
    """Resolved IR params (mapping proxies, tuples) as JSON data."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _meta(payload: dict) -> dict:
    return {META: json.dumps(payload)}


def _array(tensor: torch.Tensor, shape, dtype=np.float64) -> np.ndarray:
    """A module constant (scalar or per neuron) over a layer's neurons."""
    value = tensor.detach().cpu().to(torch.float64).numpy().astype(dtype)
    return np.ascontiguousarray(np.broadcast_to(value, tuple(shape)))


class _Exporter:
    def __init__(self, net, dt: float, approximate: bool):
        self.net = net
        self.graph = net.graph
        self.dt = float(dt)
        self.approximate = approximate
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.notes: list[str] = []  # approximations
        self.remarks: list[str] = []  # exact for inference, worth saying
        self.sources: dict[str, list[str]] = {"input": ["input"]}
        self.state = net.state_dict()

    def inexact(self, node, reason: str, instead: str) -> None:
        """Refuse (one line) unless approximating; then note the approximation."""
        where = f"layer {node.name} ({node.type})"
        if not self.approximate:
            raise UserError(
                f"{where}: {reason}; pass --approximate to export {instead}"
            )
        self.notes.append(f"{where}: {reason}; exported {instead}")

    def refuse(self, node, reason: str):
        raise UserError(f"layer {node.name} ({node.type}): {reason}")

    def tensor(self, name: str) -> torch.Tensor:
        return self.state[name]

    def run(self):
        nir = _nir()
        graph = self.graph
        names = {n.name for n in graph.nodes} | {"input"}
        out_name = "output"
        while out_name in names:
            out_name += "_"
        self.taken = names | {out_name}
        self.nodes["input"] = nir.Input(np.array(graph.input_shape))
        for node in graph.nodes:
            self.node(node)
        self.nodes[out_name] = nir.Output(np.array(graph.output.out_shape))
        self.edges += [(src, out_name) for src in self.sources[graph.output.name]]
        seen = input_description(graph)
        meta = {
            "format": FORMAT,
            "dt": self.dt,
            "steps": graph.steps,
            "input": seen,
            "approximations": self.notes,
            "remarks": self.remarks,
            "spec": json.loads(graph.spec_json),
        }
        nir_graph = nir.NIRGraph(
            nodes=self.nodes, edges=self.edges, metadata=_meta(meta), type_check=False
        )
        return nir_graph, self.notes, [seen, *self.remarks]

    def emit(self, node, nir_node, srcs: list[str]) -> None:
        self.nodes[node.name] = nir_node
        self.edges += [(s, node.name) for s in srcs]
        self.sources[node.name] = [node.name]

    def info(self, node, **extra) -> dict:
        """Node metadata: its layer type and parameters, and the name of the add
        it reads (NIR has no node for it: its inputs are edges into this one)."""
        (first,) = node.inputs[:1] or ("input",)
        while first != "input" and self.graph.node(first).type == "dropout":
            first = self.graph.node(first).inputs[0]
        if first != "input" and self.graph.node(first).type == "add":
            extra["sum"] = first
        return _meta({"type": node.type, "params": _plain(node.params), **extra})

    def node(self, node) -> None:
        nir = _nir()
        srcs = [s for i in node.inputs for s in self.sources[i]]
        if len(set(srcs)) != len(srcs):
            self.refuse(
                node,
                "reads one value twice through an add (NIR sums edges and "
                "cannot repeat one)",
            )
        t, p, name = node.type, node.params, node.name
        if t == "add":
            self.sources[name] = srcs
            return
        if t == "dropout":
            self.sources[name] = srcs
            self.remarks.append(f"layer {name} (dropout): the identity (inference)")
            return
        if t == "linear":
            weight = self.tensor(f"{name}.weight").detach().cpu().numpy()
            if p["bias"]:
                bias = self.tensor(f"{name}.bias").detach().cpu().numpy()
                made = nir.Affine(weight=weight, bias=bias, metadata=self.info(node))
            else:
                made = nir.Linear(weight=weight, metadata=self.info(node))
            self.emit(node, made, srcs)
            return
        if t in ("conv1d", "conv2d"):
            weight = self.tensor(f"{name}.weight").detach().cpu().numpy()
            bias = (
                self.tensor(f"{name}.bias").detach().cpu().numpy()
                if p["bias"]
                else np.zeros(weight.shape[0], dtype=weight.dtype)
            )
            if t == "conv1d":
                made = nir.Conv1d(
                    input_shape=int(node.in_shape[1]),
                    weight=weight,
                    stride=int(p["stride"]),
                    padding=int(p["padding"]),
                    dilation=1,
                    groups=1,
                    bias=bias,
                    metadata=self.info(node),
                )
            else:
                made = nir.Conv2d(
                    input_shape=tuple(int(s) for s in node.in_shape[1:]),
                    weight=weight,
                    stride=tuple(int(s) for s in p["stride"]),
                    padding=tuple(int(s) for s in p["padding"]),
                    dilation=(1, 1),
                    groups=1,
                    bias=bias,
                    metadata=self.info(node),
                )
            self.emit(node, made, srcs)
            return
        if t == "flatten":
            made = nir.Flatten(
                input_type={"input": np.array(node.in_shape)},
                start_dim=0,
                end_dim=-1,
                metadata=self.info(node),
            )
            self.emit(node, made, srcs)
            return
        if t == "avgpool2d":
            kernel = np.array(p["kernel_size"])
            stride = np.array(p["stride"] if p["stride"] is not None else kernel)
            padding = np.array(p["padding"])
            if padding.any():
                self.inexact(
                    node,
                    "padding: NIR's AvgPool2d does not say whether padded zeros "
                    "count in the average",
                    "as AvgPool2d (zeros counted, as PyTorch does)",
                )
            made = nir.AvgPool2d(
                kernel_size=kernel,
                stride=stride,
                padding=padding,
                metadata=self.info(node),
            )
            self.emit(node, made, srcs)
            return
        if t == "maxpool2d":
            self.maxpool(node, srcs)
            return
        if t.startswith("batchnorm"):
            self.batchnorm(node)
            return
        if t in ("concat", "iand"):
            self.refuse(node, "NIR has no node for this merge (only sums of edges)")
        if node.stateful:
            self.neuron(node, srcs)
            return
        self.refuse(node, "no NIR node represents this layer type")

    def maxpool(self, node, srcs: list[str]) -> None:
        """Max pooling of spikes is exact in NIR: a window's max of 0/1 values
        is 1 exactly when their sum exceeds 0.5, so SumPool2d then Threshold(0.5).
        Of anything else NIR has no max; with --approximate, AvgPool2d."""
        nir = _nir()
        p = node.params
        kernel = np.array(p["kernel_size"])
        stride = np.array(p["stride"] if p["stride"] is not None else kernel)
        padding = np.array(p["padding"])
        spikes = self.binary(node.inputs[0])
        if not spikes:
            self.inexact(
                node,
                "NIR has no max pooling, and its input is not spikes (where "
                "SumPool2d + Threshold is exact)",
                "as AvgPool2d over the same windows (the mean, not the max; "
                "snncompile reads it back as maxpool2d)",
            )
        window = (nir.SumPool2d if spikes else nir.AvgPool2d)(
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            metadata=self.info(node, part="sum")
            if spikes
            else self.info(node, approximated="AvgPool2d"),
        )
        self.emit(node, window, srcs)
        if not spikes:
            return
        top = f"{node.name}_max"
        while top in self.taken:
            top += "_"
        self.taken.add(top)
        self.nodes[top] = nir.Threshold(
            threshold=np.full(node.out_shape, 0.5),
            metadata=_meta({"type": node.type, "part": "max", "of": node.name}),
        )
        self.edges.append((node.name, top))
        self.sources[node.name] = [top]

    def binary(self, name: str) -> bool:
        """Whether a layer's output is 0/1: a spiking layer's, or a max pooling
        of such (through dropout, the identity here)."""
        while name != "input" and self.graph.node(name).type in (
            "dropout",
            "maxpool2d",
        ):
            name = self.graph.node(name).inputs[0]
        return name != "input" and self.graph.node(name).type in SPIKING_TYPES

    def batchnorm(self, node) -> None:
        """Batch norm in inference (running statistics), folded into the linear
        or conv layer it alone reads: exact in the reals, not in float32."""
        before = node.inputs[0]
        layer = None if before == "input" else self.graph.node(before)
        alone = layer is not None and len(self.graph.consumers(before)) == 1
        if not alone or layer.type not in ("linear", "conv1d", "conv2d"):
            self.refuse(
                node,
                "NIR has no batch norm node, and it does not follow a linear or conv "
                "layer read by it alone, to fold it into",
            )
        self.inexact(
            node,
            "NIR has no batch norm node",
            f"folded into {before} (running statistics; float32 rounding)",
        )
        nir = _nir()
        name = node.name
        mean, var, eps = (
            self.tensor(f"{name}.running_mean").double().numpy(),
            self.tensor(f"{name}.running_var").double().numpy(),
            float(node.params["eps"]),
        )
        gamma = self.tensor(f"{name}.weight").detach().double().numpy()
        shift = self.tensor(f"{name}.bias").detach().double().numpy()
        scale = gamma / np.sqrt(var + eps)
        made = self.nodes[before]
        weight = np.asarray(made.weight, dtype=np.float64)
        bias = np.asarray(getattr(made, "bias", np.zeros(weight.shape[0])))
        shape = (-1,) + (1,) * (weight.ndim - 1)
        weight = (weight * scale.reshape(shape)).astype(np.float32)
        bias = ((bias - mean) * scale + shift).astype(np.float32)
        meta = _meta({"type": layer.type, "folded": name})  # not the spec's layer
        if isinstance(made, nir.Linear):
            self.nodes[before] = nir.Affine(weight=weight, bias=bias, metadata=meta)
        else:
            made.weight, made.bias, made.metadata = weight, bias, meta
        self.sources[name] = self.sources[before]

    def constants(self, node) -> dict[str, torch.Tensor]:
        """The neuron module's own tensors (not its recurrent linear layer)."""
        prefix = f"{node.name}."
        return {
            k[len(prefix) :]: v
            for k, v in self.state.items()
            if k.startswith(prefix) and not k.startswith(f"{prefix}recurrent.linear.")
        }

    def neuron(self, node, srcs: list[str]) -> None:
        nir = _nir()
        t, p, shape = node.type, node.params, node.out_shape
        if t not in (*SPIKING_TYPES, "li"):
            self.refuse(
                node,
                "no NIR neuron has these dynamics (exported: leaky, if, li, cuba, "
                "synaptic, rleaky, alif/ralif with adapt 0)",
            )
        consts = self.constants(node)
        stored = {
            k: {"shape": list(v.shape), "values": v.detach().cpu().flatten().tolist()}
            for k, v in consts.items()
        }
        meta = self.info(node, constants=stored)
        dt = self.dt
        reset = p.get("reset")
        rec = p.get("recurrence")
        if t in ("alif", "ralif") and bool((consts["adapt"] != 0).any()):
            self.refuse(
                node,
                "adaptive threshold (adapt != 0): NIR has no adaptive neuron",
            )
        if rec is not None and rec["type"] == "conv":
            self.refuse(node, "conv recurrence: only linear or one_to_one export")
        if t in ("rleaky", "synaptic"):
            late = (
                "snnTorch's reset acts one step late (the step after a spike "
                "is zeroed, input included), NIR's does not"
            )
            if reset != "zero":
                late = f"reset {reset} is not NIR's reset to v_reset, and {late}"
            self.inexact(node, late, "with NIR's reset to zero")
        elif t != "li" and reset != "zero":
            self.inexact(
                node,
                f"reset {reset}: NIR's neurons reset to v_reset",
                "with reset to zero",
            )
        thr = _array(consts["threshold"], shape) if t != "li" else None
        beta = np.ones(shape) if t == "if" else _array(consts["beta"], shape)
        zeros = np.zeros(shape)
        if t in ("synaptic", "cuba"):
            alpha = _array(consts["alpha"], shape)
            if (alpha >= 1).any() or (beta >= 1).any():
                self.refuse(node, "alpha or beta 1: CubaLIF would need infinite tau")
            tau_syn, tau_mem = dt / (1 - alpha), dt / (1 - beta)
            made = nir.CubaLIF(
                tau_syn=tau_syn,
                tau_mem=tau_mem,
                r=tau_mem / dt,
                v_leak=zeros,
                v_threshold=thr,
                v_reset=zeros,
                w_in=tau_syn / dt,
                metadata=meta,
            )
        elif (beta >= 1).all():
            made = (
                nir.I(r=np.full(shape, 1 / dt), metadata=meta)
                if t == "li"
                else nir.IF(
                    r=np.full(shape, 1 / dt),
                    v_threshold=thr,
                    v_reset=zeros,
                    metadata=meta,
                )
            )
        elif (beta >= 1).any():
            self.refuse(
                node,
                "beta 1 for some neurons only: a LIF without leak needs infinite tau",
            )
        else:
            tau = dt / (1 - beta)
            if t == "li":
                made = nir.LI(tau=tau, r=tau / dt, v_leak=zeros, metadata=meta)
            else:
                made = nir.LIF(
                    tau=tau,
                    r=tau / dt,
                    v_leak=zeros,
                    v_threshold=thr,
                    v_reset=zeros,
                    metadata=meta,
                )
        self.emit(node, made, srcs)
        if rec is None:
            return
        rec_name = f"{node.name}_rec"
        while rec_name in self.taken:
            rec_name += "_"
        self.taken.add(rec_name)
        n = shape[0]
        if rec["type"] == "linear":
            weight = self.tensor(f"{node.name}.recurrent.linear.weight")
            bias = self.tensor(f"{node.name}.recurrent.linear.bias")
            weight, bias = weight.detach().cpu().numpy(), bias.detach().cpu().numpy()
        else:
            v = float(consts["recurrent.V"])
            weight = (np.eye(n) * v).astype(np.float32)
            bias = np.zeros(n, dtype=np.float32)
        info = _meta({"type": "recurrence", "of": node.name, "kind": rec["type"]})
        self.nodes[rec_name] = nir.Affine(weight=weight, bias=bias, metadata=info)
        self.edges += [(node.name, rec_name), (rec_name, node.name)]


def to_nir(net, dt: float = DEFAULT_DT, approximate: bool = False):
    """(NIRGraph, approximations, remarks) of a built net and its weights."""
    if not dt > 0 or not math.isfinite(dt):
        raise UserError(f"--dt must be a positive number, got {dt}")
    return _Exporter(net, dt, approximate).run()


def export_nir(
    spec_or_net,
    path,
    checkpoint=None,
    dt: float | None = None,
    approximate: bool = False,
    verify: bool = False,
    seed: int | None = None,
) -> dict:
    """Write the spec's network (with the checkpoint's weights) as a NIR file;
    with `verify`, compare it with the reference simulation of the file first
    (NIRVerificationError and nothing written on a difference)."""
    from .onnx import _Inference, load_net

    nir = _nir()
    dt = DEFAULT_DT if dt is None else float(dt)
    started = time.perf_counter()
    net, weights = load_net(spec_or_net, checkpoint, seed)
    with _Inference(net):
        graph, notes, remarks = to_nir(net, dt, approximate)
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"cannot write {path}: no directory {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        nir.write(tmp, graph)
        written = read_nir(tmp)
        report = {
            "path": str(path),
            "format": "nir",
            "spec": net.graph.name,
            "nir_version": str(nir.version),
            "nodes": len(written.nodes),
            "edges": len(written.edges),
            "bytes": os.path.getsize(tmp),
            "dt": dt,
            "exact": not notes,
            "approximations": notes,
            "weights": weights,
            "input": remarks[0],
            "remarks": remarks[1:],
            "export_seconds": time.perf_counter() - started,
        }
        if verify:
            names = {n.name: n.name for n in net.graph.neuron_nodes}
            result = verify_nir(written, net, dt, names, approximate=bool(notes))
            report["verification"] = result
            if not result["passed"] and not notes:
                raise NIRVerificationError(report)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return report


# =========================================================================== reading
def _required(cls) -> list[str]:
    names = []
    for f in dataclasses.fields(cls):
        if f.name in ("input_type", "output_type", "metadata") or not f.init:
            continue
        if f.default is dataclasses.MISSING and (
            f.default_factory is dataclasses.MISSING
        ):
            names.append(f.name)
    return names


def _check_file(group, path: str, prefix: str = "") -> None:
    """Every node's type is a NIR type and has its parameters (named errors)."""
    nir = _nir()
    nodes = group.get("nodes")
    if nodes is None or "edges" not in group:
        where = f"subgraph '{prefix[:-1]}'" if prefix else "its graph"
        raise UserError(f"{path} is not a NIR graph: {where} has no nodes or edges")
    for name, node in nodes.items():
        full = f"{prefix}{name}"
        if "type" not in node:
            raise UserError(f"{path}: node '{full}' has no type")
        raw = node["type"][()]
        typ = raw.decode() if isinstance(raw, bytes) else str(raw)
        cls = getattr(nir, typ, None)
        if not (isinstance(cls, type) and issubclass(cls, nir.NIRNode)) or typ in (
            "NIRNode",
        ):
            raise UserError(
                f"{path}: node '{full}' has the unknown type {typ!r} "
                f"(not a node type of NIR {nir.version})"
            )
        if typ == "NIRGraph":
            _check_file(node, path, f"{full}.")
            continue
        needed = ["shape"] if typ in ("Input", "Output") else _required(cls)
        for param in needed:
            if param not in node:
                raise UserError(
                    f"{path}: node '{full}' ({typ}) lacks its parameter '{param}'"
                )


def read_nir(path):
    """nir.read with every failure as one UserError line (no tracebacks)."""
    nir = _nir()
    import h5py

    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"no NIR file at {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise UserError(
            f"{path} is not a NIR file: not HDF5 ({first_line(err)})"
        ) from None
    with handle:
        root = handle.get("node")
        raw = root["type"][()] if root is not None and "type" in root else b""
        if (raw.decode() if isinstance(raw, bytes) else str(raw)) != "NIRGraph":
            raise UserError(f"{path} is HDF5 but not a NIR graph (no NIRGraph node)")
        _check_file(root, path)
    try:
        return nir.read(path, type_check=False)
    except Exception as err:  # noqa: BLE001 - any malformed content
        text = first_line(err)
        raise UserError(
            f"{path}: NIR cannot read it ({type(err).__name__}: {text})"
        ) from None


# =========================================================================== import
def _identifier(name: str, taken: set[str]) -> str:
    from ..ir.analyze import reserved_attributes

    base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "node"
    if base[0].isdigit():
        base = f"n{base}"
    base = base.lstrip("_") or "node"
    base = base[:56]
    if keyword.iskeyword(base) or keyword.issoftkeyword(base):
        base += "_"
    candidate, k = base, 1
    while candidate in taken or candidate in reserved_attributes():
        k += 1
        candidate = f"{base}_{k}"
    taken.add(candidate)
    return candidate


@dataclass
class _Layer:
    name: str
    type: str
    fields: dict
    inputs: list[str]
    in_shape: tuple
    shape: tuple
    source: str  # the NIR node
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _uniform(arr: np.ndarray) -> bool:
    return arr.size == 0 or bool(np.all(arr == arr.flat[0]))


def _trivial(mult, add) -> bool:
    return bool(np.all(np.abs(np.asarray(mult) - 1) <= ONE)) and bool(
        np.all(np.abs(np.asarray(add)) <= ONE)
    )


def input_description(graph) -> str:
    """What a spec's NIR Input node receives at each step."""
    encoding = graph.encoding["type"]
    if encoding == "direct":
        return "the input node receives the raw sample at every step"
    return f"the input node receives the {encoding}-encoded spike train"


def own_metadata(nir_graph) -> dict:
    """The graph's snncompile metadata (format, dt, steps, spec, ...) when
    snncompile wrote it, else {}."""
    meta = _node_meta(nir_graph) or {}
    return meta if meta.get("format") == FORMAT else {}


def _node_meta(node) -> dict | None:
    raw = (getattr(node, "metadata", None) or {}).get(META)
    if isinstance(raw, bytes):
        raw = raw.decode()
    if isinstance(raw, np.ndarray):
        raw = raw.item()
        raw = raw.decode() if isinstance(raw, bytes) else raw
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class _Importer:
    def __init__(self, s: nir_sim.Structure, dt: float, approximate: bool):
        self.s = s
        self.dt = dt
        self.approximate = approximate
        self.layers: dict[str, _Layer] = {}
        self.value: dict[str, tuple[str, np.ndarray | None]] = {
            s.input: ("input", None)
        }
        self.taken: set[str] = {"input"}
        self.names: dict[str, str] = {}  # NIR neuron node -> layer
        self.notes: list[str] = []
        self.approximations: list[str] = []
        self.folds: list[tuple[str, np.ndarray, np.ndarray, str]] = []
        self.recurrence: dict[str, str] = {}  # neuron -> its recurrent Affine

    def where(self, name: str) -> str:
        return f"node '{name}' ({kind(self.s.nodes[name])})"

    def refuse(self, name: str, reason: str):
        raise UserError(f"{self.where(name)}: {reason}")

    # ---------------------------------------------------------------- structure
    def find_recurrence(self) -> None:
        s = self.s
        for a, b in sorted(s.delayed):
            ok = (
                kind(s.nodes[b]) in ("Affine", "Linear")
                and s.preds(b) == [a]
                and s.succs(b) == [a]
                and kind(s.nodes[a]) in ("LIF", "IF")
                and a not in self.recurrence
            )
            if not ok:
                self.refuse(
                    a,
                    f"feeds back through '{b}' ({kind(s.nodes[b])}): snncompile "
                    "represents only a LIF's or IF's own recurrence through one "
                    "Affine or Linear node that reads only it",
                )
            self.recurrence[a] = b

    def run(self) -> list[_Layer]:
        s = self.s
        self.find_recurrence()
        skip = set(self.recurrence.values()) | {s.input, s.output}
        feeds_out = s.preds(s.output)
        if len(feeds_out) != 1 or kind(s.nodes[feeds_out[0]]) not in FIRING + ANALOG:
            got = ", ".join(f"{a} ({kind(s.nodes[a])})" for a in feeds_out)
            raise UserError(
                f"the Output node must read one neuron node (LIF, IF, LI, I, CubaLIF); "
                f"it reads {got or 'nothing'}"
            )
        out = feeds_out[0]
        if len(s.shapes[out]) != 1:
            self.refuse(
                out,
                f"the output neurons have shape {shape_text(s.shapes[out])}; "
                "snncompile's output layer is flat [outputs]",
            )
        useful, todo = set(), [out]
        while todo:
            n = todo.pop()
            if n not in useful:
                useful.add(n)
                todo += s.preds(n)
        for name in s.order:
            if name not in useful and name != s.output:
                self.refuse(name, "does not lead to the Output node")
        for name in s.order:
            if name not in skip:
                self.convert(name)
        for layer, mult, add, why in self.folds:
            self.fold(layer, mult, add, why)
        return list(self.layers.values())

    def feed(self, name: str) -> tuple[str, np.ndarray | None]:
        """The layer holding the sum of what flows into `name`, and its gain."""
        s = self.s
        rec = self.recurrence.get(name)
        feeds = [a for a in s.preds(name) if a != rec and (a, name) not in s.delayed]
        values = [self.value[a] for a in feeds]
        if len(values) == 1:
            return values[0]
        shape = s.shapes[feeds[0]]
        gains = [np.broadcast_to(1.0 if g is None else g, shape) for _, g in values]
        if any(not np.array_equal(gains[0], g) for g in gains[1:]):
            self.refuse(name, "its inputs are scaled differently (a Scale on one edge)")
        meta = _node_meta(s.nodes[name]) or {}
        wanted = meta.get("sum") if isinstance(meta.get("sum"), str) else None
        add = _Layer(
            _identifier(wanted or f"{name}_sum", self.taken),
            "add",
            {},
            [layer for layer, _ in values],
            shape,
            shape,
            name,
        )
        self.layers[add.name] = add
        gain = values[0][1]
        return add.name, gain

    def add_layer(self, name: str, typ: str, fields: dict, source, in_shape, **tensors):
        layer = _Layer(
            _identifier(name, self.taken),
            typ,
            fields,
            [source],
            tuple(in_shape),
            tuple(self.s.shapes[name]),
            name,
            {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()},
        )
        self.layers[layer.name] = layer
        self.value[name] = (layer.name, None)
        return layer

    def channel_gain(self, name: str, gain, shape) -> np.ndarray | None:
        """A gain that is one number per channel ([C]), else a refusal."""
        if gain is None:
            return None
        full = np.broadcast_to(gain, shape).reshape(shape[0], -1)
        if not all(_uniform(row) for row in full):
            self.refuse(name, "reads an input scaled differently within a channel")
        return full[:, 0].copy()

    # ---------------------------------------------------------------- nodes
    def convert(self, name: str) -> None:
        s, node = self.s, self.s.nodes[name]
        k = kind(node)
        meta = _node_meta(node)
        if k in FIRING + ANALOG:
            self.neuron(name, meta)
            return
        source, gain = self.feed(name)
        in_shape = s.shapes[s.preds(name)[0]]
        if k in ("Affine", "Linear"):
            weight = np.asarray(node.weight, dtype=np.float64)
            if gain is not None:
                weight = weight * np.broadcast_to(gain, in_shape)[None, :]
            fields = {"out_features": int(weight.shape[0]), "bias": k == "Affine"}
            tensors = {"weight": weight}
            if k == "Affine":
                tensors["bias"] = np.broadcast_to(
                    np.asarray(node.bias, dtype=np.float64), (weight.shape[0],)
                )
            self.add_layer(name, "linear", fields, source, in_shape, **tensors)
        elif k in ("Conv1d", "Conv2d"):
            kernel, stride, pad = nir_sim.conv_setup(node)
            weight = np.array(node.weight, dtype=np.float64)
            scale = self.channel_gain(name, gain, in_shape)
            if scale is not None:
                weight = weight * scale.reshape((1, -1) + (1,) * len(kernel))
            bias = np.broadcast_to(
                np.asarray(node.bias, dtype=np.float64), (weight.shape[0],)
            )
            two = k == "Conv2d"
            fields = {
                "out_channels": int(weight.shape[0]),
                "kernel_size": list(kernel) if two else kernel[0],
                "stride": list(stride) if two else stride[0],
                "padding": list(pad) if two else pad[0],
                "bias": True,
            }
            typ = "conv2d" if two else "conv1d"
            self.add_layer(
                name, typ, fields, source, in_shape, weight=weight, bias=bias
            )
        elif k in ("AvgPool2d", "SumPool2d"):
            kernel, stride, pad = nir_sim.pool_setup(node)
            if any(p > q // 2 for p, q in zip(pad, kernel)):
                self.refuse(name, f"padding {list(pad)} exceeds half the window")
            scale = self.channel_gain(name, gain, in_shape)
            fields = {
                "kernel_size": list(kernel),
                "stride": list(stride),
                "padding": list(pad),
            }
            self.add_layer(name, "avgpool2d", fields, source, in_shape)
            out = s.shapes[name]
            total = np.ones(out[0]) if scale is None else scale
            if k == "SumPool2d":
                total = total * (kernel[0] * kernel[1])
            if not np.all(total == 1):
                full = np.broadcast_to(total.reshape(-1, 1, 1), out).copy()
                self.value[name] = (self.value[name][0], full)
        elif k == "Flatten":
            if len(s.shapes[name]) != 1:
                self.refuse(
                    name,
                    f"flattens {shape_text(in_shape)} to {shape_text(s.shapes[name])}; "
                    "snncompile flattens all feature axes into one",
                )
            self.add_layer(name, "flatten", {}, source, in_shape)
            if gain is not None:
                flat = np.broadcast_to(gain, in_shape).reshape(-1).copy()
                self.value[name] = (self.value[name][0], flat)
        elif k == "Scale":
            scale = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), in_shape)
            total = scale if gain is None else scale * gain
            self.value[name] = (source, total)
        elif k == "Threshold":
            self.max_of_spikes(name)
            return
        else:
            reasons = {
                "Delay": "snncompile has no delay layer",
                "CubaLI": "snncompile has no non-spiking synaptic readout",
            }
            self.refuse(name, reasons.get(k, "snncompile cannot represent it"))
        if k == "AvgPool2d" and meta and meta.get("approximated") == "AvgPool2d":
            self.own_maxpool(name, meta)
        own = ("linear", "conv1d", "conv2d", "avgpool2d", "maxpool2d")
        if meta and meta.get("type") in own:
            self.own_layer(name, meta)

    def max_of_spikes(self, name: str) -> None:
        """A Threshold reading only a pool of one spiking node's 0/1 output (or
        of such a max pooling's) is max pooling when it lies in [0, g): g, the value of one spike in
        the window, is the least nonzero sum. Any other Threshold is refused."""
        s = self.s
        (pool,) = s.preds(name)[:1] or (None,)
        why = (
            "a stateless threshold; snncompile imports one only as the max of "
            "spikes: reading only a SumPool2d or AvgPool2d of a LIF, IF or "
            "CubaLIF node's spikes (or of their max), with a threshold from 0 up "
            "to one spike's "
            "value in the window"
        )
        if (
            pool is None
            or len(s.preds(name)) != 1
            or kind(s.nodes[pool]) not in ("SumPool2d", "AvgPool2d")
            or s.succs(pool) != [name]
            or len(s.preds(pool)) != 1
            or not self.binary(s.preds(pool)[0])
            or self.value[s.preds(pool)[0]][1] is not None
        ):
            self.refuse(name, why)
        layer_name, gain = self.value[pool]
        layer = self.layers[layer_name]
        kh, kw = layer.fields["kernel_size"]
        one = np.broadcast_to(1.0 if gain is None else gain, layer.shape) / (kh * kw)
        threshold = np.broadcast_to(
            np.asarray(self.s.nodes[name].threshold, dtype=np.float64), layer.shape
        )
        if not np.all((threshold >= 0) & (threshold < one)):
            self.refuse(name, why)
        layer.type = "maxpool2d"
        self.value[name] = (layer.name, None)
        meta = _node_meta(s.nodes[pool])
        if meta and meta.get("type") == "maxpool2d":
            self.own_layer(pool, meta)

    def binary(self, name: str) -> bool:
        """Whether a node's output is 0/1: a LIF, IF or CubaLIF node's spikes,
        or a Threshold already read as their max pooling."""
        if kind(self.s.nodes[name]) in FIRING:
            return True
        layer = self.layers.get(self.value.get(name, ("", None))[0])
        return (
            kind(self.s.nodes[name]) == "Threshold"
            and layer is not None
            and (layer.type == "maxpool2d")
        )

    def own_maxpool(self, name: str, meta: dict) -> None:
        """snncompile's --approximate export of a max pooling of non-spikes as
        AvgPool2d: read back as the maxpool2d its metadata names."""
        layer_name, gain = self.value[name]
        if gain is not None:
            self.notes.append(
                f"{self.where(name)}: marked as snncompile's approximated maxpool2d, "
                "but its input is scaled (an edited file): imported as the average "
                "pooling NIR describes"
            )
            return
        self.layers[layer_name].type = "maxpool2d"
        self.approximations.append(
            f"{self.where(name)}: snncompile exported a maxpool2d as this AvgPool2d "
            "with --approximate; imported as maxpool2d from its metadata (NIR's "
            "semantics, the reference's, take the mean)"
        )

    def own_layer(self, name: str, meta: dict) -> None:
        """snncompile's own file: what NIR does not record of the layer as it was
        (no bias, where the NIR bias is zero; a pool's default stride)."""
        layer = self.layers[self.value[name][0]]
        params = meta.get("params")
        if not isinstance(params, dict) or meta["type"] != layer.type:
            return
        bias = layer.tensors.get("bias")
        if params.get("bias") is False and bias is not None and not np.any(bias):
            layer.tensors.pop("bias")
            layer.fields["bias"] = False
        fields = layer.fields
        if (
            layer.type in ("avgpool2d", "maxpool2d")
            and params.get("stride", 0) is None
            and fields["stride"] == fields["kernel_size"]
        ):
            del fields["stride"]

    def neuron(self, name: str, meta: dict | None) -> None:
        s, node = self.s, self.s.nodes[name]
        k = kind(node)
        shape = s.shapes[name]
        dt = self.dt
        if k in ANALOG and s.succs(name) != [s.output]:
            self.refuse(
                name,
                "its output is its membrane; snncompile's leaky integrator (li) "
                "is only the output layer",
            )

        def arr(p):
            return np.broadcast_to(
                np.asarray(getattr(node, p), dtype=np.float64), shape
            ).copy()

        consts: dict[str, np.ndarray] = {}
        add = np.zeros(shape)
        if k in ("LIF", "IF", "CubaLIF"):
            if np.any(arr("v_reset") != 0):
                self.refuse(name, "v_reset != 0: snncompile's neurons reset to zero")
            consts["threshold"] = arr("v_threshold")
            if np.any(consts["threshold"] <= 0) or not np.all(
                np.isfinite(consts["threshold"])
            ):
                self.refuse(name, "v_threshold must be positive and finite")
        if k in ("IF", "I"):
            mult = dt * arr("r")
            beta = np.ones(shape)
        elif k in ("LIF", "LI"):
            tau = arr("tau")
            beta = self.decay(name, tau, "tau")
            mult = dt * arr("r") / tau
            add = dt * arr("v_leak") / tau
        else:  # CubaLIF
            tau_syn, tau_mem = arr("tau_syn"), arr("tau_mem")
            beta = self.decay(name, tau_mem, "tau_mem")
            alpha = self.decay(name, tau_syn, "tau_syn")
            if np.any(arr("v_leak") != 0):
                self.refuse(name, "v_leak != 0 of a CubaLIF has no exact form")
            mult = (dt / tau_mem) * arr("r") * (dt / tau_syn) * arr("w_in")
            if not np.all(alpha == 0):  # (else tau_syn = dt: leaky, the same)
                consts["alpha"] = alpha
        consts["beta"] = beta
        rec = self.recurrence.get(name)
        if k in ANALOG:
            typ = "li"
        elif "alpha" in consts:
            typ = "cuba"
        elif rec is not None:
            typ = "ralif"
        elif k == "IF":
            typ = "if"
        else:
            typ = "leaky"
        source, gain = self.feed(name)
        mult_in = mult if gain is None else mult * np.broadcast_to(gain, shape)
        tensors: dict[str, np.ndarray] = {}
        if rec is not None:
            rnode = s.nodes[rec]
            weight = np.asarray(rnode.weight, dtype=np.float64)
            bias = (
                np.broadcast_to(np.asarray(rnode.bias, dtype=np.float64), shape)
                if kind(rnode) == "Affine"
                else np.zeros(shape)
            )
            tensors["recurrent.linear.weight"] = mult[:, None] * weight
            tensors["recurrent.linear.bias"] = mult * bias + add
            add = np.zeros(shape)
        own = self.own_neuron(name, meta, typ, consts, mult_in, add, shape)
        if own is not None:
            typ, fields, exact = own
            if (fields.get("recurrence") or {}).get("type") == "one_to_one":
                tensors = {}
            tensors.update(exact)
        else:
            fields = self.neuron_fields(typ, consts, tensors, shape)
            if not _trivial(mult_in, add):
                self.folds.append((source, mult_in, add, name))
        layer = _Layer(
            _identifier(name, self.taken), typ, fields, [source], shape, shape, name
        )
        layer.tensors = tensors
        self.layers[layer.name] = layer
        self.value[name] = (layer.name, None)
        self.names[name] = layer.name

    def decay(self, name: str, tau: np.ndarray, what: str) -> np.ndarray:
        """1 - dt/tau; a tau within float32 rounding below dt (snnTorch writes
        dt / (1 - 0) in float32) is dt: decay 0."""
        if np.any(~(tau >= self.dt * (1 - FLOAT32))):
            self.refuse(
                name,
                f"{what} below dt {self.dt:g}: forward Euler overshoots (beta < 0); "
                "pass a smaller --dt",
            )
        return np.maximum(1 - self.dt / tau, 0.0)

    def neuron_fields(self, typ, consts, tensors, shape) -> dict:
        """Spec fields of an imported neuron; per_neuron where a constant varies."""
        per = any(not _uniform(v) for v in consts.values())
        fields: dict[str, Any] = {}
        for key in ("alpha", "beta", "threshold"):
            if key in consts and not (typ == "if" and key == "beta"):
                fields[key] = float(consts[key].flat[0])
                tensors[key] = consts[key] if per else np.asarray(consts[key].flat[0])
        if typ != "li":
            fields["reset"] = "zero"
        if typ == "ralif":
            fields.update(rho=0.0, adapt=0.0, recurrence={"type": "linear"})
        if per:
            fields["per_neuron"] = True
            if typ == "ralif":
                tensors["rho"] = np.zeros(shape)
                tensors["adapt"] = np.zeros(shape)
        return fields

    def own_neuron(self, name, meta, typ, consts, mult, add, shape):
        """snncompile's own neuron (its metadata agrees with the NIR parameters):
        (type, spec fields, exact module constants), else None."""
        if not meta or meta.get("type") not in SPIKING_TYPES + ("li",):
            return None
        stored = meta.get("constants") or {}
        try:
            exact = {
                k: np.asarray(v["values"], dtype=np.float64).reshape(v["shape"])
                for k, v in stored.items()
            }
        except (KeyError, TypeError, ValueError):
            return None
        if not _trivial(mult, add):
            return None
        for key, derived in consts.items():
            if key == "beta" and meta["type"] == "if":
                continue
            value = exact.get(key)
            if value is None or not np.allclose(
                np.broadcast_to(value, shape), derived, rtol=1e-6, atol=1e-9
            ):
                self.notes.append(
                    f"{self.where(name)}: its snncompile metadata disagrees with "
                    f"its {key}; imported from the NIR parameters"
                )
                return None
        rec = (meta.get("params") or {}).get("recurrence")
        if rec is not None and rec.get("type") not in ("linear", "one_to_one"):
            return None
        if (rec is None) != (name not in self.recurrence):
            return None
        return meta["type"], dict(meta["params"]), exact

    # ---------------------------------------------------------------- folding
    def consumers(self, layer: str) -> int:
        return sum(x.inputs.count(layer) for x in self.layers.values())

    def fold(self, name: str, mult, add, why: str) -> None:
        """Multiply the value of layer `name` by `mult` and add `add` (arrays of
        its output shape), in its weights: exact in the reals."""
        if _trivial(mult, add):
            return
        what = "the input gain r*dt/tau (w_in, SumPool, Scale) or v_leak bias"
        if name == "input":
            self.refuse(why, f"{what} cannot be applied: it reads the network input")
        layer = self.layers[name]
        if self.consumers(name) > 1:
            self.refuse(
                why,
                f"{what} cannot be folded into '{layer.source}', which other "
                "nodes read too",
            )
        mult = np.broadcast_to(mult, layer.shape)
        add = np.broadcast_to(add, layer.shape)
        t = layer.type
        if t == "linear":
            layer.tensors["weight"] = layer.tensors["weight"] * mult[:, None]
            bias = layer.tensors.get("bias", np.zeros(layer.shape))
            layer.tensors["bias"] = bias * mult + add
            layer.fields["bias"] = True
        elif t in ("conv1d", "conv2d"):
            m = self.channel_gain(why, mult, layer.shape)
            a = self.channel_gain(why, add, layer.shape)
            dims = len(layer.shape) - 1
            w = layer.tensors["weight"]
            layer.tensors["weight"] = w * m.reshape((-1,) + (1,) * (dims + 1))
            bias = layer.tensors.get("bias", np.zeros(layer.shape[0]))
            layer.tensors["bias"] = bias * m + a
            layer.fields["bias"] = True
        elif t == "avgpool2d":
            m = self.channel_gain(why, mult, layer.shape).reshape(-1, 1, 1)
            a = self.channel_gain(why, add, layer.shape).reshape(-1, 1, 1)
            shape = layer.in_shape
            self.fold(
                layer.inputs[0],
                np.broadcast_to(m, shape),
                np.broadcast_to(a, shape),
                why,
            )
        elif t == "flatten":
            shape = layer.in_shape
            self.fold(layer.inputs[0], mult.reshape(shape), add.reshape(shape), why)
        elif t == "add":
            for i, source in enumerate(layer.inputs):
                self.fold(source, mult, add if i == 0 else np.zeros_like(add), why)
        else:
            self.refuse(
                why,
                f"{what} cannot be folded: it reads the spikes of "
                f"'{layer.source}' directly (put an Affine or Linear node between)",
            )


def _spec_dict(layers: list[_Layer], shape, name: str, steps: int, source: str):
    entries = []
    previous = "input"
    for layer in layers:
        entry: dict[str, Any] = {"type": layer.type, "name": layer.name}
        if layer.inputs != [previous]:
            entry["inputs"] = list(layer.inputs)
        entry.update(layer.fields)
        entries.append(entry)
        previous = layer.name
    last = layers[-1]
    outputs = last.shape[0] if len(last.shape) == 1 else 0
    spiking = last.type != "li"
    regression = outputs == 1
    spec: dict[str, Any] = {
        "snncompile": 1,
        "name": name,
        "description": f"imported from {source}",
        "input": {"shape": [int(s) for s in shape], "encoding": {"type": "spikes"}},
        "steps": steps,
        "layers": entries,
    }
    if regression:
        spec["task"] = "regression"
        spec["decoding"] = {"type": "mean_membrane"}
        spec["loss"] = {"type": "mse"}
        spec["train"] = {"dataset": "synthetic_regression"}
    else:
        spec["decoding"] = {"type": "rate" if spiking else "mean_membrane"}
        spec["loss"] = {"type": "ce_rate" if spiking else "ce_membrane"}
        spec["train"] = {"dataset": "synthetic"}
    return spec


def _clean(value):
    """Spec data without null fields (each one's default is null)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(
        _clean(data), sort_keys=False, default_flow_style=None, width=88
    )


def _analyze(text: str, where: str):
    from ..ir.analyze import analyze
    from ..spec.load import loads

    try:
        return analyze(loads(text, where))
    except SpecError as err:
        first = err.problems[0] if err.problems else err
        raise UserError(f"the imported network is not a valid spec: {first}") from None


def _same_nodes(own, imported) -> bool:
    """Whether the spec in a file's metadata has the imported layers (its
    dropout layers, exported as the identity, aside)."""
    skip = {n.name: n.inputs[0] for n in own.nodes if n.type == "dropout"}

    def through(name):
        while name in skip:
            name = skip[name]
        return name

    def key(nodes):
        return sorted(
            (
                n.name,
                n.type,
                tuple(through(i) for i in n.inputs),
                n.out_shape,
                json.dumps(_plain(n.params), sort_keys=True),
            )
            for n in nodes
        )

    mine = [n for n in own.nodes if n.name not in skip]
    return key(mine) == key(imported.nodes)


def _with_layers(original: dict, text: str):
    """The metadata's spec (input, steps, decoding, training) with the imported
    layers, if that is a valid spec; else None."""
    import yaml

    layers = yaml.safe_load(text)["layers"]
    data = {
        k: layers if k == "layers" else v
        for k, v in original.items()
        if k not in ("blocks", "defaults")
    }
    try:
        mixed = _yaml(data)
        return mixed, _analyze(mixed, "<the metadata's spec with imported layers>")
    except UserError:
        return None


@dataclass
class Imported:
    """A NIR graph as snncompile sees it."""

    text: str  # the spec, YAML
    graph: Any  # its IR
    state: dict[str, torch.Tensor]
    names: dict[str, str]  # NIR neuron node -> layer
    notes: list[str]
    approximations: list[str]
    dt: float
    structure: Any
    restored: bool  # the whole spec came from snncompile's metadata


def from_nir(
    nir_graph,
    dt: float | None = None,
    approximate: bool = False,
    name: str = "imported",
    steps: int | None = None,
    source: str = "a NIR graph",
) -> Imported:
    """A spec (YAML text), its IR and a state dict for a NIR graph."""
    from ..lower.build import build_graph

    meta = own_metadata(nir_graph)
    notes: list[str] = []
    if dt is None:
        dt = float(meta.get("dt", DEFAULT_DT))
        if not meta:
            notes.append(f"dt {dt:g} assumed (pass --dt for the file's own)")
    if not dt > 0 or not math.isfinite(dt):
        raise UserError(f"--dt must be a positive number, got {dt}")
    s = nir_sim.structure(nir_graph)
    importer = _Importer(s, dt, approximate)
    layers = importer.run()
    notes += importer.notes
    input_shape = s.shapes[s.input]
    if not 1 <= len(input_shape) <= 3:
        raise UserError(
            f"the input has shape {shape_text(input_shape)}; specs take 1 to 3 axes"
        )
    steps = steps or int(meta.get("steps", DEFAULT_STEPS))
    text = _yaml(_spec_dict(layers, input_shape, name, steps, source))
    graph = _analyze(text, f"<{name}>")
    restored = False
    original = meta.get("spec")
    if isinstance(original, dict):
        try:
            own_text = _yaml(original)
            own = _analyze(own_text, f"<{name}: its snncompile metadata>")
        except UserError:
            own = None
        if own is not None and _same_nodes(own, graph):
            text, graph, restored = own_text, own, True
            if meta.get("approximations"):
                importer.approximations.append(
                    "snncompile exported this file with --approximate (NIR's "
                    "semantics differ from the spec's); the spec is restored "
                    "from its metadata: " + " | ".join(meta["approximations"])
                )
        elif own is not None:
            if meta.get("approximations"):
                notes.append(
                    "snncompile exported this file with --approximate: "
                    + " | ".join(meta["approximations"])
                )
            notes.append(
                "the graph differs from the spec in its snncompile metadata "
                "(edited): its layers are imported as NIR describes them"
            )
            mixed = _with_layers(original, text)
            if mixed is not None:
                text, graph = mixed
    for layer in layers:
        if graph.node(layer.name).out_shape != layer.shape:  # pragma: no cover
            raise UserError(f"internal: {layer.name} has another shape in the spec")
    net = build_graph(graph, seed=0)
    state = net.state_dict()
    for layer in layers:
        for key, value in layer.tensors.items():
            full = f"{layer.name}.{key}"
            if full not in state or tuple(state[full].shape) != value.shape:
                raise UserError(  # pragma: no cover - a bug, not the file
                    f"internal: {full} {list(value.shape)} does not fit the spec"
                )
            state[full] = torch.from_numpy(np.array(value)).to(state[full].dtype)
    return Imported(
        text,
        graph,
        state,
        importer.names,
        notes,
        importer.approximations,
        dt,
        s,
        restored,
    )


def import_nir(
    path,
    output,
    checkpoint_out=None,
    dt: float | None = None,
    approximate: bool = False,
    verify: bool = False,
    steps: int | None = None,
    name: str | None = None,
) -> dict:
    """Read a NIR file; write the spec (YAML) and a checkpoint for it."""
    from ..lower import checkpoint as ckpt

    path, output = Path(path), Path(output)
    checkpoint_out = (
        Path(checkpoint_out) if checkpoint_out else output.with_suffix(".pt")
    )
    _check_targets(path, output, checkpoint_out)
    nir_graph = read_nir(path)
    if name is None:
        meta = _node_meta(nir_graph) or {}
        spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
        name = spec.get("name") or _identifier(path.stem, set())
    try:
        result = from_nir(
            nir_graph, dt, approximate, name, steps, source=f"{path.name} (NIR)"
        )
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        ArithmeticError,
    ) as err:
        # parameters of unexpected types or shapes that no check above named
        raise UserError(
            f"{path}: cannot import it ({type(err).__name__}: {first_line(err)})"
        ) from None
    report = {
        "path": str(path),
        "spec": str(output),
        "checkpoint": str(checkpoint_out),
        "name": result.graph.name,
        "layers": len(result.graph.nodes),
        "nir_nodes": len(result.structure.nodes),
        "dt": result.dt,
        "exact": not result.approximations,
        "restored": result.restored,
        "approximations": result.approximations,
        "notes": result.notes,
    }
    if verify:
        from ..lower.build import build_graph

        net = build_graph(result.graph, seed=0)
        net.load_state_dict(result.state)
        report["verification"] = verify_nir(
            result.structure,
            net,
            result.dt,
            result.names,
            approximate=bool(result.approximations),
        )
        if not report["verification"]["passed"] and report["exact"]:
            raise NIRVerificationError(report)
    for target in (output, checkpoint_out):
        if not target.parent.exists():
            raise UserError(f"cannot write {target}: no directory {target.parent}")
    try:
        ckpt.save(
            checkpoint_out,
            {
                "spec": result.graph.spec_json,
                "model": result.state,
                "epoch": None,
                "source": f"NIR import of {path.name}",
            },
        )
    except (OSError, RuntimeError) as err:  # torch.save: RuntimeError on a full disk
        raise UserError(f"cannot write {checkpoint_out}: {first_line(err)}") from None
    try:
        output.write_text(result.text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write {output}: {first_line(err)}") from None
    return report


def _check_targets(path: Path, output: Path, checkpoint_out: Path) -> None:
    """Before any work: the spec and the checkpoint go to two files, neither
    the NIR file read, neither a directory, each in a folder."""

    def same(a: Path, b: Path) -> bool:
        try:
            return a.resolve() == b.resolve()
        except OSError:
            return False

    if same(output, checkpoint_out):
        raise UserError(
            f"-o and --checkpoint-out are the same file {output}; name two files"
        )
    for flag, target in (("-o", output), ("--checkpoint-out", checkpoint_out)):
        if same(target, path):
            raise UserError(
                f"{flag} {target} is this command's input: it would be written "
                "over; choose another file"
            )
        if target.is_dir():
            raise UserError(f"{flag} {target} is a directory; name a file in it")
        if target.parent.exists() and not target.parent.is_dir():
            raise UserError(
                f"cannot write {target}: {target.parent} is a file, not a directory"
            )


# =========================================================================== verify
def verify_nir(
    nir_graph_or_structure,
    net,
    dt: float,
    names: dict[str, str],
    batch: int = 4,
    seed: int = 0,
    approximate: bool = False,
) -> dict:
    """snncompile's spikes and membranes (float64) against the reference
    simulation of the NIR graph (nir_sim) on random input; each NIR neuron node
    in `names` against its layer. A sample whose reference membrane comes within
    rounding of a threshold is compared only up to that step's consequences
    (counted apart, never a failure)."""
    from ..lower.build import build_graph
    from .onnx import _Inference
    from .wrappers import SequenceModel

    s = (
        nir_graph_or_structure
        if isinstance(nir_graph_or_structure, nir_sim.Structure)
        else nir_sim.structure(nir_graph_or_structure)
    )
    graph = net.graph
    steps = graph.steps
    gen = np.random.default_rng(seed)
    shape = tuple(graph.input_shape)
    if graph.encoding["type"] == "direct":
        raw = gen.random((batch, *shape))
        x_ref = np.broadcast_to(raw, (steps, batch, *shape))
    else:
        raw = gen.random((steps, batch, *shape))
        x_ref = raw
    trace = nir_sim.simulate(s, x_ref, dt)
    model = build_graph(graph)  # a plain float64 copy (its graph is not copyable)
    model.load_state_dict(net.state_dict())
    model = model.double()
    record: dict = {}
    handles = membranes(model, record, spikes=True)
    try:
        with _Inference(model), torch.no_grad():
            SequenceModel(model)(torch.as_tensor(raw, dtype=torch.float64))
    finally:
        for handle in handles:
            handle.remove()
    near = np.zeros(batch, dtype=bool)
    for node_name in names:
        if node_name in trace.threshold:
            thr = trace.threshold[node_name]
            tol = 1e-6 * np.maximum(1.0, np.abs(thr))
            margin = np.abs(trace.v[node_name] - thr) <= tol
            near |= margin.reshape(steps, batch, -1).any(axis=(0, 2))
    strict = ~near
    mismatches = mismatches_near = 0
    mem_diff = 0.0
    spikes = 0
    layers = []
    for node_name, layer in names.items():
        spk, mem = record[layer]
        spk, mem = spk.numpy(), mem.numpy()
        v = trace.v[node_name]
        scale = max(1.0, float(np.abs(v).max()) if v.size else 1.0)
        diff = np.abs(mem - v).reshape(steps, batch, -1)[:, strict]
        mem_diff = max(mem_diff, float(diff.max() / scale) if diff.size else 0.0)
        if node_name in trace.threshold:
            ref = trace.out[node_name]
            spikes += int(ref.sum())
            wrong = (spk != ref).reshape(steps, batch, -1)
            mismatches += int(wrong[:, strict].sum())
            mismatches_near += int(wrong[:, near].sum())
        layers.append(layer)
    passed = mismatches == 0 and mem_diff <= 1e-6
    notes = []
    if approximate:
        notes.append("approximate conversion: differences are expected")
    return {
        "passed": passed,
        "approximate": approximate,
        "batch": batch,
        "steps": steps,
        "layers": layers,
        "reference_spikes": spikes,
        "spike_mismatches": mismatches,
        "spike_mismatches_near_threshold": mismatches_near,
        "near_threshold_samples": int(near.sum()),
        "max_mem_diff": mem_diff,
        "notes": notes,
    }


# =========================================================================== CLI
def describe_export(report: dict) -> list[str]:
    passed = report.get("verification", {}).get("passed", True)
    head = (
        "wrote"
        if passed or not report["exact"]
        else "verification failed, did not write"
    )
    lines = [
        f"{head} {report['path']}: {report['spec']}, NIR {report['nir_version']} "
        f"graph, {report['nodes']} nodes, {report['edges']} edges, "
        f"{report['bytes'] / 1e6:.2f} MB, dt {report['dt']:g}, "
        + ("exact" if report["exact"] else "APPROXIMATE"),
        f"weights: {report['weights']}",
        f"input: {report['input']}",
        *[f"note: {n}" for n in report["remarks"]],
    ]
    lines += [f"approximation: {n}" for n in report["approximations"]]
    lines += _describe_verify(report.get("verification"))
    return lines


def _describe_verify(result) -> list[str]:
    if not result:
        return []
    if result["passed"]:
        verdict = "passed"
    elif result.get("approximate"):
        verdict = "differs, as approximations do"
    else:
        verdict = "FAILED"
    head = (
        f"verify (numpy NIR reference vs snncompile, batch {result['batch']}, "
        f"{result['steps']} steps, float64): {verdict}"
    )
    detail = (
        f"  spike mismatches {result['spike_mismatches']} "
        f"(+{result['spike_mismatches_near_threshold']} in "
        f"{result['near_threshold_samples']} near-threshold samples) of "
        f"{result['reference_spikes']} reference spikes in "
        f"{', '.join(result['layers'])}; max relative |mem diff| "
        f"{result['max_mem_diff']:.3g}"
    )
    return [head, detail, *[f"  note: {n}" for n in result["notes"]]]


def configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("nir_file", metavar="FILE", help="NIR graph (HDF5, .nir)")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="SPEC",
        help="spec file to write (YAML)",
    )
    parser.add_argument(
        "--checkpoint-out",
        metavar="FILE",
        help="checkpoint to write (default: the spec's name with .pt)",
    )
    parser.add_argument(
        "--dt",
        type=float,
        default=None,
        help="time step of the discretization (default: the file's snncompile "
        f"metadata, else {DEFAULT_DT:g})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"time steps of the spec (default: the file's, else {DEFAULT_STEPS})",
    )
    parser.add_argument("--name", default=None, help="the spec's name")
    parser.add_argument(
        "--approximate",
        action="store_true",
        help="import nodes snncompile can only approximate, with notes (none at "
        "present: every node it imports is exact)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare with a numpy simulation of the NIR graph; exit 1 on a mismatch",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_import(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    try:
        report = import_nir(
            args.nir_file,
            args.output,
            args.checkpoint_out,
            dt=args.dt,
            approximate=args.approximate,
            verify=args.verify,
            steps=args.steps,
            name=args.name,
        )
        status = 0
    except NIRVerificationError as err:
        report, status = err.report, 1
    if args.json:
        print(dumps(report, indent=2))
        return status
    written = "wrote" if status == 0 else "verification failed, did not write"
    print(
        f"{written} {report['spec']} and {report['checkpoint']}: {report['name']}, "
        f"{report['layers']} layers from {report['nir_nodes']} NIR nodes, "
        f"dt {report['dt']:g}, "
        + ("exact" if report["exact"] else "APPROXIMATE")
        + (", the spec from snncompile's metadata" if report["restored"] else "")
    )
    for note in report["approximations"]:
        print(f"approximation: {note}")
    for note in report["notes"]:
        print(f"note: {note}")
    for line in _describe_verify(report.get("verification")):
        print(line)
    return status
