"""`snncompile export SPEC -o model.onnx [--checkpoint FILE] [--mode M] [--opset N] [--verify]`
and `snncompile export SPEC -o model.nir [--checkpoint FILE] [--dt DT] [--approximate]
[--verify]` (NIR: the format follows the extension, or `--format`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..jsonout import dumps
from ..spec.errors import UserError
from .loop import UNROLL_STEPS
from .onnx import (
    DEFAULT_OPSET,
    DYNAMO_OPSET,
    EXPORTERS,
    MODES,
    VerificationError,
    export_onnx,
)

FORMATS = ("onnx", "nir")


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="YAML or JSON spec file")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="file to write: ONNX, or NIR for a .nir name",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="onnx or nir (default: nir for a .nir file name, else onnx)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="trained weights (checkpoint.pt from `snncompile train`); "
        "without it the weights are randomly initialized",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="sequence",
        help="sequence: the whole T-step simulation in one graph (default); "
        "step: one time step with the neuron states as inputs and outputs",
    )
    unroll = parser.add_mutually_exclusive_group()
    unroll.add_argument(
        "--loop",
        dest="loop",
        action="store_true",
        default=None,
        help=f"sequence mode: an ONNX Loop over time steps "
        f"(the default above {UNROLL_STEPS} steps)",
    )
    unroll.add_argument(
        "--unroll",
        dest="loop",
        action="store_false",
        help=f"sequence mode: unroll every time step (the default up to {UNROLL_STEPS})",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset (default {DEFAULT_OPSET}; {DYNAMO_OPSET} with dynamo)",
    )
    parser.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="torchscript",
        help="torchscript: fast, deprecated by PyTorch (default); dynamo: PyTorch's "
        "maintained torch.export-based exporter, slower to export",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare onnxruntime with PyTorch at batch 1 and 7 (NIR: a numpy "
        "simulation of the written graph with snncompile); exit 1 on a mismatch",
    )
    parser.add_argument(
        "--dt",
        type=float,
        default=None,
        help="NIR: time step of the discretization, tau = dt / (1 - beta) "
        "(default 1.0)",
    )
    parser.add_argument(
        "--approximate",
        action="store_true",
        help="NIR: export what NIR can only approximate (subtract or no reset, "
        "rleaky, synaptic, padded average pooling, batch norm), each listed",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of random weights (default: the spec's)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def output_format(args: argparse.Namespace) -> str:
    """The format asked for: --format, else from the output's extension."""
    if args.format is not None:
        return args.format
    return "nir" if str(args.output).lower().endswith(".nir") else "onnx"


def check_output(args: argparse.Namespace) -> None:
    """-o names a file this command may write, before any work: not one of its
    inputs (the spec, the checkpoint), not a directory, in a writable one."""
    out = Path(args.output)
    if not str(args.output).strip():
        raise UserError("-o is empty: name the file to write")
    inputs = [args.spec]
    if args.checkpoint:
        given = Path(args.checkpoint)
        inputs.append(given / "checkpoint.pt" if given.is_dir() else given)
    for given in inputs:
        try:
            same = out.exists() and Path(given).exists() and out.samefile(given)
        except OSError:
            same = False
        if same:
            raise UserError(
                f"-o {out} is this command's input {given}: it would be written "
                "over; choose another output file"
            )
    if out.is_dir():
        raise UserError(f"-o {out} is a directory; name a file in it")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"cannot write {out}: {parent} is a file, not a directory")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: permission denied in {parent}")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"cannot write {out}: permission denied")


def run_export(args: argparse.Namespace) -> int:
    check_output(args)
    if output_format(args) == "nir":
        return _run_nir(args)
    for flag, value in (("--dt", args.dt), ("--approximate", args.approximate)):
        if value not in (None, False):
            raise UserError(f"{flag} applies to NIR export only (-o FILE.nir)")
    try:
        report = export_onnx(
            args.spec,
            args.output,
            mode=args.mode,
            checkpoint=args.checkpoint,
            opset=args.opset,
            verify=args.verify,
            seed=args.seed,
            loop=args.loop,
            exporter=args.exporter,
        )
        status = 0
    except VerificationError as err:
        report, status = err.report, 1
    if args.json:
        print(dumps(report, indent=2))
    else:
        print("\n".join(describe(report)))
    return status


def _run_nir(args: argparse.Namespace) -> int:
    from .nir import NIRVerificationError, describe_export, export_nir

    onnx_only = {
        "--mode": args.mode != "sequence",
        "--loop/--unroll": args.loop is not None,
        "--opset": args.opset is not None,
        "--exporter": args.exporter != "torchscript",
    }
    for flag, given in onnx_only.items():
        if given:
            raise UserError(f"{flag} applies to ONNX export only, not NIR")
    try:
        report = export_nir(
            args.spec,
            args.output,
            checkpoint=args.checkpoint,
            dt=args.dt,
            approximate=args.approximate,
            verify=args.verify,
            seed=args.seed,
        )
        status = 0
    except NIRVerificationError as err:
        report, status = err.report, 1
    if args.json:
        print(dumps(report, indent=2))
    else:
        print("\n".join(describe_export(report)))
    return status


def describe(report: dict) -> list[str]:
    """Human-readable lines of an export report."""
    passed = report.get("verification", {}).get("passed", True)
    written = "wrote" if passed else "verification failed, did not write"
    head = (
        f"{written} {report['path']}: {report['spec']}, {report['mode']} model"
        + (f" ({report['time_loop']})" if report.get("time_loop") else "")
        + ", "
        f"opset {report['opset']}, {report['nodes']} nodes, "
        f"{report['bytes'] / 1e6:.2f} MB, exported in {report['export_seconds']:.2f} s"
    )
    lines = [
        head,
        f"weights: {report['weights']}",
        f"inputs: {', '.join(report['inputs'])}; outputs: {', '.join(report['outputs'])}",
    ]
    if "note" in report:
        lines.append(f"note: {report['note']}")
    result = report.get("verification")
    if result:
        verdict = "passed" if result["passed"] else "FAILED"
        lines.append(
            f"verify (onnxruntime vs PyTorch, batches "
            f"{', '.join(str(b['batch']) for b in result['batches'])}): {verdict}"
        )
        lines.append(
            f"  max |mem diff| {result['max_mem_diff_strict']:.3g} before any "
            f"near-threshold step, {result['max_mem_diff']:.3g} overall; "
            f"spike mismatches {result['spike_mismatches']} "
            f"({result['spike_mismatches_near_threshold']} at the threshold); "
            f"prediction mismatches {result['prediction_mismatches']}"
        )
        lines.append(
            f"  near-threshold neuron-steps {result['near_threshold_events']} in "
            f"{result['near_threshold_samples']} samples "
            f"({result['near_threshold_samples_differing']} of them differ); "
            f"output spike rate "
            f"{result['output_spike_rate']:.3f}; input scale {result['input_scale']:g}"
        )
        lines += [f"  note: {n}" for n in result["notes"]]
        lines += [f"  failure: {f}" for f in result["failures"]]
    return lines
