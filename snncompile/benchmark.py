"""`snncompile bench SPEC`: a thin entry to the benchmark harness, which is no
part of the package: benchmarks/bench.py, loaded by path from a source checkout
(pip install -e .). Without it (a wheel install) the command says so."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from .spec.errors import UserError

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
NAME = "snncompile_benchmarks_bench"  # its module name once loaded


def harness():
    """benchmarks/bench.py as a module (loaded once), or None where it is missing."""
    module = sys.modules.get(NAME)
    if module is None or Path(module.__file__) != HARNESS:
        if not HARNESS.is_file():
            return None
        spec = importlib.util.spec_from_file_location(NAME, HARNESS)
        module = sys.modules[NAME] = importlib.util.module_from_spec(spec)
        try:  # registered before it runs: dataclasses look their module up
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[NAME]
            raise
    return module


def configure_bench(parser: argparse.ArgumentParser) -> None:
    if (module := harness()) is not None:
        return module.configure_bench(parser)
    parser.add_argument(
        "spec", metavar="SPEC", nargs="?", help="YAML or JSON spec file"
    )
    parser.add_argument("options", nargs=argparse.REMAINDER, help="bench options")
    # `bench --workload NAME ...`: whatever follows, so that the error below shows
    parser.add_argument("--workload", nargs=argparse.REMAINDER, help="a workload")


def run_bench(args: argparse.Namespace) -> int:
    if (module := harness()) is None:
        raise UserError(
            "snncompile bench needs a source checkout: benchmarks/bench.py is not "
            "installed with the package; clone the repository and pip install -e ."
        )
    check_json(getattr(args, "json", None), getattr(args, "spec", None))
    return module.run_bench(args)


def check_json(path, spec) -> None:
    """--json names a file the report can be written to, checked before the
    benchmark runs (minutes): not the spec, not a directory, in an existing
    writable folder."""
    if path is None:
        return
    out = Path(path)
    if not str(path).strip():
        raise UserError("--json is empty: name the file to write")
    try:
        same = spec is not None and out.exists() and out.samefile(spec)
    except OSError:
        same = False
    if same:
        raise UserError(
            f"--json {out} is this command's input (the spec): it would be written "
            "over; choose another file"
        )
    if out.is_dir():
        raise UserError(f"--json {out} is a directory; name a file in it")
    parent = out.parent
    if not parent.exists():
        raise UserError(f"--json {out}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"--json {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (
        out.exists() and not os.access(out, os.W_OK)
    ):
        raise UserError(f"--json {out}: permission denied")
