"""The package's layers import in one direction: no cycles between spec, ir,
lower, codegen, export, train (and the others), counting imports inside
functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snncompile"
LAYERS = ("spec", "ir", "lower", "codegen", "export", "train")


def _unit(module: str) -> str:
    """snncompile.<unit>...: a subpackage, or a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "snncompile"


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges() -> dict[str, set[str]]:
    """unit -> the units it imports from (relative or absolute imports)."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_of(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        here = _unit(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[
                        : len(package.split(".")) - node.level + 1
                    ]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets.append(target)
                if node.module is None or target == "snncompile":
                    targets += [  # `from .. import name`: a submodule, if one
                        f"{target}.{a.name}"
                        for a in node.names
                        if (PACKAGE / a.name).is_dir()
                        or (PACKAGE / f"{a.name}.py").is_file()
                    ]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            for target in targets:
                if target.startswith("snncompile") and _unit(target) != here:
                    edges.setdefault(here, set()).add(_unit(target))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def visit(node, trail):
        for nxt in sorted(edges.get(node, ())):
            if nxt in trail:
                found.append(trail[trail.index(nxt) :] + [nxt])
            elif len(trail) < 12:
                visit(nxt, trail + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_no_import_cycles_between_the_layers():
    edges = import_edges()
    for layer in LAYERS:
        assert layer in edges or any(layer in v for v in edges.values()), layer
    # the root package is a facade (snncompile.build imports lower lazily): its
    # own imports are not a layer's dependency
    edges.pop("snncompile", None)
    edges = {k: {v for v in vs if v != "snncompile"} for k, vs in edges.items()}
    assert cycles(edges) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        ["c", "a", "b", "c"],
    ]
