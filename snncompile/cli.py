"""The `snncompile` command line.

Built-in commands: validate, schema, inspect. Others live in their own modules,
each defining `configure(parser)` and `run(args) -> int`, imported only when used.
A user error never shows a traceback: it is printed and the exit status is 2.

Every command that reads spec files (`SPEC_ARGUMENT`) takes `--set
path.to.field=value` (repeatable): while it runs, load() applies them to those
files (spec/load.py: cli_overrides), in its own process and those it starts.
`validate` imports no torch: keep its imports to spec/, ir/ and estimate.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from .jsonout import dumps
from .spec.errors import SpecError, UserError

COMMANDS = {  # name -> (module, one-line help)
    "validate": ("snncompile.cli", "check spec files; exit 2 with every error"),
    "schema": ("snncompile.cli", "print the JSON Schema of the spec language"),
    "inspect": ("snncompile.cli", "table of layers, shapes, parameters and state"),
    "train": (
        "snncompile.train.command",
        "train and evaluate a spec; writes a run directory",
    ),
    "eval": (
        "snncompile.train.command",
        "evaluate a checkpoint (or an ONNX or NIR model)",
    ),
    "codegen": (
        "snncompile.codegen.command",
        "write standalone PyTorch training scripts",
    ),
    "export": (
        "snncompile.export.command",
        "export ONNX (sequence or step) or NIR, and verify it",
    ),
    "import": (
        "snncompile.export.nir",
        "import a NIR graph as a spec and checkpoint",
    ),
    "bench": (
        "snncompile.benchmark",
        "benchmark training/inference against the snnTorch loop",
    ),
    "sweep": (
        "snncompile.train.sweep",
        "search hyperparameters of a spec's sweep: block (Optuna); a run per trial",
    ),
}


# the argument naming the spec file(s) of each command that reads specs: these
# commands take --set (a new one reading specs adds itself here)
SPEC_ARGUMENT = {
    "validate": "specs",
    "inspect": "spec",
    "train": "spec",
    "eval": "spec",
    "codegen": "specs",
    "export": "spec",
    "bench": "spec",
    "sweep": "spec",
}
SET_HELP = (
    "override a field of the spec before it is checked, e.g. "
    "--set train.optimizer.lr=0.001 --set layers.fc1.out_features=500 "
    "(a list item by index or layer name; the value is YAML: 0.9, true, "
    "[1, 28, 28], {type: sgd, lr: 0.1}); repeatable, the last wins"
)


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """--set PATH=VALUE (repeatable) into args.overrides (unless the command
    defines its own --set)."""
    if any("--set" in action.option_strings for action in parser._actions):
        return
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help=SET_HELP,
    )


# --------------------------------------------------------------------------- validate
def configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "specs", nargs="+", metavar="SPEC", help="YAML or JSON spec files"
    )


def run_validate(args: argparse.Namespace) -> int:
    from .estimate import estimate, fit_problem, size
    from .ir.analyze import analyze
    from .spec.load import load, source_of

    problems = []
    for path in args.specs:
        try:
            spec = load(path)
            graph = analyze(spec)
        except SpecError as err:
            problems.extend(err.problems)
            continue
        too_large = fit_problem(graph, source_of(spec))
        if too_large is not None:
            problems.append(too_large)
            continue
        memory = estimate(graph)
        if memory.steps:
            train = f"about {size(memory.total)} to train"
        else:  # steps: auto: the data decides
            fixed = memory.total - memory.activations
            train = (
                f"about {size(fixed)} to train plus {size(memory.activations)} "
                "per time step of the data"
            )
        print(
            f"{path}: ok ({graph.name}: {len(graph.nodes)} layers, "
            f"{graph.num_params:,} parameters, {train})"
        )
    if problems:
        raise SpecError(problems)
    return 0


# --------------------------------------------------------------------------- schema
def configure_schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")


def schema_text() -> str:
    from .spec.schema import Spec

    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "snncompile spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def run_schema(args: argparse.Namespace) -> int:
    text = schema_text()
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as err:  # a missing folder, a directory, no space...
            raise UserError(
                f"cannot write -o {args.output}: {err.strerror or err}"
            ) from None
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------- inspect
def configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def run_inspect(args: argparse.Namespace) -> int:
    from .estimate import estimate, machine_memory, size
    from .ir.analyze import analyze
    from .spec.load import load

    graph = analyze(load(args.spec))
    memory = estimate(graph)
    available = machine_memory()
    rows = [
        {
            "name": n.name,
            "type": n.type,
            "inputs": list(n.inputs),
            "input": list(n.in_shape),
            "input_shapes": [list(s) for s in n.in_shapes],
            "output": list(n.out_shape),
            "parameters": n.num_params,
            "neurons": n.neurons,
            "state": list(n.states),
            "time_invariant": n.time_invariant,
        }
        for n in graph.nodes
    ]
    totals = {
        "parameters": graph.num_params,
        "neurons": sum(n.neurons for n in graph.nodes),
        "steps": graph.steps,
        "encoding": graph.encoding["type"],
        "decoding": graph.decoding,
        "loss": graph.loss["type"],
        "training_memory": {**memory.as_dict(), "machine_bytes": available},
    }
    if args.json:
        print(dumps({"name": graph.name, "layers": rows, "totals": totals}, indent=2))
        return 0
    graph_columns = not graph.is_chain()  # a DAG: which layers each one reads
    header = [
        "name",
        "type",
        *(["reads"] if graph_columns else []),
        "input",
        "output",
        "params",
        "neurons",
        "state",
        "time-inv.",
    ]
    table = [
        [
            r["name"],
            r["type"],
            *([",".join(r["inputs"])] if graph_columns else []),
            " + ".join(_shape(s) for s in r["input_shapes"]),
            _shape(r["output"]),
            f"{r['parameters']:,}",
            f"{r['neurons']:,}" if r["neurons"] else "-",
            ",".join(r["state"]) or "-",
            "yes" if r["time_invariant"] else "-",
        ]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)
    ]
    right = {4 + graph_columns, 5 + graph_columns}
    fmt = lambda row: "  ".join(
        c.rjust(w) if i in right else c.ljust(w)
        for i, (c, w) in enumerate(zip(row, widths))
    )
    print(
        f"{graph.name}: {graph.steps} steps, {graph.encoding['type']} encoding, "
        f"{graph.decoding} decoding, {graph.loss['type']} loss"
    )
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print(fmt(row))
    print(
        f"total: {totals['parameters']:,} parameters, {totals['neurons']:,} spiking neurons"
    )
    fits = ""
    if available is not None and memory.total > available:
        fits = f"; more than this machine's {size(available)}: train refuses it"
    print(f"training memory (estimate): {memory.describe()}{fits}")
    return 0


# --------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="snncompile",
        description="Declarative model compiler for spiking neural networks.",
    )
    parser.add_argument(
        "--version", action="version", version=f"snncompile {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _command(name: str):
    module_name = COMMANDS[name][0]
    if module_name == __name__:
        return globals()[f"configure_{name}"], globals()[f"run_{name}"]
    module = importlib.import_module(module_name)
    return getattr(module, f"configure_{name}"), getattr(module, f"run_{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    # parse the command name first, then only import what that command needs
    if argv and argv[0] in COMMANDS:
        configure, run = _command(argv[0])
        sub = argparse.ArgumentParser(
            prog=f"snncompile {argv[0]}", description=COMMANDS[argv[0]][1]
        )
        configure(sub)
        if argv[0] in SPEC_ARGUMENT:
            add_set_argument(sub)
        args = sub.parse_args(argv[1:])
    else:
        parser.parse_args(argv)  # prints help / errors and exits
        return 2
    try:
        overrides = getattr(args, "overrides", None)
        if not overrides:
            return int(run(args) or 0)
        from .spec.load import cli_overrides

        paths = getattr(args, SPEC_ARGUMENT[argv[0]], None) or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        with cli_overrides(paths, overrides):
            return int(run(args) or 0)
    except SpecError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        count = len(err.problems)
        print(f"{count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
