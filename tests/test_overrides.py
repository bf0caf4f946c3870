"""`--set path.to.field=value`: overrides applied to the parsed spec before it is
checked, so they are validated like the file, and their problems name the
`--set` argument (spec/load.py: apply_overrides, load(overrides=...))."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from snncompile.cli import COMMANDS, SPEC_ARGUMENT, main
from snncompile.spec.errors import SpecError
from snncompile.spec.load import (
    OVERRIDES_ENV,
    apply_overrides,
    cli_overrides,
    effective_text,
    load,
    loads,
    parse_text,
)

REPO = Path(__file__).parent.parent
MNIST_FC = REPO / "specs" / "mnist_fc.yaml"

TINY = """\
snncompile: 1
name: tiny
input: {shape: [1, 8, 8]}
steps: 4
defaults: {beta: 0.9}
layers:
  - type: flatten
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky}
  - {type: linear, out_features: 10}
  - {type: leaky, name: out}
train:
  dataset: synthetic
  batch_size: 32
  limit_train: 64
  limit_test: 64
  device: cpu
"""


def data() -> dict:
    return parse_text(TINY, "tiny.yaml")[0]


def problems(assignments, text=TINY) -> list:
    with pytest.raises(SpecError) as err:
        loads(text, "tiny.yaml", overrides=assignments)
    return err.value.problems


def one(assignments, text=TINY):
    (problem,) = problems(assignments, text)
    return problem


# --------------------------------------------------------------------------- paths
def test_apply_overrides_returns_a_changed_copy():
    original = data()
    changed = apply_overrides(original, ["steps=9", "train.batch_size=8"])
    assert changed["steps"] == 9 and changed["train"]["batch_size"] == 8
    assert original == data()  # untouched


@pytest.mark.parametrize(
    "assignment",
    [
        "layers.1.out_features=20",  # an index
        "layers[1].out_features=20",  # as problems print paths
        "layers.fc1.out_features=20",  # a layer's own name
    ],
)
def test_list_items_by_index_or_name(assignment):
    assert apply_overrides(data(), [assignment])["layers"][1]["out_features"] == 20


def test_default_layer_names_as_analysis_gives_them():
    changed = apply_overrides(data(), ["layers.lif1.beta=0.5", "layers.fc2.bias=false"])
    assert changed["layers"][2]["beta"] == 0.5  # the unnamed leaky: lif1
    assert (
        changed["layers"][3]["bias"] is False
    )  # the unnamed linear: fc2 (fc1 is taken)


def test_values_are_yaml():
    changed = apply_overrides(
        data(),
        [
            "input.shape=[1, 4, 16]",
            "train.optimizer={type: sgd, lr: 0.1, momentum: 0.9}",
            "description=a string: quoted 'like this'",
            "train.limit_test=",  # nothing: null
            "train.drop_last=false",
            "name='007'",  # quoted: a string
        ],
    )
    assert changed["input"]["shape"] == [1, 4, 16]
    assert changed["train"]["optimizer"] == {"type": "sgd", "lr": 0.1, "momentum": 0.9}
    assert changed["description"] == {"a string": "quoted 'like this'"}
    assert changed["train"]["limit_test"] is None
    assert changed["train"]["drop_last"] is False
    assert changed["name"] == "007"


def test_absent_fields_are_added_and_unset_blocks_keep_their_default():
    spec = loads(TINY, overrides=["train.optimizer.lr=0.02", "train.seed=5"])
    assert spec.train.optimizer.type == "adam"  # the default optimizer, changed
    assert spec.train.optimizer.lr == 0.02 and spec.train.seed == 5
    spec = loads(TINY, overrides=["train.schedule.type=cosine"])
    assert spec.train.schedule.type == "cosine"


def test_the_last_assignment_wins():
    spec = loads(TINY, overrides=["steps=5", "steps=7"])
    assert spec.steps == 7


def test_load_applies_overrides_to_a_file():
    spec = load(
        MNIST_FC, overrides=["train.optimizer.lr=0.001", "layers.lif1.beta=0.5"]
    )
    assert spec.train.optimizer.lr == 0.001
    assert spec.layers[2].beta == 0.5
    assert load(MNIST_FC).train.optimizer.lr == 5e-4  # the file is unchanged


# --------------------------------------------------------------------------- problems
def test_a_bad_value_names_the_set_argument():
    problem = one(["train.optimizer.lr=abc"])
    assert str(problem) == (
        "--set train.optimizer.lr=abc: train.optimizer.lr: expected a number, got 'abc'"
    )


def test_a_bad_value_in_a_file_still_points_at_the_file():
    text = TINY.replace("batch_size: 32", "batch_size: -1")
    found = problems(["steps=0"], text)
    assert {p.file for p in found} == {"--set steps=0", "tiny.yaml"}
    (in_file,) = [p for p in found if p.file == "tiny.yaml"]
    assert in_file.line == 14 and in_file.path == ("train", "batch_size")


def test_fields_a_new_type_lacks_name_the_set():
    text = TINY.replace(
        "  device: cpu\n",
        "  device: cpu\n  optimizer: {type: adam, betas: [0.8, 0.9]}\n",
    )
    found = {p.path[-1]: p for p in problems(["train.optimizer.type=sgd"], text)}
    betas, lr = found["betas"], found["lr"]
    assert betas.file == "tiny.yaml" and betas.line == 18  # in the file...
    assert "unknown field 'betas'" in betas.message
    assert "(after --set train.optimizer.type=sgd)" in betas.message  # ...but why
    assert lr.message == (
        "missing required field 'lr' (after --set train.optimizer.type=sgd)"
    )


@pytest.mark.parametrize(
    "assignment, path, message",
    [
        (
            "train.optimzer.lr=1",
            "train.optimzer",
            "unknown field 'optimzer' (did you mean 'optimizer'?)",
        ),
        ("stpes=3", "stpes", "unknown field 'stpes' (did you mean 'steps'?)"),
        (
            "layers.fc1.beta=0.5",
            "layers[1].beta",
            "unknown field 'beta' of a linear layer",
        ),
        ("layers.fc3.beta=1", "layers.fc3", "no item named 'fc3' in layers"),
        ("layers.lif.beta=1", "layers.lif", "(did you mean 'lif1'?)"),
        ("layers.9.beta=1", "layers.9", "no item 9: layers has 5 (indices 0 to 4)"),
        ("steps.x=1", "steps", "steps is 4, not a mapping or list"),
        ("steps", "<top level>", "expected PATH=VALUE"),
        ("=3", "<top level>", "expected PATH=VALUE"),
        ("a..b=3", "<top level>", "expected PATH=VALUE"),
        ("input.shape=[1, 2", "input.shape", "invalid YAML"),
        ("steps=025", "steps", "octal"),
        ("train.drop_last=yes", "train.drop_last", "boolean only in YAML 1.1"),
        ("steps=!!python/object:os.system x", "steps", "not allowed"),
    ],
)
def test_path_and_value_problems(assignment, path, message):
    problem = one([assignment])
    assert problem.file == f"--set {assignment}"
    assert problem.line is None
    assert str(problem).startswith(f"--set {assignment}: {path}: "), str(problem)
    assert message in problem.message


def test_every_bad_assignment_is_reported_at_once():
    found = problems(["stpes=3", "train.optimizer.lr=x", "layers.9.beta=1"])
    # path problems first (values are checked once the paths are right)
    assert [p.file for p in found] == ["--set layers.9.beta=1", "--set stpes=3"]


# --------------------------------------------------------------------------- the effective spec
def test_effective_text_is_the_file_without_overrides():
    spec = load(MNIST_FC)
    assert effective_text(spec) == MNIST_FC.read_text(encoding="utf-8")


def test_effective_text_with_overrides_loads_back_to_the_same_spec():
    assignments = ["train.optimizer.lr=0.001", "layers.lif1.beta=0.5", "name=other"]
    spec = load(MNIST_FC, overrides=assignments)
    text = effective_text(spec)
    assert text.startswith(f"# the spec {json.dumps(str(MNIST_FC))} with overrides:")
    for assignment in assignments:
        assert f"#   --set {json.dumps(assignment)}\n" in text
    assert loads(text) == spec


def test_effective_text_of_a_spec_built_in_code():
    spec = loads(TINY)
    from snncompile.spec.schema import Spec

    built = Spec.model_validate(spec.model_dump(mode="json"))
    assert loads(effective_text(built)) == spec


def test_effective_text_keeps_strings_that_look_like_numbers():
    spec = loads(TINY, overrides=["description='025'", "layers.fc1.name=on_"])
    assert loads(effective_text(spec)) == spec


# --------------------------------------------------------------------------- command line
def test_every_command_that_reads_a_spec_takes_set(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert ("--set PATH=VALUE" in out) == (command in SPEC_ARGUMENT), command


def test_validate_with_set(capsys):
    assert (
        main(["validate", str(MNIST_FC), "--set", "layers.fc1.out_features=100"]) == 0
    )
    out = capsys.readouterr().out
    assert f"{784 * 100 + 100 + 100 * 10 + 10:,} parameters" in out


def test_validate_with_a_bad_set_exits_2_naming_it(capsys):
    code = main(["validate", str(MNIST_FC), "--set", "train.optimizer.lr=abc"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "error: --set train.optimizer.lr=abc: train.optimizer.lr: expected a "
        "number, got 'abc'"
    )
    assert "Traceback" not in err


def test_a_malformed_set_is_refused_before_any_work(capsys):
    assert main(["inspect", str(MNIST_FC), "--set", "lr"]) == 2
    assert (
        "error: --set lr: <top level>: expected PATH=VALUE" in capsys.readouterr().err
    )


def test_inspect_with_set(capsys):
    assert main(["inspect", "--json", str(MNIST_FC), "--set", "steps=5"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["steps"] == 5


def test_cli_overrides_apply_to_the_named_files_only_and_end(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(TINY)
    with cli_overrides([str(MNIST_FC)], ["steps=3"]):
        assert load(MNIST_FC).steps == 3
        assert load(os.path.relpath(MNIST_FC)).steps == 3  # the same file
        assert load(other).steps == 4
        # explicit overrides come after the command line's
        assert load(MNIST_FC, overrides=["steps=6"]).steps == 6
    assert OVERRIDES_ENV not in os.environ
    assert load(MNIST_FC).steps == 25


def test_train_saves_the_effective_spec(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(spec),
            "--out",
            str(out),
            "--quiet",
            "--compile",
            "none",
            "--set",
            "train.optimizer.lr=0.005",
            "--set",
            "layers.fc1.out_features=12",
        ]
    )
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / "spec.yaml").read_text())
    assert saved["train"]["optimizer"]["lr"] == 0.005
    assert saved["layers"][1]["out_features"] == 12
