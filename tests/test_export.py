"""ONNX export: every spec and every neuron/reset/encoding/decoding exports, passes
onnx.checker and agrees with the PyTorch net in onnxruntime (both modes)."""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn

import snncompile
from snncompile.cli import main
from snncompile.export import verify
from snncompile.export.loop import UNROLL_STEPS
from snncompile.export.onnx import (
    VerificationError,
    _Inference,
    export_onnx,
)
from snncompile.export.wrappers import SequenceModel, state_names
from snncompile.spec.errors import UserError
from snncompile.types import of_role

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second torch thread only adds spin-waiting (ten times the
    work when the machine is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lively(net, seed: int = 0):
    """Make a randomly initialized net fire in every layer (in place): each neuron
    layer's threshold becomes the 75% quantile of its membrane on sample input,
    batch-norm statistics become non-trivial. Returns the net."""
    graph = net.graph
    gen = torch.Generator().manual_seed(seed)
    raw = verify._raw(graph, 8, gen, 1.0)
    x = verify.encode_inputs(graph, raw, torch.Generator().manual_seed(seed))
    with _Inference(net), torch.no_grad():
        for node in graph.nodes:
            if node.type.startswith("batchnorm"):
                layer = getattr(net, node.name)
                layer.running_mean.uniform_(-0.3, 0.3, generator=gen)
                layer.running_var.uniform_(0.5, 2.0, generator=gen)
        for node in graph.neuron_nodes:
            record = {}
            SequenceModel(net).run(x, record)
            level = record[node.name].flatten()[:1_000_000].quantile(0.75)
            getattr(net, node.name).threshold.fill_(max(float(level), 0.05))
    return net


def _ort_inputs(graph, batch, seed):
    raw = verify._raw(graph, batch, torch.Generator().manual_seed(seed), 1.0)
    return verify.encode_inputs(graph, raw, torch.Generator().manual_seed(seed))


def _check_export(net, tmp_path, name="model"):
    """Export the unrolled and the looped sequence model and the step model, each
    verified against PyTorch; the loop and the T-step loop over the step model
    in onnxruntime must reproduce the unrolled graph. Returns the reports."""
    reports = {}
    for variant, mode, loop in (
        ("sequence", "sequence", False),
        ("loop", "sequence", True),
        ("step", "step", None),
    ):
        path = tmp_path / f"{name}_{variant}.onnx"
        report = export_onnx(net, path, mode=mode, verify=True, loop=loop)
        result = report["verification"]
        assert result["passed"], result["failures"]
        assert [b["batch"] for b in result["batches"]] == [1, 7]
        if net.graph.output.descriptor.spiking:  # not a readout such as li
            assert result["output_spike_rate"] > 0, "the comparison never saw a spike"
        onnx.checker.check_model(onnx.load(path), full_check=True)
        reports[variant] = report
    graph = net.graph
    x = _ort_inputs(graph, 5, seed=11)
    outputs = {
        variant: verify.run_session(
            verify.session(tmp_path / f"{name}_{variant}.onnx"), graph, mode, x
        )
        for variant, mode in (
            ("sequence", "sequence"),
            ("loop", "sequence"),
            ("step", "step"),
        )
    }
    record = {}
    with _Inference(net), torch.no_grad():
        SequenceModel(net).run(x, record)
    for variant in ("loop", "step"):
        figures = verify.compare(net, outputs["sequence"], outputs[variant], record)
        assert not figures["failures"], (variant, figures)
    return reports


# --------------------------------------------------------------------------- example specs
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_spec_exports_and_verifies(path, tmp_path):
    spec = snncompile.load(path)
    if spec.steps == "auto":  # sequences of their own lengths: a number fixes T
        spec = snncompile.load(path, overrides=["steps=6"])
    net = lively(snncompile.build(spec, seed=0))
    reports = _check_export(net, tmp_path, path.stem)
    assert reports["sequence"]["outputs"][0].startswith("scores [batch, ")


# --------------------------------------------------------------------------- tiny specs
def tiny_spec(tmp_path, layers, encoding=None, decoding="rate", shape=(1, 6, 6), **top):
    data = {
        "snncompile": 1,
        "name": top.pop("name", "tiny"),
        "input": {"shape": list(shape), "encoding": encoding or {"type": "direct"}},
        "steps": top.pop("steps", 6),
        "defaults": top.pop("defaults", {"beta": 0.8, "alpha": 0.9, "rho": 0.9}),
        "layers": layers,
        "decoding": {"type": decoding},
        "train": {"dataset": "synthetic", "seed": 3},
        **top,
    }
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# every registered neuron type but the li readout, which never fires (its export:
# tests/test_neurons_more.py)
NEURONS = [kind for kind in of_role("neuron") if kind != "li"]
RESETS = ["subtract", "zero", "none"]


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("kind", NEURONS)
def test_neuron_and_reset(kind, reset, tmp_path):
    layers = [
        {"type": "flatten"},
        {"type": "linear", "out_features": 12},
        {"type": kind, "reset": reset},
        {"type": "linear", "out_features": 4},
        {"type": kind, "reset": reset},
    ]
    spec = tiny_spec(tmp_path, layers, name=f"{kind}_{reset}")
    net = lively(snncompile.build(snncompile.load(spec), seed=1))
    _check_export(net, tmp_path)


FEATURES = {
    # learnable per-neuron parameters, conv + pooling, membrane decoding
    "per_neuron_learnable": {
        "layers": [
            {"type": "conv2d", "out_channels": 3, "kernel_size": 3},
            {
                "type": "synaptic",
                "per_neuron": True,
                "learn_beta": True,
                "learn_alpha": True,
                "learn_threshold": True,
            },
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "linear", "out_features": 3},
            {
                "type": "leaky",
                "per_neuron": True,
                "learn_beta": True,
                "learn_threshold": True,
                "reset": "zero",
            },
        ],
        "decoding": "max_membrane",
    },
    # conv recurrence, avg pooling, batch norm, spike-train input
    "conv_recurrence_spikes": {
        "layers": [
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d"},
            {"type": "rleaky", "recurrence": {"type": "conv", "kernel_size": 3}},
            {"type": "avgpool2d", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "linear", "out_features": 3},
            {"type": "rleaky", "recurrence": {"type": "one_to_one", "V": 0.4}},
        ],
        "encoding": {"type": "spikes"},
        "decoding": "mean_membrane",
    },
    # rate coding, dropout, one-to-one fixed recurrence, latency decoding
    "rate_dropout_latency": {
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 10},
            {"type": "dropout", "p": 0.3},
            {"type": "rsynaptic", "learn_alpha": True},
            {"type": "linear", "out_features": 3},
            {
                "type": "rsynaptic",
                "recurrence": {"type": "one_to_one", "V": 0.3, "learn": False},
            },
        ],
        "encoding": {"type": "rate", "gain": 0.8},
        "decoding": "latency",
    },
    # latency coding into alpha neurons
    "latency_alpha": {
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 8},
            {"type": "alpha", "alpha": 0.85, "beta": 0.6},
            {"type": "linear", "out_features": 3},
            {
                "type": "alpha",
                "alpha": 0.9,
                "beta": 0.7,
                "per_neuron": True,
                "learn_beta": True,
            },
        ],
        "encoding": {"type": "latency", "tau": 3.0, "linear": True, "normalize": True},
    },
    # delta coding with off-spikes, conv1d and batchnorm1d over [C, L]
    "delta_conv1d": {
        "layers": [
            {"type": "conv1d", "out_channels": 3, "kernel_size": 3},
            {"type": "batchnorm1d"},
            {"type": "leaky"},
            {"type": "flatten"},
            {"type": "linear", "out_features": 3},
            {"type": "leaky"},
        ],
        "encoding": {"type": "delta", "threshold": 0.05, "off_spike": True},
        "shape": (2, 10),
    },
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_feature_exports(feature, tmp_path):
    spec = tiny_spec(tmp_path, name=feature, **FEATURES[feature])
    net = lively(snncompile.build(snncompile.load(spec), seed=2))
    _check_export(net, tmp_path)


# --------------------------------------------------------------------------- metadata, batch
def test_metadata_and_batch_one(tmp_path):
    spec_path = tiny_spec(
        tmp_path,
        [
            {"type": "flatten"},
            {"type": "linear", "out_features": 5},
            {"type": "rsynaptic", "name": "hidden"},
            {"type": "linear", "out_features": 3},
            {"type": "leaky", "name": "out"},
        ],
        name="meta",
        steps=4,
    )
    graph = snncompile.analyze(snncompile.load(spec_path))
    seq, step = tmp_path / "seq.onnx", tmp_path / "step.onnx"
    export_onnx(spec_path, seq)
    export_onnx(spec_path, step, mode="step")
    for path, mode in ((seq, "sequence"), (step, "step")):
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["spec_name"] == "meta" and meta["mode"] == mode
        assert meta["steps"] == "4" and meta["decoding"] == "rate"
        assert meta["snncompile_version"] == snncompile.__version__
        assert json.loads(meta["encoding"]) == {"type": "direct"}
        assert "encoding_note" in meta and "input_layout" in meta
        assert json.loads(meta["spec"]) == json.loads(graph.spec_json)
        states = json.loads(meta["states"])
        assert [(s["name"], s["shape"]) for s in states] == [
            ("hidden_spk", [5]),
            ("hidden_syn", [5]),
            ("hidden_mem", [5]),
            ("out_mem", [3]),
        ]
    step_model = onnx.load(step)
    assert [i.name for i in step_model.graph.input] == ["x_t"] + [
        s["name"] for s in states
    ]
    assert [o.name for o in step_model.graph.output][2:] == [
        f"{s['name']}_out" for s in states
    ]
    # batch 1 through onnxruntime, against the net built with the same seed
    net = snncompile.build(snncompile.load(spec_path), seed=3)
    x = torch.rand(1, 1, 6, 6) * 4
    scores, spk, mem = verify.session(seq).run(None, {"x": x.numpy()})
    with _Inference(net), torch.no_grad():
        ref_spk, ref_mem = net(x)
    assert scores.shape == (1, 3) and spk.shape == (4, 1, 3)
    np.testing.assert_array_equal(spk, ref_spk.numpy())
    np.testing.assert_allclose(mem, ref_mem.numpy(), atol=1e-5, rtol=1e-5)
    dims = onnx.load(seq).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 1


def test_long_simulation_loops(tmp_path):
    """Past UNROLL_STEPS the sequence model is an ONNX Loop: small, and the same."""
    layers = [
        {"type": "flatten"},
        {"type": "linear", "out_features": 6},
        {"type": "alpha", "reset": "none"},  # its membrane input goes unused
        {"type": "linear", "out_features": 3},
        {"type": "rleaky"},
    ]
    spec = tiny_spec(tmp_path, layers, name="long", steps=UNROLL_STEPS + 20)
    net = lively(snncompile.build(snncompile.load(spec), seed=0))
    report = export_onnx(net, tmp_path / "long.onnx", verify=True)
    assert report["time_loop"] == "ONNX Loop" and report["verification"]["passed"]
    assert report["verification"]["output_spike_rate"] > 0
    model = onnx.load(tmp_path / "long.onnx")
    assert any(node.op_type == "Loop" for node in model.graph.node)
    assert {p.key: p.value for p in model.metadata_props}["time_loop"] == "ONNX Loop"
    unrolled = export_onnx(net, tmp_path / "unrolled.onnx", loop=False)
    assert unrolled["time_loop"] == "unrolled" and "--loop" in unrolled["note"]
    assert report["nodes"] * 20 < unrolled["nodes"]


def test_export_restores_net_flags(tmp_path):
    net = snncompile.build(snncompile.load(SPECS[0]), seed=0)
    net.train()
    export_onnx(net, tmp_path / "m.onnx", mode="step")
    assert net.training
    assert all(not m.hard for m in net.modules() if hasattr(m, "hard"))


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture
def fc_spec(tmp_path):
    return tiny_spec(
        tmp_path,
        [
            {"type": "flatten"},
            {"type": "linear", "out_features": 8},
            {"type": "leaky"},
            {"type": "linear", "out_features": 3},
            {"type": "leaky"},
        ],
        name="fc",
    )


def test_checkpoint_weights_are_exported(fc_spec, tmp_path):
    spec = snncompile.load(fc_spec)
    trained = lively(snncompile.build(spec, seed=123))
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": trained.state_dict(), "spec": spec.model_dump_json()}, ckpt)
    report = export_onnx(fc_spec, tmp_path / "m.onnx", checkpoint=ckpt, verify=True)
    assert str(ckpt) in report["weights"] and report["verification"]["passed"]
    x = torch.rand(7, 1, 6, 6)
    _scores, spk, mem = verify.session(tmp_path / "m.onnx").run(None, {"x": x.numpy()})
    with _Inference(trained), torch.no_grad():
        ref_spk, ref_mem = trained(x)
    assert ref_spk.sum() > 0
    np.testing.assert_array_equal(spk, ref_spk.numpy())
    np.testing.assert_allclose(mem, ref_mem.numpy(), atol=1e-5, rtol=1e-5)
    # the randomly initialized export differs: the weights really came from the file
    export_onnx(fc_spec, tmp_path / "r.onnx")
    other = verify.session(tmp_path / "r.onnx").run(None, {"x": x.numpy()})[2]
    assert np.abs(other - mem).max() > 1e-3


def _bad_checkpoints(tmp_path, spec):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    no_model = tmp_path / "no_model.pt"
    torch.save({"epoch": 3}, no_model)
    other = snncompile.build(snncompile.load(SPECS[0]), seed=0)
    wrong_net = tmp_path / "wrong_net.pt"
    torch.save({"model": other.state_dict(), "spec": other.graph.spec_json}, wrong_net)
    wrong_keys = tmp_path / "wrong_keys.pt"
    state = snncompile.build(spec, seed=0).state_dict()
    state["fc1.weight"] = state["fc1.weight"][:, :5]
    del state["fc2.bias"]
    torch.save({"model": state}, wrong_keys)
    return {
        garbage: "is not a readable checkpoint",
        no_model: "holds no model weights",
        wrong_net: "different network",
        wrong_keys: "missing: fc2.bias; wrong shape: fc1.weight [8, 5] (the spec has",
        tmp_path / "absent.pt": "no checkpoint at",
    }


def test_broken_checkpoints_give_clear_errors(fc_spec, tmp_path):
    spec = snncompile.load(fc_spec)
    out = tmp_path / "out.onnx"
    for path, message in _bad_checkpoints(tmp_path, spec).items():
        with pytest.raises(UserError, match=re.escape(message)):
            export_onnx(spec, out, checkpoint=path)
        assert not out.exists()
        code = main(["export", str(fc_spec), "-o", str(out), "--checkpoint", str(path)])
        assert code == 2 and not out.exists()


# --------------------------------------------------------------------------- failures
class SVDLayer(nn.Module):
    """A stand-in layer using an op with no ONNX export."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        h = self.linear(x)
        return torch.linalg.svdvals(h.unsqueeze(-1)).expand_as(h)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_unexportable_layer_is_named_and_nothing_written(fc_spec, tmp_path):
    net = snncompile.build(snncompile.load(fc_spec), seed=0)
    net.fc2 = SVDLayer(net.fc2)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match=r"layer 'fc2' \(linear\).*svdvals"):
        export_onnx(net, out)
    assert not out.exists() and _leftovers(tmp_path) == []
    out.write_bytes(b"previous export")  # an older file stays untouched
    with pytest.raises(UserError):
        export_onnx(net, out, mode="step")
    assert out.read_bytes() == b"previous export" and _leftovers(tmp_path) == []


def test_failed_verification_writes_nothing(fc_spec, tmp_path, monkeypatch, capsys):
    real = verify.run_session

    def off_by_a_bit(*args):
        scores, spk, mem = real(*args)
        return scores, spk, mem + 1e-3

    monkeypatch.setattr(verify, "run_session", off_by_a_bit)
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="membranes differ") as err:
        export_onnx(fc_spec, out, verify=True)
    assert err.value.report["verification"]["max_mem_diff"] == pytest.approx(
        1e-3, rel=1e-2
    )
    assert not out.exists() and _leftovers(tmp_path) == []
    assert main(["export", str(fc_spec), "-o", str(out), "--verify"]) == 1
    assert "FAILED" in capsys.readouterr().out and not out.exists()


def test_verification_detects_other_weights(fc_spec, tmp_path):
    """The verifier is not vacuous: a model of other weights fails it."""
    spec = snncompile.load(fc_spec)
    export_onnx(lively(snncompile.build(spec, seed=0)), tmp_path / "m.onnx")
    other = lively(snncompile.build(spec, seed=1))
    result = verify.verify_onnx(other, tmp_path / "m.onnx", "sequence")
    assert not result["passed"] and result["failures"]


def test_bad_arguments(fc_spec, tmp_path):
    with pytest.raises(UserError, match="mode"):
        export_onnx(fc_spec, tmp_path / "m.onnx", mode="loop")
    with pytest.raises(UserError, match="opset"):
        export_onnx(fc_spec, tmp_path / "m.onnx", opset=99)
    with pytest.raises(UserError, match="does not exist"):
        export_onnx(fc_spec, tmp_path / "nowhere" / "m.onnx")
    with pytest.raises(UserError, match="Loop needs opset 11"):
        export_onnx(fc_spec, tmp_path / "m.onnx", opset=9, loop=True)
    assert os.listdir(tmp_path) == ["fc.yaml"]


@pytest.mark.parametrize("opset", [11, 20])
def test_other_opsets(fc_spec, tmp_path, opset):
    net = lively(snncompile.build(snncompile.load(fc_spec), seed=0))
    report = export_onnx(net, tmp_path / "m.onnx", opset=opset, verify=True)
    assert report["verification"]["passed"]
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == opset


# --------------------------------------------------------------------------- CLI
def test_cli_export(fc_spec, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(fc_spec), "-o", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "random initialization (seed 3)" in text and "passed" in text
    assert out.exists()
    assert (
        main(["export", str(fc_spec), "-o", str(out), "--mode", "step", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    graph = snncompile.analyze(snncompile.load(fc_spec))
    assert report["mode"] == "step"
    assert report["inputs"][1:] == [
        f"{n} [batch, {node.out_shape[0]}]" for node, _, n in state_names(graph)
    ]


def _output_dims(path) -> dict[str, list]:
    proto = onnx.load(str(path))
    return {
        out.name: [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        for out in proto.graph.output
    }


def test_output_axes_are_batch_or_static(fc_spec, tmp_path):
    graph = snncompile.analyze(snncompile.load(fc_spec))
    classes, steps = graph.num_classes, graph.steps
    seq, step = tmp_path / "seq.onnx", tmp_path / "step.onnx"
    export_onnx(fc_spec, seq, mode="sequence", seed=0)
    export_onnx(fc_spec, step, mode="step", seed=0)
    dims = _output_dims(seq)
    assert dims["scores"] == ["batch", classes]
    assert dims["spk"] == dims["mem"] == [steps, "batch", classes]
    dims = _output_dims(step)
    assert dims["spk"] == dims["mem"] == ["batch", classes]
    for node, _, name in state_names(graph):
        assert dims[f"{name}_out"] == ["batch", *node.out_shape]


# --------------------------------------------------------------------------- dynamo
RESIDUAL = [
    {
        "type": "conv2d",
        "name": "conv",
        "out_channels": 3,
        "kernel_size": 3,
        "padding": 1,
    },
    {"type": "leaky", "name": "lif_a"},
    {
        "type": "conv2d",
        "name": "conv_b",
        "out_channels": 3,
        "kernel_size": 3,
        "padding": 1,
    },
    {"type": "batchnorm2d", "name": "bn"},
    {"type": "leaky", "name": "lif_b"},
    {"type": "add", "name": "sum", "inputs": ["lif_b", "lif_a"]},
    {"type": "flatten"},
    {"type": "linear", "name": "fc", "out_features": 3},
    {"type": "leaky", "name": "out"},
]


@pytest.mark.parametrize("mode", ["sequence", "step"])
def test_dynamo_exporter_verifies_a_residual_net(tmp_path, mode):
    """PyTorch's maintained exporter (torch.export + onnxscript) traces the same
    rendered functions; its file agrees with the TorchScript exporter's run."""
    spec = tiny_spec(tmp_path, RESIDUAL, name="residual")
    net = lively(snncompile.build(snncompile.load(spec), seed=3))
    paths = {}
    for exporter in ("dynamo", "torchscript"):
        paths[exporter] = tmp_path / f"{exporter}.onnx"
        report = export_onnx(
            net, paths[exporter], mode=mode, verify=True, exporter=exporter
        )
        assert report["verification"]["passed"], report["verification"]["failures"]
        assert report["exporter"] == exporter
    meta = {p.key: p.value for p in onnx.load(paths["dynamo"]).metadata_props}
    assert meta["exporter"] == "dynamo" and meta["mode"] == mode
    graph = net.graph
    x = _ort_inputs(graph, 3, seed=5)
    outs = [
        verify.run_session(verify.session(paths[e]), graph, mode, x)
        for e in ("dynamo", "torchscript")
    ]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_dynamo_exporter_refuses_old_opsets(fc_spec, tmp_path):
    with pytest.raises(UserError, match="between 18 and 23 for the dynamo exporter"):
        export_onnx(fc_spec, tmp_path / "m.onnx", opset=17, exporter="dynamo")
