"""A corpus of broken specs (tests/broken/): each one kind of mistake, each
reported as a SpecError naming the file, the exact line and column, the field
path and a message that says what is wrong."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from snncompile.cli import main
from snncompile.ir.analyze import analyze
from snncompile.spec import schema
from snncompile.spec.errors import SpecError, format_path
from snncompile.spec.load import load
from snncompile.types import get

BROKEN = Path(__file__).parent / "broken"
REPO = Path(__file__).parent.parent

# file -> (line, column, field path, message fragment); column None: not checked
CASES = {
    # syntax
    "yaml_missing_colon.yaml": (6, 1, "<top level>", "could not find expected ':'"),
    "yaml_unclosed_bracket.yaml": (5, 10, "<top level>", "'[' is never closed"),
    "tab_indent.yaml": (8, 1, "<top level>", "tabs"),
    "duplicate_key.yaml": (9, 1, "steps", "duplicate key 'steps' (first on line 6)"),
    "two_documents.yaml": (15, 1, "<top level>", "one YAML document"),
    "python_tag.yaml": (4, 14, "description", "'!!python/object/apply:os.system'"),
    "empty.yaml": (1, 1, "<top level>", "the file is empty"),
    "list_not_mapping.yaml": (1, 1, "<top level>", "must be a mapping"),
    "json_syntax.json": (11, 3, "<top level>", "invalid JSON"),
    "json_duplicate_key.json": (9, 59, "layers[1].out_features", "duplicate key"),
    # structure
    "unknown_top_level_key.yaml": (7, 1, "epochs", "unknown field 'epochs'"),
    "typo_betta.yaml": (12, 5, "layers[2].betta", "did you mean 'beta'?"),
    "json_unknown_key.json": (6, 16, "defaults.betta", "did you mean 'beta'?"),
    "unknown_layer_type.yaml": (12, 12, "layers[2].type", "did you mean 'leaky'?"),
    "json_wrong_layer_type.json": (3, 43, "layers[1].type", "unknown type 'dense'"),
    "unknown_surrogate.yaml": (10, 11, "defaults.surrogate.type", "'atan'?"),
    "unknown_encoding.yaml": (6, 20, "input.encoding.type", "unknown type 'poisson'"),
    "unknown_loss.yaml": (13, 14, "loss.type", "did you mean 'ce_membrane'?"),
    "unknown_optimizer.yaml": (16, 11, "train.optimizer.type", "'rmsprop'"),
    "unknown_decoding.yaml": (14, 9, "decoding.type", "did you mean 'rate'?"),
    "missing_type.yaml": (12, 5, "layers[2]", "missing 'type'"),
    "missing_out_features.yaml": (
        11,
        5,
        "layers[1].out_features",
        "missing required field 'out_features'",
    ),
    "missing_train.yaml": (2, 1, "train", "missing required field 'train'"),
    "format_version.yaml": (2, 13, "snncompile", "unsupported spec format version 2"),
    # value types
    "wrong_type_steps.yaml": (
        6,
        8,
        "steps",
        "expected an integer or 'auto', got 'five'",
    ),
    "wrong_type_quoted_number.yaml": (8, 9, "defaults.beta", "remove the quotes"),
    "json_tabs_string_steps.json": (
        5,
        11,
        "steps",
        "expected an integer or 'auto', got '5'",
    ),
    "wrong_type_shape.yaml": (5, 10, "input.shape", "expected a list, got 784"),
    "wrong_type_bool.yaml": (11, 55, "layers[1].bias", "expected true or false"),
    "wrong_type_kernel.yaml": (
        10,
        50,
        "layers[0].kernel_size",
        "expected an integer or a list of integers, got '3x3'",
    ),
    # ranges
    "beta_out_of_range.yaml": (8, 9, "defaults.beta", "less than or equal to 1"),
    "threshold_zero.yaml": (12, 42, "layers[2].threshold", "greater than 0, got 0"),
    "steps_zero.yaml": (6, 8, "steps", "greater than or equal to 1, got 0"),
    "negative_out_features.yaml": (11, 45, "layers[1].out_features", "got -10"),
    "not_finite.yaml": (15, 30, "train.optimizer.lr", "finite"),
    # names
    "name_injection.yaml": (11, 26, "layers[1].name", "';' (U+003B) is not allowed"),
    "name_unicode_lookalike.yaml": (11, 26, "layers[1].name", "(U+0441)"),
    "name_dunder.yaml": (12, 25, "layers[2].name", "may not start with '__'"),
    "duplicate_layer_names.yaml": (
        13,
        26,
        "layers[3].name",
        "'fc1' is already used by layers[1] (line 11)",
    ),
    # semantics: shapes, neurons, output
    "kernel_too_large.yaml": (
        10,
        63,
        "layers[0].kernel_size",
        "kernel 29 of conv1 (conv2d) is larger than the input height 28",
    ),
    "conv1d_two_kernel_sizes.yaml": (10, 63, "layers[0].kernel_size", "got [3, 5]"),
    "linear_after_conv.yaml": (
        12,
        5,
        "layers[2]",
        (
            "fc1 (linear) needs flat features [features] but lif1 (leaky) gives "
            "[4, 24, 24]; add a flatten layer"
        ),
    ),
    "input_shape_mismatch.yaml": (
        5,
        10,
        "input.shape",
        "mnist has samples of shape [1, 28, 28], not [3, 32, 32]",
    ),
    "wrong_class_count.yaml": (
        12,
        5,
        "layers[2]",
        "mnist has 10 classes but the output layer out has 12 neurons",
    ),
    "last_not_neuron.yaml": (13, 5, "layers[3]", "must be a spiking neuron layer"),
    "output_not_flat.yaml": (11, 5, "layers[1]", "one neuron per class"),
    "alpha_not_above_beta.yaml": (12, 37, "layers[2].alpha", "0 < beta < alpha < 1"),
    "missing_beta.yaml": (10, 5, "layers[2].beta", "leaky needs 'beta'"),
    "conv_recurrence_flat.yaml": (
        14,
        17,
        "layers[2].recurrence",
        "needs [channels, height, width], got [10]",
    ),
    "conv_recurrence_even_kernel.yaml": (
        15,
        20,
        "layers[1].recurrence.kernel_size",
        "odd kernel",
    ),
}

# files with several mistakes: every one is reported, in file order
SEVERAL = {
    "several_errors.yaml": [
        (6, 8, "steps", "greater than or equal to 1"),
        (8, 3, "defaults.betta", "unknown field 'betta'"),
        (11, 45, "layers[1].out_features", "greater than 0"),
        (12, 12, "layers[2].type", "unknown type 'leakyy'"),
    ],
    "several_semantic_errors.yaml": [
        (5, 10, "input.shape", "not [1, 32, 32]"),
        (12, 25, "layers[2].name", "'fc1' is already used"),
        (14, 5, "layers[4]", "has 12 neurons"),
    ],
}


def problems_of(path: Path) -> list:
    with pytest.raises(SpecError) as info:
        analyze(load(path))
    return info.value.problems


def test_corpus_is_complete():
    """Every file in the corpus has an expectation, and there are enough."""
    files = {p.name for p in BROKEN.iterdir()}
    assert files == set(CASES) | set(SEVERAL)
    assert len(files) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_spec(name):
    line, column, path, fragment = CASES[name]
    file = BROKEN / name
    problems = problems_of(file)
    assert len(problems) == 1, "\n".join(map(str, problems))
    problem = problems[0]
    assert problem.file == str(file)
    assert problem.line == line, str(problem)
    if column is not None:
        assert problem.column == column, str(problem)
    assert format_path(problem.path) == path, str(problem)
    assert fragment in problem.message, str(problem)
    # the printed form a user sees: file:line:column: path: message
    assert str(problem).startswith(f"{file}:{line}:{problem.column}: {path}: ")


@pytest.mark.parametrize("name", sorted(SEVERAL))
def test_every_error_of_a_file_is_reported(name):
    problems = problems_of(BROKEN / name)
    found = [(p.line, p.column, format_path(p.path)) for p in problems]
    assert found == [expected[:3] for expected in SEVERAL[name]]
    for problem, expected in zip(problems, SEVERAL[name]):
        assert expected[3] in problem.message, str(problem)


def _choices(union) -> list[str]:
    """The `type` names a discriminated union of the schema accepts."""
    members = typing.get_args(typing.get_args(union)[0])
    return [typing.get_args(m.model_fields["type"].annotation)[0] for m in members]


@pytest.mark.parametrize(
    "name, union",
    [
        ("unknown_layer_type.yaml", schema.Layer),
        ("json_wrong_layer_type.json", schema.Layer),
        ("unknown_surrogate.yaml", schema.Surrogate),
        ("unknown_encoding.yaml", schema.Encoding),
        ("unknown_loss.yaml", schema.Loss),
        ("unknown_optimizer.yaml", schema.Optimizer),
    ],
)
def test_unknown_type_lists_every_valid_choice(name, union):
    (problem,) = problems_of(BROKEN / name)
    choices = _choices(union)
    assert len(choices) >= 3
    assert "valid choices: " + ", ".join(choices) in problem.message


def test_unknown_decoding_lists_every_valid_choice():
    (problem,) = problems_of(BROKEN / "unknown_decoding.yaml")
    choices = typing.get_args(schema.Decoding.model_fields["type"].annotation)
    assert "valid choices: " + ", ".join(choices) in problem.message


def test_unknown_field_lists_the_valid_fields():
    (problem,) = problems_of(BROKEN / "typo_betta.yaml")
    for field in get("leaky").schema.model_fields:
        assert field in problem.message


def test_python_tag_never_runs(capfd):
    """The tag is refused while parsing; os.system is never called."""
    problems_of(BROKEN / "python_tag.yaml")
    out, err = capfd.readouterr()
    assert "pwned" not in out + err


# --------------------------------------------------------------------------- CLI
CLI_FILES = [
    "yaml_missing_colon.yaml",
    "typo_betta.yaml",
    "python_tag.yaml",
    "json_syntax.json",
    "linear_after_conv.yaml",
    "empty.yaml",
]


@pytest.mark.parametrize("name", CLI_FILES)
def test_cli_validate_reports_without_traceback(name):
    file = BROKEN / name
    line = CASES[name][0]
    run = subprocess.run(
        [sys.executable, "-m", "snncompile.cli", "validate", str(file)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert f"{file}:{line}:" in run.stderr
    assert run.stderr.strip().endswith("1 error")


def test_cli_validate_reports_every_file_and_every_error(capsys):
    files = sorted(BROKEN.iterdir())
    assert main(["validate", *map(str, files)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    expected = sum(len(SEVERAL.get(f.name, [None])) for f in files)
    assert err.strip().splitlines()[-1] == f"{expected} errors"
    for file in files:
        assert f"error: {file}:" in err


def test_cli_validate_mixes_good_and_bad_files(capsys):
    good = REPO / "specs" / "mnist_fc.yaml"
    bad = BROKEN / "steps_zero.yaml"
    assert main(["validate", str(good), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    assert f"{bad}:6:8: steps:" in err


def test_cli_validate_missing_file(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 2
    assert f"{missing}: <top level>: no such file" in capsys.readouterr().err
