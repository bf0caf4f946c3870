"""snncompile: a declarative model compiler for spiking neural networks.

spec = snncompile.load("specs/mnist_fc.yaml")
net = snncompile.build(spec)          # eager torch.nn.Module
net = snncompile.compile(spec)        # the same on compiled kernels (native C, torch.compile)
"""

from __future__ import annotations

__version__ = "0.1.0"

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
    """build(spec) on compiled kernels: by default Leaky layers on snncompile's
    native C kernels and other neurons' time loops through torch.compile (mode
    "native"; "neurons": every neuron through torch.compile; see
    lower/optimize.py), or with `whole` (mode "model") the entire forward
    through torch.compile(**options)."""
    import warnings

    from .lower.optimize import DEFAULT_MODE, apply, as_mode, compile_model, preflight

    mode = "model" if whole else as_mode(DEFAULT_MODE if mode is None else mode)
    if options and mode != "model":
        raise TypeError(f"torch.compile options {sorted(options)} need whole=True")
    net = build(spec, seed=seed)
    if mode == "native":  # without a C compiler: what can run, with a warning
        mode, problem = preflight(mode, net)
        if problem:
            warnings.warn(problem, stacklevel=2)
    return compile_model(net, **options) if mode == "model" else apply(net, mode)


__all__ = [
    "Problem",
    "Spec",
    "SpecError",
    "UserError",
    "__version__",
    "analyze",
    "build",
    "compile",
    "load",
    "loads",
]
