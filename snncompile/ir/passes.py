"""Optimization passes over the IR: how each node runs in the layered schedule.

Each pass reads the Graph and a Plan and returns a new Plan; `plan()` composes
them. None changes what is computed, only how often and in which kernel:
- `hoist`: a time-invariant node (direct encoding, deterministic stateless
  layers before the first neuron) runs once over [B, ...] instead of T times;
- `time_batch`: every other stateless layer runs once over [T * B, ...], except
  those whose statistics are per step (batch norm), which run step by step;
- `fuse_leaky_linear` (only on top of a built net, see lower.kernels): a hidden
  Leaky layer and the narrow linear layer that alone reads it become one node,
  whose backward forms the linear layer's gradients inside its loop.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .graph import Graph

# a linear layer after a hidden Leaky layer is fused into its node when its output
# is this narrow: its input gradient is then formed inside the Leaky backward
# loop (out_features multiply-adds per neuron and step), where a skinny matrix
# product would write and read back a [T, B, N] tensor
FUSED_LINEAR_MAX_OUT = 32


@dataclass(frozen=True)
class Plan:
    hoisted: frozenset[str] = frozenset()  # run once over [B, ...]
    batched: frozenset[str] = frozenset()  # run once over [T * B, ...]
    per_step: frozenset[str] = frozenset()  # run at each step
    fused: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({})
    )  # neuron name -> the linear layer its node also computes


def hoist(graph: Graph, plan: Plan) -> Plan:
    return replace(
        plan, hoisted=frozenset(n.name for n in graph.nodes if n.time_invariant)
    )


def _per_step(node) -> bool:
    """Statistics per step: the type's (batch norm), unless the node's are joint."""
    return node.descriptor.per_step and node.params.get("time") != "joint"


def time_batch(graph: Graph, plan: Plan) -> Plan:
    rest = [
        n
        for n in graph.nodes
        if n.descriptor.role == "layer" and n.name not in plan.hoisted
    ]
    return replace(
        plan,
        batched=frozenset(n.name for n in rest if not _per_step(n)),
        per_step=frozenset(n.name for n in rest if _per_step(n)),
    )


def fuse_leaky_linear(graph: Graph, plan: Plan) -> Plan:
    pairs = {}
    nodes = graph.nodes
    for node, after in itertools.pairwise(nodes):
        if (
            node.type == "leaky"
            and after.type == "linear"
            and graph.consumers(node.name) == (after,)
            and after.inputs == (node.name,)
            and len(node.out_shape) == 1
            and after.params["out_features"] <= FUSED_LINEAR_MAX_OUT
            and after.name in plan.batched
        ):
            pairs[node.name] = after.name
    return replace(plan, fused=MappingProxyType(pairs))


def plan(graph: Graph, fuse: bool = False) -> Plan:
    """The passes in order; `fuse` adds the neuron + linear fusion."""
    result = time_batch(graph, hoist(graph, Plan()))
    return fuse_leaky_linear(graph, result) if fuse else result
