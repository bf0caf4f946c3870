"""The native C Leaky kernels (snncompile/native) against the eager fused kernel:
identical spikes and membranes, gradients allclose (summation order only). A
linear layer that the forward forms in its loop (snn_leaky_forward_linear) sums
in its own order: its outputs, and the membranes they feed, agree to rounding."""

import functools
import sys

import pytest
import torch
from test_fused import SURROGATES  # every surrogate, with arguments

import snncompile
from snncompile import native
from snncompile.lower import optimize
from snncompile.lower.kernels import fast_class
from snncompile.runtime import losses, neurons, surrogates
from snncompile.runtime.fused import fused_leaky_linear

# Leaky with its fused sequence kernel on top, as snncompile.lower.kernels puts it
Leaky = fast_class(neurons.Leaky, fused=True)

pytestmark = pytest.mark.skipif(
    native.problem() is not None, reason=f"native kernels: {native.problem()}"
)

# a hidden layer large enough (B * N >= LeakySequence.small_step) that the
# linear layer's gradients are formed inside the loop; N not a multiple of the
# C block (256): partial blocks
T, B, N, K = 6, 5, 3300, 7


def _run(kernels, reset, surrogate, args, constant, learn, seed=0, direct=True):
    """A hidden Leaky + linear (fused) and an output Leaky; returns the forward
    records and every gradient. `direct`: the loss also reads the hidden spikes
    (else they reach it only through the linear layer, and fused_leaky_linear is
    told so: spikes=False)."""
    torch.manual_seed(seed)
    options = {
        "reset": reset,
        "learn_beta": learn,
        "learn_threshold": learn,
        "surrogate": surrogate,
        "surrogate_args": args,
    }
    hidden = Leaky((N,), 0.9, 1.0, **options)
    output = Leaky((K,), 0.8, 0.7, **options)
    linear = torch.nn.Linear(N, K)
    x = (torch.randn(B, N) * 0.9).requires_grad_()
    cur = x.expand(T, B, N) if constant else x * torch.rand(T, 1, 1) * 2
    hidden.compiled = output.compiled = kernels
    spk, out = fused_leaky_linear(hidden, linear, cur, spikes=direct)
    spk2, mem2 = output(out)
    loss = (mem2**2).sum() + 0.1 * spk2.sum()
    if direct:
        loss = loss + 0.01 * spk.sum()
    loss.backward()
    params = [x, linear.weight, linear.bias]
    if learn:
        params += [hidden.beta, hidden.threshold, output.beta, output.threshold]
    return [spk, out, spk2, mem2], [p.grad for p in params]


def _assert_forward_matches(eager, fast, name):
    """_run's forward records: the hidden and output spikes identical; the
    linear layer's output and the output membranes to float rounding (the
    native forward sums the linear layer in its own order)."""
    (spk, out, spk2, mem2), (spk_n, out_n, spk2_n, mem2_n) = eager, fast
    assert spk_n is None or torch.equal(spk, spk_n), (name, "hidden spikes")
    torch.testing.assert_close(out_n, out, rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(spk2, spk2_n), (name, "output spikes")
    torch.testing.assert_close(mem2_n, mem2, rtol=1e-5, atol=1e-5, msg=name)


def _assert_grads_match(eager, fast):
    """Gradients equal up to float summation order: each within 1e-5 of its
    tensor's largest entry (rounding differences of the forward's linear sums
    reach the gradients too; measured: below 1e-6 of it)."""
    for a, b in zip(eager, fast):
        assert a is not None and b is not None
        scale = max(1.0, float(a.abs().max()))
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("constant", [True, False], ids=["constant", "varying"])
def test_native_matches_eager(reset, constant):
    from snncompile.runtime.fused import LeakySequence

    assert B * N >= LeakySequence.small_step
    kernels = native.kernels()
    for surrogate, args in SURROGATES:
        learn = surrogate is surrogates.ATan  # the scalar parameters' sums too
        eager = _run(False, reset, surrogate, args, constant, learn)
        fast = _run(kernels, reset, surrogate, args, constant, learn)
        _assert_forward_matches(eager[0], fast[0], surrogate.__name__)
        assert eager[0][0].any() and not eager[0][0].all()  # spikes, not all
        _assert_grads_match(eager[1], fast[1])


class _Spy:
    """A loaded library whose calls are counted by name."""

    def __init__(self, lib):
        self.lib, self.calls = lib, {}

    def __getattr__(self, name):
        function = getattr(self.lib, name)

        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return function(*args)

        return call


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_native_panels_match_eager(reset):
    """The hidden layer's common form (constant input, spikes read only by the
    linear layer) runs by panels, for every surrogate without exp; rows and
    columns not multiples of the panel's (B = 5, N = 3300)."""
    for surrogate, args in SURROGATES:
        kernels = native.kernels()
        kernels.lib = spy = _Spy(kernels.lib)
        learn = surrogate in (surrogates.ATan, surrogates.Triangular)
        eager = _run(False, reset, surrogate, args, True, learn, direct=False)
        fast = _run(kernels, reset, surrogate, args, True, learn, direct=False)
        by_panels = spy.calls.get("snn_leaky_backward_panels", 0)
        exp = surrogate in (surrogates.Sigmoid, surrogates.SpikeRateEscape)
        assert by_panels == (0 if exp else 1), surrogate.__name__
        assert spy.calls.get("snn_leaky_forward_linear") == 1, surrogate.__name__
        # the loss reads no hidden spikes: none are kept where the panels recompute
        assert (fast[0][0] is None) == (not exp), surrogate.__name__
        _assert_forward_matches(eager[0], fast[0], surrogate.__name__)
        _assert_grads_match(eager[1], fast[1])


def test_native_without_linear_gradient_and_inference():
    """A time-varying layer with grad_spk only, and a no-grad call (inference)."""
    kernels = native.kernels()
    torch.manual_seed(1)
    neuron = Leaky((N,), 0.95, 0.5, surrogate=surrogates.ATan, surrogate_args=(2.0,))
    cur = torch.randn(T, B, N, requires_grad=True)
    grads = []
    for flag in (False, kernels):
        neuron.compiled = flag
        spk, _ = neuron(cur)
        (gx,) = torch.autograd.grad((spk * torch.arange(N)).sum(), cur)
        grads.append(gx)
        with torch.no_grad():
            assert torch.equal(neuron(cur)[0], spk)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_surrogate_kind_knows_inlined_copies():
    """build() runs an inlined copy of runtime/surrogates.py: other function
    objects, the same bytecode."""
    net = snncompile.build(snncompile.load("specs/mnist_fc.yaml"))
    leaky = net.lif1
    assert leaky.surrogate is not surrogates.ATan
    assert native.surrogate_kind(leaky.surrogate.backward) == 1
    assert native.surrogate_kind(lambda ctx, grad: grad) is None


def test_native_mode_runs_without_dynamo_and_trains_like_eager(tmp_path):
    """compile(spec, mode="native") on mnist_fc's layers: the same spikes as
    eager, membranes and gradients allclose (fc2 summed by the forward's loop);
    a net of Leaky layers needs no torch.compile."""
    spec = snncompile.load("specs/mnist_fc.yaml")
    eager = snncompile.build(spec, seed=0)
    fast = snncompile.compile(spec, seed=0, mode="native")
    assert all(
        isinstance(m.compiled, native.LeakyKernels) for m in optimize.neurons(fast)
    )
    x = torch.rand(17, 1, 28, 28)  # 17 x 1000 hidden neurons: the in-loop path
    results = []
    for net in (eager, fast):
        spk, mem = net(x)
        loss = torch.nn.functional.cross_entropy(mem.sum(0), torch.arange(17) % 10)
        loss.backward()
        results.append((spk, mem, [p.grad for p in net.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)
    _assert_grads_match(results[0][2], results[1][2])


def test_build_failure_is_one_line(tmp_path, monkeypatch):
    """A compiler that fails: Unavailable with its first error line; train then
    falls back (preflight) instead of failing."""
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    native.library.cache_clear()
    try:
        why = native.problem()
        assert why and "no-such-cc" in why and "\n" not in why
        monkeypatch.setattr(optimize, "compile_problem", lambda: None)
        assert optimize.preflight("native")[0] == "neurons"
        monkeypatch.setattr(optimize, "compile_problem", lambda: "no compiler")
        assert optimize.preflight("native")[0] == "none"
    finally:
        native.library.cache_clear()


def test_build_retries_without_march_native(tmp_path, monkeypatch):
    """A compiler that rejects -march=native still builds the kernels (portable
    flags), and they compute what the native build does. (The wrapper builds at
    -O0: the same values, in less time.)"""
    wrapper = tmp_path / "cc"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "args = sys.argv[1:]\n"
        "if '-march=native' in args:\n"
        "    sys.exit('error: unknown -march=native')\n"
        "args = ['-O0' if a == '-O3' else a for a in args]\n"
        f"os.execvp({native._compiler()!r}, [{native._compiler()!r}, *args])\n"
    )
    wrapper.chmod(0o755)
    torch.manual_seed(5)
    cur, b, thr = torch.randn(6, 300), torch.tensor(0.9), torch.tensor(1.0)
    expected = native.kernels().scan(cur, b, thr, 4, "subtract", False)[0]
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(wrapper))
    native.library.cache_clear()
    try:
        assert native.problem() is None
        scan = native.kernels().scan(cur, b, thr, 4, "subtract", False)[0]
        assert torch.equal(scan, expected)
    finally:
        native.library.cache_clear()


def test_which_layers_the_c_kernels_run():
    """Per-neuron parameters: not leaky.c's scalar kernels but neurons.c's; a
    float64 layer or a convolutional recurrence: neither (they run eagerly)."""
    per_neuron = Leaky((4,), 0.9, per_neuron=True)
    scalar = Leaky((4,), 0.9)
    assert native.LeakyKernels.fits(scalar)
    assert not native.LeakyKernels.fits(per_neuron)
    assert optimize.native_fits(scalar) and optimize.native_fits(per_neuron)
    assert not optimize.native_fits(Leaky((4,), 0.9).double())
    conv = neurons.Recurrent("conv", 2, kernel_size=(3, 3))
    assert not optimize.native_fits(neurons.RLeaky((2, 5, 5), 0.9, recurrent=conv))
    kernels = native.kernels()
    assert not kernels._fits(torch.zeros(3, 4), per_neuron.beta, per_neuron.threshold)
    assert not kernels._fits(
        torch.zeros(3, 4, dtype=torch.float64), scalar.beta, scalar.threshold
    )


@pytest.mark.parametrize("name", sorted(native.LOSSES))
@pytest.mark.parametrize("spread", [0.1, 3.0, 60.0])
def test_native_losses_match_torch(name, spread):
    """loss.c's per-step cross entropies: the value and gradient of
    runtime/losses.py's, from near-uniform to saturated softmax rows (exp
    underflows), and only a forward under no_grad."""
    torch.manual_seed(int(spread * 10))
    logits = torch.randn(7, 12, 5) * spread
    targets = torch.randint(0, 5, (12,))
    grads, values = [], []
    for function in (getattr(losses, name), native.LOSSES[name]):
        x = logits.clone().requires_grad_()
        value = function(x, x, targets)
        value.backward()
        values.append(value.detach())
        grads.append(x.grad)
        with torch.no_grad():
            assert torch.equal(function(logits, logits, targets), value.detach())
    torch.testing.assert_close(values[1], values[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)


def test_native_cross_entropy_edges():
    """Bad labels fail as torch's do; NaN spreads; float64 (which loss.c does
    not take) runs torch's cross entropy."""
    logits, targets = torch.randn(6, 4), torch.tensor([0, 3, 1])
    for bad in (torch.tensor([0, 4, 1]), torch.tensor([-1, 0, 1])):
        with pytest.raises(IndexError, match="out of bounds"):
            native.cross_entropy(logits, bad, 1.0)
    nan = logits.clone()
    nan[4, 2] = float("nan")
    assert native.cross_entropy(nan, targets, 1.0).isnan()
    for x in (logits, logits.double()):
        expected = torch.nn.functional.cross_entropy(
            x, targets.repeat(2), reduction="sum"
        )
        torch.testing.assert_close(native.cross_entropy(x, targets, 0.5), expected / 2)


def test_native_mode_takes_the_loss_from_loss_c(monkeypatch):
    """make_loss(native=True), as train and bench use it in mode native, runs
    loss.c for ce_membrane; the default runs runtime/losses.py."""
    from snncompile.train.loop import make_loss

    calls = []
    apply = native.CrossEntropy.apply
    monkeypatch.setattr(
        native.CrossEntropy, "apply", lambda *a: calls.append(1) or apply(*a)
    )
    graph = snncompile.build(snncompile.load("specs/mnist_fc.yaml")).graph
    mem, targets = torch.randn(25, 4, 10), torch.tensor([1, 2, 3, 4])
    values = [make_loss(graph, native=flag)[0](mem, mem, targets) for flag in (0, 1)]
    assert calls == [1]
    torch.testing.assert_close(values[1], values[0])


def test_native_forward_linear_fallback_and_inference():
    """A linear layer wider than the loop's (K > 32), or with a non-finite weight
    (0 * inf is NaN in a product, not in a sum of the fired), keeps scan + addmm,
    exactly; one without bias sums in the loop too; under no_grad the fused
    forward gives what the training forward gives."""
    kernels = native.kernels()
    torch.manual_seed(3)
    neuron = Leaky((300,), 0.9, 1.0, surrogate=surrogates.ATan, surrogate_args=(2.0,))
    cur = torch.randn(4, 300).expand(5, 4, 300)
    beta, threshold = neuron.beta.detach().clamp(0, 1), neuron.threshold.detach()
    scan = (cur[0], beta, threshold, 5, "subtract", False)
    exactly = functools.partial(
        torch.testing.assert_close, rtol=0, atol=0, equal_nan=True
    )
    cases = ((40, False, True), (20, True, True), (7, True, False), (7, False, True))
    for k_out, fused, bias in cases:
        linear = torch.nn.Linear(300, k_out, bias=bias)
        if k_out == 7 and bias:  # a non-finite weight: the product's NaN rules
            with torch.no_grad():
                linear.weight[3, 5] = float("inf")
        neuron.compiled = False
        spk, out = fused_leaky_linear(neuron, linear, cur)
        neuron.compiled = kernels
        result = kernels.scan_linear(*scan, linear.weight, linear.bias)
        assert (result is not None) == fused, (k_out, bias)
        spk_n, out_n = fused_leaky_linear(neuron, linear, cur)
        assert torch.equal(spk_n, spk)
        if fused:
            torch.testing.assert_close(out_n, out, rtol=1e-5, atol=1e-5)
        else:
            exactly(out_n, out)
        with torch.no_grad():
            spk_i, out_i = fused_leaky_linear(neuron, linear, cur)
            _, out_s = fused_leaky_linear(neuron, linear, cur, spikes=False)
        assert torch.equal(spk_i, spk_n)
        exactly(out_i, out_n)
        exactly(out_s, out_n)  # without a spike record (where fused): the same
    assert out.isnan().any()  # the last case: NaN where 0 * inf met
