"""Every registered layer and neuron type, read from the descriptor table: it
validates, inspects, builds, trains a step, renders a standalone script that
matches build() exactly, and exports to ONNX (sequence and step) verified in
onnxruntime. A type registered without a piece fails here by name."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import sys

import pytest
import torch
import yaml

import snncompile
from snncompile.cli import main
from snncompile.codegen.render import render_script
from snncompile.lower import optimize
from snncompile.runtime import neurons as runtime_neurons
from snncompile.train import loop
from snncompile.types import REGISTRY, missing_pieces
from snncompile.types.base import LayerBase, LayerType
from snncompile.types.neurons import NeuronType

TYPES = sorted(REGISTRY)
READOUT = [
    {"type": "flatten", "name": "readout_flat"},
    {"type": "linear", "name": "readout", "out_features": 3},
    {"type": "leaky", "name": "out", "beta": 0.9},
]


def example_spec(kind: str) -> dict:
    """The smallest classifier around the type's own example segment."""
    descriptor = REGISTRY[kind]
    return {
        "snncompile": 1,
        "name": f"conform_{kind}",
        "input": {
            "shape": list(descriptor.example_input),
            "encoding": {"type": "direct"},
        },
        "steps": 4,
        "layers": [*descriptor.example, *READOUT],
        "train": {"dataset": "synthetic", "batch_size": 4, "seed": 0},
    }


@pytest.fixture(params=TYPES)
def kind_and_file(request, tmp_path):
    kind = request.param
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(example_spec(kind), sort_keys=False))
    return kind, path


@pytest.mark.parametrize("kind", TYPES)
def test_descriptor_is_complete(kind):
    assert missing_pieces(REGISTRY[kind]) == [], f"{kind} lacks pieces"


def test_an_incomplete_descriptor_is_named():
    class Half(LayerType):
        class Half(LayerBase):
            pass

        schema = Half
        type = "half"
        prefix = "half"
        role = "neuron"

    missing = " | ".join(missing_pieces(Half()))
    for piece in ("states", "infer", "constructor", "example", "`type` literal"):
        assert piece in missing, missing


@pytest.mark.parametrize("kind", [k for k in TYPES if REGISTRY[k].role == "neuron"])
def test_omitted_constructor_arguments_are_the_runtime_defaults(kind):
    """A neuron's constructor leaves out fields equal to the descriptor's
    built-in defaults: those must be the runtime class's own defaults."""
    descriptor = REGISTRY[kind]
    cls = getattr(runtime_neurons, descriptor.runtime_class)
    params = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            params.update(inspect.signature(klass.__init__).parameters)
    for key in descriptor.fields():
        if key in NeuronType.defaults and key != "surrogate":
            assert params[key].default == NeuronType.defaults[key], (kind, key)


def test_conformance(kind_and_file, tmp_path, capsys):
    kind, path = kind_and_file
    # validate and inspect
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert kind in {row["type"] for row in report["layers"]}
    spec = snncompile.load(path)
    graph = snncompile.analyze(spec)

    # build, and one training step on the accelerated net
    net = snncompile.build(spec, seed=0)
    fast = optimize.apply(snncompile.build(spec), "none")
    fast.load_state_dict(net.state_dict())
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    optimizer = loop.make_optimizer(fast.parameters(), spec)
    loss_of, need_records = loop.make_loss(graph)
    x = torch.rand(4, *graph.input_shape, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    if need_records:
        spk, mem, records = fast(x, all_spikes=True)
    else:
        (spk, mem), records = fast(x), None
    loss = loss_of(spk, mem, y, records)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    after = fast.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no update"

    # codegen: a standalone script of torch (and torchvision) only, same values
    script = tmp_path / f"conform_{kind}.py"
    script.write_text(render_script(graph))
    tree = ast.parse(script.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "snncompile" not in imported
    assert imported <= {"argparse", "json", "math", "time", "pathlib", "torch"}
    module_spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[script.stem] = module
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(script.stem)
    generated = module.Net()
    generated.load_state_dict(net.state_dict())
    generated.eval(), net.eval()
    with torch.no_grad():
        spk_g, mem_g = generated(x)
        spk_b, mem_b = net(x)
    assert torch.equal(spk_g, spk_b) and torch.equal(mem_g, mem_b)

    # ONNX, both modes, verified against PyTorch in onnxruntime
    for mode in ("sequence", "step"):
        target = tmp_path / f"{kind}_{mode}.onnx"
        code = main(
            ["export", str(path), "-o", str(target), "--mode", mode, "--verify"]
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert target.is_file()
