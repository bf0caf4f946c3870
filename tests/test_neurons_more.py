"""The adaptive-threshold neurons (alif, ralif), cuba (NIR's CubaLIF), the li
readout as the output of classifiers, and the iand merge. (lapicque and li against snnTorch:
tests/test_parity_snntorch.py; every type's round trip: tests/test_conformance.py.)"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys

import pytest
import torch

import snncompile
from snncompile.cli import main
from snncompile.codegen.render import render_script
from snncompile.export.onnx import export_onnx
from snncompile.runtime import neurons, surrogates
from snncompile.train import loop
from snncompile.types import REGISTRY

NEW_NEURONS = ("lapicque", "li", "alif", "ralif", "cuba")


def spec_of(layers, shape=(6,), steps=6, **top):
    data = {
        "snncompile": 1,
        "name": "more",
        "input": {"shape": list(shape)},
        "steps": steps,
        "layers": layers,
        "train": {"dataset": "synthetic", "batch_size": 4, "seed": 0},
        **top,
    }
    return snncompile.loads(json.dumps(data), fmt="json")


@pytest.mark.parametrize("kind", NEW_NEURONS)
def test_built_in_defaults_are_the_runtime_defaults(kind):
    """The renderer leaves out fields equal to the descriptor's defaults: the
    runtime class must default to the same (beyond NeuronType's, which the
    conformance test checks)."""
    descriptor = REGISTRY[kind]
    cls = getattr(neurons, descriptor.runtime_class)
    params = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            params.update(inspect.signature(klass.__init__).parameters)
    for key in descriptor.fields():
        if key in descriptor.defaults and key != "surrogate":
            assert params[key].default == descriptor.defaults[key], key


# ------------------------------------------------------------------ alif


def alif(shape=(2,), reset="subtract", recurrent=None, **values):
    values = {"beta": 0.5, "rho": 0.5, "adapt": 1.0, "threshold": 1.0, **values}
    return neurons.ALIF(
        shape,
        values["beta"],
        values["rho"],
        adapt=values["adapt"],
        threshold=values["threshold"],
        reset=reset,
        recurrent=recurrent,
        surrogate=surrogates.ATan,
        surrogate_args=(2.0,),
    )


def alif_by_hand(currents, beta, rho, adapt, threshold, reset, V=0.0):
    """The documented equations in plain Python floats, one neuron:
    (spk, a, thr, mem) per step."""
    spk, a, mem, rows = 0.0, 0.0, 0.0, []
    for current in currents:
        last = threshold + adapt * a  # thr[t-1]
        reset_t = 1.0 if mem > last else 0.0
        a = rho * a + (1 - rho) * spk
        drive = current + V * spk
        if reset == "subtract":
            mem = beta * mem + drive - reset_t * last
        elif reset == "zero":
            mem = beta * ((1 - reset_t) * mem) + drive
        else:
            mem = beta * mem + drive
        thr = threshold + adapt * a
        spk = 1.0 if mem > thr else 0.0
        rows.append((spk, a, thr, mem))
    return rows


def run(neuron, cur):
    """(spk, a, thr, mem) per step from the step loop, each [T, ...]."""
    state = neuron.init_state(cur[0])
    spks, states = [], []
    for cur_t in cur:
        spk, state = neuron.step(cur_t, state)
        spks.append(spk)
        states.append(state)
    spk = torch.stack(spks)
    a = torch.stack([s[1] for s in states])
    mem = torch.stack([s[2] for s in states])
    thr = neuron.threshold + neuron.adapt * a
    return spk, a, thr, mem


# worked by hand: beta = rho = 1/2, adapt = threshold = 1, current [1.5, 0, 1.5,
# 1.5, 0]; every value is dyadic, so float32 holds it exactly. Rows (spk, a, thr,
# mem) per step: the spike at t sets a[t+1], the threshold of the next step.
BY_HAND = {
    "subtract": [
        (1, 0, 1, 1.5),
        (0, 0.5, 1.5, -0.25),  # reset: 0.5 * 1.5 + 0 - thr[0] (= 1)
        (1, 0.25, 1.25, 1.375),
        (0, 0.625, 1.625, 0.9375),  # 0.6875 + 1.5 - thr[2] (= 1.25)
        (0, 0.3125, 1.3125, 0.46875),
    ],
    "zero": [
        (1, 0, 1, 1.5),
        (0, 0.5, 1.5, 0),
        (1, 0.25, 1.25, 1.5),
        (0, 0.625, 1.625, 1.5),  # reset to 0, then + 1.5: below thr[3]
        (0, 0.3125, 1.3125, 0.75),
    ],
    "none": [
        (1, 0, 1, 1.5),
        (0, 0.5, 1.5, 0.75),
        (1, 0.25, 1.25, 1.875),
        (1, 0.625, 1.625, 2.4375),
        (0, 0.8125, 1.8125, 1.21875),
    ],
}


@pytest.mark.parametrize("reset", list(BY_HAND))
def test_alif_threshold_and_membrane_by_hand(reset):
    """Neuron 0: the hand-worked table, exactly. Neuron 1 (other currents and
    parameters of its own): the equations in Python floats, to float32 rounding."""
    currents = [1.5, 0.0, 1.5, 1.5, 0.0]
    other = [0.7, 0.9, 0.2, 1.3, 0.8]
    params = {"beta": 0.9, "rho": 0.8, "adapt": 0.4, "threshold": 0.9}
    neuron = alif(reset=reset)
    for name, value in params.items():  # one value per neuron: [hand, other]
        tensor = torch.tensor([{"beta": 0.5, "rho": 0.5}.get(name, 1.0), value])
        setattr(neuron, name, tensor)
    cur = torch.tensor([currents, other]).T.unsqueeze(1)  # [T, B = 1, 2]
    spk, a, thr, mem = (v[:, 0] for v in run(neuron, cur))
    table = torch.tensor(BY_HAND[reset])
    assert torch.equal(
        torch.stack([spk[:, 0], a[:, 0], thr[:, 0], mem[:, 0]], 1), table
    )

    expected = torch.tensor(alif_by_hand(other, reset=reset, **params))
    got = torch.stack([spk[:, 1], a[:, 1], thr[:, 1], mem[:, 1]], 1)
    assert expected[:, 0].sum() >= 2, "neuron 1 should spike"
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)

    seq_spk, seq_mem = neuron(cur)  # the sequence forward: the same loop
    assert torch.equal(seq_spk[:, 0], spk) and torch.equal(seq_mem[:, 0], mem)


def test_ralif_feeds_back_its_spikes():
    """ralif with a one-to-one recurrence: mem gains V * spk[t-1]."""
    currents = [1.2, 0.3, 0.9, 0.6, 1.4, 0.1, 0.8]
    recurrent = neurons.Recurrent("one_to_one", V=0.35, learn=False)
    neuron = alif((1,), recurrent=recurrent, beta=0.8, rho=0.7, adapt=0.6)
    cur = torch.tensor(currents).view(-1, 1, 1)
    spk, a, thr, mem = (v.flatten() for v in run(neuron, cur))
    values = {"beta": 0.8, "rho": 0.7, "adapt": 0.6, "threshold": 1.0}
    expected = torch.tensor(alif_by_hand(currents, reset="subtract", V=0.35, **values))
    assert expected[:, 0].sum() >= 2
    torch.testing.assert_close(torch.stack([spk, a, thr, mem], 1), expected)


def test_alif_gradients_follow_the_equations():
    """Every learnable parameter (beta, rho, adapt, threshold) gets the gradient
    of the documented equations written out with torch ops (float64)."""
    torch.manual_seed(0)
    shape = (5,)
    neuron = neurons.ALIF(
        shape,
        0.85,
        0.75,
        adapt=0.3,
        learn_beta=True,
        learn_rho=True,
        learn_adapt=True,
        learn_threshold=True,
        per_neuron=True,
        surrogate=surrogates.FastSigmoid,
        surrogate_args=(5.0,),
    ).double()
    names = ["beta", "rho", "adapt", "threshold"]
    assert sorted(n for n, _ in neuron.named_parameters()) == sorted(names)
    cur = (0.5 + 0.5 * torch.randn(12, 3, *shape, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(12, 3, *shape, dtype=torch.float64)

    def loss(spk, mem):
        return (spk * weights).sum() + (mem * weights).square().sum()

    spk, mem = neuron(cur)
    assert 0.05 < spk.mean() < 0.95
    ours = torch.autograd.grad(loss(spk, mem), [cur, *neuron.parameters()])

    p = dict(neuron.named_parameters())
    b, r = p["beta"].clamp(0, 1), p["rho"].clamp(0, 1)
    s, a, m = (torch.zeros(3, *shape, dtype=torch.float64) for _ in range(3))
    spks, mems = [], []
    for cur_t in cur:
        last = p["threshold"] + p["adapt"] * a
        reset = (m > last).double()
        a = r * a + (1 - r) * s
        m = b * m + cur_t - reset * last
        s = surrogates.FastSigmoid.apply(m - (p["threshold"] + p["adapt"] * a), 5.0)
        spks.append(s)
        mems.append(m)
    ref = torch.autograd.grad(
        loss(torch.stack(spks), torch.stack(mems)), [cur, *neuron.parameters()]
    )
    for g_ours, g_ref in zip(ours, ref):
        assert g_ref.abs().sum() > 0
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_ralif_parameters_counted_and_built():
    spec = spec_of(
        [
            {"type": "linear", "out_features": 5},
            {
                "type": "ralif",
                "name": "r",
                "beta": 0.9,
                "rho": 0.95,
                "learn_rho": True,
                "learn_adapt": True,
                "per_neuron": True,
            },
            {"type": "linear", "out_features": 3},
            {"type": "alif", "beta": 0.9, "rho": 0.9},
        ]
    )
    graph = snncompile.analyze(spec)
    net = snncompile.build(spec, seed=0)
    assert graph.node("r").num_params == 5 * 2 + 5 * 5 + 5  # rho, adapt; linear
    assert graph.num_params == sum(p.numel() for p in net.parameters())
    assert type(net.r).__name__ == "ALIF" and net.r.recurrent is not None
    assert net.r.adapt.eq(1.8).all()  # the default adapt
    assert graph.node("r").states == ("spk", "a", "mem")


# ------------------------------------------------------------------ cuba


def cuba(shape=(1,), reset="zero", alpha=0.5, beta=0.5, **kwargs):
    return neurons.Cuba(
        shape,
        alpha,
        beta,
        reset=reset,
        surrogate=surrogates.ATan,
        surrogate_args=(2.0,),
        **kwargs,
    )


# worked by hand: alpha = beta = 1/2, threshold 1, current [1.5, 0, 0.25, 1, 0],
# so syn = [1.5, 0.75, 0.625, 1.3125, 0.65625] (dyadic: exact in float32). Rows
# (spk, mem) per step; mem is the membrane before the reset of its own step.
CUBA_BY_HAND = {
    "zero": [
        (1, 1.5),
        (0, 0.75),  # 1/2 * 0 (reset in step 0) + syn[1]: the current is kept
        (0, 1.0),  # 0.375 + 0.625: at the threshold, not above
        (1, 1.8125),
        (0, 0.65625),
    ],
    "subtract": [
        (1, 1.5),
        (0, 1.0),  # 1/2 * (1.5 - 1) + 0.75
        (1, 1.125),
        (1, 1.375),  # 1/2 * (1.125 - 1) + 1.3125
        (0, 0.84375),  # 1/2 * (1.375 - 1) + 0.65625
    ],
    "none": [(1, 1.5), (1, 1.5), (1, 1.375), (1, 2.0), (1, 1.65625)],
}


@pytest.mark.parametrize("reset", list(CUBA_BY_HAND))
def test_cuba_by_hand(reset):
    """The hand-worked table exactly, the current state too; snnTorch's
    Synaptic (late reset) differs where cuba fired the step before."""
    cur = torch.tensor([1.5, 0.0, 0.25, 1.0, 0.0]).view(-1, 1, 1)
    neuron = cuba(reset=reset)
    state = neuron.init_state(cur[0])
    syns = []
    for cur_t in cur:
        _, state = neuron.step(cur_t, state)
        syns.append(state[0])
    assert torch.equal(
        torch.stack(syns).flatten(), torch.tensor([1.5, 0.75, 0.625, 1.3125, 0.65625])
    )
    spk, mem = neuron(cur)
    table = torch.tensor(CUBA_BY_HAND[reset])
    assert torch.equal(torch.stack([spk.flatten(), mem.flatten()], 1), table)
    if reset == "zero":
        late = neurons.Synaptic((1,), 0.5, 0.5, reset="zero")
        assert late(cur)[1][1].item() == 0.0  # Synaptic zeroes all of step 1


@pytest.mark.parametrize("reset", ["zero", "subtract", "none"])
def test_cuba_is_the_same_step_reset(reset):
    """Written as NIR states it (v from the membrane after the previous step's
    reset, the reset applied where v fires), with learnable per-neuron alpha,
    beta and threshold (float64): the same spikes, mem = v, and the same
    gradients of every parameter and the input."""
    torch.manual_seed(1)
    shape = (5,)
    neuron = neurons.Cuba(
        shape,
        0.7,
        0.85,
        reset=reset,
        learn_alpha=True,
        learn_beta=True,
        learn_threshold=True,
        per_neuron=True,
        surrogate=surrogates.FastSigmoid,
        surrogate_args=(5.0,),
    ).double()
    cur = (0.3 + 0.4 * torch.randn(20, 3, *shape, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(20, 3, *shape, dtype=torch.float64)

    def loss(spk, mem):
        return (spk * weights).sum() + (mem * weights).square().sum()

    spk, mem = neuron(cur)
    if reset != "none":
        assert 0.05 < spk.mean() < 0.95
    params = [neuron.alpha, neuron.beta, neuron.threshold]
    ours = torch.autograd.grad(loss(spk, mem), [cur, *params])

    a, b = neuron.alpha.clamp(0, 1), neuron.beta.clamp(0, 1)
    thr = neuron.threshold
    syn, after = (torch.zeros(3, *shape, dtype=torch.float64) for _ in range(2))
    spks, vs = [], []
    for cur_t in cur:
        syn = a * syn + cur_t
        v = b * after + syn
        s = surrogates.FastSigmoid.apply(v - thr, 5.0)
        fired = (v > thr).double()  # detached, as S's forward
        if reset == "zero":
            after = v * (1 - fired)
        elif reset == "subtract":
            after = v - fired * thr
        else:
            after = v
        spks.append(s)
        vs.append(v)
    assert torch.equal(spk, torch.stack(spks)) and torch.equal(mem, torch.stack(vs))
    ref = torch.autograd.grad(loss(torch.stack(spks), torch.stack(vs)), [cur, *params])
    for g_ours, g_ref in zip(ours, ref):
        assert g_ref.abs().sum() > 0
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_cuba_without_current_decay_is_leaky():
    """alpha 0 and zero reset: leaky's dynamics, the same values."""
    cur = 0.6 * torch.rand(30, 4, 7, generator=torch.Generator().manual_seed(2))
    leaky = neurons.Leaky((7,), 0.8, reset="zero", threshold=0.5)
    spk, mem = cuba((7,), alpha=0.0, beta=0.8, threshold=0.5)(cur)
    assert spk.sum() > 10
    expected = leaky(cur)
    assert torch.equal(spk, expected[0]) and torch.equal(mem, expected[1])


# ------------------------------------------------------------------ li readout

READOUTS = [
    ("max_membrane", {"type": "ce_max_membrane"}),
    ("mean_membrane", {"type": "ce_membrane"}),
    ("max_membrane", {"type": "mse_membrane", "on_target": 1.0}),
    ("mean_membrane", {"type": "ce_max_membrane"}),
]


@pytest.mark.parametrize(
    "decoding, loss", READOUTS, ids=[f"{d}-{l['type']}" for d, l in READOUTS]
)
def test_li_is_a_classifier_output(decoding, loss):
    """li as the last layer of a classifier read by its membrane: it validates,
    trains a step (its beta too) and never spikes."""
    spec = spec_of(
        [
            {"type": "linear", "out_features": 8},
            {"type": "leaky", "beta": 0.9},
            {"type": "linear", "out_features": 3},
            {"type": "li", "name": "out", "beta": 0.8, "learn_beta": True},
        ],
        decoding={"type": decoding},
        loss=loss,
    )
    graph = snncompile.analyze(spec)
    net = snncompile.build(spec, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = loop.make_optimizer(net.parameters(), spec)
    loss_of, _ = loop.make_loss(graph)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    spk, mem = net(x)
    assert not spk.any() and mem.abs().sum() > 0
    value = loss_of(spk, mem, torch.tensor([0, 1, 2, 1]), None)
    optimizer.zero_grad()
    value.backward()
    optimizer.step()
    assert torch.isfinite(value)
    assert net.out.beta.grad.abs() > 0
    after = net.state_dict()
    assert not torch.equal(before["out.beta"], after["out.beta"])


def test_li_output_script_and_onnx(tmp_path, capsys):
    """The generated script equals build() and every ONNX export verifies, with
    li as the output read by its mean membrane (tests/test_export.py's per-type
    test wants output spikes, which li never has)."""
    spec_path = tmp_path / "li_out.json"
    data = {
        "snncompile": 1,
        "name": "li_out",
        "input": {"shape": [6]},
        "steps": 5,
        "layers": [
            {"type": "linear", "out_features": 8},
            {"type": "leaky", "beta": 0.9},
            {"type": "linear", "out_features": 3},
            {"type": "li", "beta": 0.8, "per_neuron": True},
        ],
        "decoding": {"type": "mean_membrane"},
        "loss": {"type": "ce_membrane"},
        "train": {"dataset": "synthetic"},
    }
    spec_path.write_text(json.dumps(data))
    spec = snncompile.load(spec_path)
    net = snncompile.build(spec, seed=0).eval()
    script = tmp_path / "li_out_script.py"
    script.write_text(render_script(snncompile.analyze(spec)))
    module_spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[script.stem] = module
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(script.stem)
    generated = module.Net().eval()
    generated.load_state_dict(net.state_dict())
    x = torch.rand(3, 6)
    with torch.no_grad():
        assert all(torch.equal(g, b) for g, b in zip(generated(x), net(x)))
    for mode in ("sequence", "step"):  # the command line
        target = tmp_path / f"li_{mode}.onnx"
        code = main(
            ["export", str(spec_path), "-o", str(target), "--mode", mode, "--verify"]
        )
        assert code == 0, capsys.readouterr().err
    for variant, mode, looped in (  # on the net: unrolled, looped, one step
        ("sequence", "sequence", False),
        ("loop", "sequence", True),
        ("step", "step", None),
    ):
        path = tmp_path / f"li_net_{variant}.onnx"
        report = export_onnx(net, path, mode=mode, verify=True, loop=looped)
        result = report["verification"]
        assert result["passed"], result["failures"]
        assert result["output_spike_rate"] == 0  # li never fires


# ------------------------------------------------------------------ iand


def iand_spec(**top):
    return spec_of(
        [
            {"type": "leaky", "name": "a", "beta": 0.5, "threshold": 0.4},
            {"type": "leaky", "name": "b", "beta": 0.7, "inputs": ["input"]},
            {"type": "iand", "inputs": ["a", "b"]},
            {"type": "linear", "name": "fc", "out_features": 3},
            {"type": "leaky", "beta": 0.9},
        ],
        **top,
    )


@pytest.mark.parametrize("schedule", ["layered", "step"])
def test_iand_is_b_where_a_is_silent(schedule):
    """iand [a, b] = (1 - a) * b: what the next layer reads, in both schedules."""
    net = snncompile.build(iand_spec(), schedule, seed=0)
    seen = []
    net.fc.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = 2 * torch.rand(5, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, _, record = net(x, all_spikes=True)
    a, b = record["a"], record["b"]
    expected = (1 - a) * b
    assert (a * b).any() and expected.any(), "a weak test: no case of each"
    got = seen[0] if len(seen) == 1 else torch.stack(seen)
    assert torch.equal(got.reshape(expected.shape), expected)


def test_iand_takes_two_inputs_of_one_shape():
    bad = [
        {"type": "leaky", "name": "a", "beta": 0.5},
        {"type": "leaky", "name": "b", "beta": 0.5, "inputs": ["input"]},
        {"type": "leaky", "name": "c", "beta": 0.5, "inputs": ["input"]},
        {"type": "iand", "inputs": ["a", "b", "c"]},
        {"type": "linear", "out_features": 3},
        {"type": "leaky", "beta": 0.9},
    ]
    with pytest.raises(snncompile.SpecError, match="takes 2 inputs, got 3"):
        snncompile.analyze(spec_of(bad))
    bad[2] = {"type": "linear", "name": "c", "out_features": 4, "inputs": ["input"]}
    bad[3] = {"type": "iand", "inputs": ["a", "c"]}
    with pytest.raises(snncompile.SpecError, match="needs two inputs of one shape"):
        snncompile.analyze(spec_of(bad))
