"""snncompile's neurons and surrogates against snnTorch, step for step.

Each case drives a runtime neuron class (snncompile/runtime/neurons.py) and the
matching snnTorch neuron with the same input current, parameters and recurrent
weights, then checks identical spikes, matching states at every step and
matching gradients (input current and every learnable parameter) of a loss that
uses both spikes and membranes.  Whole networks built from specs/mnist_fc.yaml
and specs/mnist_csnn.yaml are compared with hand-written snnTorch Tutorial 5/6
networks the same way.
"""

import json
from pathlib import Path

import pytest
import snntorch as snn
import torch
from snntorch import functional as SF
from snntorch import surrogate as snn_surrogate
from snntorch import utils as snn_utils
from torch import nn

import snncompile
from snncompile import registry
from snncompile.lower import optimize
from snncompile.runtime import losses, neurons, surrogates

SPECS = Path(__file__).resolve().parents[1] / "specs"
T, B = 30, 4
FEATURES = (8,)
MAPS = (2, 5, 5)  # [C, H, W] for the conv recurrence
RESETS = ("subtract", "zero", "none")

# case -> (class name, the same in snncompile and snnTorch; recurrence or None)
KINDS = {
    "leaky": ("Leaky", None),
    "synaptic": ("Synaptic", None),
    "alpha": ("Alpha", None),
    "rleaky_linear": ("RLeaky", "linear"),
    "rleaky_one_to_one": ("RLeaky", "one_to_one"),
    "rleaky_conv": ("RLeaky", "conv"),
    "rsynaptic_linear": ("RSynaptic", "linear"),
    "rsynaptic_one_to_one": ("RSynaptic", "one_to_one"),
}
HAS_ALPHA = ("Synaptic", "Alpha", "RSynaptic")

# surrogate spec (as in a YAML file); the default parameters and other ones
SURROGATE_SPECS = [
    {"type": "atan", "alpha": 2.0},
    {"type": "atan", "alpha": 3.5},
    {"type": "fast_sigmoid", "slope": 25.0},
    {"type": "fast_sigmoid", "slope": 4.0},
    {"type": "sigmoid", "slope": 25.0},
    {"type": "sigmoid", "slope": 3.0},
    {"type": "triangular", "threshold": 1.0},
    {"type": "triangular", "threshold": 0.4},
    {"type": "straight_through"},
    {"type": "spike_rate_escape", "beta": 1.0, "slope": 25.0},
    {"type": "spike_rate_escape", "beta": 0.5, "slope": 3.0},
]
SNNTORCH_SURROGATE = {"straight_through": "straight_through_estimator"}


def _surrogate_id(spec):
    return "-".join(str(v) for v in spec.values())


def surrogate_pair(spec):
    """(runtime class, positional args) as build() passes them; snnTorch spike_grad."""
    cls_name, fields = registry.SURROGATES[spec["type"]]
    args = tuple(float(spec[f]) for f in fields)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    factory = getattr(snn_surrogate, SNNTORCH_SURROGATE.get(spec["type"], spec["type"]))
    return getattr(surrogates, cls_name), args, factory(**kwargs)


# ------------------------------------------------------------ neuron pairs


def _values(per_neuron, shape, gen):
    """Neuron parameters: scalars, or distinct per-neuron tensors (alpha > beta)."""
    if not per_neuron:
        return {"beta": 0.8, "alpha": 0.9, "threshold": 0.8}
    beta = 0.5 + 0.35 * torch.rand(shape, generator=gen)
    alpha = 0.87 + 0.1 * torch.rand(shape, generator=gen)
    threshold = 0.5 + torch.rand(shape, generator=gen)
    return {"beta": beta, "alpha": alpha, "threshold": threshold}


def make_pair(kind, reset, sur_spec, per_neuron, learn, seed=0, values=None):
    """An snncompile runtime neuron and the snnTorch neuron with equal parameters."""
    cls_name, rec = KINDS[kind]
    shape = MAPS if rec == "conv" else FEATURES
    gen = torch.Generator().manual_seed(seed)
    values = values or _values(per_neuron, shape, gen)
    sur_cls, sur_args, spike_grad = surrogate_pair(sur_spec)

    kwargs = {
        "beta": 0.5,  # placeholders, overwritten below with `values`
        "threshold": 1.0,
        "reset": reset,
        "learn_beta": learn,
        "learn_threshold": learn,
        "per_neuron": per_neuron,
        "surrogate": sur_cls,
        "surrogate_args": sur_args,
    }
    ref_kwargs = {
        "spike_grad": spike_grad,
        "reset_mechanism": reset,
        "learn_beta": learn,
        "learn_threshold": learn,
    }
    names = ["beta", "threshold"]
    if cls_name in HAS_ALPHA:
        kwargs.update(alpha=0.9, learn_alpha=learn)
        names.append("alpha")
        # snnTorch's Alpha(learn_alpha=True) raises a TypeError (it assigns a
        # clamped plain tensor over the Parameter); its alpha is made a Parameter
        # by hand below instead.
        if cls_name != "Alpha":
            ref_kwargs["learn_alpha"] = learn
    if rec is not None:
        if rec == "linear":
            recurrent = neurons.Recurrent("linear", features=shape[0])
            ref_kwargs["linear_features"] = shape[0]
        elif rec == "conv":
            recurrent = neurons.Recurrent("conv", features=shape[0], kernel_size=(3, 3))
            ref_kwargs.update(conv2d_channels=shape[0], kernel_size=3)
        else:
            recurrent = neurons.Recurrent("one_to_one", V=0.6, learn=learn)
            ref_kwargs.update(all_to_all=False, V=0.6)
        if rec != "one_to_one":  # deterministic, moderate all-to-all feedback
            gain = 0.25 if cls_name == "RSynaptic" else 1.0  # integrated twice
            with torch.no_grad():
                for name, param in recurrent.named_parameters():
                    bound = gain * (0.1 if name.endswith("bias") else 0.4)
                    param.uniform_(-bound, bound, generator=gen)
        kwargs["recurrent"] = recurrent
        ref_kwargs["learn_recurrent"] = learn or rec != "one_to_one"
    ours = getattr(neurons, cls_name)(shape, **kwargs)
    with torch.no_grad():
        for name in names:
            getattr(ours, name).copy_(torch.as_tensor(values[name]))

    def tensor(name):
        return torch.as_tensor(values[name], dtype=torch.float32).clone()

    ref_args = [tensor("alpha")] if cls_name in HAS_ALPHA else []
    ref_args.append(tensor("beta"))
    ref = getattr(snn, cls_name)(*ref_args, threshold=tensor("threshold"), **ref_kwargs)
    if cls_name == "Alpha" and learn:
        del ref.alpha
        ref.alpha = nn.Parameter(tensor("alpha"))
    if rec in ("linear", "conv"):
        layer = recurrent.linear if rec == "linear" else recurrent.conv
        ref.recurrent.load_state_dict(layer.state_dict())
    return ours, ref, shape


def learnable_pairs(ours, ref):
    """[(ours param, snnTorch param)] for every learnable parameter, matched by name."""
    rename = {
        "recurrent.linear.weight": "recurrent.weight",
        "recurrent.linear.bias": "recurrent.bias",
        "recurrent.conv.weight": "recurrent.weight",
        "recurrent.conv.bias": "recurrent.bias",
        "recurrent.V": "V",
    }
    ref_params = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    ours_params = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    ref_params.pop("recurrent.V", None)  # snnTorch registers V twice
    assert {rename.get(n, n) for n in ours_params} == set(ref_params)
    return [(p, ref_params[rename.get(n, n)]) for n, p in ours_params.items()]


# ------------------------------------------------------------ simulation


SCALE = {  # input current mean and spread per neuron type (fair spike rates)
    "Leaky": (0.35, 0.6),
    "Synaptic": (0.12, 0.3),
    "Alpha": (0.25, 0.35),
    "RLeaky": (0.35, 0.6),
    "RSynaptic": (0.05, 0.3),
}


def current(cls_name, shape, seed):
    mean, spread = SCALE[cls_name]
    gen = torch.Generator().manual_seed(100 + seed)
    cur = mean + spread * torch.randn(T, B, *shape, generator=gen)
    return cur.requires_grad_(True)


def run_step(ours, cur):
    """snncompile `.step` loop -> spikes [T, ...] and each state [T, ...]."""
    state = ours.init_state(cur[0])
    spks, states = [], []
    for t in range(cur.shape[0]):
        spk, state = ours.step(cur[t], state)
        spks.append(spk)
        states.append(state)
    return torch.stack(spks), [torch.stack(s) for s in zip(*states)]


def run_snntorch(ref, cur, recurrent):
    """snnTorch loop with explicit states, ordered as the runtime's `state_names`:
    a call returns (spk, *states); recurrent neurons take spk back as a state."""
    count = len(getattr(neurons, type(ref).__name__).state_names)
    state = tuple(torch.zeros_like(cur[0]) for _ in range(count))
    spks, states = [], []
    for t in range(cur.shape[0]):
        out = ref(cur[t], *state)
        state = out if recurrent else out[1:]
        spks.append(out[0])
        states.append(state)
    return torch.stack(spks), [torch.stack(s) for s in zip(*states)]


def run_reference(ref, cur, recurrent, pairs, seed):
    """snnTorch's spikes, states and gradients (input current, then parameters)."""
    spk, states = run_snntorch(ref, cur, recurrent)
    loss = loss_of(spk, states[-1], seed)
    return spk, states, grads(loss, [cur] + [r for _, r in pairs])


def sigmoid_by_autograd(slope):
    """Heaviside forward; backward d sigmoid(slope U) / dU by torch's autograd
    (in float64, so that 1 - sigmoid keeps its digits)."""

    def spike(u):
        s = torch.sigmoid(slope * u.double()).float()
        return (u > 0).float() + (s - s.detach())

    return spike


def loss_of(spk, mem, seed):
    """Uses spikes and membranes with fixed random weights (no symmetric cancelling)."""
    gen = torch.Generator().manual_seed(200 + seed)
    w_spk = torch.randn(spk.shape, generator=gen)
    w_mem = torch.randn(mem.shape, generator=gen)
    return (spk * w_spk).sum() + (mem * w_mem).sum() + 0.1 * mem.square().sum()


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def assert_grads_close(ours, ref):
    """Equal up to float summation order (snnTorch recomputes some terms for the
    zero reset, so their gradients are summed along other paths): absolute
    tolerance relative to the gradient's own scale. A scalar parameter's gradient
    is one sum over every step, sample and neuron, with cancelling terms: the
    fused kernel sums it per step first, and lands nearer a float64 evaluation
    than snnTorch's order (3e-5 against 1.3e-4 off for a threshold gradient of
    1.59), so those get rtol 1e-4."""
    for g_ours, g_ref in zip(ours, ref):
        assert g_ours is not None and g_ref is not None
        scale = max(1.0, g_ref.abs().max().item())
        rtol = 1e-4 if g_ref.dim() == 0 else 1e-5
        torch.testing.assert_close(g_ours, g_ref, rtol=rtol, atol=1e-6 * scale)


def check_parity(kind, reset, sur_spec, per_neuron, learn, seed=0, values=None):
    ours, ref, shape = make_pair(kind, reset, sur_spec, per_neuron, learn, seed, values)
    compare(ours, ref, kind, shape, sur_spec, seed, learn)


def compare(ours, ref, kind, shape, sur_spec, seed, learn):
    """Same current through both: spikes, states and gradients must agree."""
    cls_name, rec = KINDS[kind]
    pairs = learnable_pairs(ours, ref)
    assert len(pairs) > 0 or not learn

    cur = current(cls_name, shape, seed)
    ref_spk, ref_states, ref_grads = run_reference(
        ref, cur, rec is not None, pairs, seed
    )
    rate = ref_spk.mean().item()
    assert 0.05 < rate < 0.95, f"spike rate {rate:.3f}: the comparison would be weak"
    if not all(torch.isfinite(g).all() for g in ref_grads):
        # snnTorch's sigmoid surrogate evaluates slope * e / (e + 1)^2 with
        # e = exp(-slope * U): inf / inf = NaN once U < about -87 / slope.  The
        # runtime's is finite there (test_sigmoid_surrogate_stays_finite); the
        # reference neuron then takes the same derivative from torch.sigmoid.
        assert sur_spec["type"] == "sigmoid"
        ref.spike_grad = sigmoid_by_autograd(sur_spec["slope"])
        ref_spk, ref_states, ref_grads = run_reference(
            ref, cur, rec is not None, pairs, seed
        )
    params = [cur] + [p for p, _ in pairs]

    # the whole-sequence forward; states are bitwise equal (same float operations
    # in the same order), gradients equal up to summation order
    spk, mem = ours(cur)
    assert torch.equal(spk, ref_spk)
    torch.testing.assert_close(mem, ref_states[-1], rtol=0, atol=0)
    assert_grads_close(grads(loss_of(spk, mem, seed), params), ref_grads)

    # the step loop, every state at every step
    spk, states = run_step(ours, cur)
    assert torch.equal(spk, ref_spk)
    assert len(states) == len(ref_states) == len(ours.state_names)
    for name, ours_state, ref_state in zip(ours.state_names, states, ref_states):
        torch.testing.assert_close(ours_state, ref_state, rtol=0, atol=0, msg=name)
    assert_grads_close(grads(loss_of(spk, states[-1], seed), params), ref_grads)


@pytest.fixture(autouse=True)
def _forget_snntorch_instances():
    """snnTorch keeps every neuron (and its last state graph) in a class list."""
    yield
    snn.SpikingNeuron.instances.clear()


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per_neuron"])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_neuron_matches_snntorch(kind, reset, per_neuron, learn):
    check_parity(kind, reset, SURROGATE_SPECS[0], per_neuron, learn)


@pytest.mark.parametrize("sur_spec", SURROGATE_SPECS, ids=_surrogate_id)
@pytest.mark.parametrize("kind", ["leaky", "alpha", "rsynaptic_linear"])
def test_surrogate_matches_snntorch(kind, sur_spec):
    """Every surrogate (defaults and other parameters) inside neurons with one,
    three and recurrent states; the other kinds meet them in the built tests."""
    check_parity(kind, "subtract", sur_spec, per_neuron=True, learn=True, seed=1)


@pytest.mark.parametrize("sur_spec", SURROGATE_SPECS, ids=_surrogate_id)
@pytest.mark.parametrize("reset", ["zero", "none"])
def test_surrogate_with_reset_matches_snntorch(reset, sur_spec):
    check_parity("leaky", reset, sur_spec, per_neuron=False, learn=True, seed=2)


@pytest.mark.parametrize(
    "kind", ["leaky", "synaptic", "rleaky_linear", "rsynaptic_one_to_one"]
)
def test_decay_clamp_matches_snntorch(kind):
    """Learnable decays outside [0, 1] enter clamped, with clamp's zero gradient."""
    shape = FEATURES
    beta = torch.linspace(-0.2, 1.3, shape[0])
    alpha = torch.linspace(1.2, 0.3, shape[0])
    values = {"beta": beta, "alpha": alpha, "threshold": torch.full(shape, 0.9)}
    check_parity(kind, "subtract", SURROGATE_SPECS[0], True, True, 3, values)


# ------------------------------------------------------------ surrogate functions


@pytest.mark.parametrize("sur_spec", SURROGATE_SPECS, ids=_surrogate_id)
def test_surrogate_function_matches_snntorch(sur_spec):
    """Spike and surrogate derivative on a grid of U = mem - threshold (U = 0 too)."""
    sur_cls, args, spike_grad = surrogate_pair(sur_spec)
    u = torch.linspace(-3.0, 3.0, 6001).requires_grad_(True)  # holds 0 exactly
    gen = torch.Generator().manual_seed(5)
    upstream = torch.randn(u.shape, generator=gen)
    ours = sur_cls.apply(u, *args)
    ref = spike_grad(u)
    assert torch.equal(ours, ref)
    assert torch.equal(ours, (u > 0).float())  # strict Heaviside: S(0) = 0
    (g_ours,) = torch.autograd.grad(ours, u, upstream)
    (g_ref,) = torch.autograd.grad(ref, u, upstream)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("slope", [25.0, 3.0])
def test_sigmoid_surrogate_stays_finite(slope):
    """snnTorch's literal formula is NaN far below threshold; ours is the same
    derivative, slope * s * (1 - s), finite everywhere."""
    u = torch.linspace(-200.0 / slope, 200.0 / slope, 4001).requires_grad_(True)
    (g_ours,) = torch.autograd.grad(surrogates.Sigmoid.apply(u, slope).sum(), u)
    (g_snntorch,) = torch.autograd.grad(snn_surrogate.sigmoid(slope)(u).sum(), u)
    u64 = u.detach().double().requires_grad_(True)
    (g_exact,) = torch.autograd.grad(torch.sigmoid(slope * u64).sum(), u64)
    assert torch.isfinite(g_ours).all()
    torch.testing.assert_close(g_ours.double(), g_exact, rtol=1e-5, atol=1e-12)
    finite = torch.isfinite(g_snntorch)
    assert 0 < finite.sum() < u.numel()  # the grid reaches snnTorch's overflow
    torch.testing.assert_close(g_ours[finite], g_snntorch[finite], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------ through build()


def neuron_spec(kind, reset, sur_spec):
    """A spec whose first layer `n` is the neuron, every setting away from default."""
    cls_name, rec = KINDS[kind]
    layer = {
        "type": cls_name.lower(),
        "name": "n",
        "beta": 0.8,
        "threshold": 0.8,
        "reset": reset,
        "learn_beta": True,
        "learn_threshold": True,
        "per_neuron": True,
        "surrogate": sur_spec,
    }
    if cls_name in HAS_ALPHA:
        layer.update(alpha=0.9, learn_alpha=True)
    if rec == "linear":
        layer["recurrence"] = {"type": "linear"}
    elif rec == "conv":
        layer["recurrence"] = {"type": "conv", "kernel_size": 3}
    elif rec == "one_to_one":
        layer["recurrence"] = {"type": "one_to_one", "V": 0.6, "learn": True}
    shape = MAPS if rec == "conv" else FEATURES
    spec = {
        "snncompile": 1,
        "name": "one_neuron",
        "input": {"shape": list(shape), "encoding": {"type": "direct"}},
        "steps": T,
        "layers": [
            layer,
            {"type": "flatten"},
            {"type": "linear", "out_features": 3},
            {"type": "leaky", "beta": 0.9},
        ],
        "decoding": {"type": "rate"},
        "loss": {"type": "ce_rate"},
        "train": {"dataset": "synthetic"},
    }
    return json.dumps(spec), shape


BUILT_CASES = [
    ("leaky", "zero", {"type": "sigmoid", "slope": 3.0}),
    ("synaptic", "subtract", {"type": "spike_rate_escape", "beta": 0.5, "slope": 3.0}),
    ("alpha", "zero", {"type": "triangular", "threshold": 0.4}),
    ("rleaky_linear", "subtract", {"type": "fast_sigmoid", "slope": 4.0}),
    ("rleaky_one_to_one", "none", {"type": "atan", "alpha": 3.5}),
    ("rleaky_conv", "zero", {"type": "straight_through"}),
    ("rsynaptic_linear", "zero", {"type": "atan", "alpha": 3.5}),
    ("rsynaptic_one_to_one", "subtract", {"type": "sigmoid", "slope": 25.0}),
]


@pytest.mark.parametrize(
    ("kind", "reset", "sur_spec"),
    BUILT_CASES,
    ids=[f"{k}-{r}-{_surrogate_id(s)}" for k, r, s in BUILT_CASES],
)
def test_built_neuron_matches_snntorch(kind, reset, sur_spec):
    """The neuron exactly as build() constructs it from a spec (generated code)."""
    text, shape = neuron_spec(kind, reset, sur_spec)
    net = snncompile.build(snncompile.loads(text, fmt="json"), seed=0)
    built = net.n
    assert type(built).__name__ == KINDS[kind][0]
    values = {
        name: torch.full(shape, value)
        for name, value in (("beta", 0.8), ("alpha", 0.9), ("threshold", 0.8))
    }
    direct, ref, _ = make_pair(kind, reset, sur_spec, True, True, 4, values)
    # the spec's values in every slot; only all-to-all weights start at random
    built_state, direct_state = built.state_dict(), direct.state_dict()
    assert built_state.keys() == direct_state.keys()
    for key, value in direct_state.items():
        if not key.startswith(("recurrent.linear.", "recurrent.conv.")):
            assert torch.equal(built_state[key], value), key
    built.load_state_dict(direct_state)
    assert built.surrogate.__name__ == direct.surrogate.__name__
    assert built.surrogate_args == direct.surrogate_args
    compare(built, ref, kind, shape, sur_spec, seed=4, learn=True)


# ------------------------------------------------------------ whole networks


class Tutorial5(nn.Module):
    """snnTorch Tutorial 5's fully connected 784-1000-10 Leaky network."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(784, 1000)
        self.lif1 = snn.Leaky(beta=0.95)
        self.fc2 = nn.Linear(1000, 10)
        self.lif2 = snn.Leaky(beta=0.95)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk1_rec, spk2_rec, mem2_rec = [], [], []
        for _ in range(self.steps):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk1_rec.append(spk1)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk1_rec), torch.stack(spk2_rec), torch.stack(mem2_rec)


def tutorial5_loss(mem_rec, targets):
    """Tutorial 5: cross entropy of the output membrane, summed over steps."""
    criterion = nn.CrossEntropyLoss()
    loss = torch.zeros(())
    for step in range(mem_rec.shape[0]):
        loss = loss + criterion(mem_rec[step], targets)
    return loss


def tutorial6(steps):
    """snnTorch Tutorial 6's 12C5-MP2-64C5-MP2-FC10 network and its forward pass."""
    spike_grad = snn_surrogate.fast_sigmoid(slope=25)

    def lif(output=False):
        return snn.Leaky(0.5, spike_grad=spike_grad, init_hidden=True, output=output)

    net = nn.Sequential(
        nn.Conv2d(1, 12, 5),
        nn.MaxPool2d(2),
        lif(),
        nn.Conv2d(12, 64, 5),
        nn.MaxPool2d(2),
        lif(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 10),
        lif(output=True),
    )

    def forward(x):
        snn_utils.reset(net)
        spk_rec, mem_rec = [], []
        for _ in range(steps):
            spk, mem = net(x)
            spk_rec.append(spk)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(mem_rec)

    return net, forward


def _inputs(seed, batch):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    targets = torch.randint(0, 10, (batch,), generator=gen)
    return x, targets


def _assert_param_grads_close(net, ref, names):
    for name in names:
        for attr in ("weight", "bias"):
            ours = getattr(getattr(net, name), attr).grad
            theirs = getattr(getattr(ref, name), attr).grad
            assert ours is not None and ours.abs().sum() > 0, f"{name}.{attr}"
            scale = theirs.abs().max().item()
            torch.testing.assert_close(
                ours, theirs, rtol=1e-4, atol=1e-5 * scale, msg=f"{name}.{attr}"
            )


@pytest.mark.parametrize("schedule", ["step", "layered"])
def test_mnist_fc_matches_tutorial5(schedule):
    net = snncompile.build(snncompile.load(SPECS / "mnist_fc.yaml"), schedule, seed=0)
    ref = Tutorial5(net.steps)
    ref.fc1.load_state_dict(net.fc1.state_dict())
    ref.fc2.load_state_dict(net.fc2.state_dict())
    x, targets = _inputs(0, 4)

    spk, mem, record = net(x, all_spikes=True)
    ref_spk1, ref_spk, ref_mem = ref(x)
    for name, ref_rec in (("lif1", ref_spk1), ("lif2", ref_spk)):
        rate = ref_rec.mean().item()
        assert 0.03 < rate < 0.97, f"{name} spike rate {rate:.3f}"
        assert torch.equal(record[name], ref_rec), name
    assert torch.equal(spk, ref_spk)
    torch.testing.assert_close(mem, ref_mem, rtol=1e-5, atol=1e-5)

    loss = losses.loss_ce_membrane(spk, mem, targets)
    ref_loss = tutorial5_loss(ref_mem, targets)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref_loss.backward()
    _assert_param_grads_close(net, ref, ["fc1", "fc2"])


@pytest.mark.parametrize("schedule", ["step", "layered"])
def test_mnist_csnn_matches_tutorial6(schedule):
    net = snncompile.build(snncompile.load(SPECS / "mnist_csnn.yaml"), schedule, seed=0)
    with torch.no_grad():  # stronger than the initialization: deep layers spike
        net.conv2.weight.mul_(3)
        net.fc1.weight.mul_(4)
    ref, ref_forward = tutorial6(net.steps)
    for ours, theirs in ((net.conv1, ref[0]), (net.conv2, ref[3]), (net.fc1, ref[7])):
        theirs.load_state_dict(ours.state_dict())
    x, targets = _inputs(1, 2)
    x = 3 * x  # brighter than MNIST, for the same reason

    hidden = {"lif1": [], "lif2": []}  # the hidden layers' spikes, step by step
    for name, index in (("lif1", 2), ("lif2", 5)):
        ref[index].register_forward_hook(
            lambda module, args, out, rec=hidden[name]: rec.append(out)
        )

    spk, mem, record = net(x, all_spikes=True)
    ref_spk, ref_mem = ref_forward(x)
    ref_record = {name: torch.stack(rec) for name, rec in hidden.items()}
    ref_record["lif3"] = ref_spk
    assert set(record) == set(ref_record)
    for name, rec in record.items():
        rate = rec.mean().item()
        assert 0.03 < rate < 0.97, f"{name} spike rate {rate:.3f}"
        assert torch.equal(rec, ref_record[name]), name
    assert torch.equal(spk, ref_spk)
    torch.testing.assert_close(mem, ref_mem, rtol=1e-5, atol=1e-5)

    loss = losses.loss_ce_rate(spk, mem, targets)
    ref_loss = SF.ce_rate_loss()(ref_spk, targets).reshape(())  # snnTorch: [1]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref_loss.backward()
    named = nn.Module()
    named.conv1, named.conv2, named.fc1 = ref[0], ref[3], ref[7]
    _assert_param_grads_close(net, named, ["conv1", "conv2", "fc1"])


# ------------------------------------------------------------ integrate-and-fire


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per_neuron"])
@pytest.mark.parametrize("reset", RESETS)
def test_if_matches_snntorch_leaky_without_leak(reset, per_neuron, learn):
    """`if` (no leak) is snnTorch's Leaky with beta 1: the same spikes and states,
    gradients up to summation order; also as build() makes it from a spec, and
    on the fused kernel put on top of it."""
    sur_spec = {"type": "atan", "alpha": 2.0}
    gen = torch.Generator().manual_seed(5)
    values = _values(per_neuron, FEATURES, gen)
    values["beta"] = torch.ones(FEATURES) if per_neuron else 1.0
    _, ref, shape = make_pair("leaky", reset, sur_spec, per_neuron, False, 5, values)
    sur_cls, sur_args, _ = surrogate_pair(sur_spec)
    ours = neurons.IF(
        shape,
        threshold=1.0,
        reset=reset,
        learn_threshold=learn,
        per_neuron=per_neuron,
        surrogate=sur_cls,
        surrogate_args=sur_args,
    )
    with torch.no_grad():
        ours.threshold.copy_(torch.as_tensor(values["threshold"]))
    if learn:  # snnTorch's threshold learnable too, its beta fixed at 1
        ref.threshold = nn.Parameter(ref.threshold.detach().clone())
    assert [n for n, p in ours.named_parameters()] == (["threshold"] if learn else [])
    compare(ours, ref, "leaky", shape, sur_spec, seed=5, learn=learn)

    spec = snncompile.loads(
        json.dumps(
            {
                "snncompile": 1,
                "name": "integrate",
                "input": {"shape": list(shape)},
                "steps": T,
                "layers": [
                    {
                        "type": "if",
                        "name": "n",
                        "reset": reset,
                        "per_neuron": per_neuron,
                        "learn_threshold": learn,
                    },
                    {"type": "linear", "out_features": 3},
                    {"type": "leaky", "beta": 0.9},
                ],
                "train": {"dataset": "synthetic"},
            }
        ),
        fmt="json",
    )
    built = snncompile.build(spec).n
    assert type(built).__name__ == "IF" and built.beta.eq(1).all()
    built.load_state_dict(ours.state_dict())
    compare(built, ref, "leaky", shape, sur_spec, seed=5, learn=learn)
    fast = optimize.apply(snncompile.build(spec), "none").n
    fast.load_state_dict(ours.state_dict())
    assert fast.fused, "IF runs Leaky's fused kernel"
    compare(fast, ref, "leaky", shape, sur_spec, seed=5, learn=learn)


# ------------------------------------------------------------ lapicque and li

# how a lapicque layer is given (snnTorch takes the same arguments)
LAPICQUE_CASES = {
    "beta": {"beta": 0.8},
    "R_C": {"R": 2.0, "C": 3.0},
    "beta_R": {"beta": 0.85, "R": 1.3},
    "beta_C": {"beta": 0.85, "C": 2.5},
    "beta_dt": {"beta": 0.7, "time_step": 0.37},
    "R_C_dt": {"R": 0.7, "C": 1.9, "time_step": 0.3},
}
RC_READOUT = ({"type": "linear", "out_features": 3}, {"type": "leaky", "beta": 0.9})


def _compare_states(ours, ref, cur, seed, learn):
    """Spikes and membranes bitwise equal, in the sequence forward and the step
    loop; gradients (input current, learnable parameters) up to float order."""
    pairs = learnable_pairs(ours, ref)
    assert len(pairs) > 0 or not learn
    ref_spk, ref_states, ref_grads = run_reference(ref, cur, False, pairs, seed)
    params = [cur] + [p for p, _ in pairs]
    spk, mem = ours(cur)
    assert torch.equal(spk, ref_spk)
    torch.testing.assert_close(mem, ref_states[-1], rtol=0, atol=0)
    assert_grads_close(grads(loss_of(spk, mem, seed), params), ref_grads)
    spk, states = run_step(ours, cur)
    assert torch.equal(spk, ref_spk)
    torch.testing.assert_close(states[-1], ref_states[-1], rtol=0, atol=0)
    assert_grads_close(grads(loss_of(spk, states[-1], seed), params), ref_grads)
    return ref_spk


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per_neuron"])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("case", list(LAPICQUE_CASES))
def test_lapicque_matches_snntorch(case, reset, per_neuron, learn):
    """`lapicque` is snnTorch's Lapicque: R, C (and beta) derived as snnTorch
    derives them, the same spikes and membranes bitwise, gradients up to
    summation order; also as build() makes it from a spec."""
    given = LAPICQUE_CASES[case]
    sur_spec = {"type": "atan", "alpha": 2.0}
    sur_cls, sur_args, spike_grad = surrogate_pair(sur_spec)
    gen = torch.Generator().manual_seed(11)
    threshold = _values(per_neuron, FEATURES, gen)["threshold"]
    ours = neurons.Lapicque(
        FEATURES,
        **given,
        reset=reset,
        learn_threshold=learn,
        per_neuron=per_neuron,
        surrogate=sur_cls,
        surrogate_args=sur_args,
    )
    with torch.no_grad():
        ours.threshold.copy_(torch.as_tensor(threshold))
    ref = snn.Lapicque(
        **given,
        threshold=torch.as_tensor(threshold, dtype=torch.float32).clone(),
        spike_grad=spike_grad,
        reset_mechanism=reset,
        learn_threshold=learn,
    )
    for name in ("beta", "R", "C", "time_step"):  # snnTorch's own derivation
        theirs = getattr(ref, name).to(torch.float32).reshape(())
        assert torch.equal(getattr(ours, name), theirs.expand(ours.threshold.shape))
    assert [n for n, _ in ours.named_parameters()] == (["threshold"] if learn else [])
    resistance = float(ref.R)  # the steady membrane is R * I
    gen = torch.Generator().manual_seed(12)
    cur = (1.6 + torch.randn(T, B, *FEATURES, generator=gen)) / resistance
    cur.requires_grad_(True)
    rate = _compare_states(ours, ref, cur, 12, learn).mean().item()
    assert 0.05 < rate < 0.95, f"spike rate {rate:.3f}: the comparison would be weak"

    spec = snncompile.loads(
        json.dumps(
            {
                "snncompile": 1,
                "name": "rc",
                "input": {"shape": list(FEATURES)},
                "steps": T,
                "layers": [
                    {
                        "type": "lapicque",
                        "name": "n",
                        **given,
                        "reset": reset,
                        "per_neuron": per_neuron,
                        "learn_threshold": learn,
                    },
                    {"type": "linear", "out_features": 3},
                    {"type": "leaky", "beta": 0.9},
                ],
                "train": {"dataset": "synthetic"},
            }
        ),
        fmt="json",
    )
    built = snncompile.build(spec).n
    assert type(built).__name__ == "Lapicque"
    for name, value in ours.state_dict().items():
        if name != "threshold":  # R, C, beta, dt from the spec's values
            assert torch.equal(built.state_dict()[name], value), name
    built.threshold.data.copy_(ours.threshold)
    _compare_states(built, ref, cur, 12, learn)
    fast = optimize.apply(snncompile.build(spec), "none").n  # its step loop
    fast.load_state_dict(built.state_dict())
    _compare_states(fast, ref, cur, 12, learn)


@pytest.mark.parametrize(
    "given",
    [{"beta": 0.8, "R": 1.0, "C": 2.0}, {"R": 1.0}, {"C": 2.0}, {}],
    ids=lambda g: "_".join(g) or "none",
)
def test_lapicque_needs_beta_or_two_of_r_c(given):
    """As snnTorch: beta, or R and C, or beta with one of them; not all three."""
    for valid in LAPICQUE_CASES.values():
        snncompile.analyze(_lapicque_spec([{"type": "lapicque", **valid}, *RC_READOUT]))
    with pytest.raises(snncompile.SpecError, match="lapicque needs beta, or R and C"):
        snncompile.analyze(_lapicque_spec([{"type": "lapicque", **given}, *RC_READOUT]))


def test_lapicque_beta_from_defaults_and_range():
    layers = [{"type": "lapicque", "name": "n"}, *RC_READOUT]
    graph = snncompile.analyze(_lapicque_spec(layers, defaults={"beta": 0.8}))
    assert graph.node("n").params["beta"] == 0.8
    assert graph.node("n").params["R"] is None
    layers[0] = {"type": "lapicque", "R": 2.0, "C": 3.0, "name": "n"}  # own choice wins
    graph = snncompile.analyze(_lapicque_spec(layers, defaults={"beta": 0.8}))
    assert graph.node("n").params["beta"] is None
    layers[0] = {"type": "lapicque", "beta": 1.0}
    with pytest.raises(snncompile.SpecError, match=r"0 < beta < 1"):
        snncompile.analyze(_lapicque_spec(layers, defaults={"beta": 0.8}))


def _lapicque_spec(layers, **top):
    data = {
        "snncompile": 1,
        "name": "rc",
        "input": {"shape": [4]},
        "steps": 3,
        "layers": layers,
        "train": {"dataset": "synthetic"},
        **top,
    }
    return snncompile.loads(json.dumps(data), fmt="json")


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per_neuron"])
def test_li_matches_snntorch_leaky_without_reset(per_neuron, learn):
    """`li` integrates as snnTorch's Leaky with reset "none" whose threshold is
    out of reach: the same membranes bitwise, gradients up to summation order,
    and never a spike."""
    gen = torch.Generator().manual_seed(7)
    beta = _values(per_neuron, FEATURES, gen)["beta"]
    ours = neurons.LI(FEATURES, 0.5, learn_beta=learn, per_neuron=per_neuron)
    with torch.no_grad():
        ours.beta.copy_(torch.as_tensor(beta))
    ref = snn.Leaky(
        torch.as_tensor(beta, dtype=torch.float32).clone(),
        threshold=1e30,
        reset_mechanism="none",
        learn_beta=learn,
    )
    assert [n for n, _ in ours.named_parameters()] == (["beta"] if learn else [])
    cur = current("Leaky", FEATURES, 7)
    pairs = learnable_pairs(ours, ref)
    ref_spk, ref_states = run_snntorch(ref, cur, False)
    assert not ref_spk.any()
    ref_mem = ref_states[-1]
    ref_grads = grads(loss_of(ref_spk, ref_mem, 7), [cur] + [r for _, r in pairs])
    params = [cur] + [p for p, _ in pairs]
    step_spk, step_states = run_step(ours, cur)
    for spk, mem in (ours(cur), (step_spk, step_states[-1])):
        assert torch.equal(spk, torch.zeros_like(ref_spk))
        torch.testing.assert_close(mem, ref_mem, rtol=0, atol=0)
        assert_grads_close(grads(loss_of(spk, mem, 7), params), ref_grads)
