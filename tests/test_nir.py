"""NIR export and import: round trips spec -> NIR file -> spec with identical
spikes and membranes, graphs written with the nir package in other tools' styles
matching the numpy reference simulation (snncompile/export/nir_sim.py) spike
for spike, and broken files refused in one line.

Max pooling has no NIR node: of spikes it is exact as SumPool2d + Threshold;
of anything else (Tutorial 6) it needs --approximate, which snncompile reads
back exactly from the file's metadata."""

from __future__ import annotations

import itertools
import json
import pathlib

import h5py
import nir
import numpy as np
import pytest
import torch

import snncompile
from snncompile.cli import main
from snncompile.export.nir import export_nir, import_nir, read_nir
from snncompile.export.nir_sim import kind, simulate
from snncompile.lower import checkpoint as ckpt
from snncompile.spec.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 60  # foreign graphs run this many steps


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec_text(body: str, shape="[8]", encoding="direct", steps=25, name="t") -> str:
    return (
        f"snncompile: 1\nname: {name}\n"
        f"input: {{shape: {shape}, encoding: {{type: {encoding}}}}}\n"
        f"steps: {steps}\n{body}\ntrain: {{dataset: synthetic}}\n"
    )


def run(net, x):
    """(spk, mem, spikes of every neuron layer) of a net, inference."""
    net.eval()
    with torch.no_grad():
        spk, mem, record = net(x, all_spikes=True)
    return spk, mem, record


def round_trip(tmp_path, text: str, approximate=False, seed=1):
    """Export a spec with a checkpoint of random weights, import the file;
    both nets (float32, as users run them) give the same spikes and membranes."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(text)
    spec = snncompile.load(spec_file)
    net = snncompile.build(spec, seed=seed)
    graph = net.graph
    with torch.no_grad():  # random weights that make every layer fire
        for name, tensor in net.state_dict().items():
            if name.endswith("weight"):
                tensor.mul_(2.5)
    run_file = tmp_path / "trained.pt"
    ckpt.save(
        run_file, {"spec": graph.spec_json, "model": net.state_dict(), "epoch": 1}
    )
    out = tmp_path / "model.nir"
    report = export_nir(
        spec_file, out, checkpoint=run_file, verify=True, approximate=approximate
    )
    assert report["exact"] is (not approximate)
    if not approximate:
        assert report["verification"]["passed"], report["verification"]
    nir.read(out)  # other tools read it with nir's own type checks
    back = import_nir(out, tmp_path / "back.yaml", tmp_path / "back.pt", verify=True)
    assert back["restored"]
    assert snncompile.load(tmp_path / "back.yaml") == spec
    again = snncompile.build(snncompile.load(tmp_path / "back.yaml"))
    ckpt.load_into(again, tmp_path / "back.pt")
    if graph.encoding["type"] == "direct":
        x = torch.rand(
            (5, *graph.input_shape), generator=torch.Generator().manual_seed(3)
        )
    else:
        x = (torch.rand((graph.steps, 5, *graph.input_shape)) < 0.4).float()
    a, b = run(net, x), run(again, x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name
    spikes = sum(int(s.sum()) for s in a[2].values())
    assert spikes > 0
    return report, back


FC = """
defaults: {beta: 0.9, threshold: 0.5, reset: zero}
layers:
  - {type: linear, name: fc1, out_features: 12}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 4, bias: false}
  - {type: if, name: lif2, threshold: 0.8, reset: zero, per_neuron: true}
decoding: {type: rate}
loss: {type: ce_rate}
"""


def test_round_trip_fc(tmp_path):
    round_trip(tmp_path, spec_text(FC))


def test_round_trip_mnist_fc_zero_reset(tmp_path):
    text = (ROOT / "specs" / "mnist_fc.yaml").read_text()
    assert "reset: subtract" in text
    text = text.replace("reset: subtract", "reset: zero")
    report, _ = round_trip(tmp_path, text)
    assert report["nodes"] == 7  # input, flatten, 2 Affine, 2 LIF, output


CSNN = """
defaults: {beta: 0.5, threshold: 0.3, reset: zero, surrogate: {type: fast_sigmoid}}
layers:
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}
  - {type: avgpool2d, name: pool1, kernel_size: 2}
  - {type: leaky, name: lif1}
  - {type: conv2d, name: conv2, out_channels: 6, kernel_size: 3, bias: false}
  - {type: avgpool2d, name: pool2, kernel_size: 2}
  - {type: leaky, name: lif2}
  - {type: flatten}
  - {type: linear, name: fc1, out_features: 10}
  - {type: leaky, name: lif3}
decoding: {type: rate}
loss: {type: ce_rate}
"""


def test_round_trip_conv_avgpool(tmp_path):
    """mnist_csnn's layer types with avgpool2d in place of maxpool2d."""
    report, _ = round_trip(tmp_path, spec_text(CSNN, shape="[1, 12, 12]"))
    assert report["nodes"] == 11


def test_round_trip_mnist_csnn(tmp_path):
    """Tutorial 6 as written: max pooling of conv currents and subtract reset,
    which NIR cannot express, exported with --approximate (AvgPool2d, zero
    reset) and read back exactly from the file's metadata."""
    text = (ROOT / "specs" / "mnist_csnn.yaml").read_text()
    report, back = round_trip(tmp_path, text, approximate=True)
    notes = " | ".join(report["approximations"])
    for layer in ("pool1 (maxpool2d)", "pool2 (maxpool2d)", "lif1 (leaky)"):
        assert f"layer {layer}" in notes
    graph = read_nir(tmp_path / "model.nir")
    assert kind(graph.nodes["pool1"]) == "AvgPool2d"
    assert not back["exact"]
    assert any("pool1" in a and "maxpool2d" in a for a in back["approximations"])


SPIKE_POOL = """
defaults: {beta: 0.8, threshold: 0.4, reset: zero}
layers:
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3, padding: 1}
  - {type: leaky, name: lif1}
  - {type: maxpool2d, name: pool1, kernel_size: 2}
  - {type: maxpool2d, name: pool1b, kernel_size: 2, stride: 1}
  - {type: conv2d, name: conv2, out_channels: 6, kernel_size: 3}
  - {type: if, name: lif2}
  - {type: dropout, p: 0.2}
  - {type: maxpool2d, name: pool2, kernel_size: 3, stride: 2, padding: 1}
  - {type: flatten}
  - {type: linear, name: fc1, out_features: 10}
  - {type: leaky, name: lif3}
decoding: {type: rate}
loss: {type: ce_rate}
"""


def test_round_trip_maxpool_of_spikes(tmp_path):
    """Max pooling of spikes is exact: SumPool2d then Threshold(0.5)."""
    report, back = round_trip(tmp_path, spec_text(SPIKE_POOL, shape="[2, 12, 12]"))
    graph = read_nir(tmp_path / "model.nir")
    assert kind(graph.nodes["pool1"]) == "SumPool2d"
    assert kind(graph.nodes["pool1_max"]) == "Threshold"
    assert ("pool1_max", "pool1b") in graph.edges  # the max of a max: exact too
    assert ("pool1b_max", "conv2") in graph.edges
    assert report["verification"]["reference_spikes"] > 0
    assert back["exact"] and back["verification"]["passed"]


def test_foreign_sumpool_threshold(tmp_path, capsys):
    """Another tool's SumPool2d or AvgPool2d of spikes + Threshold imports as
    maxpool2d when the threshold lies below one spike's value; else refused."""
    gen = np.random.default_rng(4)
    shape = (3, 6, 6)

    def graph(pool, threshold):
        nodes = {
            "input": nir.Input(np.array([1, 6, 6])),
            "conv": nir.Conv2d(
                input_shape=(6, 6),
                weight=gen.normal(0, 0.8, (3, 1, 3, 3)),
                stride=1,
                padding=1,
                dilation=1,
                groups=1,
                bias=gen.normal(0, 0.1, 3),
            ),
            "lif1": nir.LIF(
                tau=np.full(shape, 4.0),
                r=np.full(shape, 4.0),
                v_leak=np.zeros(shape),
                v_threshold=np.full(shape, 0.6),
                v_reset=np.zeros(shape),
            ),
            "pool": pool,
            "max": nir.Threshold(np.full((3, 3, 3), threshold)),
            "flat": nir.Flatten(input_type={"input": np.array([3, 3, 3])}, start_dim=0),
            "fc": affine(gen, 5, 27, 1.0),
            "lif2": lif(5, 0.9, 0.5),
            "output": nir.Output(np.array([5])),
        }
        order = list(nodes)
        return nir.NIRGraph(nodes, list(itertools.pairwise(order)), type_check=False)

    two, zero = np.array([2, 2]), np.array([0, 0])
    names = {"lif1": "lif1", "lif2": "lif2"}
    for pool, threshold in [
        (nir.SumPool2d(two, two, zero), 0.5),
        (nir.AvgPool2d(two, two, zero), 0.2),  # one spike in the window: 0.25
    ]:
        report, _, mem, record, ref = check_foreign(tmp_path, graph(pool, threshold))
        assert report["exact"]
        layers = snncompile.load(tmp_path / "f.yaml").model_dump()["layers"]
        assert [layer["type"] for layer in layers].count("maxpool2d") == 1
        assert same_spikes(record, ref, names) > 50
        np.testing.assert_allclose(mem, ref.v["lif2"], rtol=1e-6, atol=1e-6)
    path = tmp_path / "high.nir"
    nir.write(path, graph(nir.AvgPool2d(two, two, zero), 0.3))
    line = _cli_error(capsys, ["import", str(path), "-o", str(tmp_path / "h.yaml")])
    assert "node 'max' (Threshold): a stateless threshold" in line
    assert "max of spikes" in line


def test_round_trip_recurrent(tmp_path):
    rleaky = """
defaults: {beta: 0.8, threshold: 0.5}
layers:
  - {type: linear, name: fc1, out_features: 12}
  - {type: rleaky, name: rlif1, reset: zero, recurrence: {type: linear}}
  - {type: linear, name: fc2, out_features: 4}
  - {type: ralif, name: out, rho: 0.5, adapt: 0.0, reset: zero, per_neuron: true}
decoding: {type: rate}
loss: {type: ce_rate}
"""
    text = spec_text(rleaky, shape="[6]", encoding="rate", steps=30)
    with pytest.raises(UserError, match=r"layer rlif1 \(rleaky\).*--approximate"):
        (tmp_path / "r.yaml").write_text(text)
        export_nir(tmp_path / "r.yaml", tmp_path / "r.nir")
    report, back = round_trip(tmp_path, text, approximate=True)
    assert len(report["approximations"]) == 1
    assert not back["exact"]  # the file's NIR semantics are the approximation
    # ralif with adapt 0 and zero reset is NIR's recurrent LIF exactly
    exact = rleaky.replace(
        "{type: rleaky, name: rlif1, reset: zero, recurrence: {type: linear}}",
        "{type: ralif, name: rlif1, rho: 0.0, adapt: 0.0, reset: zero}",
    )
    report, _ = round_trip(tmp_path, spec_text(exact, shape="[6]", steps=30))
    assert report["edges"] == 9  # two cycles: LIF -> Affine -> LIF


def test_round_trip_residual(tmp_path):
    residual = """
defaults: {beta: 0.9, threshold: 0.4, reset: zero}
layers:
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 16}
  - {type: leaky, name: lif2}
  - {type: add, name: res, inputs: [lif1, lif2]}
  - {type: dropout, p: 0.2}
  - {type: linear, name: fc3, out_features: 5}
  - {type: li, name: readout, beta: 0.7}
decoding: {type: mean_membrane}
loss: {type: ce_membrane}
"""
    round_trip(tmp_path, spec_text(residual))
    written = nir.read(tmp_path / "model.nir")
    assert {("lif1", "fc3"), ("lif2", "fc3")} <= set(written.edges)  # the add


# --------------------------------------------------------------------------- foreign
def lif(n, beta, thr, dt=1.0, r=None, leak=0.0, dtype=np.float64, scalar=False):
    shape = (1,) if scalar else (n,)  # nir.write cannot compress 0-d arrays
    tau = np.full(shape, dt / (1 - beta), dtype=dtype)
    r = tau / dt if r is None else np.full(shape, r, dtype=dtype)
    return nir.LIF(
        tau=tau,
        r=np.asarray(r, dtype=dtype),
        v_leak=np.full(shape, leak, dtype=dtype),
        v_threshold=np.full(shape, thr, dtype=dtype),
    )


def affine(gen, n_out, n_in, scale, bias=True):
    w = gen.normal(0, scale, (n_out, n_in)).astype(np.float32)
    if not bias:
        return nir.Linear(weight=w)
    return nir.Affine(weight=w, bias=gen.normal(0, 0.1, n_out).astype(np.float32))


def graph(nodes, edges, shape):
    """Input -> nodes -> Output: the output reads the last edge's end, sized as
    the weight feeding that end."""
    nodes = {"input": nir.Input(np.array(shape)), **nodes}
    feed, out = edges[-1]
    nodes["output"] = nir.Output(np.array([nodes[feed].weight.shape[0]]))
    return nir.NIRGraph(nodes, [*edges, (out, "output")], type_check=False)


def check_foreign(tmp_path, g, dt=1.0, approximate=False, seed=0):
    """Write `g`, import the file, run the spec + checkpoint through build()
    and the checkpoint loader; compare with the reference simulation."""
    path = tmp_path / "foreign.nir"
    nir.write(path, g)
    report = import_nir(
        path, tmp_path / "f.yaml", tmp_path / "f.pt", dt=dt, approximate=approximate
    )
    spec = snncompile.load(tmp_path / "f.yaml")
    net = snncompile.build(spec)
    ckpt.load_into(net, tmp_path / "f.pt")
    net = net.double()
    shape = tuple(net.graph.input_shape)
    x = np.random.default_rng(seed).random((STEPS, 4, *shape))
    spk, mem, record = run(net, torch.from_numpy(x))
    ref = simulate(nir.read(path, type_check=False), x, dt)
    return report, spk.numpy(), mem.numpy(), record, ref


def same_spikes(record, ref, names: dict[str, str]) -> int:
    total = 0
    for node, layer in names.items():
        np.testing.assert_array_equal(record[layer].numpy(), ref.out[node], node)
        total += int(ref.out[node].sum())
    return total


def test_snntorch_style_affine_lif(tmp_path):
    """r = tau/dt, dt 1e-4 as snnTorch writes, scalar float32 parameters."""
    gen = np.random.default_rng(1)
    dt = 1e-4
    g = graph(
        {
            "fc1": affine(gen, 16, 10, 0.6),
            "lif1": lif(16, 0.9, 0.7, dt, dtype=np.float32, scalar=True),
            "fc2": affine(gen, 4, 16, 0.6),
            "lif2": lif(4, 0.8, 0.5, dt, dtype=np.float32, scalar=True),
        },
        [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2")],
        [10],
    )
    report, spk, mem, record, ref = check_foreign(tmp_path, g, dt=dt)
    assert report["exact"]
    assert same_spikes(record, ref, {"lif1": "lif1", "lif2": "lif2"}) > 20
    np.testing.assert_array_equal(spk, ref.output)
    np.testing.assert_allclose(mem, ref.v["lif2"], rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match=r"node 'lif1' \(LIF\): tau below dt 1"):
        import_nir(tmp_path / "foreign.nir", tmp_path / "x.yaml")


def cuba(n, tau_syn, tau_mem, thr, r=None, w_in=None, dt=1.0, dtype=np.float64):
    """A CubaLIF node; r and w_in default to snnTorch's tau_mem/dt, tau_syn/dt."""

    def full(value):
        return np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()

    tau_syn, tau_mem = full(tau_syn), full(tau_mem)
    return nir.CubaLIF(
        tau_syn=tau_syn,
        tau_mem=tau_mem,
        r=tau_mem / dtype(dt) if r is None else full(r),
        v_leak=full(0.0),
        v_threshold=full(thr),
        v_reset=full(0.0),
        w_in=tau_syn / dtype(dt) if w_in is None else full(w_in),
    )


def test_linear_cubalif(tmp_path):
    """Linear + CubaLIF as Norse writes it (r = 1, w_in = 1, per-neuron time
    constants, dt 1e-3), two layers: imported as cuba, exact, the same spikes
    as the reference over 60 steps and the same membranes."""
    gen = np.random.default_rng(2)
    dt = 1e-3
    g = graph(
        {
            "lin1": affine(gen, 12, 10, 12.0, bias=False),
            "cuba1": cuba(12, dt * gen.uniform(1.5, 6, 12), dt * 8, 0.3, 1, 1, dt),
            "lin2": affine(gen, 5, 12, 12.0, bias=False),
            "cuba2": cuba(5, dt * 3, dt * gen.uniform(2, 10, 5), 0.2, 1, 1, dt),
        },
        [("input", "lin1"), ("lin1", "cuba1"), ("cuba1", "lin2"), ("lin2", "cuba2")],
        [10],
    )
    report, spk, mem, record, ref = check_foreign(tmp_path, g, dt=dt)
    assert report["exact"] and not report["approximations"]
    layers = snncompile.load(tmp_path / "f.yaml").layers
    assert [layer.type for layer in layers] == ["linear", "cuba", "linear", "cuba"]
    assert layers[1].reset == "zero" and layers[1].per_neuron
    assert same_spikes(record, ref, {"cuba1": "cuba1", "cuba2": "cuba2"}) > 50
    # the reset in the step that fires keeps the next step's current: spikes in
    # consecutive steps, which synaptic's late zero reset never gives
    hidden = ref.out["cuba1"]
    assert (hidden[1:] * hidden[:-1]).sum() > 10
    np.testing.assert_array_equal(spk, ref.output)
    # (folded gains round the float32 weights: 1e-7 relative)
    np.testing.assert_allclose(mem, ref.v["cuba2"], rtol=1e-6, atol=1e-6)
    verified = import_nir(
        tmp_path / "foreign.nir", tmp_path / "v.yaml", dt=dt, verify=True
    )
    assert verified["verification"]["passed"], verified["verification"]


def test_snntorch_style_affine_cubalif(tmp_path):
    """Affine + CubaLIF as snnTorch writes its Synaptic (dt 1e-4, r = tau_mem/dt,
    w_in = tau_syn/dt, float32 one-element parameters); tau_syn = dt is a LIF."""
    gen = np.random.default_rng(12)
    dt = 1e-4
    n = 6

    def net(alpha):
        tau_syn = np.float32(dt / (1 - alpha))
        tau_mem = np.float32(dt / (1 - 0.75))
        return graph(
            {
                "lin": affine(gen, n, 10, 0.5),
                "cuba": cuba(1, tau_syn, tau_mem, 0.6, dt=dt, dtype=np.float32),
            },
            [("input", "lin"), ("lin", "cuba")],
            [10],
        )

    report, _, mem, record, ref = check_foreign(tmp_path, net(0.8), dt=dt)
    assert report["exact"]
    assert snncompile.load(tmp_path / "f.yaml").layers[1].type == "cuba"
    assert same_spikes(record, ref, {"cuba": "cuba"}) > 20
    np.testing.assert_allclose(mem, ref.v["cuba"], rtol=1e-6, atol=1e-6)
    # tau_syn = dt: the current is this step's input, a LIF (leaky), exact
    report, _, mem, record, ref = check_foreign(tmp_path, net(0.0), dt=dt)
    assert report["exact"]
    assert snncompile.load(tmp_path / "f.yaml").layers[1].type == "leaky"
    assert same_spikes(record, ref, {"cuba": "cuba"}) > 5
    np.testing.assert_allclose(mem, ref.v["cuba"], rtol=1e-6, atol=1e-6)


def test_round_trip_cuba(tmp_path):
    """cuba (zero reset) is CubaLIF exactly; synaptic stays the approximation."""
    text = """
defaults: {alpha: 0.7, beta: 0.85, threshold: 0.5, reset: zero}
layers:
  - {type: linear, name: fc1, out_features: 12}
  - {type: cuba, name: cuba1}
  - {type: linear, name: fc2, out_features: 4}
  - {type: cuba, name: out, alpha: 0.0, per_neuron: true}
decoding: {type: rate}
loss: {type: ce_rate}
"""
    report, back = round_trip(tmp_path, spec_text(text, steps=50))
    assert back["exact"] and report["verification"]["reference_spikes"] > 0
    written = nir.read(tmp_path / "model.nir")
    assert kind(written.nodes["cuba1"]) == kind(written.nodes["out"]) == "CubaLIF"
    synaptic = text.replace("type: cuba, name: cuba1", "type: synaptic, name: cuba1")
    (tmp_path / "syn.yaml").write_text(spec_text(synaptic))
    with pytest.raises(UserError, match=r"layer cuba1 \(synaptic\).*one step late"):
        export_nir(tmp_path / "syn.yaml", tmp_path / "syn.nir")
    subtract = text.replace("reset: zero}", "reset: subtract}")
    (tmp_path / "sub.yaml").write_text(spec_text(subtract))
    with pytest.raises(UserError, match=r"layer cuba1 \(cuba\): reset subtract"):
        export_nir(tmp_path / "sub.yaml", tmp_path / "sub.nir")


def test_conv_sumpool_flatten_lif(tmp_path):
    """Norse-style r = 1 (input gain dt/tau) and a SumPool2d gain: both folded
    into the convolution through the average pooling."""
    gen = np.random.default_rng(3)
    conv = nir.Conv2d(
        input_shape=(8, 8),
        weight=gen.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32),
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=gen.normal(0, 0.1, 4).astype(np.float32),
    )
    shape = (4, 4, 4)
    tau = np.broadcast_to(np.array([2.0, 3.0, 4.0, 5.0]).reshape(4, 1, 1), shape)
    lif1 = nir.LIF(
        tau=tau.copy(),
        r=np.ones(shape),
        v_leak=np.zeros(shape),
        v_threshold=np.full(shape, 0.8),
    )
    g = nir.NIRGraph(
        {
            "input": nir.Input(np.array([2, 8, 8])),
            "conv": conv,
            "pool": nir.SumPool2d(
                kernel_size=np.array([2, 2]),
                stride=np.array([2, 2]),
                padding=np.array([0, 0]),
            ),
            "lif1": lif1,
            "flat": nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0),
            "fc": affine(gen, 5, 64, 0.4),
            "lif2": lif(5, 0.75, 0.6),
            "output": nir.Output(np.array([5])),
        },
        [
            ("input", "conv"),
            ("conv", "pool"),
            ("pool", "lif1"),
            ("lif1", "flat"),
            ("flat", "fc"),
            ("fc", "lif2"),
            ("lif2", "output"),
        ],
        type_check=False,
    )
    report, _, mem, record, ref = check_foreign(tmp_path, g)
    assert report["exact"]
    assert same_spikes(record, ref, {"lif1": "lif1", "lif2": "lif2"}) > 50
    np.testing.assert_allclose(mem, ref.v["lif2"], rtol=1e-6, atol=1e-6)


def test_recurrent_lif_cycle(tmp_path):
    """A LIF fed back through an Affine (a cycle), flat and as snnTorch's nested
    RLeaky subgraph; the output LIF has v_leak != 0 and r != tau/dt."""
    gen = np.random.default_rng(4)
    n = 8
    for nested in (False, True):
        rec = {"lif": lif(n, 0.85, 0.6), "rec": affine(gen, n, n, 0.4)}
        if nested:
            inner = nir.NIRGraph(
                {"input": nir.Input(np.array([n])), **rec, "output": nir.Output([n])},
                [("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")],
                type_check=False,
            )
            body, into, out = {"rlif": inner}, "rlif", "rlif"
        else:
            body, into, out = rec, "lif", "lif"
        g = graph(
            {
                "fc": affine(gen, n, 6, 0.8),
                **body,
                "fc_out": affine(gen, 3, n, 0.6, bias=False),
                "lif_out": lif(3, 0.7, 0.5, r=1.2, leak=0.3),
            },
            [
                ("input", "fc"),
                ("fc", into),
                *([] if nested else [("lif", "rec"), ("rec", "lif")]),
                (out, "fc_out"),
                ("fc_out", "lif_out"),
            ],
            [6],
        )
        report, _, mem, record, ref = check_foreign(tmp_path, g, seed=int(nested))
        assert report["exact"]
        hidden = "rlif.lif" if nested else "lif"
        layers = {hidden: "rlif_lif" if nested else "lif", "lif_out": "lif_out"}
        assert same_spikes(record, ref, layers) > 50
        assert snncompile.load(tmp_path / "f.yaml").layers[1].type == "ralif"
        np.testing.assert_allclose(mem, ref.v["lif_out"], rtol=1e-6, atol=1e-6)


def test_if_and_li(tmp_path):
    gen = np.random.default_rng(5)
    g = graph(
        {
            "fc": affine(gen, 7, 5, 0.8),
            "if1": nir.IF(r=np.full(7, 1.0), v_threshold=np.full(7, 1.0)),
            "fc2": affine(gen, 3, 7, 0.8),
            "li": nir.LI(
                tau=np.full(3, 4.0), r=np.full(3, 2.0), v_leak=np.full(3, 0.1)
            ),
        },
        [("input", "fc"), ("fc", "if1"), ("if1", "fc2"), ("fc2", "li")],
        [5],
    )
    report, spk, mem, record, ref = check_foreign(tmp_path, g)
    assert report["exact"]
    assert same_spikes(record, ref, {"if1": "if1"}) > 20
    np.testing.assert_allclose(mem, ref.output, rtol=1e-6, atol=1e-7)  # LI: v
    assert not spk.any()


def test_import_verify_cli(tmp_path, capsys):
    gen = np.random.default_rng(6)
    g = graph(
        {"fc": affine(gen, 4, 3, 1.0), "lif": lif(4, 0.9, 0.5, r=3.0)},
        [("input", "fc"), ("fc", "lif")],
        [3],
    )
    nir.write(tmp_path / "g.nir", g)
    code = main(
        ["import", str(tmp_path / "g.nir"), "-o", str(tmp_path / "g.yaml"), "--verify"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verify" in out and "passed" in out and (tmp_path / "g.pt").is_file()
    # the other commands take the spec and checkpoint
    spec, weights = str(tmp_path / "g.yaml"), str(tmp_path / "g.pt")
    assert main(["codegen", spec, "-o", str(tmp_path / "gen")]) == 0
    onnx = str(tmp_path / "g.onnx")
    assert main(["export", spec, "--checkpoint", weights, "-o", onnx, "--verify"]) == 0
    again = str(tmp_path / "again.nir")
    assert main(["export", spec, "--checkpoint", weights, "-o", again, "--verify"]) == 0
    assert "passed" in capsys.readouterr().out


def test_dt(tmp_path):
    """tau = dt / (1 - beta), r = tau / dt; the file's dt comes back with it."""
    (tmp_path / "s.yaml").write_text(spec_text(FC))
    report = export_nir(tmp_path / "s.yaml", tmp_path / "s.nir", dt=1e-3, verify=True)
    assert report["verification"]["passed"]
    lif1 = nir.read(tmp_path / "s.nir").nodes["lif1"]
    beta = float(np.float32(0.9))
    np.testing.assert_allclose(lif1.tau, 1e-3 / (1 - beta), rtol=1e-12)
    np.testing.assert_allclose(lif1.r, 1 / (1 - beta), rtol=1e-12)
    back = import_nir(tmp_path / "s.nir", tmp_path / "b.yaml", verify=True)
    assert back["restored"] and back["dt"] == 1e-3
    # read with another dt, it is another network (beta = 1 - dt / tau)
    other = import_nir(tmp_path / "s.nir", tmp_path / "o.yaml", dt=5e-4, verify=True)
    assert not other["restored"] and other["verification"]["passed"]
    layers = snncompile.load(tmp_path / "o.yaml").layers
    assert abs(layers[1].beta - 0.95) < 1e-6


# --------------------------------------------------------------------------- broken
def _cli_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def good(tmp_path):
    gen = np.random.default_rng(7)
    g = graph(
        {"fc": affine(gen, 4, 3, 1.0), "lif": lif(4, 0.9, 0.5)},
        [("input", "fc"), ("fc", "lif")],
        [3],
    )
    path = tmp_path / "good.nir"
    nir.write(path, g)
    return path


def test_broken_files(tmp_path, good, capsys):
    out = ["-o", str(tmp_path / "x.yaml")]

    def imported(path) -> str:
        return _cli_error(capsys, ["import", str(path), *out])

    unknown = tmp_path / "unknown.nir"
    unknown.write_bytes(good.read_bytes())
    with h5py.File(unknown, "a") as f:
        del f["node/nodes/lif/type"]
        f["node/nodes/lif"].create_dataset(
            "type", data="Spiky", dtype=h5py.string_dtype()
        )
    assert "node 'lif' has the unknown type 'Spiky'" in imported(unknown)

    missing = tmp_path / "missing.nir"
    missing.write_bytes(good.read_bytes())
    with h5py.File(missing, "a") as f:
        del f["node/nodes/lif/tau"]
    assert "node 'lif' (LIF) lacks its parameter 'tau'" in imported(missing)

    gen = np.random.default_rng(8)
    mismatch = graph(
        {"fc": affine(gen, 4, 5, 1.0), "lif": lif(4, 0.9, 0.5)},
        [("input", "fc"), ("fc", "lif")],
        [3],
    )
    nir.write(tmp_path / "mismatch.nir", mismatch)
    line = imported(tmp_path / "mismatch.nir")
    assert "shape mismatch on the edge into node 'fc' (Affine)" in line
    assert "input gives [3], it takes [5]" in line

    text = tmp_path / "text.nir"
    text.write_text("not a graph\n")
    assert "is not a NIR file: not HDF5" in imported(text)
    assert "no NIR file at" in imported(tmp_path / "absent.nir")

    delay = graph(
        {
            "fc": affine(gen, 4, 3, 1.0),
            "delay": nir.Delay(np.ones(4)),
            "lif": lif(4, 0.9, 0.5),
        },
        [("input", "fc"), ("fc", "delay"), ("delay", "lif"), ("fc", "lif")],
        [3],
    )
    nir.write(tmp_path / "delay.nir", delay)
    assert "node 'delay' (Delay)" in imported(tmp_path / "delay.nir")
    assert not (tmp_path / "x.yaml").exists()


def test_export_refusals(tmp_path, capsys):
    subtract = FC.replace("reset: zero}", "reset: subtract}")
    (tmp_path / "s.yaml").write_text(spec_text(subtract))
    line = _cli_error(capsys, ["export", str(tmp_path / "s.yaml"), "-o", "s.nir"])
    assert "layer lif1 (leaky): reset subtract" in line and "--approximate" in line
    maxpool = CSNN.replace("avgpool2d, name: pool1", "maxpool2d, name: pool1")
    (tmp_path / "m.yaml").write_text(spec_text(maxpool, shape="[1, 12, 12]"))
    out = str(tmp_path / "m.bin")
    line = _cli_error(
        capsys, ["export", str(tmp_path / "m.yaml"), "-o", out, "--format", "nir"]
    )
    assert "layer pool1 (maxpool2d): NIR has no max pooling" in line
    assert "--approximate" in line
    line = _cli_error(
        capsys,
        ["export", str(tmp_path / "m.yaml"), "-o", out + ".nir", "--mode", "step"],
    )
    assert "--mode applies to ONNX export only" in line
    # with --approximate: written, the approximation listed, read back exactly
    code = main(
        [
            "export",
            str(tmp_path / "s.yaml"),
            "-o",
            str(tmp_path / "s.nir"),
            "--approximate",
        ]
    )
    assert code == 0 and "APPROXIMATE" in capsys.readouterr().out
    back = import_nir(tmp_path / "s.nir", tmp_path / "sb.yaml")
    assert back["restored"] and not back["exact"]
    assert snncompile.load(tmp_path / "sb.yaml") == snncompile.load(tmp_path / "s.yaml")
    assert read_nir(tmp_path / "s.nir").nodes["lif1"].v_reset.tolist() == [0.0] * 12


# --------------------------------------------------------------------------- eval --nir
def _weights(tmp_path, text: str, name: str):
    """(spec file, checkpoint) of random weights that make every layer fire."""
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(text)
    net = snncompile.build(snncompile.load(spec_file), seed=1)
    with torch.no_grad():
        for key, tensor in net.state_dict().items():
            if key.endswith("weight"):
                tensor.mul_(2.5)
    weights = tmp_path / f"{name}.pt"
    payload = {"spec": net.graph.spec_json, "model": net.state_dict(), "epoch": 1}
    ckpt.save(weights, payload)
    return str(spec_file), str(weights)


def _eval_json(capsys, argv) -> dict:
    assert main([*argv, "--json", "--limit-test", "64"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("encoding", ["direct", "rate"])
def test_eval_nir_matches_checkpoint(tmp_path, capsys, encoding):
    """An exact export (zero reset) scores in NIR's semantics what the
    checkpoint scores in snncompile: the same predictions, the same loss up to
    float32 rounding; the spec's own encoder feeds a rate-coded file."""
    spec, weights = _weights(tmp_path, spec_text(FC, encoding=encoding), "fc")
    out = str(tmp_path / "fc.nir")
    assert main(["export", spec, "--checkpoint", weights, "-o", out]) == 0
    capsys.readouterr()
    ours = _eval_json(capsys, ["eval", spec, "--checkpoint", weights])
    theirs = _eval_json(capsys, ["eval", spec, "--nir", out])
    assert theirs["test_accuracy"] == ours["test_accuracy"]
    assert theirs["test_loss"] == pytest.approx(ours["test_loss"], rel=1e-5)
    assert theirs["test_samples"] == ours["test_samples"] == 64
    assert theirs["exact"] and theirs["approximations"] == []
    assert theirs["dt"] == 1.0


def test_eval_nir_approximate_and_refusals(tmp_path, capsys):
    """An --approximate file evaluates (its approximations listed); a file of
    another network, a missing file and --dt without --nir are one line each."""
    text = spec_text(FC.replace("reset: zero}", "reset: subtract}", 1))
    spec, weights = _weights(tmp_path, text, "sub")
    out = str(tmp_path / "sub.nir")
    argv = ["export", spec, "--checkpoint", weights, "-o", out, "--approximate"]
    assert main(argv) == 0
    capsys.readouterr()
    result = _eval_json(capsys, ["eval", spec, "--nir", out])
    assert 0 <= result["test_accuracy"] <= 1 and result["test_samples"] == 64
    assert not result["exact"]
    assert "lif1 (leaky): reset subtract" in result["approximations"][0]
    assert main(["eval", spec, "--nir", out, "--limit-test", "8"]) == 0
    printed = capsys.readouterr().out
    assert "approximate export: layer lif1" in printed and "test accuracy" in printed
    other, _ = _weights(tmp_path, spec_text(CSNN, shape="[1, 12, 12]"), "csnn")
    line = _cli_error(capsys, ["eval", other, "--nir", out])
    assert "was exported from a different network" in line and "layers" in line
    missing = str(tmp_path / "missing.nir")
    line = _cli_error(capsys, ["eval", spec, "--nir", missing])
    assert line == f"error: no NIR file at {missing}"
    line = _cli_error(capsys, ["eval", spec, "--checkpoint", weights, "--dt", "1"])
    assert "--dt applies only to --nir" in line
