"""Convolution and max pooling in channels_last with a chunked input gradient
(lower/layouts.py) against the plain layers: identical outputs and spikes,
gradients equal up to float summation order, over layer geometries, chunks
smaller than the batch, pooling ties, inference, and whole nets under the
compile modes that put the route on top (none, native)."""

import copy

import pytest
import torch
from torch import nn

import snncompile
from snncompile import native
from snncompile.lower import layouts, optimize


@pytest.fixture
def always(monkeypatch):
    """The layout route for every call, however small."""
    monkeypatch.setattr(layouts.LayoutConv2d, "min_bytes", 0)


def layout_copy(module):
    fast = copy.deepcopy(module)
    fast.__class__ = layouts.layout_class(type(module))
    return fast


def spikes(shape, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).float()


def run_pair(conv, pool, x, seed=1):
    """Outputs and gradients (input, weight, bias) of conv -> pool."""
    leaf = x.clone().requires_grad_()
    out = pool(conv(leaf))
    gen = torch.Generator().manual_seed(seed)
    out.backward(torch.randn(out.shape, generator=gen))
    grads = (leaf.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad)
    return out.detach(), grads


GEOMETRIES = [
    ({"kernel_size": 5}, {"kernel_size": 2}),
    ({"kernel_size": 3, "padding": 1, "bias": False}, {"kernel_size": 2}),
    ({"kernel_size": 3, "stride": 2, "dilation": 1}, {"kernel_size": 2, "stride": 1}),
    ({"kernel_size": 3, "dilation": 2, "groups": 2}, {"kernel_size": 3, "stride": 2}),
    ({"kernel_size": 3}, {"kernel_size": 2, "ceil_mode": True, "padding": 1}),
]


@pytest.mark.parametrize("conv_args, pool_args", GEOMETRIES)
@pytest.mark.parametrize("chunk_bytes", [layouts.CHUNK_BYTES, 1])
@pytest.mark.parametrize("nhwc", [None, False])
def test_conv_pool_pair_matches_plain(
    always, monkeypatch, conv_args, pool_args, chunk_bytes, nhwc
):
    """Same outputs bit for bit; gradients to rounding. chunk_bytes=1: the input
    gradient in chunks of one image, a batch of 10. nhwc=False: the forward
    as if oneDNN's channels_last kernel summed in another order (NCHW, then
    converted); None: as measured here."""
    monkeypatch.setattr(layouts, "CHUNK_BYTES", chunk_bytes)
    if nhwc is not None:
        monkeypatch.setattr(layouts, "same_in_layouts", lambda *args: nhwc)
    torch.manual_seed(0)
    conv, pool = nn.Conv2d(4, 8, **conv_args), nn.MaxPool2d(**pool_args)
    x = spikes((10, 4, 11, 11), 0.2, seed=2)
    out_ref, grads_ref = run_pair(conv, pool, x)
    out, grads = run_pair(layout_copy(conv), layout_copy(pool), x)
    assert torch.equal(out, out_ref) and out.is_contiguous()
    for grad, ref in zip(grads, grads_ref, strict=True):
        if ref is None:
            assert grad is None
        else:
            torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def test_the_route_is_taken(always):
    """The pair runs the layout Functions, the convolution hands on channels_last."""
    conv, pool = layout_copy(nn.Conv2d(3, 6, 3)), layout_copy(nn.MaxPool2d(2))
    x = spikes((4, 3, 8, 8), 0.3, seed=3).requires_grad_()
    hidden = conv(x)
    assert type(hidden.grad_fn).__name__ == "Conv2dLayoutBackward"
    assert hidden.is_contiguous(memory_format=torch.channels_last)
    out = pool(hidden)
    assert type(out.grad_fn).__name__ == "MaxPool2dLayoutBackward"
    assert out.is_contiguous()


def test_layout_probe_is_cached_and_leaves_the_generator_alone(monkeypatch):
    monkeypatch.setattr(layouts, "_SAME", {})
    x, weight = torch.rand(3, 5, 9, 9), torch.rand(7, 5, 3, 3)
    geometry = ((1, 1), (0, 0), (1, 1), 1)
    state = torch.get_rng_state()
    agree = layouts.same_in_layouts(x, weight, None, geometry)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(layouts._SAME.values()) == [agree]
    layouts.same_in_layouts(x.clone(), weight, None, geometry)  # cached
    assert len(layouts._SAME) == 1
    # oneDNN's choice can depend on the batch: another size is probed anew
    layouts.same_in_layouts(x[:1], weight, None, geometry)
    assert len(layouts._SAME) == 2


def test_chunked_input_gradient_smaller_than_batch():
    """input_gradient in chunks of 3 of a batch of 8 (the last chunk short) is
    the one-call input gradient."""
    torch.manual_seed(4)
    weight = torch.randn(6, 4, 3, 3)
    grad = torch.randn(8, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    geometry = ((1, 1), (0, 0), (1, 1), 1)
    whole = torch.nn.grad.conv2d_input((8, 4, 7, 7), weight, grad)
    chunked = layouts.input_gradient((8, 4, 7, 7), weight, grad, geometry, 3)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    assert chunked.is_contiguous()


def test_pooling_ties_route_like_the_plain_layer(always):
    """Binary input at a low rate: most windows of the convolution's output are
    ties (the bias alone); the input gradient of the pooling goes to the same
    first maximum, so the gradients of the pair equal the plain ones exactly."""
    torch.manual_seed(5)
    conv, pool = nn.Conv2d(4, 8, 3), nn.MaxPool2d(2)
    x = spikes((6, 4, 10, 10), 0.01, seed=6)
    hidden = conv(x).detach()
    windows = hidden.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert (windows == windows.amax(-1, keepdim=True)).sum(-1).gt(
        1
    ).float().mean() > 0.5
    plain = hidden.clone().requires_grad_()
    fast = hidden.contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(6, 8, 4, 4)
    pool(plain).backward(grad)
    out = layout_copy(pool)(fast)
    out.backward(grad)
    assert torch.equal(out, pool(hidden)) and torch.equal(fast.grad, plain.grad)


def test_small_calls_and_nchw_inputs_run_plain():
    """Below min_bytes the convolution runs plain (NCHW out), and the pooling
    layer then runs plain too."""
    conv, pool = layout_copy(nn.Conv2d(3, 6, 3)), layout_copy(nn.MaxPool2d(2))
    x = spikes((2, 3, 8, 8), 0.3, seed=7).requires_grad_()
    hidden = conv(x)
    assert "Layout" not in type(hidden.grad_fn).__name__ and hidden.is_contiguous()
    assert "Layout" not in type(pool(hidden).grad_fn).__name__


def test_inference(always):
    conv, pool = nn.Conv2d(3, 6, 3), nn.MaxPool2d(2)
    fast_conv, fast_pool = layout_copy(conv), layout_copy(pool)
    x = spikes((5, 3, 9, 9), 0.3, seed=8)
    with torch.no_grad():
        out = fast_pool(fast_conv(x))
        assert torch.equal(out, pool(conv(x))) and out.is_contiguous()


SPEC = """
snncompile: 1
name: layouts
input: {shape: [1, 14, 14], encoding: {type: direct}}
steps: 5
defaults: {beta: 0.7, threshold: 0.3}
layers:
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}   # 1 channel in
  - {type: maxpool2d, name: pool1, kernel_size: 2}
  - {type: leaky, name: lif1}
  - {type: conv2d, name: conv2, out_channels: 8, kernel_size: 3}   # the route
  - {type: maxpool2d, name: pool2, kernel_size: 2}
  - {type: leaky, name: lif2}
  - {type: conv2d, name: conv3, out_channels: 6, kernel_size: 1}   # read by flatten
  - {type: flatten}
  - {type: linear, name: fc1, out_features: 3}
  - {type: leaky, name: lif3}
decoding: {type: rate}
loss: {type: ce_rate}
train: {dataset: synthetic, batch_size: 6, optimizer: {type: adam, lr: 0.001}}
"""

MODES = [
    "none",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            native.problem() is not None, reason=f"native kernels: {native.problem()}"
        ),
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ["direct", "spikes"])
def test_net_matches_plain_model(always, monkeypatch, mode, encoding):
    """apply(build(spec), mode) routes conv2/pool2 only (conv1: one input
    channel, conv3: read by flatten), in chunks smaller than the batch, and
    gives the plain model's spikes in every layer, and its gradients."""
    monkeypatch.setattr(
        layouts, "CHUNK_BYTES", 2 * 4 * (4 * 6 * 6 + 8 * 4 * 4)
    )  # 2 images
    spec = snncompile.loads(SPEC.replace("direct", encoding))
    plain = snncompile.build(spec, seed=0)
    with torch.no_grad():  # lif2 and lif3 fire
        plain.conv2.weight.mul_(4)
        plain.fc1.weight.mul_(4)
    fast = optimize.apply(snncompile.build(spec), mode)
    fast.load_state_dict(plain.state_dict())
    routed = {n for n, m in fast.named_modules() if getattr(type(m), "layout", 0)}
    assert routed == {"pool1", "conv2", "pool2"}
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert not any(getattr(type(m), "layout", 0) for m in plain.modules())
    shape = (5, 6, 1, 14, 14) if encoding == "spikes" else (6, 1, 14, 14)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(9))
    if encoding == "spikes":
        x = (x < 0.4).float()
    results = []
    for net in (plain, fast):
        spk, mem, records = net(x, all_spikes=True)
        loss = spk.sum() + mem.square().sum() + records["lif2"].mean()
        loss.backward()
        grads = {k: p.grad for k, p in net.named_parameters()}
        results.append((records, mem.detach(), grads))
    (rec_ref, mem_ref, grads_ref), (rec, mem, grads) = results
    for name in rec_ref:
        assert torch.equal(rec[name], rec_ref[name]), name
    assert 0 < rec["lif2"].sum() < rec["lif2"].numel()
    torch.testing.assert_close(mem, mem_ref, rtol=0, atol=2e-6)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5)
