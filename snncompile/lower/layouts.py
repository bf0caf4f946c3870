"""Large convolutions and max pooling in the memory layout that runs them fastest.

A stateless layer between neuron layers runs once over all steps, [T * B, ...]
(`time_batched`): for mnist_csnn's conv2 that is 6,400 images in one call, and
on the CPU that one call is slower than the per-step loop's 50 calls of 128,
because oneDNN's NCHW kernels for it are poor (the weight gradient above all)
and the working set overflows the caches (docs/measurements.md). Measured per
part, the fastest is:
- convolution forward and weight gradient channels_last (NHWC);
- convolution input gradient NCHW, in chunks of images that fit the L2 cache;
- max pooling channels_last (vectorized over channels: about 5x faster than
  NCHW with indices, the same maxima and the same index of the first maximum).

`accelerate_layers(net)` (lower/optimize.py calls it for --compile native,
neurons and none) gives a subclass (same parameters, state_dict and plain
forward) to each `nn.Conv2d` layer of the graph read only by max pooling layers
(`routed` says which) and to each `nn.MaxPool2d` layer:
- LayoutConv2d: a call whose output is at least `min_bytes` runs Conv2dLayout
  and hands its output on channels_last (the same values, another layout);
- LayoutMaxPool2d: a channels_last input is pooled channels_last (MaxPool2dLayout)
  and handed on NCHW, so that every other layer sees what the plain layers give;
- smaller calls, NCHW inputs, other devices and dtypes, autocast,
  torch.compile and export tracing run the plain forward.
The input gradient's chunk is as many images as fit CHUNK_BYTES (input and
output of one image); from 48 to 384 images measured alike for mnist_csnn.
Public torch functions only (torch.nn.grad for the convolution's gradients),
and aten's max_pool2d_with_indices_backward, a core ATen operator.

Values: convolution and pooling outputs are those of the plain layers, so
spikes are identical: the maxima are exact, and the convolution runs
channels_last only where `same_in_layouts` found oneDNN's channels_last kernel
to give the NCHW kernel's values bit for bit (mnist_csnn's conv2, nmnist_csnn's
convolutions); elsewhere it runs NCHW as the plain layer does and converts its
output. Gradients agree to float rounding: they are summed in another order.
The plain model (build(), the generated code) never runs this.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

CHANNELS_LAST = torch.channels_last
CHUNK_BYTES = 2 << 20  # input gradient chunks: about one core's L2 cache

PROBE_IMAGES = 256  # the most images same_in_layouts computes

_FAST: dict[type, type] = {}  # plain class -> layout class
_SAME: dict[tuple, bool] = {}  # configuration -> see same_in_layouts


def same_in_layouts(x, weight, bias, geometry) -> bool:
    """Whether conv2d gives the same values, bit for bit, for a channels_last
    input as for an NCHW one (oneDNN runs other kernels for them; some sum in
    the same order, as mnist_csnn's conv2, others not, as 32 -> 64 channels,
    3x3): measured once per configuration (image shape, weight shape, bias,
    geometry, threads, and the batch's size up to PROBE_IMAGES: oneDNN's
    choice can depend on it) on random values of that many images. Draws no
    numbers from torch's global generator."""
    images = min(x.shape[0], PROBE_IMAGES)
    key = (
        images,
        tuple(x.shape[1:]),
        tuple(weight.shape),
        bias is None,
        geometry,
        torch.get_num_threads(),
    )
    if key not in _SAME:
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn((images, *x.shape[1:]), generator=gen)
        w = torch.randn(weight.shape, generator=gen)
        b = None if bias is None else torch.randn(bias.shape, generator=gen)
        last = probe.contiguous(memory_format=CHANNELS_LAST)
        _SAME[key] = torch.equal(
            F.conv2d(probe, w, b, *geometry), F.conv2d(last, w, b, *geometry)
        )
    return _SAME[key]


def input_gradient(shape, weight, grad, geometry, chunk):
    """dL/dx of a convolution, NCHW, in chunks of `chunk` images."""
    out = grad.new_empty(shape)
    for start in range(0, shape[0], chunk):
        end = min(start + chunk, shape[0])
        part = grad[start:end].contiguous()  # NCHW, in cache
        size = (end - start, *shape[1:])
        out[start:end] = torch.nn.grad.conv2d_input(size, weight, part, *geometry)
    return out


class Conv2dLayout(torch.autograd.Function):
    """conv2d(x, weight, bias) with the output channels_last: forward and weight
    gradient channels_last, input gradient NCHW in chunks of `chunk` images.
    geometry: stride, padding, dilation, groups."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry, chunk):
        x_last = x.contiguous(memory_format=CHANNELS_LAST)
        if same_in_layouts(x, weight, bias, geometry):
            out = F.conv2d(x_last, weight, bias, *geometry)
        else:  # the plain layer's values, then the layout
            out = F.conv2d(x, weight, bias, *geometry)
            out = out.contiguous(memory_format=CHANNELS_LAST)
        ctx.save_for_backward(x_last if ctx.needs_input_grad[1] else None, weight)
        ctx.shape, ctx.geometry, ctx.chunk = x.shape, geometry, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_last, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_x = input_gradient(ctx.shape, weight, grad, ctx.geometry, ctx.chunk)
        if need_weight:
            grad_last = grad.contiguous(memory_format=CHANNELS_LAST)
            grad_weight = torch.nn.grad.conv2d_weight(
                x_last, weight.shape, grad_last, *ctx.geometry
            )
        if need_bias:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


class MaxPool2dLayout(torch.autograd.Function):
    """max_pool2d(x) channels_last, the output NCHW; backward routes each
    gradient to the index of its window's first maximum, as the plain layer."""

    @staticmethod
    def forward(ctx, x, geometry):
        x_last = x.contiguous(memory_format=CHANNELS_LAST)
        out, indices = F.max_pool2d(x_last, *geometry, return_indices=True)
        ctx.save_for_backward(x_last, indices)
        ctx.geometry = geometry
        return out.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_last, indices = ctx.saved_tensors
        grad_last = grad.contiguous(memory_format=CHANNELS_LAST)
        kernel, stride, padding, dilation, ceil_mode = ctx.geometry
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_last, x_last, kernel, stride, padding, dilation, ceil_mode, indices
        )
        return grad_x, None


def _plain_call(x: torch.Tensor) -> bool:
    """Calls the layout route does not take: other devices, dtypes, autocast,
    torch.compile and export tracing."""
    return (
        x.dim() != 4
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
    )


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _out_size(size: int, padding: int, dilation: int, kernel: int, stride: int):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class LayoutConv2d:
    """Mixed into the layout class of a convolution read only by max pooling:
    calls with an output of at least `min_bytes` run Conv2dLayout and hand
    their output on channels_last."""

    # output bytes from which the route runs: past one core's L2 cache (measured
    # faster from 0.25 MiB of output for mnist_csnn's conv2, from 2.6 MiB for
    # nmnist_csnn's conv1; 2 input channels, it lost 10% at 1.3 MiB)
    min_bytes = 2 << 20

    def forward(self, x):
        if _plain_call(x):
            return self.plain_forward(x)
        h, w = map(
            _out_size,
            x.shape[2:],
            self.padding,
            self.dilation,
            self.kernel_size,
            self.stride,
        )
        out_image = self.out_channels * h * w * 4  # float32 bytes
        if x.shape[0] * out_image < self.min_bytes:
            return self.plain_forward(x)
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        chunk = max(1, CHUNK_BYTES // (math.prod(x.shape[1:]) * 4 + out_image))
        return Conv2dLayout.apply(x, self.weight, self.bias, geometry, chunk)


class LayoutMaxPool2d:
    """Mixed into nn.MaxPool2d's layout class: a channels_last input (from a
    LayoutConv2d) is pooled channels_last and handed on NCHW."""

    def forward(self, x):
        if (
            _plain_call(x)
            or self.return_indices
            or x.is_contiguous()  # NCHW (also where C or H * W is 1)
            or not x.is_contiguous(memory_format=CHANNELS_LAST)
        ):
            return self.plain_forward(x)
        geometry = (
            _pair(self.kernel_size),
            _pair(self.stride if self.stride is not None else self.kernel_size),
            _pair(self.padding),
            _pair(self.dilation),
            self.ceil_mode,
        )
        if not (torch.is_grad_enabled() and x.requires_grad):
            return F.max_pool2d(x, *geometry).contiguous()
        return MaxPool2dLayout.apply(x, geometry)


_MIXINS = {nn.Conv2d: LayoutConv2d, nn.MaxPool2d: LayoutMaxPool2d}


def layout_class(cls: type) -> type:
    """The layout subclass of nn.Conv2d or nn.MaxPool2d (made once per class)."""
    if cls not in _FAST:
        _FAST[cls] = type(
            cls.__name__,
            (_MIXINS[cls], cls),
            {
                "__module__": cls.__module__,
                "__doc__": cls.__doc__,
                "plain_forward": cls.forward,
                "layout": True,
            },
        )
    return _FAST[cls]


def routed(graph, node, module) -> bool:
    """Whether a layer takes the layout route: every max pooling layer (it acts
    on channels_last input only), and a convolution read only by max pooling
    layers, with zero padding and more than one input channel (a single channel
    is NCHW and NHWC at once, which oneDNN runs NCHW). Measured faster at every
    such shape tried (mnist_csnn, nmnist_csnn: 1.2-1.6x for the pair), where a
    convolution read by other layers gained nothing once its output and its
    gradient were converted back to NCHW and 1 input channel lost."""
    if isinstance(module, nn.MaxPool2d):
        return True
    readers = graph.consumers(node.name)
    return (
        module.in_channels > 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and bool(readers)
        and all(r.type == "maxpool2d" for r in readers)
    )


def accelerate_layers(net: nn.Module) -> nn.Module:
    """Give the graph's routed conv2d and maxpool2d layers their layout class
    (in place; see the module doc); returns net."""
    graph = net.graph
    for node in graph.nodes:
        module = getattr(net, node.name, None)
        if type(module) in _MIXINS and routed(graph, node, module):
            module.__class__ = layout_class(type(module))
    return net
