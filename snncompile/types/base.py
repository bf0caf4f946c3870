"""What a layer or neuron type is: one descriptor class, registered once.

A descriptor holds everything the compiler knows of a type: its spec model
(`schema`), its default name (`prefix`), its role (a stateless layer, a spiking
neuron with `states`, or a merge of several inputs), whether it may run once for
an input that is the same at every step (`hoistable`), how it infers its output
shape and parameter count (`infer`), and how its module is constructed in the
rendered source (`constructor`) or, for a merge, how its inputs combine
(`expression`). The spec's layer union, the JSON Schema, analysis, rendering,
codegen and export all read the table `REGISTRY`; `missing_pieces` says what a
descriptor lacks (the conformance test runs it over the whole table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, field_validator

from .fields import Strict, check_identifier

Shape = tuple[int, ...]
ROLES = ("layer", "neuron", "merge")
MAX_ELEMENTS = 2**31 - 1  # per tensor: beyond it torch kernels cannot index


class LayerBase(Strict):
    """Fields every layer has: its name and the layers it reads."""

    name: str | None = Field(
        None, description="Identifier of the layer; derived from its type if omitted."
    )
    inputs: list[str] | None = Field(
        None,
        min_length=1,
        description="Names of the layers it reads ('input': the network input); "
        "default: the layer before it.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value):
        return check_identifier(value)


@dataclass(frozen=True)
class Name:
    """A bare name in rendered source (a runtime class such as a surrogate)."""

    text: str


@dataclass(frozen=True)
class Call:
    """A constructor call in rendered source: func(*args, **kwargs). Values are
    plain data (rendered as literals), `Name`s or nested `Call`s."""

    func: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inferred:
    """What `infer` finds: output shape, learnable parameter count and the
    resolved parameters the node keeps."""

    shape: Shape
    num_params: int
    params: dict[str, Any]


class Context:
    """What `infer` may report to: located errors, relative to the layer's path."""

    def __init__(self, report, me: str, sources: list[str], has=lambda path: False):
        self._report = report
        self.me = me  # "fc1 (linear)"
        self.sources = sources  # "the input", "fc1 (linear)", one per input
        self._has = has

    @property
    def where(self) -> str:
        return self.sources[0]

    def error(self, message: str, *field: str | int) -> None:
        self._report(tuple(field), message)

    def has(self, *field: str | int) -> bool:
        """Whether the spec file sets `field` on this layer."""
        return self._has(tuple(field))


def describe(shape: Shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


class LayerType:
    """Base of every descriptor; subclasses set the class attributes and methods."""

    type: ClassVar[str]  # the spec's `type` tag
    schema: ClassVar[type[LayerBase]]  # the pydantic model of its fields
    prefix: ClassVar[str]  # default names: prefix1, prefix2, ...
    role: ClassVar[str] = "layer"  # layer | neuron | merge
    states: ClassVar[tuple[str, ...]] = ()  # a neuron's state tensors, in order
    hoistable: ClassVar[bool] = True  # may run once over a time-invariant input
    per_step: ClassVar[bool] = False  # statistics per step: not over [T * B]
    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # inputs: least, most
    # the smallest network segment using the type, for the conformance test:
    # layers (the last one is this type) and the input shape they read
    example: ClassVar[tuple[dict[str, Any], ...]] = ()
    example_input: ClassVar[Shape] = (4,)

    def infer(self, params: dict, shapes: list[Shape], ctx: Context) -> Inferred | None:
        raise NotImplementedError

    def constructor(self, node) -> Call | None:
        """The module's constructor in rendered source (None: no module)."""
        raise NotImplementedError

    def expression(self, node, args: list[str]) -> str:
        """A merge's output from its inputs' variables, as source."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.role} type {self.type!r}>"


REGISTRY: dict[str, LayerType] = {}


def register(cls: type[LayerType]) -> type[LayerType]:
    """Class decorator: add a descriptor to the table (one entry per type)."""
    kind = getattr(cls, "type", None)
    if kind in REGISTRY and type(REGISTRY[kind]) is not cls:
        raise ValueError(f"layer type {kind!r} is registered twice")
    REGISTRY[kind] = cls()
    return cls


def get(kind: str) -> LayerType:
    return REGISTRY[kind]


def of_role(role: str) -> tuple[str, ...]:
    """The registered type names of a role, in registration order."""
    return tuple(k for k, d in REGISTRY.items() if d.role == role)


def missing_pieces(descriptor: LayerType) -> list[str]:
    """What a descriptor lacks to be a complete type (empty when complete)."""
    cls = type(descriptor)
    missing = []
    for attr in ("type", "schema", "prefix"):
        if not getattr(cls, attr, None):
            missing.append(attr)
    schema = getattr(cls, "schema", None)
    if schema is not None:
        tag = schema.model_fields.get("type")
        if tag is None or getattr(cls, "type", None) not in getattr(
            tag.annotation, "__args__", ()
        ):
            missing.append("schema's `type` literal matching the descriptor's type")
        if not issubclass(schema, LayerBase):
            missing.append("schema derived from LayerBase (name, inputs)")
    if cls.role not in ROLES:
        missing.append(f"role (one of {', '.join(ROLES)})")
    if cls.role == "neuron" and not cls.states:
        missing.append("states (a neuron's state tensor names)")
    if cls.infer is LayerType.infer:
        missing.append("infer (output shape and parameter count)")
    if cls.role == "merge":
        if cls.expression is LayerType.expression:
            missing.append("expression (how a merge combines its inputs)")
    elif cls.constructor is LayerType.constructor:
        missing.append("constructor (its module in rendered source)")
    if not cls.example:
        missing.append("example (layers for the conformance test)")
    return missing


def count_too_large(out: Shape, count: int) -> bool:
    return math.prod(out) > MAX_ELEMENTS or count > MAX_ELEMENTS
