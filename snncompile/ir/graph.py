"""The normalized, immutable intermediate representation every backend reads.

A `Graph` is a DAG of `Node`s in topological order: each node names the nodes it
reads (`inputs`; "input" is the network input), with resolved parameters and
inferred per-sample shapes (batch and time axes excluded). A neuron's own
recurrence is inside the node, so the graph has no cycles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..types import LayerType, get

Shape = tuple[int, ...]
INPUT = "input"  # the name of the network input in `inputs`


def freeze(value: Any) -> Any:
    """Deep read-only copy of plain data (dicts become mapping proxies, lists tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again from `freeze`'s read-only copy."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Node:
    """One layer: `type` selects its descriptor; `params` are fully resolved."""

    name: str
    type: str
    origin: str  # where the spec defines it: "layers[3]", "layers[2] > blocks.res[1]"
    inputs: tuple[str, ...]  # names of the nodes it reads, or INPUT
    in_shapes: tuple[Shape, ...]
    out_shape: Shape
    params: Mapping[str, Any]
    time_invariant: bool  # sees the same input at every step (hoistable)
    num_params: int  # learnable parameters
    states: tuple[str, ...] = ()  # names of the state tensors, in order

    @property
    def descriptor(self) -> LayerType:
        return get(self.type)

    @property
    def in_shape(self) -> Shape:
        return self.in_shapes[0]

    @property
    def stateful(self) -> bool:
        """A spiking neuron, with state carried over time."""
        return self.descriptor.role == "neuron"

    @property
    def neurons(self) -> int:
        """Spiking neurons (0 for other layers and non-spiking readouts)."""
        n = 1
        for size in self.out_shape:
            n *= size
        return n if self.stateful and self.descriptor.spiking else 0


@dataclass(frozen=True)
class Graph:
    """A whole network and its training setup, ready for lowering."""

    name: str
    steps: int  # 0: `steps: auto`, each batch's length (time-series data)
    input_shape: Shape
    encoding: Mapping[str, Any]
    nodes: tuple[Node, ...]  # topological order; the last is the output
    decoding: str
    loss: Mapping[str, Any]
    train: Mapping[str, Any]
    num_classes: int  # output neurons: classes, or regression targets per sample
    spec_json: str = field(repr=False, default="")  # the validated spec, as JSON
    task: str = "classification"  # or "regression" (float targets)

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @property
    def neuron_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.stateful)

    @property
    def num_params(self) -> int:
        return sum(n.num_params for n in self.nodes)

    @property
    def sequence_input(self) -> bool:
        """Whether the model takes [T, B, ...] input instead of [B, ...]."""
        return self.encoding["type"] in ("spikes", "delta")

    @property
    def source(self):
        """`train.dataset` as its model in spec/datasets.py, or None for a
        built-in dataset name."""
        data = self.train["dataset"]
        if isinstance(data, str):
            return None
        from ..spec.datasets import source_model

        return source_model(thaw(data))

    @property
    def dataset_label(self) -> str:
        """The built-in dataset's name, or the source's type."""
        data = self.train["dataset"]
        return data if isinstance(data, str) else data["type"]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self, name: str) -> tuple[Node, ...]:
        """The nodes that read `name` (a node or INPUT), in order."""
        return tuple(n for n in self.nodes if name in n.inputs)

    def is_chain(self) -> bool:
        """Whether every node reads just the node before it."""
        previous = INPUT
        for node in self.nodes:
            if node.inputs != (previous,):
                return False
            previous = node.name
        return True
