"""Merges: layers that combine two or more inputs into one (residual networks).

They own no module and no parameters; the rendered forward computes them as
an expression of their inputs' values, the same in every schedule.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Inferred, LayerBase, LayerType, describe, register


class MergeType(LayerType):
    role = "merge"
    arity = (2, None)

    def _listing(self, shapes, ctx) -> str:
        return ", ".join(
            f"{src} gives {describe(s)}" for src, s in zip(ctx.sources, shapes)
        )


@register
class AddType(MergeType):
    class Add(LayerBase):
        type: Literal["add"] = Field(
            description="Elementwise sum of its inputs, all of one shape (SEW-ResNet's ADD)."
        )

    schema = Add
    type = "add"
    prefix = "add"
    example = (
        {"type": "linear", "name": "a", "out_features": 3, "inputs": ["input"]},
        {"type": "linear", "name": "b", "out_features": 3, "inputs": ["input"]},
        {"type": "add", "inputs": ["a", "b"]},
    )

    def infer(self, params, shapes, ctx):
        if len(set(shapes)) != 1:
            ctx.error(
                f"{ctx.me} needs inputs of one shape: {self._listing(shapes, ctx)}"
            )
            return None
        return Inferred(shapes[0], 0, params)

    def expression(self, node, args):
        return " + ".join(args)


@register
class IAndType(MergeType):
    class IAnd(LayerBase):
        type: Literal["iand"] = Field(
            description="SEW-ResNet's IAND of two spike maps of one shape, inputs "
            "[a, b]: (1 - a) * b, i.e. (not a) and b; a is the residual branch's "
            "spikes, b the shortcut's."
        )

    schema = IAnd
    type = "iand"
    prefix = "iand"
    arity = (2, 2)
    example = (
        {"type": "linear", "name": "a", "out_features": 3, "inputs": ["input"]},
        {"type": "leaky", "name": "lif_a", "beta": 0.9},
        {"type": "linear", "name": "b", "out_features": 3, "inputs": ["input"]},
        {"type": "leaky", "name": "lif_b", "beta": 0.9},
        {"type": "iand", "inputs": ["lif_a", "lif_b"]},
    )

    def infer(self, params, shapes, ctx):
        if len(set(shapes)) != 1:
            ctx.error(
                f"{ctx.me} needs two inputs of one shape: {self._listing(shapes, ctx)}"
            )
            return None
        return Inferred(shapes[0], 0, params)

    def expression(self, node, args):
        a, b = args
        return f"(1 - {a}) * {b}"


@register
class ConcatType(MergeType):
    class Concat(LayerBase):
        type: Literal["concat"] = Field(
            description="Concatenation of its inputs along the feature (or channel) axis."
        )

    schema = Concat
    type = "concat"
    prefix = "cat"
    example = (
        {"type": "linear", "name": "a", "out_features": 3, "inputs": ["input"]},
        {"type": "linear", "name": "b", "out_features": 2, "inputs": ["input"]},
        {"type": "concat", "inputs": ["a", "b"]},
    )

    def infer(self, params, shapes, ctx):
        ranks = {len(s) for s in shapes}
        rest = {s[1:] for s in shapes}
        if len(ranks) != 1 or len(rest) != 1:
            ctx.error(
                f"{ctx.me} joins its inputs along the first (feature or channel) axis "
                f"and needs the other axes equal: {self._listing(shapes, ctx)}"
            )
            return None
        return Inferred((sum(s[0] for s in shapes), *shapes[0][1:]), 0, params)

    def expression(self, node, args):
        # the feature axis counted from the end: the same in [B, ...] and [T, B, ...]
        return f"torch.cat([{', '.join(args)}], dim={-len(node.out_shape)})"
