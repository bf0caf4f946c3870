"""Every registered neuron type on the native C kernels (snncompile/native:
leaky.c for scalar Leaky layers, neurons.c for the rest) against the plain
model that build() gives: identical spikes and membranes, gradients equal up to
float summation order, for every reset, surrogate, learnable constant,
per-neuron parameters, recurrence, and a constant or time-varying input. The
types are read from the registry: a new neuron type is tested here without a
line for it (and fails until the kernels cover it, or it is listed as not)."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml

import snncompile
from snncompile import native
from snncompile.lower import optimize
from snncompile.types import REGISTRY

pytestmark = pytest.mark.skipif(
    native.problem() is not None, reason=f"native kernels: {native.problem()}"
)

NEURONS = sorted(k for k, d in REGISTRY.items() if d.role == "neuron")
SURROGATES = [
    {"type": "atan", "alpha": 2.0},
    {"type": "fast_sigmoid", "slope": 25.0},
    {"type": "sigmoid", "slope": 5.0},
    {"type": "triangular"},
    {"type": "straight_through"},
    {"type": "spike_rate_escape", "beta": 1.0, "slope": 5.0},
]
RECURRENCES = [None, {"type": "linear"}, {"type": "one_to_one", "V": 0.5}]
F, T, B = 5, 7, 9  # input features, steps, batch


def load(data: dict):
    return snncompile.loads(yaml.safe_dump(data, sort_keys=False))


def recurrent(kind: str) -> bool:
    return "recurrence" in REGISTRY[kind].schema.model_fields


def neuron_layer(kind, reset="subtract", learn=False, per_neuron=False, **extra):
    """The type's example layer with the fields it has set as asked."""
    fields = REGISTRY[kind].fields()
    layer = dict(REGISTRY[kind].example[0], name="out")
    if "reset" in fields:
        layer["reset"] = reset
    if "per_neuron" in fields:
        layer["per_neuron"] = per_neuron
    for key in fields:
        if key.startswith("learn_"):
            layer[key] = learn
    layer.update(extra)
    return layer


def spec(layer, sequence=False, classes=6):
    """input [F] -> linear -> the neuron layer (the output: `classes` neurons);
    a spike-train input [T, B, F] when `sequence`, else the same input at every
    step (direct encoding: the hoisted linear layer's output, expanded)."""
    encoding = {"type": "spikes"} if sequence else {"type": "direct"}
    return load(
        {
            "snncompile": 1,
            "name": "kernel_check",
            "input": {"shape": [F], "encoding": encoding},
            "steps": T,
            "layers": [
                {"type": "linear", "name": "fc", "out_features": classes},
                layer,
            ],
            "train": {"dataset": "synthetic", "batch_size": B},
        }
    )


def batch(sequence, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if sequence:
        return (torch.rand(T, B, F, generator=gen) < 0.5).float()
    return torch.rand(B, F, generator=gen)


def plain_and_native(the_spec, scale=2.0):
    """The plain model (weights scaled so that neurons fire, but not always) and
    the same weights under --compile native."""
    plain = snncompile.build(the_spec, seed=0)
    with torch.no_grad():
        plain.fc.weight.mul_(scale)
        plain.fc.bias.add_(0.3)
        for name, param in plain.named_parameters():  # per-neuron: not all equal
            if name.startswith("out.") and param.dim() >= 1 and param.numel() > 1:
                param.add_(torch.linspace(-0.05, 0.05, param.numel()).view_as(param))
    fast = optimize.apply(snncompile.build(the_spec), "native")
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def compare(plain, fast, x, fired=True):
    """Forward records identical, gradients allclose (to each one's scale)."""
    results = []
    for net in (plain, fast):
        spk, mem = net(x)
        loss = (mem * torch.linspace(-1, 1, mem.numel()).view_as(mem)).sum()
        loss = loss + (spk * torch.linspace(1, 2, spk.numel()).view_as(spk)).sum()
        loss.backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        results.append((spk.detach(), mem.detach(), grads))
    (spk_p, mem_p, grads_p), (spk_f, mem_f, grads_f) = results
    assert torch.equal(spk_p, spk_f)
    assert torch.equal(mem_p, mem_f)
    if fired:
        assert 0 < spk_p.mean() < 1, "the check needs spikes, and silences"
    assert set(grads_p) == set(grads_f)
    # a sum of terms that cancel (dL/dbeta) differs by rounding of its terms:
    # the tolerance scales with the largest gradient, not with the sum
    scale = max([g.abs().max().item() for g in grads_p.values() if g is not None])
    for name, grad in grads_p.items():
        other = grads_f[name]
        if grad is None:
            assert other is None or not other.abs().sum(), name
            continue
        torch.testing.assert_close(other, grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def ran_native(net):
    """Whether every neuron layer of `net` runs on the native kernels."""
    layers = optimize.neurons(net)
    return layers and all(isinstance(m.compiled, native.LeakyKernels) for m in layers)


CASES = [
    (kind, reset, learn_per, sequence)
    for kind in NEURONS
    for reset, learn_per, sequence in itertools.product(
        ("subtract", "zero", "none"), (False, True), (False, True)
    )
]


@pytest.mark.parametrize(
    "kind,reset,learn_per,sequence",
    CASES,
    ids=[
        f"{k}-{r}-{'learn' if lp else 'fixed'}-{'seq' if s else 'const'}"
        for k, r, lp, s in CASES
    ],
)
def test_every_neuron_type_matches_plain(kind, reset, learn_per, sequence):
    """Each type, reset and input kind; learnable per-neuron constants or fixed
    scalars."""
    layer = neuron_layer(kind, reset, learn=learn_per, per_neuron=learn_per)
    plain, fast = plain_and_native(spec(layer, sequence))
    assert ran_native(fast)
    compare(plain, fast, batch(sequence), fired=kind != "li")


@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: s["type"])
@pytest.mark.parametrize("kind", [k for k in NEURONS if k != "li"])
def test_every_surrogate(kind, surrogate):
    layer = neuron_layer(kind, learn=True, surrogate=surrogate)
    plain, fast = plain_and_native(spec(layer, sequence=True))
    assert ran_native(fast)
    compare(plain, fast, batch(True, seed=3))


RECURRENT = [
    (kind, rec, reset)
    for kind in NEURONS
    if recurrent(kind)
    for rec in RECURRENCES
    if rec is not None
    for reset in ("subtract", "zero")
]


@pytest.mark.parametrize(
    "kind,recurrence,reset",
    RECURRENT,
    ids=[f"{k}-{r['type']}-{s}" for k, r, s in RECURRENT],
)
def test_recurrences(kind, recurrence, reset):
    """Feedback one-to-one (inside the C loop) and by a matrix (one C call per
    step, the product by torch): learnable, per-neuron, both input kinds."""
    for sequence in (False, True):
        layer = neuron_layer(kind, reset, learn=True, per_neuron=True)
        layer["recurrence"] = recurrence
        plain, fast = plain_and_native(spec(layer, sequence, classes=40))
        assert ran_native(fast)
        compare(plain, fast, batch(sequence, seed=5))


@pytest.mark.parametrize("kind", [k for k in NEURONS if recurrent(k)])
def test_convolutional_recurrence_runs_eagerly(kind):
    """A recurrence the C kernels do not cover runs the plain step loop: the
    same values, nothing compiled."""
    layers = [
        {"type": "conv2d", "name": "conv", "out_channels": 2, "kernel_size": 3},
        dict(
            neuron_layer(kind),
            name="rec",
            recurrence={"type": "conv", "kernel_size": 3},
        ),
        {"type": "flatten"},
        {"type": "linear", "name": "fc", "out_features": 3},
        {"type": "leaky", "name": "out", "beta": 0.9},
    ]
    the_spec = load(
        {
            "snncompile": 1,
            "name": "conv_rec",
            "input": {"shape": [1, 6, 6], "encoding": {"type": "direct"}},
            "steps": 4,
            "layers": layers,
            "train": {"dataset": "synthetic", "batch_size": 3},
        }
    )
    plain = snncompile.build(the_spec, seed=0)
    fast = optimize.apply(snncompile.build(the_spec), "native")
    fast.load_state_dict(plain.state_dict())
    assert fast.rec.compiled is False  # eager, not torch.compile
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 3
    compare(plain, fast, x, fired=False)


def test_large_layers_many_blocks_and_threads():
    """More elements than a block (128) and several threads: still identical
    forward values; the parameter sums (per-thread partials) allclose."""
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for kind in ("synaptic", "alif"):
                layer = neuron_layer(kind, learn=True, per_neuron=True)
                plain, fast = plain_and_native(spec(layer, True, classes=300))
                compare(plain, fast, batch(True, seed=7))
    finally:
        torch.set_num_threads(threads)


def test_per_neuron_leaky_before_a_fused_linear_layer():
    """A hidden per-neuron Leaky layer and the narrow linear layer the fusing
    plan joins to it: not leaky.c's scalar kernels, so the two run in turn, the
    Leaky layer by neurons.c."""
    the_spec = load(
        {
            "snncompile": 1,
            "name": "per_neuron_hidden",
            "input": {"shape": [F], "encoding": {"type": "direct"}},
            "steps": T,
            "layers": [
                {"type": "linear", "name": "fc1", "out_features": 50},
                {"type": "leaky", "name": "lif1", "beta": 0.9, "per_neuron": True,
                 "learn_beta": True},
                {"type": "linear", "name": "fc2", "out_features": 4},
                {"type": "leaky", "name": "lif2", "beta": 0.8},
            ],
            "train": {"dataset": "synthetic", "batch_size": B},
        }
    )  # fmt: skip
    plain = snncompile.build(the_spec, seed=0)
    with torch.no_grad():
        plain.fc1.weight.mul_(3)
        plain.fc2.weight.mul_(3)
    fast = optimize.apply(snncompile.build(the_spec), "native")
    fast.load_state_dict(plain.state_dict())
    assert ran_native(fast) and not native.LeakyKernels.fits(fast.lif1)
    compare(plain, fast, batch(False), fired=False)


def test_inference_without_gradients():
    """Under no_grad (evaluation): the forward kernels alone, the same values;
    hard spikes (the ONNX export's inference mode) too."""
    for kind in NEURONS:
        plain, fast = plain_and_native(spec(neuron_layer(kind), sequence=True))
        x = batch(True, seed=2)
        with torch.no_grad():
            for net in (plain, fast):
                net.eval()
            spk_p, mem_p = plain(x)
            spk_f, mem_f = fast(x)
        assert torch.equal(spk_p, spk_f) and torch.equal(mem_p, mem_f), kind
