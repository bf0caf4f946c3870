"""Peer libraries as rows of `snncompile bench`: SpikingJelly and Norse.

Loaded by benchmarks/bench.py (by path, as that file is loaded itself); a peer
that is not installed gives no row, only a note. Each peer runs the spec's
network with its own LIF neuron, configured as close to snnTorch's Leaky
(snncompile's `leaky`) as it allows, from the same initial weights, and on the
same schedule as snncompile eager: the time-invariant prefix (direct encoding)
computed once and broadcast over the T steps, every stateless layer over
[T*B, ...] (what SpikingJelly's multi-step layer wrappers do), the neuron over
the whole [T, B, ...] sequence. What still differs is listed per peer
(`Peer.differences`), and proven complete: `equations(I)` restates each peer's
neuron in plain torch in that peer's own float operations, and the bench
checks the peer's spikes against it, bit for bit (`PeerNet(equations=True)`).

snnTorch's Leaky, for reference (subtract reset): reset[t] = H(mem[t-1] - thr)
(detached); mem[t] = beta mem[t-1] + I[t] - reset[t] thr; spk[t] = mem[t] > thr.
"""

from __future__ import annotations

import copy
import importlib.metadata
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PEER_LAYERS = {"flatten", "linear", "conv1d", "conv2d", "maxpool2d", "avgpool2d"}
PARAMETRIC = {"linear", "conv1d", "conv2d"}


@dataclass(frozen=True)
class Peer:
    key: str  # the row's key in the report
    package: str  # the distribution's name (pip install NAME)
    neuron: str  # the neuron class the row runs
    surrogates: dict[str, str]  # spec surrogate -> what the peer runs instead
    differences: tuple[str, ...]  # what still differs from snnTorch's Leaky
    make: Callable  # (node params, output: bool) -> nn.Module over [T, B, ...]
    load: Callable  # imports the peer's modules (raises where it cannot)

    def version(self) -> str | None:
        """The installed version, or None where the peer is not installed."""
        try:
            version = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        try:  # installed but broken (an ABI mismatch with this torch): no row
            self.load()
        except Exception:  # noqa: BLE001 - any import failure means no row
            return None
        return version

    def label(self, version: str) -> str:
        return f"{self.package} {version} ({self.neuron})"

    def reason(self, graph) -> str | None:
        """Why this peer cannot run the graph, or None."""
        if graph.encoding["type"] not in ("direct", "spikes"):
            return f"{graph.encoding['type']} encoding"
        if not graph.is_chain():
            return "a layer graph with branches"
        for node in graph.nodes:
            p = node.params
            if node.stateful:
                if node.type != "leaky":
                    return f"{node.type} neurons"
                if p["per_neuron"] or p["learn_beta"] or p["learn_threshold"]:
                    return "per-neuron or learnable neuron parameters"
                if p["reset"] != "subtract":
                    return f"{p['reset']} reset"
                if not 0.0 < p["beta"] < 1.0:
                    return f"beta {p['beta']} (a LIF time constant needs 0 < beta < 1)"
                if p["surrogate"]["type"] not in self.surrogates:
                    return f"{p['surrogate']['type']} surrogate"
            elif node.type not in PEER_LAYERS:
                return f"{node.type} layer"
        return None


# --------------------------------------------------------------------------- the net
class PeerNet(nn.Module):
    """A chain spec run by a peer's neurons, with `net`'s stateless layers and
    weights. forward(x, all_spikes=False) -> (spk, mem[, records]) as the
    other rows; `mem` is the output layer's membrane before its reset (as
    snnTorch records it), or None where `record_mem` is off (the Open
    Neuromorphic workload reads spikes only)."""

    def __init__(self, net, graph, peer: Peer, record_mem: bool = True):
        super().__init__()
        self.steps, self.sequence = graph.steps, graph.sequence_input
        self.order: list[tuple[str, bool, bool]] = []  # (name, neuron, hoisted)
        self.layers = nn.ModuleDict()
        last = graph.neuron_nodes[-1].name
        for node in graph.nodes:
            if node.stateful:
                module = peer.make(node.params, output=record_mem and node.name == last)
            else:
                module = copy.deepcopy(getattr(net, node.name))
            self.layers[node.name] = module
            hoisted = not node.stateful and node.time_invariant and not self.sequence
            self.order.append((node.name, node.stateful, hoisted))
        self.outputs = graph.nodes[-1].name
        self.record_mem = record_mem
        if peer.key == "norse":
            _undo_input_scaling(self, graph)
        self.equations = False  # run each neuron's stated equations instead

    def forward(self, x, all_spikes=False):
        h, mem, records = x, None, {}
        timed = self.sequence  # h is [T, B, ...]
        for name, neuron, hoisted in self.order:
            layer = self.layers[name]
            if neuron:
                if not timed:  # the hoisted prefix's output, the same at every step
                    h = h.unsqueeze(0).expand(self.steps, *h.shape)
                    timed = True
                h, mem = layer.equations(h) if self.equations else layer(h)
                records[name] = h
            elif hoisted or not timed:
                h = layer(h)
            else:  # over [T*B, ...], as SpikingJelly's multi-step layers run
                h = layer(h.flatten(0, 1)).unflatten(0, h.shape[:2])
        if all_spikes:
            return h, mem, records
        return h, mem


def _preceding_parametric(graph, name: str):
    """The linear or conv layer whose output reaches neuron `name` through only
    flatten and pooling (both commute with a positive scale), or None."""
    names = [n.name for n in graph.nodes]
    for node in reversed(graph.nodes[: names.index(name)]):
        if node.type in PARAMETRIC:
            return node
        if node.stateful or node.type not in ("flatten", "maxpool2d", "avgpool2d"):
            return None
    return None


def _undo_input_scaling(model: PeerNet, graph) -> None:
    """Norse integrates dv = dt/tau (I - v): its input arrives scaled by
    dt/tau = 1 - beta. Multiplying the weights and bias of the layer that
    feeds each neuron by 1/(1 - beta) gives it snnTorch's beta v + I."""
    for node in graph.neuron_nodes:
        source = _preceding_parametric(graph, node.name)
        if source is None:
            continue
        scale = 1.0 / model.layers[node.name].rate
        with torch.no_grad():
            for parameter in model.layers[source.name].parameters():
                parameter.mul_(scale)


# --------------------------------------------------------------------------- SpikingJelly
def _import_spikingjelly():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from spikingjelly.activation_based import neuron, surrogate

    return neuron, surrogate


SJ_SURROGATES = {  # spec surrogate -> (SpikingJelly class, spec field)
    "atan": ("ATan", "alpha"),  # the same gradient: (a/2) / (1 + (pi a x / 2)^2)
    "sigmoid": ("Sigmoid", "slope"),  # the same: k s (1 - s), s = sigmoid(k x)
    "fast_sigmoid": ("SoftSign", "slope"),  # k/2 times snnTorch's 1/(1 + k|x|)^2
}


class SpikingJellyLIF(nn.Module):
    """SpikingJelly's LIFNode in multi-step mode ('m': the whole [T, B, ...]
    sequence in one call of its registered LIF operator, the library's own
    backend choice for the device: a per-step torch loop on the CPU, its
    CUDA/Triton kernels on a GPU), decay_input=False, v_reset=None (subtract),
    detach_reset=True, tau = 1 / (1 - beta)."""

    def __init__(self, params, output: bool = False):
        super().__init__()
        neuron, surrogate = _import_spikingjelly()
        kind, field = SJ_SURROGATES[params["surrogate"]["type"]]
        grad = getattr(surrogate, kind)(alpha=float(params["surrogate"][field]))
        self.tau = 1.0 / (1.0 - float(params["beta"]))
        self.threshold = float(params["threshold"])
        self.node = neuron.LIFNode(
            tau=self.tau,
            decay_input=False,
            v_threshold=self.threshold,
            v_reset=None,
            surrogate_function=grad,
            detach_reset=True,
            step_mode="m",
            store_v_seq=output,
        )
        self.output = output

    def forward(self, current):
        self.node.reset()  # its state carries over between calls otherwise
        spk = self.node(current)
        if not self.output:
            return spk, None
        # v_seq is the membrane after the reset: add it back (snnTorch's record)
        return spk, self.node.v_seq + spk.detach() * self.threshold

    def equations(self, current):
        """The same neuron in SpikingJelly's float operations (charge with
        decay_input=False: v - (v - 0) / tau + x; fire at h >= thr; subtract)."""
        v = torch.zeros_like(current[0])
        spikes, charged = [], []
        for x in current:
            h = v - (v - 0.0) / self.tau + x
            spike = (h - self.threshold >= 0).to(h.dtype)
            v = h - spike * self.threshold
            spikes.append(spike)
            charged.append(h)
        return torch.stack(spikes), torch.stack(charged) if self.output else None


SPIKINGJELLY = Peer(
    key="spikingjelly",
    package="spikingjelly",
    neuron="LIFNode, multi-step",
    surrogates={
        "atan": "ATan(alpha), the same gradient",
        "sigmoid": "Sigmoid(alpha=slope), the same gradient",
        "fast_sigmoid": "SoftSign(alpha=slope): slope/2 times snnTorch's gradient",
    },
    differences=(
        (
            "reset at the spike's own step and decayed with the membrane: "
            "h[t] = beta h[t-1] + I[t] - beta s[t-1] thr, where snnTorch subtracts "
            "thr undecayed (s[t-1] thr)"
        ),
        "fires at h >= thr (snnTorch: mem > thr)",
        (
            "leak as v - v / tau with tau = 1 / (1 - beta) (snnTorch: beta v): "
            "the same to rounding"
        ),
    ),
    make=SpikingJellyLIF,
    load=_import_spikingjelly,
)


# --------------------------------------------------------------------------- Norse
def _import_norse():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # norse's torch.jit.script deprecations
        from norse.torch.functional.lif_box import LIFBoxParameters
        from norse.torch.functional.reset import reset_subtract
        from norse.torch.module.lif_box import LIFBoxCell

    return LIFBoxCell, LIFBoxParameters, reset_subtract


class NorseLIFBox(nn.Module):
    """Norse's LIFBoxCell (LIF without a synaptic current), one call per step
    over the [T, B, ...] currents: dt = 1e-3, tau_mem_inv = (1 - beta) / dt,
    v_th = thr, reset_subtract, SuperSpike surrogate (method 'super').

    The steps are taken by iterating over the currents (unbind), not through
    Norse's sequence modules (norse.torch.LIF and the SNN base), which index
    input[ts] at every step: that backward writes a zero tensor the size of the
    whole sequence per step, O(T^2) - at 2048 neurons and T = 200 it took 30 s
    of a 31.7 s training step."""

    def __init__(self, params, output: bool = False):
        super().__init__()
        cell, parameters, reset_subtract = _import_norse()
        self.dt = 1e-3
        self.p = parameters(
            tau_mem_inv=torch.as_tensor((1.0 - float(params["beta"])) / self.dt),
            v_leak=torch.as_tensor(0.0),
            v_th=torch.as_tensor(float(params["threshold"])),
            v_reset=torch.as_tensor(0.0),
            method="super",
            reset_method=reset_subtract,
        )
        self.cell = cell(self.p, dt=self.dt)
        self.threshold = float(params["threshold"])
        self.rate = float(self.dt * self.p.tau_mem_inv)  # dt / tau
        self.output = output

    def forward(self, current):
        state, spikes, membranes = None, [], []
        for x in current:
            z, state = self.cell(x, state)
            spikes.append(z)
            if self.output:
                membranes.append(state.v)
        spk = torch.stack(spikes)
        if not self.output:
            return spk, None
        # the membrane after the reset: add it back (snnTorch's record)
        return spk, torch.stack(membranes) + spk.detach() * self.threshold

    def equations(self, current):
        """The same neuron in Norse's float operations (lif_box_feed_forward_step
        with reset_subtract)."""
        p = self.p
        v = torch.zeros_like(current[0])
        spikes, charged = [], []
        for x in current:
            decayed = v + self.dt * p.tau_mem_inv * (x + p.v_leak - v)
            z = (decayed - p.v_th > 0).to(decayed.dtype)
            v = (1 - z) * decayed + z * (decayed - p.v_th)
            spikes.append(z)
            charged.append(decayed)
        return torch.stack(spikes), torch.stack(charged) if self.output else None


NORSE = Peer(
    key="norse",
    package="norse",
    neuron="LIFBoxCell",
    surrogates={
        "atan": "SuperSpike 1 / (1 + |x|)^2 (Norse has no atan surrogate)",
        "fast_sigmoid": "SuperSpike 1 / (1 + |x|)^2: snnTorch's at slope 1 only "
        "(Norse 1.1 ignores its alpha)",
        "sigmoid": "SuperSpike 1 / (1 + |x|)^2 (no logistic-derivative surrogate)",
    },
    differences=(
        (
            "reset at the spike's own step and decayed with the membrane (as "
            "SpikingJelly), and not detached: the surrogate gradient also flows "
            "through the reset"
        ),
        (
            "input scaled by dt / tau = 1 - beta (dv = dt/tau (I - v)): undone by "
            "multiplying the weights and bias of the layer feeding each neuron by "
            "1 / (1 - beta), so that v[t] = beta v[t-1] + I[t] to rounding "
            "(its weight gradients are scaled alike)"
        ),
        "leak as v + dt/tau (I' - v) (snnTorch: beta v + I): the same to rounding",
    ),
    make=NorseLIFBox,
    load=_import_norse,
)

PEERS = (SPIKINGJELLY, NORSE)
