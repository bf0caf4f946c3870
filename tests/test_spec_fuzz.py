"""Property tests: random mutations of valid specs are either accepted or
rejected with located SpecErrors, never any other exception; and whatever the
analysis accepts, build() can lower and run."""

from __future__ import annotations

import copy
import json
import math
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snncompile
from snncompile.ir.analyze import analyze
from snncompile.spec import schema
from snncompile.spec.errors import SpecError

REPO = Path(__file__).parent.parent
BASES = [
    yaml.safe_load(p.read_text(encoding="utf-8"))
    for p in sorted((REPO / "specs").glob("*.yaml"))
]


def _tags(union) -> list[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return [typing.get_args(m.model_fields["type"].annotation)[0] for m in members]


TYPES = sorted(
    {
        t
        for u in (
            schema.Layer,
            schema.Surrogate,
            schema.Encoding,
            schema.Loss,
            schema.Optimizer,
            schema.Schedule,
            schema.Recurrence,
        )
        for t in _tags(u)
    }
    | set(typing.get_args(schema.Decoding.model_fields["type"].annotation))
)
FIELDS = sorted(
    {
        name
        for model in vars(schema).values()
        if isinstance(model, type) and issubclass(model, schema.Strict)
        for name in model.model_fields
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(TYPES + FIELDS),
)
json_ish = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4
        ),
    ),
    max_leaves=8,
)
out_of_range = st.sampled_from(
    [-1, 0, -0.5, 1.5, 2, 1e-12, 2**31, 10**12, 1e308, -1e308, 0.0, 1, 3, 64]
)


def _locations(data, path=()):
    """Every (container, key) pair in nested data, depth first."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield data, key
            yield from _locations(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield data, index
            yield from _locations(value, path + (index,))


@st.composite
def mutated_specs(draw):
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        _mutate(draw, data)
    return data


def _mutate(draw, data):
    op = draw(
        st.sampled_from(
            [
                "delete",
                "rename",
                "replace",
                "range",
                "text",
                "duplicate_layer",
                "drop_layer",
                "swap_layers",
                "change_type",
            ]
        )
    )
    layers = data.get("layers") if isinstance(data, dict) else None
    if op in ("duplicate_layer", "drop_layer", "swap_layers"):
        if not isinstance(layers, list) or not layers:
            return
        i = draw(st.integers(0, len(layers) - 1))
        j = draw(st.integers(0, len(layers) - 1))
        if op == "duplicate_layer":
            layers.insert(j, copy.deepcopy(layers[i]))
        elif op == "drop_layer":
            del layers[i]
        else:
            layers[i], layers[j] = layers[j], layers[i]
        return
    places = list(_locations(data))
    if op == "change_type":
        places = [(c, k) for c, k in places if k == "type"]
    if not places:
        return
    container, key = draw(st.sampled_from(places))
    if op == "delete":
        del container[key]
    elif op == "rename" and isinstance(container, dict):
        new = draw(st.sampled_from(FIELDS) | st.text(min_size=1, max_size=10))
        container[new] = container.pop(key)
    elif op == "replace":
        container[key] = draw(json_ish)
    elif op == "range":
        container[key] = draw(out_of_range)
    elif op == "text":
        container[key] = draw(st.text(max_size=20))
    elif op == "change_type":
        container[key] = draw(st.sampled_from(TYPES) | st.text(max_size=8))


def _text(data, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=1)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_specs(), fmt=st.sampled_from(["yaml", "json"]))
def test_mutations_are_accepted_or_located(data, fmt):
    text = _text(data, fmt)
    try:
        analyze(snncompile.loads(text, file="mutant", fmt=fmt))
    except SpecError as err:
        assert err.problems
        for problem in err.problems:
            assert problem.message.strip()
            assert problem.file == "mutant"
            assert isinstance(problem.line, int) and problem.line >= 1, str(problem)
            assert problem.line <= text.count("\n") + 1, str(problem)


TEXTS = [
    (p.read_text(encoding="utf-8"), "yaml")
    for p in sorted((REPO / "specs").glob("*.yaml"))
] + [(json.dumps(data, indent=2), "json") for data in BASES]
# characters that matter to YAML or JSON syntax, a tab and a control character
SYNTAX = st.sampled_from(list(":-[]{},'\"\t\n #&*!|>?%@`\x08\x85"))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_text_edits_are_accepted_or_located(data):
    """Edits of the file's characters: the parser never escapes with a crash."""
    text, fmt = data.draw(st.sampled_from(TEXTS))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["insert", "delete", "repeat"]))
        if edit == "insert":
            text = text[:at] + data.draw(SYNTAX | st.text(max_size=3)) + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 8)) :]
        else:
            text = text[:at] + text[at : at + data.draw(st.integers(1, 40))] + text[at:]
    try:
        analyze(snncompile.loads(text, file="edited", fmt=fmt))
    except SpecError as err:
        for problem in err.problems:
            assert problem.message.strip()
            assert isinstance(problem.line, int) and problem.line >= 1, str(problem)


# ------------------------------------------------------------------ accepted => builds
TINY = {
    "snncompile": 1,
    "name": "tiny",
    "input": {"shape": [2, 6, 6]},
    "steps": 3,
    "defaults": {"beta": 0.5, "alpha": 0.8},
    "layers": [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "leaky"},
        {"type": "flatten"},
        {"type": "linear", "out_features": 4},
        {"type": "leaky"},
    ],
    "train": {"dataset": "synthetic"},
}
LAYER_TYPES = _tags(schema.Layer)
small = st.integers(1, 4)
neurons = st.builds(
    lambda kind, beta, extra: {"type": kind, "beta": beta, **extra},
    st.sampled_from(schema.NEURON_TYPES),
    st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    st.sampled_from(
        [
            {},
            {"reset": "zero"},
            {"per_neuron": True, "learn_beta": True, "learn_threshold": True},
            {"surrogate": {"type": "fast_sigmoid"}},
        ]
    ),
)


tiny_layer = st.one_of(
    st.builds(lambda n: {"type": "linear", "out_features": n}, small),
    st.builds(
        lambda kind, c, k, s, p: {
            "type": kind,
            "out_channels": c,
            "kernel_size": k,
            "stride": s,
            "padding": p,
        },
        st.sampled_from(["conv1d", "conv2d"]),
        small,
        st.integers(1, 3) | st.lists(st.integers(1, 3), min_size=1, max_size=2),
        st.integers(1, 2) | st.lists(st.integers(1, 2), min_size=1, max_size=2),
        st.integers(0, 1) | st.lists(st.integers(0, 1), min_size=1, max_size=2),
    ),
    st.builds(
        lambda kind, k: {"type": kind, "kernel_size": k},
        st.sampled_from(["maxpool2d", "avgpool2d"]),
        st.integers(1, 2) | st.lists(st.integers(1, 2), min_size=1, max_size=2),
    ),
    st.sampled_from(
        [{"type": t} for t in ("flatten", "dropout", "batchnorm1d", "batchnorm2d")]
    ),
    neurons,
    st.builds(
        lambda kind, rec: {"type": kind, "recurrence": rec},
        st.sampled_from(["rleaky", "rsynaptic"]),
        st.sampled_from(
            [
                {"type": "linear"},
                {"type": "one_to_one", "V": 0.5},
                {"type": "conv", "kernel_size": 3},
                {"type": "conv", "kernel_size": [1, 3]},
            ]
        ),
    ),
)


@st.composite
def tiny_specs(draw):
    """A mutated body of small layers before a head that fits any shape
    (flatten, linear, a neuron), so that most examples reach build()."""
    data = copy.deepcopy(TINY)
    shape = draw(st.sampled_from([[2, 6, 6], [3, 5], [8]]))
    data["input"]["shape"] = shape
    data["input"]["encoding"] = draw(
        st.sampled_from(
            [{"type": t} for t in ("direct", "rate", "latency", "delta", "spikes")]
        )
    )
    body = {  # a valid start for each input rank
        3: data["layers"][:3],
        2: [{"type": "conv1d", "out_channels": 2, "kernel_size": 2}, {"type": "leaky"}],
        1: [{"type": "linear", "out_features": 5}, {"type": "leaky"}],
    }[len(shape)]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "replace", "drop", "swap"]))
        i = draw(st.integers(0, len(body) - 1)) if body else 0
        if op == "insert" or not body:
            body.insert(i, draw(tiny_layer))
        elif op == "replace":
            body[i] = draw(tiny_layer)
        elif op == "drop":
            del body[i]
        else:
            j = draw(st.integers(0, len(body) - 1))
            body[i], body[j] = body[j], body[i]
    head = [{"type": "flatten"}, {"type": "linear", "out_features": 3}, draw(neurons)]
    data["layers"] = body + head
    return data


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=tiny_specs())
def test_accepted_specs_build_and_run(data):
    try:
        spec = snncompile.loads(yaml.safe_dump(data), file="tiny", fmt="yaml")
        graph = analyze(spec)
    except SpecError as err:
        for problem in err.problems:
            assert problem.line is not None and problem.message, str(problem)
        return
    torch.manual_seed(0)
    net = snncompile.build(spec, seed=0)
    learnable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert learnable == graph.num_params
    batch = 2
    shape = (batch, *graph.input_shape)
    if graph.sequence_input:
        shape = (graph.steps, *shape)
    x = torch.rand(shape)
    if graph.encoding["type"] == "spikes":
        x = (x > 0.5).float()
    net.eval()
    with torch.no_grad():
        spk, mem = net(x)
    expected = (graph.steps, batch, graph.num_classes)
    assert tuple(spk.shape) == expected and tuple(mem.shape) == expected
    assert math.isfinite(float(mem.abs().sum()))


def test_fuzz_bases_are_valid():
    """The mutations start from valid specs (else the fuzz proves little)."""
    for data in [*BASES, TINY]:
        analyze(snncompile.loads(yaml.safe_dump(data)))


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_fuzz_text_keeps_valid_specs_valid(fmt):
    for data in BASES:
        spec = snncompile.loads(_text(data, fmt), fmt=fmt)
        assert spec == snncompile.loads(yaml.safe_dump(data))
