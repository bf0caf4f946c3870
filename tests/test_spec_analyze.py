"""Semantic analysis: the shapes and parameter counts it infers agree with the
torch modules built from the spec, and it refuses what torch could not run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

import snncompile
from snncompile.ir.analyze import analyze
from snncompile.spec.errors import SpecError, format_path
from snncompile.spec.schema import Spec

REPO = Path(__file__).parent.parent
SPECS = sorted((REPO / "specs").glob("*.yaml"))
BASE = {
    "snncompile": 1,
    "name": "t",
    "input": {"shape": [2, 9, 7]},
    "steps": 2,
    "defaults": {"beta": 0.5},
    "layers": [],
    "train": {"dataset": "synthetic"},
}


def spec_with(layers, shape=(2, 9, 7), **top):
    data = copy.deepcopy(BASE)
    data["input"]["shape"] = list(shape)
    data["layers"] = layers
    data.update(top)
    return snncompile.loads(yaml.safe_dump(data), file="t")


def run_shapes(spec):
    """Output shape of every layer measured by running the built model."""
    graph = analyze(spec)
    net = snncompile.build(spec, seed=0)
    x = torch.rand(3, *graph.input_shape)
    if graph.sequence_input:
        x = torch.rand(graph.steps or 5, 3, *graph.input_shape)  # auto: any T
    with torch.no_grad():
        _, _, record = net(x, all_spikes=True)
    return graph, net, record


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_parameter_count_matches_torch(path):
    spec = snncompile.load(path)
    graph = analyze(spec)
    net = snncompile.build(spec, seed=0)
    learnable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert graph.num_params == learnable
    spiking = {n.name: n for n in graph.nodes if n.stateful}
    _, _, record = run_shapes(spec)
    assert set(record) == set(spiking)
    for name, spikes in record.items():
        assert tuple(spikes.shape[2:]) == spiking[name].out_shape


@pytest.mark.parametrize(
    "layer, expected",
    [
        ({"type": "conv2d", "out_channels": 3, "kernel_size": [3, 2]}, (3, 7, 6)),
        (
            {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2},
            (3, 4, 3),
        ),
        (
            {"type": "conv2d", "out_channels": 3, "kernel_size": [5], "padding": [2]},
            (3, 9, 7),
        ),
        ({"type": "maxpool2d", "kernel_size": [2]}, (2, 4, 3)),
        ({"type": "avgpool2d", "kernel_size": 3, "stride": 1, "padding": 1}, (2, 9, 7)),
        ({"type": "maxpool2d", "kernel_size": [3, 2], "stride": [2]}, (2, 4, 3)),
    ],
)
def test_window_shapes_match_torch(layer, expected):
    """kernel/stride/padding as int, one-item list or pair all lower correctly."""
    spec = spec_with(
        [
            layer,
            {"type": "leaky", "name": "probe"},
            {"type": "flatten"},
            {"type": "linear", "out_features": 2},
            {"type": "leaky"},
        ]
    )
    graph, _, record = run_shapes(spec)
    assert graph.nodes[0].out_shape == expected
    assert tuple(record["probe"].shape[2:]) == expected


def test_conv1d_lowers():
    spec = spec_with(
        [
            {"type": "conv1d", "out_channels": 4, "kernel_size": [3], "stride": 2},
            {"type": "leaky", "name": "probe"},
            {"type": "flatten"},
            {"type": "linear", "out_features": 2},
            {"type": "leaky"},
        ],
        shape=(2, 11),
    )
    graph, net, record = run_shapes(spec)
    assert graph.nodes[0].out_shape == (4, 5)
    assert tuple(record["probe"].shape[2:]) == (4, 5)
    assert graph.num_params == sum(p.numel() for p in net.parameters())


def test_time_invariant_prefix():
    """Only stateless layers before the first neuron, with direct encoding and
    no dropout/batchnorm, may be computed once for all steps."""
    layers = [
        {"type": "conv2d", "out_channels": 2, "kernel_size": 3},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "dropout"},
        {"type": "flatten"},
        {"type": "leaky"},
        {"type": "linear", "out_features": 2},
        {"type": "leaky"},
    ]
    flags = [n.time_invariant for n in analyze(spec_with(layers)).nodes]
    assert flags == [True, True, False, False, False, False, False]
    rate = spec_with(layers, input={"shape": [2, 9, 7], "encoding": {"type": "rate"}})
    assert not any(n.time_invariant for n in analyze(rate).nodes)


def test_default_names_skip_taken_ones():
    spec = spec_with(
        [
            {"type": "flatten", "name": "fc1"},
            {"type": "linear", "out_features": 3},
            {"type": "leaky"},
        ]
    )
    assert [n.name for n in analyze(spec).nodes] == ["fc1", "fc2", "lif1"]


def test_neuron_fields_resolve_layer_then_defaults_then_builtin():
    spec = spec_with(
        [
            {"type": "flatten"},
            {"type": "linear", "out_features": 3},
            {"type": "synaptic", "alpha": 0.6, "threshold": 2.0},
        ],
        defaults={"beta": 0.4, "alpha": 0.9, "reset": "zero"},
    )
    params = analyze(spec).nodes[-1].params
    assert (params["alpha"], params["beta"], params["threshold"]) == (0.6, 0.4, 2.0)
    assert params["reset"] == "zero" and params["surrogate"]["type"] == "atan"


def analysis_problems(spec):
    with pytest.raises(SpecError) as info:
        analyze(spec)
    return info.value.problems


def test_errors_after_a_shape_error_are_still_reported():
    """A shape error stops shape inference but not the other checks."""
    spec = spec_with(
        [
            {"type": "linear", "out_features": 3},  # needs flat input
            {"type": "leaky", "name": "x"},
            {"type": "alpha", "name": "x", "alpha": 0.2},  # name taken; alpha < beta
        ]
    )
    found = [(format_path(p.path), p.message) for p in analysis_problems(spec)]
    paths = [path for path, _ in found]
    assert paths == ["layers[0]", "layers[2].alpha", "layers[2].name"]
    assert "fc1 (linear) needs flat features" in found[0][1]
    assert "the input gives [2, 9, 7]" in found[0][1]


@pytest.mark.parametrize(
    "layers, path, fragment",
    [
        (
            [{"type": "maxpool2d", "kernel_size": 2, "padding": 2}],
            "layers[0].padding",
            "at most half the kernel",
        ),
        (
            [{"type": "conv2d", "out_channels": 1, "kernel_size": [3, 8]}],
            "layers[0].kernel_size",
            "larger than the input width 7",
        ),
        (
            [{"type": "conv2d", "out_channels": 1, "kernel_size": 12, "padding": 1}],
            "layers[0].kernel_size",
            "height 9 + 2 x padding 1",
        ),
        (
            [{"type": "batchnorm1d"}],
            "layers[0]",
            "bn1 (batchnorm1d) needs [features] or [channels, length]",
        ),
        (
            [{"type": "rleaky"}],
            "layers[0].recurrence",
            "linear recurrence of rlif1 (rleaky) needs flat features",
        ),
        (
            [
                {"type": "flatten"},
                {"type": "linear", "out_features": 50000},
                {"type": "linear", "out_features": 50000},
            ],
            "layers[2]",
            "too large",
        ),
    ],
)
def test_impossible_layers(layers, path, fragment):
    spec = spec_with([*layers, {"type": "flatten"}, {"type": "leaky"}])
    problems = analysis_problems(spec)
    assert format_path(problems[0].path) == path
    assert fragment in problems[0].message
    assert problems[0].line is not None


def test_specs_built_in_code_report_without_positions():
    """A Spec made in Python has no file: problems come without line numbers."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["layers"] = [{"type": "linear", "out_features": 3}, {"type": "leaky"}]
    (problem,) = analysis_problems(Spec.model_validate(data))
    assert problem.line is None and problem.path == ("layers", 0)


@pytest.mark.parametrize("given, expected", [(None, 48), (200, 200)])
def test_eval_batch_size_resolves_once_in_the_ir(given, expected):
    """train.eval_batch_size defaults to the training batch size in the IR,
    which train, export and codegen all read."""
    train = {"dataset": "synthetic", "batch_size": 48}
    if given is not None:
        train["eval_batch_size"] = given
    layers = [{"type": "flatten"}, {"type": "linear", "out_features": 3}]
    layers.append({"type": "leaky"})
    graph = analyze(spec_with(layers, train=train))
    assert graph.train["eval_batch_size"] == expected
    assert graph.train["batch_size"] == 48
