"""Inference-only modules around a built `Net`, shaped for ONNX export.

Both are assembled from the IR (`net.graph`) and call the net's own submodules,
so they share its weights and neuron code:

- `SequenceModel`: x -> (scores, spk, mem), the T-step loop unrolled in Python.
  For direct encoding every stateless layer before the first neuron is computed
  once (in eval mode they all are per-sample functions of the constant frame);
  later stateless layers run once over all steps as [T * B, ...] batches, like
  the `layered` schedule. The first input axis after T is the batch.
- `StepModel`: one time step, (x_t, *states) -> (spk, mem, *new_states).

Neither encodes its input: rate and latency codes are random or need the
whole image, so a device computes them before the model (see `ENCODING_NOTES`).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import registry
from ..ir.graph import Graph, Node
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


class SequenceModel(nn.Module):
    """The whole sequence, unrolled: x -> (scores [B, C], spk [T, B, C], mem [T, B, C])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.graph: Graph = net.graph
        self.decode = decoder(self.graph)

    def forward(self, x):
        return self.run(x)

    def run(self, x, record: dict | None = None):
        """`record`, if given, receives each neuron layer's membrane [T, B, ...]."""
        graph, steps = self.graph, self.graph.steps
        nodes = list(graph.nodes)
        constant = graph.encoding["type"] == "direct"  # h is one frame for all steps
        h = x
        while constant and not nodes[0].stateful:
            h = getattr(self.net, nodes.pop(0).name)(h)
        spk = mem = None
        for node in nodes:
            layer = getattr(self.net, node.name)
            if node.stateful:
                spk, mem = self._unroll(layer, h, constant, steps)
                if record is not None:
                    record[node.name] = mem
                h, constant = spk, False
            else:  # one call over all steps: [T, B, ...] -> [T * B, ...] -> back
                out = layer(h.reshape((-1,) + tuple(node.in_shape)))
                h = out.reshape((steps, -1) + tuple(node.out_shape))
        return self.decode(spk, mem), spk, mem

    @staticmethod
    def _unroll(layer, cur, constant: bool, steps: int):
        frames = [cur] * steps if constant else cur.unbind(0)
        state = layer.init_state(frames[0])
        spks, mems = [], []
        for frame in frames:
            spk, state = layer.step(frame, state)
            spks.append(spk)
            mems.append(state[-1])  # every neuron keeps its membrane last
        return torch.stack(spks), torch.stack(mems)


class StepModel(nn.Module):
    """One time step: (x_t, *states) -> (spk [B, C], mem [B, C], *new_states).

    With `start`, the step begins at that layer (its input is that layer's input).
    """

    def __init__(self, net: nn.Module, start: int = 0):
        super().__init__()
        self.net = net
        self.graph: Graph = net.graph
        self.start = start

    def forward(self, x_t, *states):
        h, new, i = x_t, [], 0
        for node in self.graph.nodes[self.start :]:
            layer = getattr(self.net, node.name)
            if node.stateful:
                count = len(node.states)
                h, state = layer.step(h, tuple(states[i : i + count]))
                new.extend(state)
                i += count
            else:
                h = layer(h)
        return (h, new[-1], *new)


class Prefix(nn.Module):
    """The stateless layers before the first neuron (direct encoding: run once)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.names = [n.name for n in first_neuron_prefix(net.graph)]

    def forward(self, x):
        for name in self.names:
            x = getattr(self.net, name)(x)
        return x


class Decode(nn.Module):
    """The spec's decoding: (spk, mem) [T, B, C] -> scores [B, C]."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.decode = decoder(graph)

    def forward(self, spk, mem):
        return self.decode(spk, mem)


def first_neuron_prefix(graph: Graph) -> list[Node]:
    """Stateless nodes before the first neuron."""
    index = graph.nodes.index(graph.neuron_nodes[0])
    return list(graph.nodes[:index])
