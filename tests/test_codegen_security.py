"""Hostile names and values never become code.

Each one is refused when the spec is loaded (SpecError), refused by the render
guards `ident()` / `lit()` (ValueError; `snncompile codegen` reports it as a user
error), or rendered inert: as a literal whose removal leaves the same program.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import math
import tokenize

import pytest
from hypothesis import given
from hypothesis import strategies as st

import snncompile
from snncompile.codegen.render import ident, lit, render_model, render_script

HOSTILE_NAMES = [
    "",
    "1fc",
    "fc 1",
    "fc-1",
    "fc1'",
    'fc1"',
    "fc1\\",
    "a; import os",
    "__import__('os')",
    "os.system",
    "fc1#",
    "fc1\nimport os",
    "\nfc1",
    "f\u04411",  # Cyrillic 'с' (U+0441) looks like Latin 'c'
    "\u0430",  # Cyrillic 'а'
    "ﬁ",  # ligature, NFKC-normalizes to "fi"
    "fc\u200b1",  # zero-width space
    "fc１",  # fullwidth digit
    "__class__",
    "__init__",
    "a" * 65,
]


def spec_data(**changes) -> dict:
    """A small valid spec as plain data; `changes` maps dotted paths to values."""
    data = {
        "snncompile": 1,
        "name": "probe",
        "description": "benign",
        "input": {"shape": [4], "encoding": {"type": "rate"}},
        "steps": 3,
        "layers": [
            {"type": "linear", "name": "fc1", "out_features": 5},
            {
                "type": "rleaky",
                "name": "rlif1",
                "beta": 0.5,
                "recurrence": {"type": "one_to_one", "V": 0.5},
                "surrogate": {"type": "spike_rate_escape"},
            },
            {"type": "linear", "name": "fc2", "out_features": 3},
            {"type": "leaky", "name": "lif2", "beta": 0.5},
        ],
        "loss": {"type": "mse_membrane"},
        "train": {"dataset": "synthetic", "normalize": {"mean": [0.5], "std": [1]}},
    }
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return data


def load(data: dict):
    """Through the JSON loader: any string or number reaches validation as is."""
    return snncompile.loads(json.dumps(data), file="hostile.json", fmt="json")


def script(spec) -> str:
    return render_script(snncompile.analyze(spec), spec.description)


def comments(source: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t.string for t in tokens if t.type == tokenize.COMMENT]


# --------------------------------------------------------------------------- ident()
@pytest.mark.parametrize("name", ["fc1", "_hidden", "Layer_2", "x", "a" * 64])
def test_ident_accepts_plain_identifiers(name):
    assert ident(name) == name


@pytest.mark.parametrize(
    "name", HOSTILE_NAMES + ["class", "None", "lambda", "fc1\n", 3, None]
)
def test_ident_refuses(name):
    with pytest.raises(ValueError, match="refusing"):
        ident(name)


@given(st.text(max_size=70))
def test_ident_output_is_always_one_plain_name(text):
    try:
        name = ident(text)
    except ValueError:
        return
    tree = ast.parse(name, mode="eval")
    assert isinstance(tree.body, ast.Name) and tree.body.id == text
    assert text.isascii() and text.isidentifier()


# --------------------------------------------------------------------------- lit()
HOSTILE_STRINGS = [
    'x"""\nimport os\n"""',
    "'''; import os; '''",
    "a\\",
    "\\n",
    "line\r\nbreak\x00nul\x1b[31m",
    "{{ 7 * 7 }} {% if true %}jinja{% endif %}",
    "# not a comment",
    "\u202eevil\u202c",  # bidi override
    "f\u0441",
    "",
]


@pytest.mark.parametrize("text", HOSTILE_STRINGS)
def test_lit_string_is_one_constant(text):
    tree = ast.parse(lit(text), mode="eval")
    assert isinstance(tree.body, ast.Constant) and tree.body.value == text


@given(st.text())
def test_lit_round_trips_any_text(text):
    source = f"x = {lit(text)}\n"
    tree = ast.parse(source)
    assert len(tree.body) == 1 and isinstance(tree.body[0].value, ast.Constant)
    assert tree.body[0].value.value == text
    assert comments(source) == []


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
        ),
        max_leaves=10,
    )
)
def test_lit_round_trips_plain_data(value):
    back = ast.literal_eval(lit(value))
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        [1.0, math.nan],
        {"a": 1},
        {1, 2},
        b"bytes",
        object(),
        10**5000,  # beyond Python's int <-> str limit
    ],
    ids=["nan", "inf", "-inf", "nan-in-list", "dict", "set", "bytes", "object", "int"],
)
def test_lit_refuses(value):
    with pytest.raises(ValueError):
        lit(value)


def test_lit_of_extreme_floats_and_ints_is_exact():
    for value in (1e308, -1e308, 5e-324, 10**30, -(2**63)):
        assert ast.literal_eval(lit(value)) == value


# --------------------------------------------------------------------------- specs
@pytest.mark.parametrize("where", ["name", "layers.0.name", "layers.1.name"])
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_names_are_refused_by_the_loader(where, name):
    with pytest.raises(snncompile.SpecError) as err:
        load(spec_data(**{where: name}))
    assert any(p.path[-1] == "name" for p in err.value.problems)


@pytest.mark.parametrize("where", ["name", "layers.0.name"])
@pytest.mark.parametrize("name", ["fc1\n", "class", "None", "lambda"])
def test_names_the_loader_lets_through_are_refused_by_render(where, name):
    """The loader's identifier check accepts these (its `$` matches before a
    trailing newline; keywords are identifiers); ident() stops them."""
    try:
        spec = load(spec_data(**{where: name}))
    except snncompile.SpecError:
        return  # refused earlier: fine as well
    graph = snncompile.analyze(spec)
    with pytest.raises(ValueError, match="refusing"):
        render_script(graph, spec.description)
    with pytest.raises(ValueError, match="refusing"):
        render_model(graph)
    with pytest.raises(ValueError, match="refusing"):
        snncompile.build(spec)


@pytest.mark.parametrize(
    "name", ["zero_grad", "train", "eval", "forward", "steps", "training", "graph"]
)
def test_layer_names_that_shadow_module_attributes_are_refused(name):
    spec = load(spec_data(**{"layers.0.name": name}))
    with pytest.raises(snncompile.SpecError, match="taken by the network") as err:
        snncompile.analyze(spec)
    assert err.value.problems[0].line is not None
    # the renderer refuses them too, should an IR ever bypass analysis
    graph = snncompile.analyze(load(spec_data()))
    node = dataclasses.replace(graph.nodes[0], name=name)
    bad = dataclasses.replace(graph, nodes=(node, *graph.nodes[1:]))
    with pytest.raises(ValueError, match="attribute of the network"):
        render_model(bad)


HOSTILE_DESCRIPTIONS = HOSTILE_STRINGS + [
    '"""',
    "'''",
    '\\"""\nimport os\nos.system("echo pwned")\n"""',
    "end of docstring\"\"\"\n__import__('os').system('echo pwned')\n#",
    "x" * 5000,
]


@pytest.mark.parametrize(
    "description", HOSTILE_DESCRIPTIONS, ids=range(len(HOSTILE_DESCRIPTIONS))
)
def test_descriptions_are_rendered_inert(description):
    """Only the DESCRIPTION constant differs from a benign render."""
    hostile = script(load(spec_data(description=description)))
    benign = script(load(spec_data(description="benign")))
    hostile_tree, benign_tree = ast.parse(hostile), ast.parse(benign)
    constants = [
        node
        for node in ast.walk(hostile_tree)
        if isinstance(node, ast.Constant) and node.value == description
    ]
    assert len(constants) == 1
    assignment = next(
        node
        for node in hostile_tree.body
        if isinstance(node, ast.Assign) and node.value is constants[0]
    )
    assert [t.id for t in assignment.targets] == ["DESCRIPTION"]
    constants[0].value = "benign"
    assert ast.dump(hostile_tree) == ast.dump(benign_tree)
    assert comments(hostile) == comments(benign)
    compile(hostile, "<hostile>", "exec")


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("layers.1.beta", math.nan),
        ("layers.1.threshold", math.inf),
        ("layers.1.recurrence.V", math.nan),
        ("layers.1.recurrence.V", -math.inf),
        ("layers.1.surrogate.beta", math.inf),
        ("loss.on_target", math.inf),
        ("train.normalize.mean", [math.nan]),
        ("train.optimizer", {"type": "sgd", "lr": math.inf}),
        ("steps", 10**9),
        ("layers.0.out_features", 10**12),
        ("input.shape", [10**10]),
    ],
)
def test_non_finite_and_huge_values_are_refused_by_the_loader(where, value):
    with pytest.raises(snncompile.SpecError):
        snncompile.analyze(load(spec_data(**{where: value})))


@pytest.mark.parametrize(
    ("where", "value", "literal"),
    [
        ("layers.1.threshold", 1e308, 1e308),
        ("layers.1.recurrence.V", -1e308, -1e308),
        ("loss.off_target", 5e-324, 5e-324),
        ("train.seed", 2**64 - 1, 2**64 - 1),
        ("train.batch_size", 10**30, 10**30),
        ("train.optimizer", {"type": "sgd", "lr": 1e300}, 1e300),
    ],
)
def test_extreme_finite_values_are_rendered_as_exact_literals(where, value, literal):
    source = script(load(spec_data(**{where: value})))
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            node = node.operand
            if isinstance(node, ast.Constant) and -node.value == literal:
                found.append(-node.value)
        elif isinstance(node, ast.Constant) and node.value == literal:
            found.append(node.value)
    assert found, f"{literal!r} not rendered as a literal"
    assert all(type(v) is type(literal) for v in found)


def test_integer_beyond_the_str_limit_is_a_spec_error():
    text = (
        json.dumps(spec_data())
        .replace('"seed": 0', "")
        .replace('"dataset"', '"seed": ' + "9" * 5000 + ', "dataset"')
    )
    with pytest.raises(snncompile.SpecError):
        snncompile.loads(text, file="hostile.json", fmt="json")
