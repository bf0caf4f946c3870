"""The fused Leaky sequence (runtime/fused.py) against the step-by-step loop of
`Leaky.step`: identical spikes and membranes, allclose gradients for the input,
beta and threshold, over every reset mode, scalar/per-neuron and learnable
parameters, every surrogate, and time-invariant (expanded) inputs."""

import copy
import sys

import pytest
import torch

from snncompile.lower.kernels import accelerate, fast_class
from snncompile.runtime import fused, neurons, surrogates
from snncompile.runtime.fused import fused_leaky, fused_leaky_linear

# Leaky with its fused sequence kernel on top, as snncompile.lower.kernels puts it
Leaky = fast_class(neurons.Leaky, fused=True)

T, B, N = 9, 6, 7
SURROGATES = [
    (surrogates.ATan, (2.0,)),
    (surrogates.FastSigmoid, (25.0,)),
    (surrogates.Sigmoid, (5.0,)),
    (surrogates.Triangular, (1.0,)),
    (surrogates.StraightThrough, ()),
    (surrogates.SpikeRateEscape, (1.0, 25.0)),
]


@pytest.fixture(autouse=True, params=["large", "small"])
def layer_size(request, monkeypatch):
    """Both regimes of the kernel: per-step surrogate and checkpointed membranes
    (large layers), segment-wide surrogate and every membrane saved (small)."""
    small = 0 if request.param == "large" else 10**9
    monkeypatch.setattr(fused.LeakySequence, "small_step", small)
    return request.param


def step_loop(neuron, cur):
    """The reference: Leaky.step once per time step."""
    state = neuron.init_state(cur[0])
    spks, mems = [], []
    for t in range(cur.shape[0]):
        spk, state = neuron.step(cur[t], state)
        spks.append(spk)
        mems.append(state[-1])
    return torch.stack(spks), torch.stack(mems)


def make_neuron(reset, per_neuron, learn, surrogate=None, beta=0.8, threshold=1.0):
    surrogate, args = surrogate or SURROGATES[0]
    neuron = Leaky(
        (N,),
        beta=beta,
        threshold=threshold,
        reset=reset,
        learn_beta=learn,
        learn_threshold=learn,
        per_neuron=per_neuron,
        surrogate=surrogate,
        surrogate_args=args,
    )
    if per_neuron:  # distinct values per neuron (some beta outside [0, 1])
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            neuron.beta.copy_(torch.rand(N, generator=gen) * 1.2)
            neuron.threshold.copy_(0.5 + torch.rand(N, generator=gen))
    return neuron


def compare(neuron, cur, uses=("spk", "mem"), seed=0, expand=False, steps=T, **options):
    """Run both ways on the same weights; check outputs exactly, gradients closely.
    `options` go to fused_leaky (compiled, record_mem)."""
    gen = torch.Generator().manual_seed(seed)
    w_spk = torch.randn(steps, B, N, generator=gen)
    w_mem = torch.randn(steps, B, N, generator=gen)
    results = []
    for run in ("reference", "fused"):
        module = copy.deepcopy(neuron)
        leaf = cur.detach().clone().requires_grad_()
        seq = leaf.unsqueeze(0).expand(steps, *leaf.shape) if expand else leaf
        if run == "reference":
            spk, mem = step_loop(module, seq)
        else:
            spk, mem = fused_leaky(module, seq, **options)
            if not options.get("record_mem", True):
                assert mem is None
                mem = torch.zeros_like(spk)  # (not used by the loss then)
        loss = 0
        if "spk" in uses:
            loss = loss + (spk * w_spk).sum()
        if "mem" in uses:
            loss = loss + (mem * w_mem).sum()
        loss.backward()
        grads = {"cur": leaf.grad}
        for name, param in module.named_parameters():
            grads[name] = param.grad
        results.append((spk.detach(), mem.detach(), grads))
    (spk_ref, mem_ref, grads_ref), (spk, mem, grads) = results
    assert spk.shape == (steps, B, N)
    assert torch.equal(spk, spk_ref)
    if options.get("record_mem", True):
        assert torch.equal(mem, mem_ref)
    if steps > 2:
        assert 0 < spk.sum() < spk.numel()  # the check covers firing and silence
    assert grads.keys() == grads_ref.keys()
    for name, grad_ref in grads_ref.items():
        if grad_ref is None:
            assert grads[name] is None or not grads[name].any(), name
            continue
        torch.testing.assert_close(grads[name], grad_ref, rtol=1e-4, atol=1e-5)


def currents(seed=0, shape=(T, B, N)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * 0.8 + 0.4


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("learn", [False, True])
def test_reset_modes_and_parameters(reset, per_neuron, learn):
    neuron = make_neuron(reset, per_neuron, learn)
    for seed in range(3):
        compare(neuron, currents(seed), seed=seed)


@pytest.mark.parametrize(
    "surrogate", SURROGATES, ids=lambda s: getattr(s, "__name__", "")
)
def test_every_surrogate(surrogate):
    neuron = make_neuron("subtract", False, True, surrogate=surrogate)
    compare(neuron, currents(3), seed=3)


@pytest.mark.parametrize("uses", [("spk",), ("mem",)])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_only_one_output_used(uses, reset):
    neuron = make_neuron(reset, True, True)
    compare(neuron, currents(4), uses=uses, seed=4)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_time_invariant_input(reset, per_neuron):
    """An expand()ed [B, N] input: gradient summed over T inside the backward,
    membranes recomputed from checkpoints (T = 9: three segments of 3)."""
    neuron = make_neuron(reset, per_neuron, True)
    compare(neuron, currents(5, (B, N)), seed=5, expand=True)


@pytest.mark.parametrize("steps", [1, 2, 5, 11, 26])
def test_time_invariant_input_segments(steps):
    """Segment lengths that do not divide T, and the shortest sequences."""
    neuron = make_neuron("subtract", True, True)
    compare(neuron, currents(12, (B, N)), seed=12, expand=True, steps=steps)


def test_steps_argument_equals_expanded_input():
    neuron = make_neuron("subtract", False, False)
    cur = currents(6, (B, N))
    spk, mem = fused_leaky(neuron, cur, steps=T)
    spk_ref, mem_ref = step_loop(neuron, cur.expand(T, B, N))
    assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref)


@pytest.mark.parametrize("beta", [1.3, -0.2])
def test_beta_outside_clamp_range(beta):
    """clamp(beta, 0, 1) passes no gradient outside [0, 1] in both versions."""
    compare(make_neuron("subtract", False, True, beta=beta), currents(8), seed=8)


def test_negative_threshold_resets_at_the_first_step():
    """reset[0] = H(0 - threshold) = 1 when threshold < 0."""
    neuron = make_neuron("subtract", False, True, threshold=-0.3)
    compare(neuron, currents(9) - 1.0, seed=9)


def test_hard_spikes_have_no_surrogate_gradient():
    neuron = make_neuron("subtract", False, True)
    neuron.hard = True
    compare(neuron, currents(10), seed=10)


def test_conv_shaped_state():
    neuron = Leaky(
        (3, 4, 4),
        beta=0.6,
        per_neuron=True,
        learn_beta=True,
        learn_threshold=True,
        surrogate=surrogates.FastSigmoid,
        surrogate_args=(25.0,),
    )
    cur = torch.randn(5, 2, 3, 4, 4, generator=torch.Generator().manual_seed(11))
    ref = copy.deepcopy(neuron)
    leaf_ref = cur.clone().requires_grad_()
    spk_ref, mem_ref = step_loop(ref, leaf_ref)
    (spk_ref.sum() + mem_ref.square().sum()).backward()
    leaf = cur.clone().requires_grad_()
    spk, mem = fused_leaky(neuron, leaf)
    (spk.sum() + mem.square().sum()).backward()
    assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref)
    torch.testing.assert_close(leaf.grad, leaf_ref.grad)
    torch.testing.assert_close(neuron.beta.grad, ref.beta.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        neuron.threshold.grad, ref.threshold.grad, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("expand", [False, True])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_hidden_layer_without_membrane_record(reset, expand):
    """record_mem=False: the same spikes and spike gradients, no membrane record."""
    neuron = make_neuron(reset, True, True)
    cur = currents(16, (B, N) if expand else (T, B, N))
    compare(neuron, cur, uses=("spk",), seed=16, expand=expand, record_mem=False)


@pytest.mark.compile
def test_compiled_kernels(layer_size):
    """The torch.compile'd forward and backward loops: the same spikes and
    membranes bit for bit, the same gradients (one configuration per regime)."""
    if layer_size == "large":  # constant input: all recomputed inside the kernel
        neuron = make_neuron("subtract", False, True)
        compare(neuron, currents(17, (B, N)), seed=17, expand=True, compiled=True)
    else:
        neuron = make_neuron("zero", True, True)
        cur = currents(18)
        compare(neuron, cur, uses=("spk",), seed=18, compiled=True, record_mem=False)


def compare_with_linear(neuron, cur, seed, expand=False, compiled=False):
    """fused_leaky_linear against the step loop followed by the linear layer:
    identical spikes and outputs, close gradients (both outputs in the loss)."""
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(N, 5)
    w_out = torch.randn(T, B, 5, generator=gen)
    w_spk = torch.randn(T, B, N, generator=gen)
    results = []
    for run in ("reference", "fused"):
        module, layer = copy.deepcopy(neuron), copy.deepcopy(linear)
        leaf = cur.detach().clone().requires_grad_()
        seq = leaf.unsqueeze(0).expand(T, *leaf.shape) if expand else leaf
        if run == "reference":
            spk, _ = step_loop(module, seq)
            out = layer(spk.flatten(0, 1)).unflatten(0, spk.shape[:2])
        else:
            module.compiled = compiled
            spk, out = fused_leaky_linear(module, layer, seq)
        ((out * w_out).sum() + (spk * w_spk).sum()).backward()
        grads = {"cur": leaf.grad}
        for name, param in [*module.named_parameters(), *layer.named_parameters()]:
            grads[name] = param.grad
        results.append((spk.detach(), out.detach(), grads))
    (spk_ref, out_ref, grads_ref), (spk, out, grads) = results
    assert torch.equal(spk, spk_ref) and torch.equal(out, out_ref)
    assert 0 < spk.sum() < spk.numel()
    assert grads.keys() == grads_ref.keys() and len(grads) == 5
    for name, grad_ref in grads_ref.items():
        torch.testing.assert_close(grads[name], grad_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("expand", [False, True])
def test_leaky_and_linear_as_one_node(reset, expand):
    neuron = make_neuron(reset, False, True)
    cur = currents(21, (B, N) if expand else (T, B, N))
    compare_with_linear(neuron, cur, seed=21, expand=expand)


@pytest.mark.compile
@pytest.mark.parametrize("expand", [True, False], ids=["constant", "varying"])
def test_compiled_leaky_and_linear(layer_size, expand):
    """Compiled, a large layer forms the linear layer's input gradient inside
    its backward loop (never stored); a small one as a matrix product. A
    time-invariant input recomputes the membranes, a varying one saves them."""
    neuron = make_neuron("subtract", False, True)
    cur = currents(22, (B, N) if expand else (T, B, N))
    compare_with_linear(neuron, cur, 22, expand=expand, compiled=True)


def test_linear_with_a_hook_runs_as_two_layers():
    """A linear layer with a forward hook is called as a module, so the hook runs."""
    neuron = make_neuron("subtract", False, False)
    linear = torch.nn.Linear(N, 5)
    calls = []
    linear.register_forward_hook(lambda *_: calls.append(1))
    cur = currents(23).requires_grad_()
    spk, out = fused_leaky_linear(neuron, linear, cur)
    assert calls == [1]
    assert torch.equal(out, linear(spk.flatten(0, 1)).unflatten(0, spk.shape[:2]))


def test_plain_loop_under_torch_compile(monkeypatch):
    """While dynamo traces, fused_leaky is the neuron's own step loop."""
    neuron = make_neuron("subtract", False, True)
    cur = currents(13).requires_grad_()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    spk, mem = fused_leaky(neuron, cur)
    assert "LeakySequence" not in type(spk.grad_fn).__name__
    spk_ref, mem_ref = step_loop(neuron, cur)
    assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref)


def test_inference_needs_no_autograd():
    neuron = make_neuron("zero", True, True)
    cur = currents(14)
    with torch.no_grad():
        spk, mem = fused_leaky(neuron, cur)
        spk_ref, mem_ref = step_loop(neuron, cur)
    assert spk.grad_fn is None
    assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref)


def test_built_model_runs_leaky_by_the_kernel():
    """build() with the fast kernels put on top (lower/kernels.py, what train and
    compile do) runs every Leaky by the fused kernel, and gives the per-step
    reference's spikes and gradients."""
    import snncompile

    spec = snncompile.loads(
        """
snncompile: 1
name: fused_wiring
input: {shape: [1, 6, 6], encoding: {type: direct}}
steps: 6
defaults: {beta: 0.8, threshold: 0.4, learn_beta: true, learn_threshold: true}
layers:
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}
  - {type: leaky, name: lif1, per_neuron: true}
  - {type: flatten}
  - {type: linear, name: fc1, out_features: 3}
  - {type: leaky, name: lif2, reset: zero}
decoding: {type: rate}
loss: {type: ce_rate}
train: {dataset: synthetic, batch_size: 4, optimizer: {type: adam, lr: 0.001}}
"""
    )
    net = accelerate(snncompile.build(spec))
    assert "LeakySequence" not in vars(sys.modules[type(net).__module__])
    reference = snncompile.build(spec, schedule="step")
    reference.load_state_dict(net.state_dict())
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(15)) * 3
    results = []
    for model in (reference, net):
        spk, mem, records = model(x, all_spikes=True)
        (spk.sum() + mem.square().sum() + records["lif1"].mean()).backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        results.append((records, mem.detach(), grads))
    assert type(records["lif1"].grad_fn).__name__ == "LeakySequenceBackward"
    (rec_ref, mem_ref, grads_ref), (rec, mem, grads) = results
    assert all(torch.equal(rec[k], rec_ref[k]) for k in rec_ref)
    # fc1 runs once over [T * B] rows here, per step in the reference: its
    # products may round apart (measured up to 4.8e-7), the spikes may not
    torch.testing.assert_close(mem, mem_ref, rtol=0, atol=2e-6)
    assert 0 < rec["lif1"].sum() < rec["lif1"].numel()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5)
