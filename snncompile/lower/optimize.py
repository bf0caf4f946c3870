"""Compiled kernels on top of the lowered module, where they pay.

Modes (`snncompile train --compile`): plain runs the model exactly as codegen
writes it (the float order of a generated script); native (the default) runs Leaky layers by
snncompile's own C kernels (snncompile/native: built once per machine by the
system C compiler, loaded in milliseconds) and every other neuron as in
`neurons`; neurons runs every neuron's loops through torch.compile; model
torch.compiles the whole forward; none runs the fused kernels eagerly. All give the same spikes.

`compile_neurons(net)` sets every neuron's `compiled` flag: Leaky layers then run
their fused kernel's forward and backward loops as torch.compile'd C++ (one loop
over all steps each), every other neuron type its step loop through torch.compile
(inductor fuses the recurrence; AOTAutograd derives its backward). Stateless
layers stay eager: each is already one call over all steps (`time_batched`), a
library kernel that compilation cannot beat. Every compiled forward computes the
same float operations as the eager one (identical spikes and membranes); backward
passes agree up to float summation order: the compiled Leaky backward forms a
fused linear layer's input gradient step by step, where eager code multiplies
matrices (tests/test_compiled.py, tests/test_fused.py).

`compile_model(net)` is the alternative: torch.compile of the whole forward.

Compilation happens on first use per layer and shape. Inductor caches compiled
kernels on disk (TORCHINDUCTOR_CACHE_DIR, by default under the system temp
directory), so a later process with the same network compiles in seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the CLI reads MODES without it
    import torch

from ..spec.errors import UserError

MODES = ("native", "neurons", "model", "none", "plain")  # what `--compile` accepts
DEFAULT_MODE = "native"

# each layer and shape is its own dynamo entry of the same few functions
# (training, evaluation, a last partial batch): more than dynamo's default of 8
RECOMPILE_LIMIT = 64


def _configure_dynamo() -> None:
    """Room for one dynamo entry per layer and shape."""
    import torch

    config = torch._dynamo.config
    name = (
        "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    )
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def neurons(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The accelerated neuron layers of a net (they have a `compiled` flag)."""
    from .kernels import neurons as accelerated

    return accelerated(net)


def native_fits(module: torch.nn.Module) -> bool:
    """Whether the native kernels run this neuron: a fused Leaky layer with a
    scalar float32 beta and threshold on the CPU (the others keep torch.compile)."""
    import torch

    return (  # Leaky, or build()'s inlined copy of it: the class with `fused`
        getattr(type(module), "fused", None) is not None
        and module.fused
        and module.beta.numel() == 1
        and module.threshold.numel() == 1
        and module.beta.device.type == "cpu"
        and module.beta.dtype == module.threshold.dtype == torch.float32
    )


def compile_neurons(
    net: torch.nn.Module, enabled: bool = True, kernels=None
) -> torch.nn.Module:
    """Run every neuron's time loop through torch.compile, or with `kernels` (a
    kernel provider: snncompile.native.kernels()) the Leaky layers that fit by
    it and the rest through torch.compile (in place, on top of the fused kernels
    of lower/kernels.py); returns net."""
    from .kernels import accelerate

    modules = neurons(accelerate(net))
    dynamo = [m for m in modules if not (kernels and native_fits(m))]
    if enabled and dynamo:
        _configure_dynamo()  # imports dynamo: only when something needs it
    for module in modules:
        # the rest keep torch.compile (True): eager() finds them for odd batches
        module.compiled = enabled and (True if module in dynamo else kernels)
    return net


@contextlib.contextmanager
def eager(net: torch.nn.Module, when: bool = True) -> Iterator[None]:
    """Run `net`'s torch.compile'd neurons on their eager kernels inside the
    block (the same values): for a batch of another size, a last partial batch,
    whose kernels would otherwise be compiled for that one call. Native kernels
    stay: they serve every shape without compiling."""
    flags = [(m, m.compiled) for m in neurons(net) if m.compiled is True]
    flags = flags if when else []
    for module, _ in flags:
        module.compiled = False
    try:
        yield
    finally:
        for module, flag in flags:
            module.compiled = flag


@contextlib.contextmanager
def batch_runner(model: torch.nn.Module, partial: bool) -> Iterator[torch.nn.Module]:
    """The module to call for one batch: `model`, or for a partial batch the
    uncompiled net with its neurons on their eager kernels (the same values,
    and no compiling of new graphs for that one call) - in every compile mode."""
    net = getattr(model, "_orig_mod", model)  # under a whole-model torch.compile
    with eager(net, when=partial):
        yield net if partial else model


def compile_model(net: torch.nn.Module, **options) -> torch.nn.Module:
    """torch.compile of the whole forward (neurons traced as their step loops)."""
    import torch

    _configure_dynamo()
    return torch.compile(net, **options)


def compile_problem() -> str | None:
    """Why torch.compile cannot build its C++ kernels on this machine (no working
    C++ compiler), in one line; None when it can, or when torch cannot say."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let a failure show at compile
        return None
    try:
        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001 - any failure means: do not compile
        return str(err).strip().splitlines()[0] or type(err).__name__
    return None


def native_problem() -> str | None:
    """Why the native kernels cannot run here, in one line; None when they can."""
    from .. import native

    return native.problem()


def preflight(mode: str, net: torch.nn.Module | None = None) -> tuple[str, str | None]:
    """The mode that can run on this machine for `mode`, and a one-line warning
    when that is another (no C compiler: eager, the same values, slower)."""
    mode = as_mode(mode)
    if mode == "native":
        why = native_problem()
        if why is not None:
            if compile_problem() is None:
                return (
                    "neurons",
                    f"native kernels unavailable ({why}); using torch.compile",
                )
            return "none", f"no compiled kernels here ({why}); running eagerly"
        if net is None or all(native_fits(m) for m in neurons(net)):
            return mode, None
        # other neuron types still need torch.compile's compiler: checked below
    if mode not in ("none", "plain"):
        why = compile_problem()
        if why:
            return "none", f"torch.compile cannot build kernels here ({why}); " + (
                "running eagerly, as with --compile none (the same values, slower)"
            )
    return mode, None


def apply(net: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module to run for a `--compile` mode: native, neurons, model or none."""
    mode = as_mode(mode)
    if mode == "plain":  # the model exactly as codegen writes it: nothing on top
        return net
    if mode == "model":
        return compile_model(net)
    if mode == "native":
        from .. import native

        return compile_neurons(net, kernels=native.kernels())
    return compile_neurons(net, enabled=mode == "neurons")


def as_mode(mode: str | bool) -> str:
    """A compile mode; True and False (the flag of earlier versions) mean the
    default mode and none."""
    if isinstance(mode, bool):
        return DEFAULT_MODE if mode else "none"
    if mode not in MODES:
        raise UserError(f"compile mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def compile_stats() -> dict:
    """What compiling has cost this process so far: seconds building or loading
    the native kernels and in dynamo and inductor (forward graphs, and backward
    graphs compiled at first backward), native libraries built, and graphs
    found in or added to inductor's on-disk cache."""
    stats = {"seconds": 0.0, "native_builds": 0, "cache_hits": 0, "cache_misses": 0}
    native = sys.modules.get("snncompile.native")
    if native is not None:
        stats["seconds"] += native.STATS["seconds"]
        stats["native_builds"] = native.STATS["builds"]
    if "torch._dynamo" in sys.modules:  # never imported just to read zeros
        from torch._dynamo import utils

        times = utils.compilation_time_metrics
        keys = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")
        inductor = utils.counters["inductor"]
        stats["seconds"] += sum(sum(times.get(key, ())) for key in keys)
        stats["cache_hits"] = inductor["fxgraph_cache_hit"]
        stats["cache_misses"] = inductor["fxgraph_cache_miss"]
    return stats


def tune_allocator() -> bool:
    """Keep freed large blocks in this process's heap (glibc malloc only).

    By default glibc serves blocks over 128 KiB-32 MiB by mmap and returns freed
    memory to the system, so every training step pays page faults again for its
    large temporaries (about 1,000 per mnist_fc step, ~10% of its time here).
    Raising the mmap and trim thresholds keeps those pages mapped for reuse, as
    the jemalloc/tcmalloc advice in PyTorch's CPU performance guide does.
    Affects only this process; returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
    return bool(
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
        and libc.mallopt(m_trim_threshold, 1 << 30)
    )
