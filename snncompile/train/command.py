"""`snncompile train` and `snncompile eval`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        "--out",
        metavar="DIR",
        help="run directory (default runs/<name>-<time>, a new one); an existing "
        "one must be empty unless --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into a --out that holds an earlier run, replacing its files "
        "(checkpoint.pt, best.pt, metrics, plots, spec.yaml, TensorBoard events)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files (DIR/tensorboard): loss, "
        "accuracy or the regression metrics, learning rate, gradient norm, "
        "per-layer firing rates",
    )
    parser.add_argument(
        "--log-every",
        type=_positive,
        metavar="N",
        default=None,
        help="a metrics.csv (and TensorBoard) row every N iterations (default "
        "20), besides one per epoch",
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
        help="compiled kernels on top: the fastest of these measured on first "
        "use and cached (auto, the default), every neuron on snncompile's C "
        "kernels (native), every neuron's time loop by torch.compile (neurons), "
        "the whole forward by torch.compile (model), the fused kernels eagerly "
        "(none), or the model exactly as codegen writes it (plain: a generated "
        "script's float order)",
    )
    parser.add_argument(
        "--limit-train", type=_positive, metavar="N", help="first N training samples"
    )
    parser.add_argument(
        "--limit-test", type=_positive, metavar="N", help="first N test samples"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--nproc",
        type=_positive,
        metavar="N",
        help="data-parallel training in N processes on this machine (torchrun's "
        "launcher; train.batch_size is the global batch, split among them). "
        "Several machines: torchrun ... -m snncompile train SPEC",
    )
    parser.add_argument(
        "--threads-per-rank",
        type=_positive,
        metavar="T",
        help="torch threads of each process (default with several processes: "
        "this machine's cores divided among them; one process: torch's default)",
    )


def run_train(args: argparse.Namespace) -> int:
    from . import distributed

    if args.nproc and args.nproc > 1:
        if distributed.is_worker():
            raise UserError(
                "--nproc starts the processes itself: leave it out under torchrun"
            )
        return _launch(args)
    if not distributed.is_worker():
        return _train(args)
    rank = distributed.environment()[0]
    try:
        code = _train(args, rank)
        distributed.leave()  # every rank is done (train() ends on a barrier)
        return code
    except UserError as err:  # every rank has it (most likely): said once
        distributed.record_error(err)  # for torchrun's report (--nproc prints it)
        if distributed.under_launcher():
            return 2
        if rank == 0 or isinstance(err, distributed.PeerLost):
            raise
        return 2
    except KeyboardInterrupt:  # rank 0 has said where it saved
        if rank == 0 and not distributed.under_launcher():
            raise
        return 130


def _launch(args: argparse.Namespace) -> int:
    """`--nproc N`: the same command in N processes under torchrun's launcher."""
    from ..spec.load import as_spec
    from . import distributed, rundir
    from .loop import _run_dir

    rundir.check_out(args.out)
    if args.resume is not None:  # the checkpoint holds the run's spec
        from ..lower import checkpoint as ckpt
        from ..spec.load import loads

        payload = ckpt.load(args.resume)
        batch_size = loads(payload["spec"], fmt="json").train.batch_size
        distributed.check_world(batch_size, args.nproc)
        run_dir = args.out or args.resume
        if not rundir.same_path(run_dir, args.resume):
            _check_run_dir(args, rundir)
    else:
        spec = as_spec(args.spec)
        batch_size = spec.train.batch_size
        distributed.check_world(batch_size, args.nproc)
        if args.out is not None:
            _check_run_dir(args, rundir)
        run_dir = args.out or _run_dir(None, None, spec.name)  # the ranks share it
    args.out = str(run_dir)
    parser = argparse.ArgumentParser()
    configure_train(parser)
    argv = distributed.worker_argv(args, parser)
    return distributed.launch(args.nproc, argv, Path(run_dir), args.spec)


def _check_run_dir(args: argparse.Namespace, rundir) -> None:
    """--nproc: the launcher refuses a --out that rank 0 would refuse (before
    starting the processes); with --overwrite rank 0 clears it."""
    path = Path(args.out)
    rundir.prepare(path, None, "")
    rundir.refuse_inputs(path, [args.spec])
    if rundir.entries(path) and not args.overwrite:
        rundir.refuse_non_empty(path)


def _train(args: argparse.Namespace, rank: int = 0) -> int:
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
        threads_per_rank=args.threads_per_rank,
        overwrite=args.overwrite,
        tensorboard=args.tensorboard,
        **({"log_every": args.log_every} if args.log_every else {}),
    )
    if rank != 0:  # rank 0 reports
        return 0
    if metrics["compile_seconds"] is not None:
        print(compile_summary(metrics))
    seconds = sum(h["seconds"] for h in metrics["history"])
    where = metrics["device"]
    if metrics.get("world_size", 1) > 1:
        where = f"{metrics['world_size']} processes, {where}"
    loss = metrics["test_loss"]
    print(
        f"{metrics['name']}: test {describe(metrics)}, "
        f"test loss {'-' if loss is None else f'{loss:.4f}'} after "
        f"{metrics['epochs']} epoch(s) ({seconds:.1f} s training on {where})"
    )
    if metrics.get("best"):
        best = metrics["best"]
        if best.get("best_epoch") is not None:
            print(
                f"best {best['metric']} {best['best']:.6g} at epoch "
                f"{best['best_epoch']}: {best['checkpoint']}"
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
    source.add_argument(
        "--nir",
        metavar="FILE",
        help="evaluate a NIR file in the numpy NIR reference simulation",
    )
    _data_root(parser)
    parser.add_argument(
        "--limit-test", type=_positive, metavar="N", help="first N test samples"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--dt",
        type=float,
        metavar="DT",
        help="with --nir: the simulation's time step (default: the file's, else 1)",
    )


def _evaluate_nir(args: argparse.Namespace) -> dict:
    from ..spec.load import load
    from .nir_eval import evaluate_nir

    return evaluate_nir(
        load(args.spec),
        args.nir,
        args.data_root,
        args.limit_test,
        dt=args.dt,
        download=not args.no_download,
        progress=not args.json and sys.stderr.isatty(),
    )


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

    if args.dt is not None and not args.nir:
        raise UserError("--dt applies only to --nir")
    if args.onnx:
        result = _evaluate_onnx(args)
    elif args.nir:
        result = _evaluate_nir(args)
    else:
        result = evaluate(
            args.spec,
            checkpoint=args.checkpoint,
            data_root=args.data_root,
            limit_test=args.limit_test,
            download=not args.no_download,
        )
    if args.json:
        from .logs import dumps

        print(dumps(result, indent=2))  # strict JSON: NaN and inf as null
        return 0
    for note in result.get("approximations") or ():
        print(f"approximate export: {note}")
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
