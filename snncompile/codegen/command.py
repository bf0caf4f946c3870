"""`snncompile codegen`: one standalone training script per spec.

Writes OUT/<spec name>.py (default OUT: generated/) for every spec given; with
--check it writes nothing and exits 1 naming each file that is missing or differs
from a fresh render (for CI: generated/ must match specs/).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..paths import make_directory
from ..spec.errors import SpecError, UserError

PACKAGE_INIT = '"""Standalone training scripts written by `snncompile codegen`."""\n'


def configure_codegen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "specs", nargs="+", metavar="SPEC", help="YAML or JSON spec files"
    )
    parser.add_argument(
        "-o",
        "--out",
        default="generated",
        metavar="DIR",
        help="folder of the scripts, named <spec name>.py (default: generated)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a script is missing or out of date",
    )


def render_files(paths: list[str], out: Path) -> dict[Path, tuple[str, str]]:
    """Target file -> (spec path, script text) for every spec; raises SpecError
    with every spec's problems, or UserError if one cannot be rendered."""
    from ..ir.analyze import analyze
    from ..spec.load import load
    from .render import render_script

    files: dict[Path, tuple[str, str]] = {}
    problems = []
    for path in paths:
        try:
            spec = load(path)
            graph = analyze(spec)
        except SpecError as err:
            problems.extend(err.problems)
            continue
        target = out / f"{graph.name}.py"
        if target in files:
            raise UserError(
                f"{path} and {files[target][0]} both name the model {graph.name!r}; "
                f"both would write {target}"
            )
        try:
            text = render_script(graph, spec.description)
        except ValueError as err:  # ident()/lit() refused a name or a value
            raise UserError(f"{path}: cannot generate code: {err}") from None
        files[target] = (path, text)
    if problems:
        raise SpecError(problems)
    return files


def run_codegen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    files = render_files(args.specs, out)
    if args.check:
        stale = []
        for target, (spec, text) in files.items():
            if not target.is_file():
                stale.append(f"{target}: missing (from {spec})")
            elif target.read_bytes() != text.encode("utf-8"):
                stale.append(f"{target}: out of date (differs from a render of {spec})")
        for line in stale:
            print(line, file=sys.stderr)
        if stale:
            print(
                f"{len(stale)} of {len(files)} scripts need `snncompile codegen "
                f"-o {out} SPEC...`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(files)} scripts in {out} are up to date")
        return 0
    init = out / "__init__.py"
    refuse_inputs([init, *files], args.specs)
    make_directory(out, "-o")
    if not init.exists():  # `from generated.NAME import Net`
        with writing(init):
            init.write_text(PACKAGE_INIT, encoding="utf-8")
    for target, (spec, text) in files.items():
        data = text.encode("utf-8")
        if target.is_file() and target.read_bytes() == data:
            print(f"{target}: unchanged")
            continue
        with writing(target):
            target.write_bytes(data)
        print(f"{target}: written (from {spec})")
    return 0


def refuse_inputs(targets, specs) -> None:
    """UserError if a script would be written over a spec file given (a spec
    in a file named <its name>.py in the -o folder)."""
    for target in targets:
        for spec in specs:
            try:
                same = target.exists() and Path(spec).exists() and target.samefile(spec)
            except OSError:
                same = False
            if same:
                raise UserError(
                    f"{target} is this command's input (the spec {spec}): it would "
                    "be written over; choose another -o"
                )


@contextlib.contextmanager
def writing(path: Path):
    """A failed write (no permission, disk full) as one UserError."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
