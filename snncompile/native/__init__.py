"""Native kernels (leaky.c, neurons.c, loss.c): built by the system C compiler,
run by ctypes.

`kernels()` returns a kernel provider, the `compiled` flag of a neuron layer:
- for a Leaky layer with scalar float32 parameters (`fits`), runtime/fused.py
  calls its `scan` and `backward`, which take and return what leaky_scan and
  leaky_backward do, by the C loops in leaky.c - the same float operations in
  the same order (identical spikes and membranes; gradients up to summation
  order). Its `scan_linear` also forms the linear layer after a hidden layer in
  the forward's loop, in its own summation order (values to rounding);
- every other layer (each neuron type, per-neuron parameters) runs its
  `sequence`: neurons.c, one autograd node per layer (native/neurons.py).
What the C code does not cover (another device or dtype, a surrogate it does
not know, a convolutional recurrence) runs eagerly, never compiled.
`LOSSES` holds the per-step cross-entropy losses of runtime/losses.py computed by
loss.c: the loss and its gradient in one pass (the same values up to rounding).

Targets: the code is written once for vectors of LANES floats (lanes.h: the
target's width, 16 with AVX-512, 8 with AVX2, 4 otherwise) in plain C with GCC
vector extensions; the few intrinsics have plain-C equivalents with the same
results. FLAGS build for this CPU (-march=native); a compiler that rejects that
gets the baseline target (SSE2 on x86-64, NEON on arm64). `variant(flags)`
builds for another target (tests, side-by-side measurements).

Why: torch.compile fuses the same loops as well, but each new process pays for
importing dynamo and inductor and for tracing the graphs again (seconds even
with every kernel in inductor's cache, tens to hundreds of seconds on a first
run). These sources compile in seconds, once per machine (one compiler process
per source, in parallel): the shared library is cached under SNNCOMPILE_CACHE
(default ~/.cache/snncompile), keyed by the sources, the flags, the compiler
and the CPU, and loads in milliseconds. Threads: OpenMP, through the same
runtime as torch (the library is loaded after torch, which has loaded its
libgomp), with torch.get_num_threads() threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from functools import cache, lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cache import cache_dir
from ..runtime import surrogates
from ..runtime.fused import leaky_backward, leaky_run
from . import neurons

SOURCES = [Path(__file__).with_name(n) for n in ("leaky.c", "neurons.c", "loss.c")]
HEADERS = [Path(__file__).with_name(n) for n in ("lanes.h", "snn.h")]  # keyed too
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC"]
RESETS = {"subtract": 0, "zero": 1, "none": 2}
# the surrogates leaky.c knows (its numbering), by their backward function
SURROGATES = {
    surrogates.ATan.backward: 1,
    surrogates.FastSigmoid.backward: 2,
    surrogates.Sigmoid.backward: 3,
    surrogates.Triangular.backward: 4,
    surrogates.StraightThrough.backward: 5,
    surrogates.SpikeRateEscape.backward: 6,
}


def _code(function) -> tuple:
    code = function.__code__
    return code.co_code, code.co_consts, code.co_names


_BY_CODE = {_code(function): kind for function, kind in SURROGATES.items()}


def surrogate_kind(backward) -> int | None:
    """leaky.c's number for a surrogate's backward function, or None. A model
    that build() made runs an inlined copy of runtime/surrogates.py (other
    function objects): a copy is known by its identical bytecode."""
    kind = SURROGATES.get(backward)
    if kind is None and hasattr(backward, "__code__"):
        kind = _BY_CODE.get(_code(backward))
        if kind is not None:
            SURROGATES[backward] = kind
    return kind


STATS = {"seconds": 0.0, "builds": 0, "loads": 0}  # this process's costs


class Unavailable(RuntimeError):
    """The native kernels cannot be built or loaded here (the reason, one line)."""


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise Unavailable("no C compiler found (set CC)")
    return compiler


def _cpu() -> str:
    """What -march=native depends on: the machine and its CPU flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return platform.machine() + flags


def _key(compiler: str, keys: dict = {}) -> str:  # noqa: B006 - the memo
    """The build's key: the sources, flags, compiler version and CPU (once per
    compiler a process uses)."""
    if compiler not in keys:
        keys[compiler] = _new_key(compiler)
    return keys[compiler]


def _new_key(compiler: str) -> str:
    try:
        version = subprocess.run(
            [compiler, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise Unavailable(f"C compiler {compiler!r} does not run: {err}") from None
    sources = [source.read_bytes() for source in SOURCES + HEADERS]
    parts = (*sources, " ".join(FLAGS).encode(), version.encode(), compiler.encode())
    digest = hashlib.sha256(b"\0".join(parts) + _cpu().encode())
    return digest.hexdigest()[:16]


def _flag_sets() -> list[list[str]]:
    """The flags to try in turn: FLAGS with OpenMP, FLAGS alone, then both
    without -march=native (a compiler or CPU it does not know: portable code,
    vectorized for the baseline instruction set only)."""
    portable = [flag for flag in FLAGS if flag != "-march=native"]
    sets = [[*FLAGS, "-fopenmp"], FLAGS]
    return sets + ([[*portable, "-fopenmp"], portable] if portable != FLAGS else [])


def _compile(compiler: str, flags: list[str], work: Path) -> str | None:
    """Compile every source to an object in `work`, all at once (one process
    each), then link them into work/kernels.so; None, or the first error."""
    jobs = []
    for source in SOURCES:
        command = [compiler, *flags, "-c", str(source), "-o", f"{work / source.stem}.o"]
        try:
            jobs.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        except OSError as err:
            for job in jobs:
                job.wait()
            raise Unavailable(f"{compiler}: {err}") from None
    errors = [job.communicate()[1] if job.wait() else None for job in jobs]
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        return failed.strip() or "failed"
    objects = [f"{work / source.stem}.o" for source in SOURCES]
    link = [compiler, *flags, "-shared", *objects, "-o", str(work / "kernels.so")]
    done = subprocess.run(link, capture_output=True, text=True, check=False)
    return (done.stderr.strip() or "failed") if done.returncode else None


def _build(compiler: str, target: Path, flag_sets=None) -> None:
    """Compile the sources into `target` (atomically), with the first of
    `flag_sets` (default: _flag_sets()) that works."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        errors = ""
        for flags in flag_sets or _flag_sets():
            errors = _compile(compiler, flags, Path(work))
            if errors is None:
                os.replace(Path(work) / "kernels.so", target)
                return
        first = errors.splitlines()[0] if errors else "failed"
        names = ", ".join(source.name for source in SOURCES)
        raise Unavailable(f"{compiler} could not build {names}: {first}")


def _target() -> Path:
    """Where this machine's build of the kernels lives (or will)."""
    return cache_dir() / "native" / f"kernels-{_key(_compiler())}.so"


@cache
def variant(flags: tuple[str, ...]) -> ctypes.CDLL:
    """The kernels built for another target, -march=native replaced by `flags`
    (("-march=haswell",): AVX2; (): the compiler's baseline; ("-DSNN_LANES=8",):
    8-float vectors in plain C), loaded (cached alike): for tests and side-by-side
    measurements of one machine's builds. Raises Unavailable."""
    compiler = _compiler()
    base = [flag for flag in FLAGS if flag != "-march=native"] + list(flags)
    tag = hashlib.sha256("\0".join(flags).encode()).hexdigest()[:8]
    target = cache_dir() / "native" / f"variant-{_key(compiler)}-{tag}.so"
    if not target.exists():
        try:
            _build(compiler, target, [[*base, "-fopenmp"], base])
        except OSError as err:
            raise Unavailable(f"cannot build into {target.parent}: {err}") from None
    try:
        return bind(ctypes.CDLL(str(target)))
    except OSError as err:
        raise Unavailable(f"cannot load {target}: {err}") from None


def choices_file() -> Path:
    """The compile mode decisions (lower/optimize.py: choose) made with this
    build of the kernels: next to it, keyed alike."""
    target = _target()
    return target.with_name(target.name.replace("kernels-", "choices-", 1) + ".json")


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The kernels as a loaded shared library, built first if not cached."""
    started = time.perf_counter()
    target = _target()
    compiler = _compiler()
    if not target.exists():
        try:
            _build(compiler, target)
        except OSError as err:  # e.g. a cache folder that cannot be written
            raise Unavailable(f"cannot build into {target.parent}: {err}") from None
        STATS["builds"] += 1
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as err:
        raise Unavailable(f"cannot load {target}: {err}") from None
    STATS["loads"] += 1
    STATS["seconds"] += time.perf_counter() - started
    return bind(lib)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C functions' signatures on a loaded kernel library."""
    ptr, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.snn_leaky_forward.restype = None
    lib.snn_leaky_forward.argtypes = [
        ptr,
        i32,
        i64,
        i64,
        i64,
        f32,
        f32,
        i32,
        ptr,
        ptr,
        i32,
    ]
    lib.snn_leaky_backward.restype = ctypes.c_int
    lib.snn_leaky_backward.argtypes = [
        ptr, i32, ptr, ptr, i64, i64, i64, f32, f32, i32,  # inputs
        i32, f32, f32,  # surrogate
        ptr, ptr, ptr, ptr, i64, ptr, ptr,  # incoming gradients, linear layer
        ptr, i32, ptr, i32,  # outputs
    ]  # fmt: skip
    lib.snn_cross_entropy.restype = ctypes.c_int
    lib.snn_cross_entropy.argtypes = [ptr, ptr, i64, i64, i64, f32, ptr, ptr]
    lib.snn_leaky_forward_linear_fits.restype = ctypes.c_int
    lib.snn_leaky_forward_linear_fits.argtypes = [i64]
    lib.snn_leaky_forward_linear.restype = ctypes.c_int
    lib.snn_leaky_forward_linear.argtypes = [
        ptr, i32, i64, i64, i64, f32, f32, i32, ptr, ptr,  # as snn_leaky_forward
        ptr, ptr, i64, ptr, i32,  # linear layer, output, threads
    ]  # fmt: skip
    lib.snn_leaky_panels_fit.restype = ctypes.c_int
    lib.snn_leaky_panels_fit.argtypes = [i64, i32]
    lib.snn_lanes.restype = ctypes.c_int
    lib.snn_lanes.argtypes = []
    lib.snn_neuron_states.restype = ctypes.c_int
    lib.snn_neuron_states.argtypes = [i32]
    lib.snn_neuron_params.restype = ctypes.c_int
    lib.snn_neuron_params.argtypes = [i32]
    lib.snn_neuron_forward.restype = ctypes.c_int
    lib.snn_neuron_forward.argtypes = [
        i32, i32, i32, ptr, i32, ptr, i64, i64, i64,  # type, reset, rec, inputs
        ptr, ptr, i64, ptr, ptr, i64, i32,  # parameters, states, outputs
    ]  # fmt: skip
    lib.snn_neuron_backward.restype = ctypes.c_int
    lib.snn_neuron_backward.argtypes = [
        i32, i32, i32, i32, f32, f32,  # type, reset, rec, surrogate
        ptr, i32, i64, i64, i64, ptr, ptr, i64, ptr, i64,  # inputs and states
        ptr, ptr, ptr, ptr, ptr, ptr, i32,  # gradients in and out
    ]  # fmt: skip
    lib.snn_leaky_backward_panels.restype = ctypes.c_int
    lib.snn_leaky_backward_panels.argtypes = [
        ptr, i64, i64, i64, f32, f32, i32,  # inputs
        i32, f32,  # surrogate
        ptr, ptr, i64,  # linear layer
        ptr, ptr, i32, ptr, i32,  # outputs
    ]  # fmt: skip
    return lib


def problem() -> str | None:
    """Why the native kernels cannot run here, in one line; None when they can."""
    try:
        library()
    except Unavailable as err:
        return str(err)
    return None


def lanes() -> int:
    """Floats per vector in this build of the kernels (the target's width)."""
    return library().snn_lanes()


def supports(module) -> bool:
    """Whether the native kernels run this neuron layer: leaky.c's (a Leaky
    layer with scalar float32 parameters on the CPU) or neurons.c's (every
    type, on the CPU, float32, a surrogate they know, no convolutional
    recurrence)."""
    return LeakyKernels.fits(module) or neurons.supported(module, surrogate_kind)


def kernels() -> LeakyKernels:
    """The native kernel provider (raises Unavailable, with the reason)."""
    return LeakyKernels(library())


def _ptr(tensor):
    return None if tensor is None else tensor.data_ptr()


def _records(cur, steps, spikes: bool, record: bool):
    """What a forward kernel call needs: cur (detached, contiguous), whether it
    is constant (`steps` given; else cur is [T, ...]), the step count, one
    step's shape, and empty spike and membrane records [T, ...] (None where
    not wanted)."""
    constant = steps is not None
    steps = steps if constant else cur.shape[0]
    shape = cur.shape if constant else cur.shape[1:]
    cur = cur.detach().contiguous()
    spk = cur.new_empty((steps, *shape)) if spikes else None
    mem = cur.new_empty((steps, *shape)) if record else None
    return cur, constant, steps, shape, spk, mem


def _scalar(tensor) -> bool:
    return tensor.numel() == 1 and tensor.device.type == "cpu"


class LeakyKernels:
    """A Leaky kernel provider for runtime/fused.py backed by leaky.c."""

    weight_grad_in_loop = True  # backward forms a fused linear layer's weight grad

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "LeakyKernels(native)"

    @staticmethod
    def fits(neuron) -> bool:
        """Whether leaky.c's kernels run this layer: a fused (Leaky) layer with
        scalar float32 beta and threshold on the CPU; the rest of the layers
        neurons.c runs (`sequence`)."""
        beta, threshold = neuron.beta, neuron.threshold
        return bool(
            getattr(neuron, "fused", False)
            and _scalar(beta)
            and _scalar(threshold)
            and beta.dtype == threshold.dtype == torch.float32
        )

    def sequence(self, neuron, cur, record_mem=True):
        """(spk, mem) of any neuron layer over cur [T, B, ...] by neurons.c, or
        None where it does not apply (see native/neurons.py)."""
        return neurons.sequence(self.lib, neuron, cur, record_mem, surrogate_kind)

    @staticmethod
    def _fits(cur, b, threshold) -> bool:
        return (
            cur.device.type == "cpu"
            and cur.dtype == torch.float32
            and cur.dim() >= 1
            and _scalar(b)
            and _scalar(threshold)
        )

    def scan(self, cur, b, threshold, steps, reset, record=True):
        """leaky_scan(cur, b, threshold, steps, reset, record) by leaky.c."""
        if not self._fits(cur, b, threshold):  # eagerly: nothing to compile
            return leaky_run(cur, b, threshold, steps, reset, record)[:2]
        cur, constant, steps, shape, spk, mem = _records(cur, steps, True, record)
        self.lib.snn_leaky_forward(  # elements in one row: blocks of any length
            _ptr(cur), constant, steps, 1, shape.numel(),
            float(b), float(threshold), RESETS[reset], _ptr(spk), _ptr(mem),
            torch.get_num_threads(),
        )  # fmt: skip
        return spk, mem

    def scan_linear(
        self, cur, b, threshold, steps, reset, record, weight, bias, spikes=True
    ):
        """scan(...)'s (spk, mem) and the linear layer over the spikes, out =
        spk @ weight.T + bias [T, B, K], by leaky.c in one pass (the weights of
        the neurons that fired summed in order: a BLAS product's values up to
        rounding); spk None if not `spikes` (no record written); None where it
        does not apply (then: scan and a product)."""
        shape = cur.shape if steps is not None else cur.shape[1:]
        params = [weight] if bias is None else [weight, bias]
        fits = self._fits(cur, b, threshold) and len(shape) >= 2
        fits = fits and all(
            p.device.type == "cpu" and p.dtype == torch.float32 for p in params
        )
        fits = fits and weight.dim() == 2 and weight.shape[1] == shape[1:].numel()
        if not (fits and self.lib.snn_leaky_forward_linear_fits(weight.shape[0])):
            return None
        if not bool(torch.isfinite(weight).all()):
            return None  # a product gives NaN for 0 * inf or 0 * NaN; the sum would not
        cur, constant, steps, shape, spk, mem = _records(cur, steps, spikes, record)
        weight = weight.detach().contiguous()
        bias = None if bias is None else bias.detach().contiguous()
        out = cur.new_empty((steps, shape[0], weight.shape[0]))
        status = self.lib.snn_leaky_forward_linear(
            _ptr(cur), constant, steps, shape[0], shape[1:].numel(),
            float(b), float(threshold), RESETS[reset], _ptr(spk), _ptr(mem),
            _ptr(weight), _ptr(bias), weight.shape[0], _ptr(out),
            torch.get_num_threads(),
        )  # fmt: skip
        if status < 0:
            raise MemoryError("snn_leaky_forward_linear: out of memory")
        return None if status else (spk, mem, out)

    def recomputes_spikes(self, k_out, surrogate_backward) -> bool:
        """Whether backward, for a hidden layer with constant input whose spikes
        feed only a linear layer of k_out outputs, recomputes the spikes (the
        panel path) instead of reading the spike record, for this surrogate."""
        kind = surrogate_kind(surrogate_backward)
        return bool(kind and self.lib.snn_leaky_panels_fit(k_out, kind))

    def backward(
        self, cur, spk_rec, saved, stride, grad_spk, grad_mem, b, threshold, options
    ):
        """leaky_backward(...) by leaky.c; see fused.py. spk_rec may be None where
        the forward kept none (recomputes_spikes): constant input, `stride` steps."""
        reset, surrogate, args, constant, needs, _, into, through = options
        kind = 0 if surrogate is None else surrogate_kind(surrogate[1])
        weight_grad = through is not None and through[2]
        tensors = (saved, grad_spk, grad_mem, *(through or ())[:2])
        floats = all(t.dtype == torch.float32 for t in tensors if t is not None)
        fits = floats and self._fits(cur, b, threshold) and into is None
        if spk_rec is None:  # the panel path must follow; it reads no record
            steps, shape = stride, cur.shape
        else:
            steps, shape = spk_rec.shape[0], spk_rec.shape[1:]
        if (kind is None or not fits) and spk_rec is not None:
            return self._fallback(
                cur, spk_rec, saved, stride, grad_spk, grad_mem, b, threshold, options
            )
        rows, cols = 1, shape.numel()  # blocks along all elements, unless
        if through is not None:  # a row per sample, for the linear layer's sums
            rows, cols = shape[0], shape[1:].numel()
        mem = None if stride else saved.contiguous()  # stride: recompute all
        grad_cur = None
        if needs[0]:
            grad_cur = cur.new_empty(shape if constant else (steps, *shape))
        grad_out = weight = grad_weight = scratch = None
        k_out, threads = 0, torch.get_num_threads()
        if through is not None:
            grad_out, weight = through[0].contiguous(), through[1].contiguous()
            k_out = weight.shape[0]
        # a hidden layer whose spikes feed only the linear layer: by panels
        panels = constant and mem is None and grad_spk is None and grad_mem is None
        panels = panels and fits and kind is not None and k_out > 0
        panels = panels and self.lib.snn_leaky_panels_fit(k_out, kind)
        if spk_rec is None and not panels:
            raise RuntimeError(
                "snncompile native: the forward kept no spike record, but this "
                "backward (not by panels) reads it"
            )
        if weight_grad:
            grad_weight = weight.new_empty(weight.shape)
            if not panels:  # per-thread partial sums
                scratch = weight.new_empty((threads, *weight.shape))
        # contiguous copies are kept in locals: alive until the call returns
        cur = cur.contiguous()
        spk_rec = None if spk_rec is None else spk_rec.contiguous()
        grad_spk = None if grad_spk is None else grad_spk.contiguous()
        grad_mem = None if grad_mem is None else grad_mem.contiguous()
        values = [*args, 0.0, 0.0]
        sums = (ctypes.c_double * 2)()
        if panels:
            status = self.lib.snn_leaky_backward_panels(
                _ptr(cur), steps, rows, cols,
                float(b), float(threshold), RESETS[reset], kind, float(values[0]),
                _ptr(grad_out), _ptr(weight), k_out,
                _ptr(grad_weight), _ptr(grad_cur), bool(needs[1] or needs[2]),
                sums, threads,
            )  # fmt: skip
        else:
            status = self.lib.snn_leaky_backward(
                _ptr(cur), constant, _ptr(spk_rec), _ptr(mem), steps, rows, cols,
                float(b), float(threshold), RESETS[reset],
                kind, float(values[0]), float(values[1]),
                _ptr(grad_spk), _ptr(grad_mem),
                _ptr(grad_out), _ptr(weight), k_out, _ptr(grad_weight),
                _ptr(scratch), _ptr(grad_cur), bool(needs[1] or needs[2]), sums,
                threads,
            )  # fmt: skip
        if status:
            raise MemoryError("snn_leaky_backward: out of memory for its buffers")
        grad_b = torch.tensor(sums[0], dtype=b.dtype).reshape(b.shape)
        grad_threshold = torch.tensor(sums[1], dtype=threshold.dtype)
        grads = (
            grad_cur,
            grad_b if needs[1] else None,
            grad_threshold.reshape(threshold.shape) if needs[2] else None,
        )
        return (*grads, grad_weight) if weight_grad else grads

    @staticmethod
    def _fallback(
        cur, spk_rec, saved, stride, grad_spk, grad_mem, b, threshold, options
    ):
        """The eager backward, and the weight gradient if asked for."""
        *rest, through = options
        weight_grad = through is not None and through[2]
        if through is not None:
            through = (*through[:2], False)
        grads = leaky_backward(
            cur, spk_rec, saved, stride, grad_spk, grad_mem, b, threshold,
            (*rest, through),
        )  # fmt: skip
        if not weight_grad:
            return grads
        flat = through[0].flatten(0, 1)
        return (*grads, flat.t().mm(spk_rec.flatten(0, 1)))


# ------------------------------------------------------------------- losses
class CrossEntropy(torch.autograd.Function):
    """``scale * sum_r CE(logits[r], targets[r % B])`` by loss.c, for logits
    [N, C] (N a multiple of B) and int64 targets [B] on the CPU. The forward
    leaves the gradient; the backward scales it."""

    @staticmethod
    def forward(ctx, logits, targets, scale):
        logits, targets = logits.detach().contiguous(), targets.contiguous()
        grad = logits.new_empty(logits.shape)  # scratch unless wanted
        total = ctypes.c_double()
        bad = library().snn_cross_entropy(
            _ptr(logits), _ptr(targets), logits.shape[0], logits.shape[1],
            targets.shape[0], float(scale), _ptr(grad), ctypes.byref(total),
        )  # fmt: skip
        if bad:
            label, classes = int(targets[bad - 1]), logits.shape[1]
            raise IndexError(f"Target {label} is out of bounds for {classes} classes.")
        ctx.save_for_backward(grad if ctx.needs_input_grad[0] else None)
        return logits.new_tensor(total.value)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None


def cross_entropy(logits, targets, scale: float):
    """``scale * sum_r CE(logits[r], targets[r % B])``, by loss.c where it fits
    (CPU float32 logits [N, C] with N a multiple of B, int64 targets [B])."""
    fits = (
        logits.device.type == targets.device.type == "cpu"
        and logits.dtype == torch.float32
        and targets.dtype == torch.int64
        and logits.dim() == 2
        and targets.dim() == 1
        and targets.shape[0] > 0
        and logits.shape[0] % targets.shape[0] == 0
    )
    if not fits:
        repeats = logits.shape[0] // max(targets.shape[0], 1)
        return F.cross_entropy(logits, targets.repeat(repeats), reduction="sum") * scale
    return CrossEntropy.apply(logits, targets, scale)


def loss_ce_membrane(spk, mem, targets):
    """runtime/losses.py's loss_ce_membrane by loss.c: sum_t CE(mem[t], y)."""
    return cross_entropy(mem.reshape(-1, mem.shape[-1]), targets, 1 / targets.shape[0])


def loss_ce_rate(spk, mem, targets):
    """runtime/losses.py's loss_ce_rate by loss.c: (1 / T) sum_t CE(spk[t], y)."""
    rows = spk.reshape(-1, spk.shape[-1])
    return cross_entropy(rows, targets, 1 / rows.shape[0])


LOSSES = {"loss_ce_membrane": loss_ce_membrane, "loss_ce_rate": loss_ce_rate}
