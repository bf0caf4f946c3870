"""Stateless layers: torch.nn modules applied to every time step alike.

Each runs once over all steps as a [T * B, ...] batch in the layered schedule
(batch norm, whose statistics are per step, runs step by step), and once over
the batch for a time-invariant input when it is a deterministic per-sample
function (`hoistable`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from .base import Call, Context, Inferred, LayerBase, LayerType, describe, register
from .fields import Padding, PositiveInt, Size


def sizes(value, dims: int) -> list[int] | None:
    """An int or a list of 1 or `dims` ints -> `dims` ints (None if the list is
    longer than `dims`)."""
    if value is None or isinstance(value, int):
        return [value] * dims
    if len(value) == 1:
        return list(value) * dims
    return list(value) if len(value) == dims else None


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


class Window(LayerType):
    """Convolutions and pooling: a kernel sliding over 1 or 2 spatial axes."""

    dims = 2
    conv = True

    def infer(self, params, shapes, ctx: Context):
        (shape,) = shapes
        dims = self.dims
        if len(shape) != dims + 1:
            layout = "[channels, length]" if dims == 1 else "[channels, height, width]"
            ctx.error(
                f"{ctx.me} needs {layout} but {ctx.where} gives {describe(shape)}"
            )
            return None
        found = {}
        for key in ("kernel_size", "stride", "padding"):
            found[key] = sizes(params.get(key), dims)
            if found[key] is None:
                ctx.error(
                    f"{self.type} takes one {key} or a list of one, got {params[key]}",
                    key,
                )
                return None
        kernel, stride, padding = (
            found[k] for k in ("kernel_size", "stride", "padding")
        )
        if stride[0] is None:
            stride = kernel  # pooling default
        out = []
        for axis, (size, k, s, p) in enumerate(zip(shape[1:], kernel, stride, padding)):
            if k > size + 2 * p:
                axis_name = "length" if dims == 1 else ("height", "width")[axis]
                padded = f" + 2 x padding {p}" if p else ""
                ctx.error(
                    f"kernel {k} of {ctx.me} is larger than the input {axis_name} "
                    f"{size}{padded}: {ctx.where} gives {describe(shape)}",
                    "kernel_size",
                )
                return None
            if not self.conv and p > k // 2:
                ctx.error(f"padding {p} must be at most half the kernel {k}", "padding")
                return None
            out.append((size + 2 * p - k) // s + 1)
        resolved = dict(params, kernel_size=kernel, padding=padding)
        resolved["stride"] = (
            stride if self.conv or params.get("stride") is not None else None
        )
        if dims == 1:  # conv1d takes plain ints
            resolved.update(kernel_size=kernel[0], stride=stride[0], padding=padding[0])
        if not self.conv:
            return Inferred((shape[0], *out), 0, resolved)
        cin, cout = shape[0], params["out_channels"]
        count = cout * cin * math.prod(kernel) + (cout if params["bias"] else 0)
        return Inferred((cout, *out), count, resolved)


class ConvFields(LayerBase):
    out_channels: PositiveInt = Field(description="Number of output channels.")
    kernel_size: Size = Field(description="Kernel size (int or list).")
    stride: Size = Field(1, description="Stride.")
    padding: Padding = Field(0, description="Zero padding on each side.")
    bias: bool = Field(True, description="Learn an additive bias.")


class PoolFields(LayerBase):
    kernel_size: Size = Field(description="Pooling window.")
    stride: Size | None = Field(None, description="Stride; defaults to kernel_size.")
    padding: Padding = Field(0, description="Implicit padding on each side.")


class Conv(Window):
    def constructor(self, node):
        p = node.params
        kwargs = {"kernel_size": _pair(p["kernel_size"])}
        if _pair(p["stride"]) not in (1, (1,) * self.dims):
            kwargs["stride"] = _pair(p["stride"])
        if _pair(p["padding"]) not in (0, (0,) * self.dims):
            kwargs["padding"] = _pair(p["padding"])
        if not p["bias"]:
            kwargs["bias"] = False
        args = (node.in_shape[0], p["out_channels"])
        return Call(f"nn.Conv{self.dims}d", args, kwargs)


class Pool(Window):
    conv = False
    torch_class = ""

    def constructor(self, node):
        p = node.params
        kwargs = {"kernel_size": _pair(p["kernel_size"])}
        if p["stride"] is not None:
            kwargs["stride"] = _pair(p["stride"])
        if any(p["padding"]):
            kwargs["padding"] = _pair(p["padding"])
        return Call(self.torch_class, (), kwargs)


@register
class LinearType(LayerType):
    class Linear(LayerBase):
        type: Literal["linear"] = Field(
            description="Fully connected layer over the last axis."
        )
        out_features: PositiveInt = Field(description="Number of output features.")
        bias: bool = Field(True, description="Learn an additive bias.")

    schema = Linear
    type = "linear"
    prefix = "fc"
    example = ({"type": "linear", "out_features": 3},)

    def infer(self, params, shapes, ctx):
        (shape,) = shapes
        if len(shape) != 1:
            ctx.error(
                f"{ctx.me} needs flat features [features] but {ctx.where} gives "
                f"{describe(shape)}; add a flatten layer before it"
            )
            return None
        out = params["out_features"]
        count = shape[0] * out + (out if params["bias"] else 0)
        return Inferred((out,), count, params)

    def constructor(self, node):
        p = node.params
        kwargs = {} if p["bias"] else {"bias": False}
        return Call("nn.Linear", (node.in_shape[0], p["out_features"]), kwargs)


@register
class Conv1dType(Conv):
    class Conv1d(ConvFields):
        type: Literal["conv1d"] = Field(description="1-d convolution over [C, L].")

    schema = Conv1d
    type = "conv1d"
    prefix = "conv"
    dims = 1
    example = ({"type": "conv1d", "out_channels": 2, "kernel_size": 3},)
    example_input = (2, 8)


@register
class Conv2dType(Conv):
    class Conv2d(ConvFields):
        type: Literal["conv2d"] = Field(description="2-d convolution over [C, H, W].")

    schema = Conv2d
    type = "conv2d"
    prefix = "conv"
    example = ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},)
    example_input = (1, 6, 6)


@register
class MaxPool2dType(Pool):
    class MaxPool2d(PoolFields):
        type: Literal["maxpool2d"] = Field(description="2-d max pooling.")

    schema = MaxPool2d
    type = "maxpool2d"
    prefix = "pool"
    torch_class = "nn.MaxPool2d"
    example = ({"type": "maxpool2d", "kernel_size": 2},)
    example_input = (2, 6, 6)


@register
class AvgPool2dType(Pool):
    class AvgPool2d(PoolFields):
        type: Literal["avgpool2d"] = Field(description="2-d average pooling.")

    schema = AvgPool2d
    type = "avgpool2d"
    prefix = "pool"
    torch_class = "nn.AvgPool2d"
    example = ({"type": "avgpool2d", "kernel_size": 2},)
    example_input = (2, 6, 6)


@register
class FlattenType(LayerType):
    class Flatten(LayerBase):
        type: Literal["flatten"] = Field(
            description="Flatten all feature axes into one."
        )

    schema = Flatten
    type = "flatten"
    prefix = "flatten"
    example = ({"type": "flatten"},)
    example_input = (2, 3, 3)

    def infer(self, params, shapes, ctx):
        return Inferred((math.prod(shapes[0]),), 0, params)

    def constructor(self, node):
        return Call("nn.Flatten")


@register
class DropoutType(LayerType):
    class Dropout(LayerBase):
        type: Literal["dropout"] = Field(
            description="Dropout (active in training only)."
        )
        p: float = Field(
            0.5, ge=0, lt=1, description="Probability of zeroing an element."
        )

    schema = Dropout
    type = "dropout"
    prefix = "dropout"
    hoistable = False  # a new mask at every step
    example = ({"type": "dropout", "p": 0.25},)

    def infer(self, params, shapes, ctx):
        return Inferred(shapes[0], 0, params)

    def constructor(self, node):
        return Call("nn.Dropout", (), {"p": node.params["p"]})


TORCH_DEFAULTS = {"eps": 1e-5, "momentum": 0.1}  # torch.nn.BatchNorm*d's


class BatchNormFields(LayerBase):
    eps: float = Field(1e-5, gt=0, description="Added to the variance for stability.")
    momentum: float = Field(0.1, ge=0, le=1, description="Running statistics momentum.")
    time: Literal["per_step", "joint"] = Field(
        "per_step",
        description="Batch statistics of each step's batch (per_step), or of all "
        "steps and samples together, [T * B] (joint, as tdBN); the step schedule "
        "normalizes each step's batch either way.",
    )


class BatchNorm(LayerType):
    """Batch norm; `per_step` unless a node's `time` is joint (ir/passes.py)."""

    prefix = "bn"
    hoistable = False  # running statistics are updated at every step
    per_step = True
    layouts: tuple[int, ...] = ()  # the per-sample ranks it takes
    layout = ""
    torch_class = ""

    def infer(self, params, shapes, ctx):
        (shape,) = shapes
        if len(shape) not in self.layouts:
            ctx.error(
                f"{ctx.me} needs {self.layout} but {ctx.where} gives {describe(shape)}"
            )
            return None
        return Inferred(shape, 2 * shape[0], params)

    def constructor(self, node):
        p = node.params
        kwargs = {k: p[k] for k, v in TORCH_DEFAULTS.items() if p[k] != v}
        return Call(self.torch_class, (node.in_shape[0],), kwargs)


@register
class BatchNorm1dType(BatchNorm):
    class BatchNorm1d(BatchNormFields):
        type: Literal["batchnorm1d"] = Field(
            description="Batch normalization over features [C] or [C, L]."
        )

    schema = BatchNorm1d
    type = "batchnorm1d"
    layouts = (1, 2)
    torch_class = "nn.BatchNorm1d"
    layout = "[features] or [channels, length]"
    example = ({"type": "batchnorm1d"},)


@register
class BatchNorm2dType(BatchNorm):
    class BatchNorm2d(BatchNormFields):
        type: Literal["batchnorm2d"] = Field(
            description="Batch normalization over [C, H, W]."
        )

    schema = BatchNorm2d
    type = "batchnorm2d"
    layouts = (3,)
    torch_class = "nn.BatchNorm2d"
    layout = "[channels, height, width]"
    example = ({"type": "batchnorm2d"},)
    example_input = (2, 4, 4)
