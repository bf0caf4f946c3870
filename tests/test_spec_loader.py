"""The loader reads plain data only, safely, and locates every problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import snncompile
from snncompile.spec.errors import SpecError, format_path
from snncompile.spec.load import MAX_DEPTH, MAX_NODES

REPO = Path(__file__).parent.parent
FC = (REPO / "specs" / "mnist_fc.yaml").read_text(encoding="utf-8")
TINY = """\
snncompile: 1
name: tiny
input: {shape: [4]}
steps: 2
defaults: {beta: 0.5}
layers:
  - {type: linear, name: fc1, out_features: 3}
  - {type: leaky, name: lif1}
train: {dataset: synthetic}
"""


def problems(text: str, fmt: str = "yaml") -> list:
    with pytest.raises(SpecError) as info:
        snncompile.analyze(snncompile.loads(text, file="t", fmt=fmt))
    return info.value.problems


def one(text: str, fmt: str = "yaml"):
    found = problems(text, fmt)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_tiny_is_valid():
    assert snncompile.analyze(snncompile.loads(TINY)).num_classes == 3


def test_exponent_floats_are_numbers():
    """YAML 1.1 reads 1e-3 as a string; specs follow YAML 1.2 and JSON."""
    spec = snncompile.loads(FC.replace("lr: 5.0e-4", "lr: 1e-3"))
    assert spec.train.optimizer.lr == pytest.approx(1e-3)
    spec = snncompile.loads(FC.replace("lr: 5.0e-4", "lr: 2E+0"))
    assert spec.train.optimizer.lr == 2.0


def test_dates_stay_text():
    spec = snncompile.loads(
        TINY.replace("name: tiny", "name: tiny\ndescription: 2024-05-01")
    )
    assert spec.description == "2024-05-01"


def test_merge_keys_with_override():
    text = TINY.replace(
        "  - {type: leaky, name: lif1}",
        "  - &hidden {type: leaky, name: lif0, reset: zero, beta: 0.7}\n"
        "  - {type: linear, name: fc2, out_features: 3}\n"
        "  - {<<: *hidden, name: lif1}",
    )
    spec = snncompile.loads(text)
    first, last = spec.layers[1], spec.layers[3]
    assert (last.name, last.reset, last.beta) == ("lif1", "zero", 0.7)
    assert first.name == "lif0"


def test_merged_mistake_points_at_its_origin():
    text = TINY.replace(
        "  - {type: leaky, name: lif1}",
        "  - &hidden {type: leaky, name: lif0, betta: 0.7}\n"
        "  - {type: linear, name: fc2, out_features: 3}\n"
        "  - {<<: *hidden, name: lif1}",
    )
    found = problems(text)
    assert [(p.line, format_path(p.path)) for p in found] == [
        (8, "layers[1].betta"),
        (8, "layers[3].betta"),
    ]


def test_recursive_merge_is_refused():
    problem = one("a: &x {<<: *x, b: 1}\n")
    assert "merges itself" in problem.message and problem.line == 1


def test_recursive_alias_is_refused():
    problem = one("a: &x [*x]\n")
    assert f"more than {MAX_DEPTH} levels" in problem.message


def test_deep_nesting_is_refused_with_position():
    problem = one("a: " + "[" * 5000 + "]" * 5000 + "\n")
    # the top mapping is the first level, the bracket at column 4 the second
    assert problem.line == 1 and problem.column == 4 + MAX_DEPTH - 1
    assert "nested" in problem.message


def test_deep_json_nesting_is_refused():
    problem = one('{"a": ' + "[" * 5000 + "]" * 5000 + "}", fmt="json")
    assert problem.line == 1 and "nested" in problem.message


def test_alias_bomb_is_refused():
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdef", "bcdefg"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    problem = one("\n".join(lines) + "\n")
    assert f"more than {MAX_NODES} values" in problem.message
    assert problem.line is not None


@pytest.mark.parametrize(
    "value, tag",
    [
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
        ("!!python/tuple [1, 2]", "!!python/tuple"),
        ("!custom 3", "!custom"),
    ],
)
def test_tags_are_refused(value, tag):
    problem = one(TINY.replace("steps: 2", f"steps: {value}"))
    assert (problem.line, problem.column, problem.path) == (4, 8, ("steps",))
    assert f"'{tag}' is not allowed" in problem.message


def test_number_keys_are_unknown_fields():
    problem = one(TINY + "3: 4\n")
    assert problem.path == ("3",) and problem.line == 10
    assert "unknown field '3'" in problem.message


def test_complex_keys_are_refused():
    problem = one(TINY + "? [a, b]\n: 4\n")
    assert problem.line == 10 and "keys must be plain names" in problem.message


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("steps: 2", "steps: true", "expected an integer or 'auto', got true"),
        ("steps: 2", "steps: 2.0", "expected an integer, got 2.0"),
        ("steps: 2", "steps: '2'", "remove the quotes"),
        ("beta: 0.5", "beta: yes", "boolean only in YAML 1.1"),
        ("beta: 0.5", "beta: .nan", "finite"),
        ("name: tiny", "name: 12", "expected a string, got 12"),
        ("name: tiny", "name: ", "expected a string, got null"),
    ],
)
def test_values_are_not_coerced(old, new, message):
    problem = one(TINY.replace(old, new))
    assert message in problem.message
    assert (
        problem.line
        == TINY.splitlines().index(
            next(line for line in TINY.splitlines() if old in line)
        )
        + 1
    )


def test_a_missing_key_points_at_its_mapping():
    problem = one(TINY.replace(", out_features: 3", ""))
    assert (problem.line, problem.column) == (7, 5)
    assert format_path(problem.path) == "layers[0].out_features"


def test_json_positions_with_tabs_and_escapes():
    data = yaml.safe_load(TINY)
    data["defaults"] = {"be\u0074a": 0.5, "tab\there": 1}
    text = json.dumps(data, indent="\t")
    problem = one(text, fmt="json")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "tab\\there" in s)
    assert problem.line == line and problem.column == 3
    assert problem.path == ("defaults", "tab\there")


def test_json_nan_is_refused():
    text = json.dumps(yaml.safe_load(TINY)).replace('"beta": 0.5', '"beta": NaN')
    problem = one(text, fmt="json")
    assert problem.path == ("defaults", "beta") and "finite" in problem.message


def test_json_numbers_keep_json_meaning():
    """1e-3 and 1E3 are numbers in JSON whatever YAML thinks of them."""
    data = yaml.safe_load(FC)
    text = json.dumps(data).replace("0.0005", "5e-4")
    assert snncompile.loads(text, fmt="json").train.optimizer.lr == 5e-4


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_yaml(text):
    problem = one(text)
    assert (problem.line, problem.column) == (1, 1) and "empty" in problem.message


def test_empty_json():
    problem = one("\n", fmt="json")
    assert "empty" in problem.message


def test_unreadable_files(tmp_path):
    binary = tmp_path / "bad.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path, fragment in ((binary, "cannot read file"), (tmp_path, "cannot read")):
        with pytest.raises(SpecError) as info:
            snncompile.load(path)
        (problem,) = info.value.problems
        assert problem.file == str(path) and fragment in problem.message


def test_problems_are_sorted_by_position():
    text = TINY.replace("steps: 2", "steps: 0").replace("beta: 0.5", "betta: 0.5")
    text += "extra: 1\n"
    found = problems(text)
    lines = [p.line for p in found]
    assert lines == sorted(lines) and len(found) == 3


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_byte_order_mark_is_ignored(tmp_path, suffix):
    data = yaml.safe_load(TINY)
    text = TINY if suffix == ".yaml" else json.dumps(data)
    path = tmp_path / f"bom{suffix}"
    path.write_text(text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert snncompile.load(path) == snncompile.loads(TINY)
