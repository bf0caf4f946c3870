"""`snncompile train` and `snncompile eval`."""

from __future__ import annotations

import argparse
import json

from ..lower import optimize
from ..spec.errors import UserError


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding the datasets (default: $SNNCOMPILE_DATA, else ./data)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="never try to download a missing dataset",
    )


# --------------------------------------------------------------------------- train
def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="YAML or JSON spec file")
    _data_root(parser)
    parser.add_argument(
        "--out", metavar="DIR", help="run directory (default runs/<name>-<time>)"
    )
    parser.add_argument("--epochs", type=_positive, help="override train.epochs")
    parser.add_argument("--seed", type=_seed, help="override train.seed")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its checkpoint.pt",
    )
    parser.add_argument(
        "--compile",
        choices=optimize.MODES,
        nargs="?",
        const=optimize.DEFAULT_MODE,
        default=optimize.DEFAULT_MODE,
        help="compiled kernels on top: Leaky layers by snncompile's C kernels "
        "and other neurons by torch.compile (native, the default), every "
        "neuron's time loop by torch.compile (neurons), the whole forward by "
        "torch.compile (model), the fused kernels eagerly (none), or the model "
        "exactly as codegen writes it (plain: a generated script's float order)",
    )
    parser.add_argument(
        "--limit-train", type=_positive, metavar="N", help="first N training samples"
    )
    parser.add_argument(
        "--limit-test", type=_positive, metavar="N", help="first N test samples"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from ..lower.optimize import tune_allocator
    from .loop import describe, train

    tune_allocator()  # this process only: large blocks stay mapped between steps
    metrics = train(
        args.spec,
        data_root=args.data_root,
        out=args.out,
        epochs=args.epochs,
        seed=args.seed,
        resume=args.resume,
        compile=args.compile,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        progress=not args.quiet,
        download=not args.no_download,
    )
    if metrics["compile_seconds"] is not None:
        print(compile_summary(metrics))
    seconds = sum(h["seconds"] for h in metrics["history"])
    print(
        f"{metrics['name']}: test {describe(metrics)}, "
        f"test loss {metrics['test_loss']:.4f} after {metrics['epochs']} epoch(s) "
        f"({seconds:.1f} s training on {metrics['device']})"
    )
    print(f"run directory: {metrics['run_dir']}")
    return 0


def compile_summary(metrics: dict) -> str:
    """One line: the compile mode, its seconds, and what came from caches."""
    cache = metrics["compile_cache"]
    parts = [f"compile ({metrics['compile']}): {metrics['compile_seconds']:.1f} s"]
    if metrics["compile"] == "native":
        built = cache.get("native_builds", 0)
        parts.append("native kernels " + ("built" if built else "from cache"))
    if cache.get("cache_hits", 0) or cache.get("cache_misses", 0):
        parts.append(
            f"inductor cache: {cache['cache_hits']} graphs reused, "
            f"{cache['cache_misses']} compiled"
        )
    return "; ".join(parts)


# --------------------------------------------------------------------------- eval
def configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="YAML or JSON spec file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="FILE", help="checkpoint.pt (or its run directory)"
    )
    source.add_argument(
        "--onnx", metavar="FILE", help="evaluate an exported ONNX model"
    )
    _data_root(parser)
    parser.add_argument(
        "--limit-test", type=_positive, metavar="N", help="first N test samples"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _evaluate_onnx(args: argparse.Namespace) -> dict:
    from ..spec.load import load

    try:
        from .onnx_eval import evaluate_onnx
    except ImportError:
        raise UserError("ONNX evaluation is not available") from None
    return evaluate_onnx(
        load(args.spec),
        args.onnx,
        args.data_root,
        args.limit_test,
        download=not args.no_download,
    )


def run_eval(args: argparse.Namespace) -> int:
    from .loop import evaluate

    if args.onnx:
        result = _evaluate_onnx(args)
    else:
        result = evaluate(
            args.spec,
            checkpoint=args.checkpoint,
            data_root=args.data_root,
            limit_test=args.limit_test,
            download=not args.no_download,
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "test_accuracy" in result:
        print(f"test accuracy: {result['test_accuracy']:.2%}")
    else:
        for key, label in (("mse", "MSE"), ("mae", "MAE"), ("r2", "R^2")):
            value = result[f"test_{key}"]
            shown = "-" if value is None else f"{value:.4g}"  # R^2 of constant targets
            print(f"test {label}:{' ' * (9 - len(label))}{shown}")
    if result.get("test_loss") is not None:
        print(f"test loss:     {result['test_loss']:.4f}")
    rates = result.get("firing_rates") or {}
    if rates:
        print("firing rates (spikes per neuron per step):")
        width = max(len(name) for name in rates)
        for name, rate in rates.items():
            print(f"  {name.ljust(width)}  {rate:.4f}")
    return 0
