"""`snncompile validate | inspect | schema` on the example specs."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import snncompile
from snncompile.cli import main, schema_text
from snncompile.spec.schema import Spec

REPO = Path(__file__).parent.parent
SPECS = sorted((REPO / "specs").glob("*.yaml"))
MNIST_FC = REPO / "specs" / "mnist_fc.yaml"


def test_validate_all_examples(capsys):
    assert main(["validate", *map(str, SPECS)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for path in SPECS:
        assert f"{path}: ok" in out


def test_validate_as_a_program():
    """The installed entry point, in a fresh interpreter."""
    run = subprocess.run(
        [sys.executable, "-m", "snncompile.cli", "validate", *map(str, SPECS)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(": ok (") == len(SPECS)


def test_inspect_mnist_fc(capsys):
    assert main(["inspect", str(MNIST_FC)]) == 0
    out = capsys.readouterr().out
    # 784*1000 + 1000 + 1000*10 + 10, the snnTorch tutorial 5 network
    expected = 784 * 1000 + 1000 + 1000 * 10 + 10
    assert expected == 795_010
    assert f"{expected:,} parameters" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line}
    assert rows["fc1"][-1] == "yes"  # time-invariant: computed once for all steps
    assert rows["flatten1"][-1] == "yes"
    for name in ("lif1", "fc2", "lif2"):
        assert rows[name][-1] == "-"


def test_inspect_json_agrees_with_table(capsys):
    assert main(["inspect", "--json", str(MNIST_FC)]) == 0
    report = json.loads(capsys.readouterr().out)
    layers = {row["name"]: row for row in report["layers"]}
    assert report["totals"]["parameters"] == sum(
        r["parameters"] for r in layers.values()
    )
    assert report["totals"]["parameters"] == 795_010
    assert layers["fc1"]["time_invariant"] is True
    assert layers["lif1"]["time_invariant"] is False
    assert layers["fc1"]["input"] == [784] and layers["fc1"]["output"] == [1000]
    # each layer's input is the previous layer's output
    rows = report["layers"]
    for before, after in itertools.pairwise(rows):
        assert after["input"] == before["output"]
    assert rows[0]["input"] == [1, 28, 28]
    for row in rows:
        stateful = bool(row["state"])
        assert row["neurons"] == (math.prod(row["output"]) if stateful else 0)


def test_inspect_every_example_as_json(capsys):
    for path in SPECS:
        assert main(["inspect", "--json", str(path)]) == 0
        report = json.loads(capsys.readouterr().out)
        graph = snncompile.analyze(snncompile.load(path))  # 10 classes, 20, 3 targets
        assert report["layers"][-1]["output"] == [graph.num_classes]
        assert graph.num_classes == (
            10
            if path.stem.startswith(("mnist", "fashion", "nmnist"))
            else {
                "shd_alif": 20,
                "shd_recurrent": 20,
                "regression_li": 3,
                "tensors_example": 4,
            }[path.stem]
        )


def test_inspect_broken_spec_exits_2(capsys):
    broken = REPO / "tests" / "broken" / "linear_after_conv.yaml"
    assert main(["inspect", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:12:5: layers[2]:" in err
    assert "Traceback" not in err


def test_schema_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    schema = json.loads(out)
    assert out == schema_text()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == set(Spec.model_fields)
    assert set(schema["required"]) == {
        name for name, field in Spec.model_fields.items() if field.is_required()
    }


def test_schema_to_file(tmp_path, capsys):
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_text(encoding="utf-8") == schema_text()
