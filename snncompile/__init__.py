"""snncompile: a declarative model compiler for spiking neural networks.

spec = snncompile.load("specs/mnist_fc.yaml")
spec = snncompile.load("specs/mnist_fc.yaml", overrides=["train.optimizer.lr=1e-3"])
net = snncompile.build(spec)          # eager torch.nn.Module
net = snncompile.compile(spec)        # the same on compiled kernels (native C, torch.compile)

run = snncompile.train(spec, epochs=1)        # a Run: .dir .spec .metrics .history .model
run = snncompile.load_run("runs/mnist_fc-...") # the same for a finished run
scores, classes = snncompile.predict(run, images)   # raw samples [B, ...]
loss = snncompile.loss_fn(spec)       # loss(spk, mem, targets, records=None, mask=None)
snncompile.losses, snncompile.decoders   # every loss and decoding, as functions

Importing snncompile, loading and analyzing specs import no torch (`snncompile
validate` stays fast); build(), compile(), training and the rest import it when
called. `snncompile.train` is also the subpackage snncompile/train/
(`snncompile.train.loop.train` returns the metrics dict): calling it trains.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import api as _api  # imports no torch
from . import train as _train_package  # the subpackage: imports nothing
from .api import Prediction, Run, decode_fn, load_run, loss_fn, predict
from .spec.errors import Problem, SpecError, UserError
from .spec.load import load, loads
from .spec.schema import Spec


def analyze(spec: Spec):
    """Spec -> immutable IR graph (raises SpecError on impossible networks)."""
    from .ir.analyze import analyze as _analyze

    return _analyze(spec)


def build(spec: Spec, schedule: str = "layered", seed: int | None = None):
    """Spec -> torch.nn.Module taking [B, *shape] (or [T, B, *shape]) and returning
    (spk, mem) of the output layer, each [T, B, classes].

    schedule "layered" is the optimized lowering (hoisted time-invariant prefix,
    time-batched stateless layers); "step" is the per-step reference loop.
    """
    from .lower.build import build_graph

    return build_graph(analyze(spec), schedule=schedule, seed=seed)


def compile(
    spec: Spec,
    seed: int | None = None,
    whole: bool = False,
    mode: str | None = None,
    **options,
):
    """build(spec) on compiled kernels: by default (mode "auto") the fastest
    correct mode measured on first use for this machine and spec shape and
    cached; "native": every neuron on snncompile's C kernels; "neurons": every
    neuron's time loop through torch.compile (see lower/optimize.py); with
    `whole` (mode "model") the entire forward through torch.compile(**options)."""
    import warnings

    from .lower.optimize import DEFAULT_MODE, apply, as_mode, compile_model, preflight

    mode = "model" if whole else as_mode(DEFAULT_MODE if mode is None else mode)
    if options and mode != "model":
        raise TypeError(f"torch.compile options {sorted(options)} need whole=True")
    net = build(spec, seed=seed)
    if mode in ("auto", "native"):  # without a C compiler: what can run, warned
        mode, problem = preflight(mode, net)
        if problem:
            warnings.warn(problem, stacklevel=2)
    return compile_model(net, **options) if mode == "model" else apply(net, mode)


# ------------------------------------------------------------------ the training API
class _CallablePackage(type(_train_package)):
    """The subpackage snncompile/train/ (snncompile.train.loop, .data, ...) that
    is also the function `snncompile.train(spec, **options) -> Run` (api.train).

    A submodule import binds `snncompile.train` to the subpackage, over any
    function of that name; so the subpackage itself is made callable, and both
    `snncompile.train(...)` and `snncompile.train.loop` / `import
    snncompile.train.loop` / `from snncompile.train import loop` keep working."""

    def __call__(self, spec, *, overrides=None, **options):
        return _api.train(spec, overrides=overrides, **options)

    __call__.__doc__ = _api.train.__doc__


_train_package.__class__ = _CallablePackage
if not (_train_package.__doc__ or "").startswith("snncompile.train(spec"):
    _train_package.__doc__ = (
        "snncompile.train(spec, **options) -> Run\n\n"
        + _api.train.__doc__
        + "\nThe subpackage snncompile.train: "
        + (_train_package.__doc__ or "")
    )

_LAZY = {  # public modules that import torch: imported on first use
    "losses": "every training loss as a function (snncompile/losses.py)",
    "decoders": "every output decoding and metric as a function (decoders.py)",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Prediction",
    "Problem",
    "Run",
    "Spec",
    "SpecError",
    "UserError",
    "__version__",
    "analyze",
    "build",
    "compile",
    "decode_fn",
    "decoders",
    "load",
    "load_run",
    "loads",
    "loss_fn",
    "losses",
    "predict",
    "train",
]
