"""Inference-only modules around a built `Net`, shaped for ONNX export.

Both run functions rendered from the same IR as the net's own forward
(codegen.render.render_export) on the net's own submodules, so they share its
weights and neuron code and keep no copy of the forward:

- `SequenceModel`: x -> (scores, spk, mem): the layered forward on the encoded
  input (the time loop unrolled when traced), then the spec's decoding;
- `StepModel`: one time step, (x_t, *states) -> (spk, mem, *new_states).

Neither encodes its input: rate and latency codes are random or need the
whole image, so a device computes them before the model (see `ENCODING_NOTES`).
"""

from __future__ import annotations

from torch import nn

from .. import registry
from ..codegen.render import render_export
from ..ir.graph import Graph, Node
from ..lower.build import load_source
from ..runtime import decode as decode_module

ENCODING_NOTES = {
    "direct": "x is the raw frame [B, *shape]; the model presents it at every step",
    "rate": "x is the rate-coded spike train [T, B, *shape]: Bernoulli sampling "
    "(P = clamp(gain * pixel, 0, 1)) is random, so it is done before the model "
    "(snncompile.runtime.encode.encode_rate)",
    "latency": "x is the latency-coded spike train [T, B, *shape]: one spike per "
    "element at its latency, computed before the model from the whole image "
    "(snncompile.runtime.encode.encode_latency)",
    "delta": "x is the delta-modulated spike train [T, B, *shape] "
    "(snncompile.runtime.encode.encode_delta of the raw sequence)",
    "spikes": "x is the spike train [T, B, *shape], used as is",
}


def state_names(graph: Graph) -> list[tuple[Node, str, str]]:
    """(node, state, ONNX name) of every neuron state, in the step model's order."""
    names = [
        (node, state, f"{node.name}_{state}")
        for node in graph.neuron_nodes
        for state in node.states
    ]
    onnx_names = [n for _, _, n in names]
    if len(set(onnx_names)) != len(onnx_names) or "x_t" in onnx_names:
        raise ValueError(f"state names collide: {onnx_names}")
    return names


def decoder(graph: Graph):
    """The runtime decoding function of the graph's `decoding`."""
    return getattr(decode_module, registry.DECODERS[graph.decoding])


_LOADED: dict[str, object] = {}  # spec JSON -> its export functions


def _functions(graph: Graph):
    """The rendered export functions of a graph, as a module (made once)."""
    if graph.spec_json not in _LOADED:
        source = render_export(graph)
        _LOADED[graph.spec_json] = load_source(source, f"{graph.name}_export")
    return _LOADED[graph.spec_json]


class SequenceModel(nn.Module):
    """The whole sequence: x -> (scores [B, C], spk [T, B, C], mem [T, B, C])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.graph: Graph = net.graph
        self.decode = decoder(self.graph)

    def forward(self, x):
        spk, mem = _functions(self.graph).sequence(self.net, x)
        return self.decode(spk, mem), spk, mem

    def run(self, x, record: dict | None = None):
        """forward(x); `record`, if given, receives each neuron layer's membrane
        [T, B, ...] by name."""
        handles = [] if record is None else membranes(self.net, record)
        try:
            return self(x)
        finally:
            for handle in handles:
                handle.remove()


class StepModel(nn.Module):
    """One time step: (x_t, *states) -> (spk [B, C], mem [B, C], *new_states)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.graph: Graph = net.graph

    def forward(self, x_t, *states):
        return _functions(self.graph).step(self.net, x_t, *states)


def membranes(net, record: dict, spikes: bool = False):
    """Hooks that make every neuron layer of `net` return its membranes and
    keep them in `record` by layer name (with `spikes`: its (spk, mem) pair);
    remove the returned handles after."""

    def ask(module, args, kwargs):
        return args, {**kwargs, "record_mem": True}

    def keep(name):
        pick = (lambda output: output) if spikes else (lambda output: output[1])
        return lambda module, args, output: record.__setitem__(name, pick(output))

    handles = []
    for node in net.graph.neuron_nodes:
        layer = getattr(net, node.name)
        handles.append(layer.register_forward_pre_hook(ask, with_kwargs=True))
        handles.append(layer.register_forward_hook(keep(node.name)))
    return handles


class Decode(nn.Module):
    """The spec's decoding: (spk, mem) [T, B, C] -> scores [B, C]."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.decode = decoder(graph)

    def forward(self, spk, mem):
        return self.decode(spk, mem)
