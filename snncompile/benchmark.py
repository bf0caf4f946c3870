"""`snncompile bench SPEC`: a thin entry to the benchmark harness, which is no
part of the package: benchmarks/bench.py, loaded by path from a source checkout
(pip install -e .). Without it (a wheel install) the command says so."""

from __future__ import annotations

import argparse
import importlib.util
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
    parser.add_argument("spec", metavar="SPEC", help="YAML or JSON spec file")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="bench options")


def run_bench(args: argparse.Namespace) -> int:
    if (module := harness()) is None:
        raise UserError(
            "snncompile bench needs a source checkout: benchmarks/bench.py is not "
            "installed with the package; clone the repository and pip install -e ."
        )
    return module.run_bench(args)
