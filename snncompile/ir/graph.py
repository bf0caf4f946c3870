"""The normalized, immutable intermediate representation every backend reads.

A `Graph` is a chain of `Node`s with names, resolved parameters and inferred
per-sample shapes (batch and time axes excluded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

Shape = tuple[int, ...]


def freeze(value: Any) -> Any:
    """Deep read-only copy of plain data (dicts become mapping proxies, lists tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Node:
    """One layer: `type` selects its lowering; `params` are fully resolved."""

    name: str
    type: str
    index: int  # position in the spec's `layers` list
    in_shape: Shape
    out_shape: Shape
    params: Mapping[str, Any]
    stateful: bool  # a spiking neuron with state carried over time
    time_invariant: bool  # sees the same input at every step (hoistable)
    num_params: int  # learnable parameters
    neurons: int  # spiking neurons (0 for stateless layers)
    states: tuple[str, ...] = ()  # names of the state tensors, in order


@dataclass(frozen=True)
class Graph:
    """A whole network and its training setup, ready for lowering."""

    name: str
    steps: int
    input_shape: Shape
    encoding: Mapping[str, Any]
    nodes: tuple[Node, ...]
    decoding: str
    loss: Mapping[str, Any]
    train: Mapping[str, Any]
    num_classes: int
    spec_json: str = field(repr=False, default="")  # the validated spec, as JSON

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
