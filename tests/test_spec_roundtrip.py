"""Every example spec validates, analyzes and survives YAML and JSON round trips;
the committed JSON Schema is current and every example points editors at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import snncompile
from snncompile.cli import schema_text
from snncompile.ir.analyze import analyze

REPO = Path(__file__).parent.parent
SPECS = sorted((REPO / "specs").glob("*.yaml"))
SCHEMA = REPO / "snncompile" / "schema" / "spec.schema.json"


def test_there_are_example_specs():
    assert len(SPECS) >= 4


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_roundtrip(path, tmp_path):
    spec = snncompile.load(path)
    graph = analyze(spec)
    data = spec.model_dump(mode="json")
    as_yaml = yaml.safe_dump(data, sort_keys=False)
    as_json = json.dumps(data, indent=2)
    for text, fmt in ((as_yaml, "yaml"), (as_json, "json")):
        again = snncompile.loads(text, fmt=fmt)
        assert again == spec
        assert again.model_dump() == spec.model_dump()
        assert analyze(again) == graph
    # a .json file is read as JSON by its extension
    file = tmp_path / f"{path.stem}.json"
    file.write_text(as_json, encoding="utf-8")
    assert snncompile.load(file) == spec


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_roundtrip_changes_what_differs(path):
    """Equality is not vacuous: one changed field makes the specs differ."""
    spec = snncompile.load(path)
    data = spec.model_dump(mode="json")
    data["train"]["seed"] += 1
    assert snncompile.loads(yaml.safe_dump(data)) != spec


def test_committed_schema_is_current():
    assert SCHEMA.read_text(encoding="utf-8") == schema_text()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_references_schema(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    target = (path.parent / first[len(prefix) :].strip()).resolve()
    assert target == SCHEMA.resolve()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_schema_accepts_examples(path):
    """What editors check (the JSON Schema) agrees with the loader."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_text())
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    bad = dict(data, betta=0.5)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
