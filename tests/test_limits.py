"""Limits checked before anything is allocated: the size of a spec file, YAML 1.1
forms that YAML 1.2 and JSON read differently, seeds torch cannot take, names
that would shadow a module, and the estimated training memory of a network
(snncompile/estimate.py); and specs built in Python report problems as files do."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from snncompile import Spec, analyze
from snncompile.cli import main
from snncompile.estimate import (
    FLOAT,
    WORKING,
    check_fits,
    estimate,
    fit_problem,
    machine_memory,
    size,
)
from snncompile.spec.errors import SpecError, UserError
from snncompile.spec.load import MAX_BYTES, MAX_NODES, MAX_SEED, load, loads, source_of

REPO = Path(__file__).parent.parent
MNIST_FC = REPO / "specs" / "mnist_fc.yaml"

TINY = """\
snncompile: 1
name: tiny
description: a tiny network
input: {shape: [1, 8, 8]}
steps: 4
defaults: {beta: 0.9}
layers:
  - type: flatten
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 10}
  - {type: leaky, name: lif2}
train:
  dataset: synthetic
  batch_size: 32
  seed: 1
  device: cpu
"""


def one(text: str, file: str = "tiny.yaml"):
    with pytest.raises(SpecError) as err:
        loads(text, file)
    (problem,) = err.value.problems
    return problem


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


# --------------------------------------------------------------------------- file size
def test_a_huge_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(40 * 2**20)  # 40 MiB (sparse): never read
    started = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load(path)
    assert time.perf_counter() - started < 1
    (problem,) = err.value.problems
    assert problem.file == str(path) and problem.line is None
    assert problem.message == (
        "the spec is a file of 40.0 MiB; a spec may hold at most 1.0 MiB "
        "(1,048,576 bytes)"
    )


def test_a_file_just_over_the_cap_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(TINY + "#" * (MAX_BYTES - len(TINY)) + "\n")
    with pytest.raises(SpecError, match="at most 1.0 MiB"):
        load(path)
    path.write_text(TINY + "#" * (MAX_BYTES - len(TINY) - 1) + "\n")  # at the cap
    assert load(path).name == "tiny"


def test_text_over_the_cap_is_refused():
    with pytest.raises(SpecError, match="at most 1.0 MiB"):
        loads(TINY + "#" * MAX_BYTES)


def test_the_composer_stops_at_the_node_limit():
    text = "a: [" + ",".join(["0"] * (MAX_NODES + 50_000)) + "]\n"
    assert len(text) < MAX_BYTES
    problem = one(text)
    assert f"more than {MAX_NODES} values" in problem.message
    assert problem.line == 1


# --------------------------------------------------------------------------- YAML 1.1 forms
@pytest.mark.parametrize(
    "old, new, path, fragment",
    [
        ("steps: 4", "steps: 025", ("steps",), "the octal number 21, YAML 1.2 as 25"),
        ("steps: 4", "steps: 04", ("steps",), "leading zero"),
        ("steps: 4", "steps: 1:30", ("steps",), "base-60 (sexagesimal) number 90"),
        ("steps: 4", "steps: 0x10", ("steps",), "hexadecimal"),
        ("steps: 4", "steps: 0b11", ("steps",), "the binary number 3"),
        ("steps: 4", "steps: 1_000", ("steps",), "reads 1_000 as 1000"),
        ("beta: 0.9", "beta: 0:30.5", ("defaults", "beta"), "base-60"),
        ("beta: 0.9", "beta: 1_0.5", ("defaults", "beta"), "write 10.5"),
        ("device: cpu", "drop_last: yes", ("train", "drop_last"), "write true"),
        ("device: cpu", "drop_last: off", ("train", "drop_last"), "write false"),
        ("device: cpu", "drop_last: On", ("train", "drop_last"), "YAML 1.1"),
        ("device: cpu", "drop_last: NO", ("train", "drop_last"), "YAML 1.1"),
    ],
)
def test_yaml_11_forms_are_errors_naming_file_line_and_field(old, new, path, fragment):
    text = TINY.replace(old, new)
    problem = one(text)
    assert problem.file == "tiny.yaml"
    assert problem.line == line_of(text, new) and problem.path == path
    assert fragment in problem.message
    assert "quote it" in problem.message


@pytest.mark.parametrize(
    "old, new",
    [
        ("description: a tiny network", "description: '025'"),
        ("description: a tiny network", 'description: "yes"'),
        ("description: a tiny network", "description: 'on'"),
        ("description: a tiny network", "description: '1:30'"),
        ("description: a tiny network", "description: yes please"),
        ("steps: 4", "steps: +4"),
        ("steps: 4", "steps: 0"),  # (then refused by the schema, not as a form)
        ("beta: 0.9", "beta: 9e-1"),
        ("beta: 0.9", "beta: .9"),
        ("beta: 0.9", "beta: 1."),
        ("device: cpu", "drop_last: True"),
        ("device: cpu", "drop_last: FALSE"),
    ],
)
def test_yaml_12_forms_and_quoted_strings_are_fine(old, new):
    text = TINY.replace(old, new)
    try:
        loads(text)
    except SpecError as err:
        assert all("YAML 1.1" not in p.message for p in err.problems), err


def test_keys_are_not_read_as_booleans():
    problem = one(TINY + "on: 1\n")
    assert problem.path == ("on",) and "unknown field 'on'" in problem.message


# --------------------------------------------------------------------------- seeds
def test_the_largest_seed_torch_takes_is_accepted():
    text = TINY.replace("seed: 1", f"seed: {MAX_SEED}")
    assert loads(text).train.seed == 2**64 - 1


@pytest.mark.parametrize("seed", [2**64, 2**70, 10**40])
def test_a_seed_above_2_64_is_refused(seed):
    text = TINY.replace("seed: 1", f"seed: {seed}")
    problem = one(text)
    assert problem.path == ("train", "seed") and problem.line == line_of(text, "seed:")
    assert "must be at most 2**64 - 1" in problem.message


def test_a_seed_above_2_64_is_refused_in_code_too():
    data = loads(TINY).model_dump(mode="json")
    data["train"]["seed"] = 2**64
    with pytest.raises(SpecError, match=r"<spec tiny>: train.seed: must be at most"):
        Spec.model_validate(data)


def test_train_seed_flag_above_2_64_is_one_line(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    code = main(
        ["train", str(spec), "--seed", str(2**64), "--out", str(tmp_path / "r")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "train.seed: must be at most 2**64 - 1" in err and "Traceback" not in err


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name, module",
    [
        ("json", "the standard library module 'json'"),
        ("os", "the standard library module 'os'"),
        ("Json", "the standard library module 'json'"),  # case-insensitive systems
        ("numpy", "the module 'numpy'"),
        ("torch", "the module 'torch'"),
        ("torchvision", "the module 'torchvision'"),
        ("sympy", "the module 'sympy'"),  # torch imports it
    ],
)
def test_spec_names_that_shadow_a_module_are_refused(name, module):
    text = TINY.replace("name: tiny", f"name: {name}")
    problem = one(text)
    assert problem.path == ("name",) and problem.line == 2
    assert module in problem.message
    assert f"its generated script {name}.py would shadow" in problem.message


def test_layers_may_take_module_names():
    text = TINY.replace("name: fc1", "name: json").replace("name: lif1", "name: os")
    assert loads(text).layers[1].name == "json"


# --------------------------------------------------------------------------- specs in code
def test_a_spec_built_in_code_reports_problems_as_a_file_does():
    data = loads(TINY).model_dump(mode="json")
    data["steps"] = 0
    data["layers"][1]["out_features"] = "x"
    data["layers"][2]["betta"] = 0.5
    for build in (lambda: Spec(**data), lambda: Spec.model_validate(data)):
        with pytest.raises(SpecError) as err:
            build()
        assert str(err.value).splitlines() == [
            "<spec tiny>: layers[1].out_features: expected an integer, got 'x'",
            "<spec tiny>: steps: must be greater than or equal to 1, got 0",
            (
                "<spec tiny>: layers[2].betta: unknown field 'betta' (did you mean "
                "'beta'?); valid fields: beta, threshold, reset, learn_beta, "
                "learn_threshold, per_neuron, surrogate, name, inputs, type"
            ),
        ]
    bad = dict(loads(TINY).model_dump(mode="json"), steps=0)
    with pytest.raises(SpecError, match=r"^<spec tiny>: steps: must be"):
        Spec.model_validate_json(json.dumps(bad))


def test_a_spec_built_in_code_from_models():
    spec = loads(TINY)
    fields = {name: getattr(spec, name) for name in type(spec).model_fields}
    assert Spec(**fields) == spec
    with pytest.raises(SpecError, match=r"<spec json>: name: 'json' cannot name"):
        Spec(**dict(fields, name="json"))


def test_a_spec_in_code_that_is_no_mapping():
    with pytest.raises(SpecError, match="<spec>: <top level>: expected a mapping"):
        Spec.model_validate([1, 2])


# --------------------------------------------------------------------------- memory
def test_estimate_of_mnist_fc():
    graph = analyze(load(MNIST_FC))
    found = estimate(graph)
    params = 795_010
    assert found.parameters == found.gradients == params * FLOAT
    assert found.optimizer == 2 * params * FLOAT  # adam: two moments
    batch, steps = 128, 25
    # the input [128, 784] and fc1 run once (time-invariant); lif1 and lif2 keep
    # spikes, membrane and surrogate input at every step; flatten is a view
    held = batch * (784 + 1000) + batch * steps * (1000 * 3 + 10 + 10 * 3)
    input_bytes = batch * 784 * FLOAT
    assert found.activations == input_bytes + (held - batch * 784) * FLOAT * WORKING
    assert found.total == found.parameters * 4 + found.activations
    assert found.describe().startswith(f"{size(found.total)} (parameters 3.2 MB")
    assert "for a batch of 128 over 25 steps" in found.describe()


def test_sgd_without_momentum_keeps_no_state():
    text = TINY.replace("device: cpu", "device: cpu\n  optimizer: {type: sgd, lr: 0.1}")
    assert estimate(analyze(loads(text))).optimizer == 0
    text = text.replace("lr: 0.1}", "lr: 0.1, momentum: 0.9}")
    found = estimate(analyze(loads(text)))
    assert found.optimizer == found.parameters


def test_activations_grow_with_batch_and_steps():
    graph = analyze(loads(TINY))
    small = estimate(graph)
    assert estimate(graph, batch_size=64).activations > small.activations
    longer = analyze(loads(TINY.replace("steps: 4", "steps: 40")))
    assert estimate(longer).activations > small.activations
    assert estimate(longer).parameters == small.parameters


def test_check_fits():
    graph = analyze(loads(TINY))
    found = check_fits(graph)
    assert found.total < 10**6
    with pytest.raises(UserError) as err:
        check_fits(graph, limit=1000)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("tiny cannot be trained here: estimated training memory")
    assert "exceeds the 1.0 kB of the given limit" in message


def test_fit_problem_is_located_at_the_heaviest_layer():
    spec = loads(TINY, "tiny.yaml")
    problem = fit_problem(analyze(spec), source_of(spec), limit=1000)
    # lif1 keeps three tensors of 16 per step: more than fc1's weights
    assert problem.file == "tiny.yaml" and problem.path == ("layers", 2)
    assert problem.line == line_of(TINY, "name: lif1")
    assert fit_problem(analyze(spec), source_of(spec)) is None


def huge_spec(tmp_path) -> Path:
    """About 16e9 parameters: eight 44722 x 44722 layers (each under torch's
    2**31 elements per tensor)."""
    width = 44_722
    layers = "\n".join(
        f"  - {{type: linear, name: fc{i}, out_features: {width}}}\n"
        f"  - {{type: leaky, name: lif{i}}}"
        for i in range(1, 9)
    )
    path = tmp_path / "huge.yaml"
    path.write_text(
        "snncompile: 1\nname: huge\ninput: {shape: [44722]}\nsteps: 2\n"
        f"defaults: {{beta: 0.9}}\nlayers:\n{layers}\ntrain: {{dataset: synthetic}}\n"
    )
    return path


def test_a_network_of_16e9_parameters_is_refused(tmp_path, capsys):
    path = huge_spec(tmp_path)
    graph = analyze(load(path))
    assert 16e9 < graph.num_params < 16.01e9
    if (machine_memory() or 0) > estimate(graph).total:
        pytest.skip("this machine could hold it")
    started = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == "1 error"
    assert err[0].startswith(f"error: {path}:")
    assert re.search(r":\d+:5: layers\[\d+\]: huge cannot be trained here", err[0])
    assert "estimated training memory 258.9 GB (parameters 64.0 GB" in err[0]
    with pytest.raises(UserError, match="huge cannot be trained here"):
        check_fits(graph)  # what train calls before building the network


def test_train_refuses_it_before_allocating(tmp_path, capsys):
    path = huge_spec(tmp_path)
    if (machine_memory() or 0) > estimate(analyze(load(path))).total:
        pytest.skip("this machine could hold it")
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--compile", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huge cannot be trained here" in err[0]
    assert not out.exists()  # refused before the run directory and the weights


def test_inspect_reports_the_estimate(tmp_path, capsys):
    assert main(["inspect", str(MNIST_FC)]) == 0
    found = estimate(analyze(load(MNIST_FC)))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"training memory (estimate): {found.describe()}"
    assert main(["inspect", "--json", str(MNIST_FC)]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["training_memory"]["total_bytes"] == found.total
    assert main(["inspect", str(huge_spec(tmp_path))]) == 0
    assert capsys.readouterr().out.rstrip().endswith("train refuses it")


def test_validate_reports_the_estimate(capsys):
    assert main(["validate", str(MNIST_FC)]) == 0
    total = estimate(analyze(load(MNIST_FC))).total
    assert (
        f"795,010 parameters, about {size(total)} to train)" in capsys.readouterr().out
    )
