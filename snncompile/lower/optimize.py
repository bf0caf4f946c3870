"""Compiled kernels on top of the lowered module, where they pay.

Modes (`snncompile train --compile`): auto (the default) picks the fastest of
native and none on this machine (see `choose`); native runs every neuron layer
by snncompile's own C kernels (snncompile/native: built once per machine by
the system C compiler, loaded in milliseconds; a layer they do not cover runs
as in none); neurons runs every neuron's loops through torch.compile; model
torch.compiles the whole forward; none runs the fused kernels eagerly; plain
runs the model exactly as codegen writes it (the float order of a generated
script). All give the same spikes.

`choose(net)`: where the C kernels build, auto times a few training steps of
the spec's shape (a synthetic batch of its batch size) with native and with
none, side by side, and takes the faster; torch.compile (neurons) joins the
race only where the C kernels were built for narrower vectors than the CPU
has (a portable build), because its first compile costs tens to hundreds of
seconds while native kernels of the machine's width were the faster on every
example spec measured. The decision is cached next to the kernels, keyed by
the kernels' build (sources, compiler, CPU) and the spec's shape; the run says
in one line what was chosen and why. On a GPU the C kernels do not run: auto
is neurons there (none without a working compiler).

`compile_neurons(net)` sets every neuron's `compiled` flag: Leaky layers then run
their fused kernel's forward and backward loops as torch.compile'd C++ (one loop
over all steps each), every other neuron type its step loop through torch.compile
(inductor fuses the recurrence; AOTAutograd derives its backward). Stateless
layers stay eager: each is already one call over all steps (`time_batched`), a
library kernel that compilation cannot beat; a large convolution read by max
pooling runs channels_last with a chunked input gradient, and the pooling
channels_last (lower/layouts.py; native, neurons and none alike: the same
values). Every compiled forward computes the same float operations as the
eager one (identical spikes and membranes); backward passes agree up to float
summation order: the compiled Leaky backward forms a fused linear layer's input
gradient step by step, where eager code multiplies matrices
(tests/test_compiled.py, tests/test_fused.py, tests/test_layouts.py).

`compile_model(net)` is the alternative: torch.compile of the whole forward.

Compilation happens on first use per layer and shape. Inductor caches compiled
kernels on disk (TORCHINDUCTOR_CACHE_DIR, by default under the system temp
directory), so a later process with the same network compiles in seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the CLI reads MODES without it
    import torch

from ..spec.errors import UserError

# what `--compile` accepts
MODES = ("auto", "native", "neurons", "model", "none", "plain")
DEFAULT_MODE = "auto"

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
    """Whether the native kernels run this neuron layer (on the CPU, float32,
    a surrogate they know; see snncompile/native)."""
    from .. import native

    return native.supports(module)


def compile_neurons(
    net: torch.nn.Module, enabled: bool = True, kernels=None
) -> torch.nn.Module:
    """Run every neuron's time loop through torch.compile, or with `kernels` (a
    kernel provider: snncompile.native.kernels()) every neuron layer that fits
    by it and the rest eagerly (in place, on top of the fused kernels of
    lower/kernels.py, large convolutions and max pooling in the layouts of
    lower/layouts.py); returns net."""
    from .kernels import accelerate
    from .layouts import accelerate_layers

    modules = neurons(accelerate_layers(accelerate(net)))
    if enabled and not kernels and modules:
        _configure_dynamo()  # imports dynamo: only when something needs it
    for module in modules:
        if kernels:
            module.compiled = kernels if native_fits(module) else False
        else:  # True: eager() finds them for odd batches
            module.compiled = bool(enabled)
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
    """torch.compile of the whole forward (neurons traced as their step loops).
    Random ops (rate encoding, dropout) run torch's own kernels on the global
    RNG (inductor's fallback_random), so that a seed draws the same spikes and
    masks as the eager model, not inductor's own numbers; except where the
    caller passes torch.compile's `mode`, which excludes `options`."""
    import torch

    _configure_dynamo()
    if "mode" not in options:
        settings = dict(options.get("options") or {})
        settings.setdefault("fallback_random", True)
        options = {**options, "options": settings}
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


@dataclass(frozen=True)
class Choice:
    """What auto runs (`mode`) and why, in words (`reason`, one line)."""

    mode: str
    reason: str
    times: dict | None = None  # mode -> measured seconds per training step
    warning: bool = False  # a fallback (no compiler): worth a warning

    def line(self) -> str:
        return f"compile: {self.mode} ({self.reason})"


CHOICE_STATS = {"seconds": 0.0, "measured": 0}  # this process's measuring
MEASURE_SECONDS = 2.0  # the most a first measurement spends timing steps
MEASURE_STEPS = 5  # timed training steps per candidate, at most
MEASURE_STEP_SECONDS = 0.25  # a slower step is timed on fewer samples (>= 8)


def choose(net: torch.nn.Module, batch_size: int | None = None) -> Choice:
    """The fastest correct mode for `net` (a net from build()) here; see the
    module doc. Measures on first use for a spec shape and kernel build, then
    reads the decision from the cache."""
    device = _device(net)
    if device.type != "cpu":
        if compile_problem() is None:
            return Choice("neurons", f"on {device.type} the C kernels do not run")
        return Choice("none", "no compiled kernels here; running eagerly", None, True)
    why = native_problem()
    if why is not None:
        words = f"no compiled kernels here ({why}); running eagerly, as --compile none"
        return Choice("none", words, None, True)
    from .. import native

    candidates = ["native", "none"]
    if native.lanes() < machine_lanes() and compile_problem() is None:
        candidates.append("neurons")  # native built narrower than this CPU
    key = _shape_key(net, batch_size, candidates)
    where = native.choices_file()
    cached = _read_choices(where).get(key)
    if cached is not None:
        return _explain(
            cached["mode"],
            cached["ms"],
            cached.get("samples"),
            f"cached in {where.parent}",
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # ranks would race and differ
        return Choice("native", "several processes: not measured, native by rule")
    started = time.perf_counter()
    try:
        times, samples = measure(net, candidates, batch_size)
    except Exception as err:  # noqa: BLE001 - any failure: the safe choice
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Choice("none", f"measuring failed ({type(err).__name__}: {reason})")
    finally:
        CHOICE_STATS["seconds"] += time.perf_counter() - started
    CHOICE_STATS["measured"] += 1
    mode = min(times, key=times.get)  # native only where faster than eager
    ms = {m: round(t * 1000, 2) for m, t in times.items()}
    _write_choice(where, key, {"mode": mode, "ms": ms, "samples": samples})
    return _explain(mode, ms, samples, f"measured now, cached in {where.parent}")


def _explain(mode: str, ms: dict, samples: int | None, where: str) -> Choice:
    others = ", ".join(f"{m} {t:.1f} ms" for m, t in ms.items() if m != mode)
    step = "per training step" + (f" of {samples} samples" if samples else "")
    words = f"fastest here: {ms[mode]:.1f} ms {step}, {others}; {where}"
    return Choice(mode, words, {m: t / 1000 for m, t in ms.items()})


def _device(net):
    for tensor in (*net.parameters(), *net.buffers()):
        return tensor.device
    import torch

    return torch.device("cpu")


def machine_lanes() -> int:
    """Floats per vector of the widest instructions torch uses on this CPU."""
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "512" in capability:
        return 16
    return 8 if ("AVX2" in capability or "256" in capability) else 4


def _shape_key(net, batch_size, candidates) -> str:
    """What a measurement depends on besides the kernels' build: the layers and
    their shapes, steps, encoding, loss, batch size, threads, torch."""
    import torch

    graph = net.graph
    nodes = [
        (n.name, n.type, n.inputs, n.in_shapes, n.out_shape, n.params)
        for n in graph.nodes
    ]
    parts = (
        nodes,
        graph.steps,
        graph.encoding,
        graph.loss,
        graph.decoding,
        batch_size or graph.train.get("batch_size"),
        torch.get_num_threads(),
        torch.__version__,
        candidates,
    )
    text = json.dumps(parts, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_choices(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_choice(path, key: str, value: dict) -> None:
    """Add one decision to the cache file (atomically; a lost race costs a
    measurement, nothing else)."""
    try:
        choices = _read_choices(path)
        choices[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(choices, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass  # a cache that cannot be written: measured again next time


def measure(net, modes, batch_size=None) -> dict:
    """Seconds per training step (forward, the spec's loss, backward; no
    optimizer step) of copies of `net` under each mode, and the samples per
    step: on a synthetic batch of the spec's shape, interleaved; the least of up to MEASURE_STEPS each after
    one untimed step (which compiles, for neurons). Where an eager step would
    take longer than MEASURE_STEP_SECONDS, fewer samples (at least 8): the
    kernels' costs per sample rank the modes alike, and the measurement stays
    short. `net` itself, and the random number generators, are left as they
    were."""
    import copy

    import torch

    graph = net.graph
    batch = batch_size or graph.train.get("batch_size") or 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x, targets = _synthetic_batch(graph, batch)
        runs = {}
        for mode in modes:  # copies (the frozen graph shared, not copied)
            model = apply(copy.deepcopy(net, {id(graph): graph}), mode)
            runs[mode] = (model, _loss(graph, native=mode == "native"))
        axis = 1 if graph.sequence_input else 0

        def step(mode, size):
            model, loss = runs[mode]
            spk, mem = model(x.narrow(axis, 0, size))[:2]
            loss(spk, mem, targets[:size]).backward()
            model.zero_grad(set_to_none=True)

        if "none" in runs and batch > 16:  # eager steps of 8 and 16 samples
            step("none", 8)
            seconds = []
            for size in (8, 16):
                started = time.perf_counter()
                step("none", size)
                seconds.append(time.perf_counter() - started)
            per_sample = max(seconds[1] - seconds[0], 0.0) / 8  # beyond a fixed cost
            guess = max(seconds[1], seconds[0] + per_sample * (batch - 8))
            if guess > MEASURE_STEP_SECONDS:  # as many samples as fit the time
                fit = (MEASURE_STEP_SECONDS - seconds[0]) / max(per_sample, 1e-9)
                batch = max(8, min(batch, 8 + int(fit)))
        times = {mode: [] for mode in modes}
        for mode in modes:  # untimed: first calls allocate (and compile)
            step(mode, batch)
        deadline = time.perf_counter() + MEASURE_SECONDS
        for _ in range(MEASURE_STEPS):
            for mode in modes:
                started = time.perf_counter()
                step(mode, batch)
                times[mode].append(time.perf_counter() - started)
            if time.perf_counter() > deadline:
                break
    return {mode: min(values) for mode, values in times.items()}, batch


def _synthetic_batch(graph, batch: int):
    """A random input batch of the spec's shape and targets for its loss."""
    import torch

    shape = tuple(graph.input_shape)
    steps = graph.steps or 100  # `steps: auto`: a typical length
    if graph.sequence_input:
        x = torch.rand((steps, batch, *shape))
        if graph.encoding["type"] == "spikes":
            x = (x < 0.2).float()
    else:
        x = torch.rand((batch, *shape))
    if graph.task == "regression":
        return x, torch.rand((batch, graph.num_classes))
    return x, torch.randint(0, graph.num_classes, (batch,))


def _loss(graph, native: bool):
    """The spec's loss (registry; native: loss.c where it has it), without a
    rate regularization, which needs every layer's record."""
    from .. import registry
    from ..runtime import losses

    params = dict(graph.loss)
    params.pop("rate_regularization", None)
    name = registry.LOSSES[params.pop("type")]
    function = getattr(losses, name)
    if native:
        from .. import native as kernels

        function = kernels.LOSSES.get(name, function)
    return lambda spk, mem, targets: function(spk, mem, targets, **params)


def preflight(
    mode: str, net: torch.nn.Module | None = None, quiet: bool = False
) -> tuple[str, str | None]:
    """The mode that can run on this machine for `mode`, and a one-line warning
    when that is another (no C compiler: eager, the same values, slower). For
    auto: `choose(net)`'s mode; its one line is the warning where it falls back
    (no compiler), else printed here on stderr (unless `quiet`; rank 0 only)."""
    mode = as_mode(mode)
    if mode == "auto":
        if net is None:  # nothing to measure: the rule
            mode = "native" if native_problem() is None else "none"
            return preflight(mode)
        choice = choose(net)
        if choice.warning:
            return choice.mode, choice.line()
        if not quiet and os.environ.get("LOCAL_RANK", "0") == "0":
            print(choice.line(), file=sys.stderr, flush=True)  # not on --json stdout
        return choice.mode, None
    if mode == "native":
        why = native_problem()
        if why is None:
            return mode, None
        if compile_problem() is None:
            return "neurons", f"native kernels unavailable ({why}); using torch.compile"
        return "none", f"no compiled kernels here ({why}); running eagerly"
    if mode not in ("none", "plain"):
        why = compile_problem()
        if why:
            return "none", f"torch.compile cannot build kernels here ({why}); " + (
                "running eagerly, as with --compile none (the same values, slower)"
            )
    return mode, None


def apply(net: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module to run for a `--compile` mode (auto: `choose(net)`'s)."""
    mode = as_mode(mode)
    if mode == "auto":
        mode = choose(net).mode
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
    stats["seconds"] += CHOICE_STATS["seconds"]  # auto's measuring
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
