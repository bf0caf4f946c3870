"""`snncompile bench SPEC`: one network, every way of running it, side by side.

The benchmark harness. It is no part of the installed package: `snncompile
bench` (snncompile/benchmark.py) loads this file from a source checkout.

    snncompile bench specs/mnist_fc.yaml [--batch 128] [--repeats 20] [--run 5]
                     [--warmup 3]
                     [--no-compile] [--reference auto|snntorch|step] [--rss]
                     [--threads N] [--clock wall|process] [--plain-optimizer]
                     [--seed N] [--json FILE]

Variants (all start from the same weights, copied from one `build(spec)`; `build`
gives the plain model, the very code `snncompile codegen` writes, and
`snncompile.lower.optimize.apply(net, mode)` puts the fast kernels on top):

- reference: the per-step loop as the snnTorch tutorials write it - every layer
  called at every step, `snntorch.Leaky` neurons (tutorial 5 recomputes fc1 25
  times). Built for specs of leaky neurons with scalar constant beta/threshold,
  direct encoding and plain layers; otherwise, or with `--reference step` or
  without snntorch, it is snncompile's per-step schedule `build(spec,
  schedule="step")`, labelled "per-step loop".
- step schedule: `build(spec, schedule="step")`, shown when the reference is snnTorch.
- eager, Leaky step loops: `build(spec)` as it comes, the plain model: the
  layered schedule with every neuron on its plain step loop; shown for specs
  with neurons that have a fused kernel (Leaky): what the fused kernels save.
- eager: `apply(build(spec), "none")` (`--compile none`), the layered schedule
  (time-invariant prefix hoisted, stateless layers batched over [T * B, ...])
  with the fast kernels of lower/kernels.py and no compiling: every Leaky by
  the fused kernel of `runtime/fused.py` (one autograd node per layer, hidden
  layers without membrane record), a hidden Leaky and the narrow linear layer
  it feeds as one node.
- native: `apply(build(spec), "native")`, as `snncompile.compile(spec)` and
  `snncompile train` run it: Leaky layers
  on snncompile's C kernels (snncompile/native: the fused kernel's forward and
  backward loops; a hidden layer's forward also sums the linear layer after it,
  in its own order), other neurons as in the next row; shown where a C compiler
  works.
- torch.compile neurons: `apply(build(spec), "neurons")`, as
  `compile(spec, mode="neurons")`: every neuron loop
  torch.compile'd (Leaky: the fused kernel's forward and backward loops, one
  C++ loop each), the rest as eager (lower/optimize.py).
- whole-model torch.compile: `apply(build(spec), "model")`, as
  `compile(spec, whole=True)`: `torch.compile` of the plain model's forward
  (default settings). Compile time (both compiled variants) = first call minus
  a normal call, for training and for inference (separate graphs); inductor's
  on-disk cache from an earlier run makes it much shorter than a cold compile.
- onnxruntime: inference of the ONNX sequence export (`export_onnx`), when the
  exporter is importable and the input is the raw frame (direct encoding).

The snncompile variants (not the reference or the step schedule) step the
optimizer through torch's fused implementation (`fused=True`: the same update in
one kernel); `--plain-optimizer` gives every variant the default one.

Method: one process, one random batch; `--warmup` untimed rounds, then
`--repeats` rounds that give each variant a turn (round-robin, starting variant
rotated), so load from other processes hits all of them alike. A turn times
`--run` training steps back to back, each on its own, then as many inference
calls: training takes its steps back to back, with its weights and buffers warm
in the caches (`--run 1` alternates variants at every step, which leaves every
step to start from another variant's cache contents). Figures are medians. A training step is forward + the spec's loss (registry) + backward
+ the spec's optimizer step; inference is a no_grad eval-mode forward + decoding.
`--clock process` times this process's CPU seconds instead of wall seconds:
with `--threads 1` that stays steady on a busy machine (time other processes
take does not count); with more threads it would add their spin-waits.

Memory: "peak train MB" is the peak of live tensor bytes during one training
step above what was live before it (weights and optimizer state excluded), read
from the allocator's events (torch.profiler with profile_memory) - the CPU
analogue of torch.cuda.max_memory_allocated; it sees every tensor, compiled code
included, but not Python objects or library scratch space. `--rss` adds the peak
resident set size of a fresh subprocess per variant (VmHWM after warmup and
steps minus VmRSS before the first step; for compiled this includes compilation).

Exactness: before timing, every variant's spikes on the batch are compared
with the reference's, from the same weights: in the inference forward (every
spiking layer where the variant returns them) and in the forward of the first
training step. A matrix product summed in another order gives membranes that
differ by rounding; an output neuron whose membrane then lies on the threshold
to rounding may fire in one and not the other: such partings are counted
(near_threshold_flips), not failed. The exit status is 1 if spikes differ
otherwise (onnxruntime is informative).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snncompile import registry
from snncompile.lower.optimize import apply, native_problem, tune_allocator
from snncompile.quiet import quiet_stderr
from snncompile.runtime import decode as decode_module
from snncompile.spec.errors import UserError
from snncompile.train.loop import make_loss, make_optimizer

SNNTORCH_SURROGATES = {  # spec surrogate -> (snntorch.surrogate function, fields)
    "atan": ("atan", ("alpha",)),
    "fast_sigmoid": ("fast_sigmoid", ("slope",)),
    "sigmoid": ("sigmoid", ("slope",)),
    "spike_rate_escape": ("spike_rate_escape", ("beta", "slope")),
}
SNNTORCH_LAYERS = {"flatten", "linear", "conv1d", "conv2d", "maxpool2d", "avgpool2d"}


# --------------------------------------------------------------------------- CLI
def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="YAML or JSON spec file")
    parser.add_argument("--batch", type=int, default=128, help="batch size (128)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds (3)")
    parser.add_argument(
        "--run",
        type=int,
        default=5,
        help="steps per variant per round, back to back as in training (5)",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile variant"
    )
    parser.add_argument(
        "--reference",
        choices=("auto", "snntorch", "step"),
        default="auto",
        help="snnTorch tutorial loop where possible (auto), or the per-step schedule",
    )
    parser.add_argument(
        "--rss", action="store_true", help="also measure peak RSS per variant"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall time (default), or this process's CPU time: steadier on a busy "
        "machine, meaningful with --threads 1",
    )
    parser.add_argument(
        "--plain-optimizer",
        action="store_true",
        help="torch's default optimizer implementation for snncompile variants too",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and batch seed")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or cuda:N: every variant runs there; the native "
        "and onnxruntime rows are CPU-only",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")


def run_bench(args: argparse.Namespace) -> int:
    import snncompile

    if args.batch < 1 or args.repeats < 1 or args.run < 1 or args.warmup < 0:
        raise UserError("--batch, --repeats and --run must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_device(args)
    if device.type != "cpu" and (args.rss or args.clock == "process"):
        raise UserError("--rss and --clock process measure the CPU; not with --device")
    spec = snncompile.load(args.spec)
    tuned = tune_allocator()  # as `snncompile train` runs; every variant alike
    bench = Bench(spec, args)
    if tuned:
        bench.notes.append(
            "malloc keeps freed large blocks (lower/optimize.py tune_allocator), "
            "for every variant alike, as in snncompile train"
        )
    exact = bench.check_exactness()
    bench.warm_up()
    bench.time_rounds()
    bench.measure_memory()
    if args.rss:
        bench.measure_rss(args.spec)
    report = bench.report(exact)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    return 0 if exact["passed"] else 1


COMPILED = ("native", "compiled", "whole")  # the rows that compile (not --no-compile)


def bench_device(args) -> torch.device:
    """The device named by --device, checked (absent from older callers: CPU)."""
    name = getattr(args, "device", "cpu") or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are benchmarked")
    return device


# --------------------------------------------------------------------------- variants
@dataclass
class Variant:
    key: str
    label: str
    model: Callable | None  # (x, all_spikes=False) -> (spk, mem[, records])
    records: bool = True  # can return every spiking layer's spikes
    trainable: bool = True
    optimizer: Any = None
    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    first_train_s: float | None = None
    first_infer_s: float | None = None
    normal_s: tuple[float, float] | None = None  # wall time of a warm-up call
    peak_bytes: int | None = None
    rss: dict | None = None
    infer: Callable | None = None  # inference override (onnxruntime)
    loss: Callable | None = None  # its own loss function (native: loss.c)


def snntorch_reason(graph) -> str | None:
    """Why the snnTorch tutorial loop cannot express this graph, or None."""
    try:
        import snntorch  # noqa: F401
    except ImportError:
        return "snntorch is not installed"
    if graph.encoding["type"] != "direct":
        return f"{graph.encoding['type']} encoding"
    if not graph.is_chain():  # the tutorial loop calls its layers in a row
        return "a layer graph with branches"
    for node in graph.nodes:
        p = node.params
        if node.stateful:
            if node.type != "leaky":
                return f"{node.type} neurons"
            if p["per_neuron"] or p["learn_beta"] or p["learn_threshold"]:
                return "per-neuron or learnable neuron parameters"
            if p["surrogate"]["type"] not in SNNTORCH_SURROGATES:
                return f"{p['surrogate']['type']} surrogate"
        elif node.type not in SNNTORCH_LAYERS:
            return f"{node.type} layer"
    return None


class TutorialLoop(nn.Module):
    """The per-step loop as snnTorch's tutorials write it, with `net`'s weights."""

    def __init__(self, net, graph):
        import snntorch as snn
        from snntorch import surrogate

        super().__init__()
        self.steps = graph.steps
        self.neurons = [n.name for n in graph.neuron_nodes]
        self.layers = nn.ModuleDict()
        for node in graph.nodes:
            if not node.stateful:
                self.layers[node.name] = copy.deepcopy(getattr(net, node.name))
                continue
            p = node.params
            func, fields = SNNTORCH_SURROGATES[p["surrogate"]["type"]]
            grad = getattr(surrogate, func)(*(p["surrogate"][f] for f in fields))
            self.layers[node.name] = snn.Leaky(
                beta=p["beta"],
                threshold=p["threshold"],
                reset_mechanism=p["reset"],
                spike_grad=grad,
            )

    def forward(self, x, all_spikes=False):
        mem = {name: self.layers[name].init_leaky() for name in self.neurons}
        spk_rec, mem_rec = [], []
        records = {name: [] for name in self.neurons}
        for _ in range(self.steps):
            h = x
            for name, layer in self.layers.items():
                if name in mem:
                    h, mem[name] = layer(h, mem[name])
                    records[name].append(h)
                else:
                    h = layer(h)
            spk_rec.append(h)
            mem_rec.append(mem[self.neurons[-1]])
        spk, out_mem = torch.stack(spk_rec), torch.stack(mem_rec)
        if all_spikes:
            return spk, out_mem, {k: torch.stack(v) for k, v in records.items()}
        return spk, out_mem


def make_batch(graph, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(graph.input_shape)
    if graph.sequence_input:
        x = torch.rand((graph.steps, batch) + shape, generator=gen)
        if graph.encoding["type"] == "spikes":
            x = torch.bernoulli(x, generator=gen)
    else:
        x = torch.rand((batch,) + shape, generator=gen)
    y = torch.randint(0, graph.num_classes, (batch,), generator=gen)
    return x, y


# --------------------------------------------------------------------------- bench
class Bench:
    """The variants of one spec on one batch, and their measurements."""

    def __init__(self, spec, args, only: str | None = None):
        import snncompile

        self.spec, self.args = spec, args
        self.device = bench_device(args)
        self.base = snncompile.build(spec, seed=args.seed).to(self.device)
        self.graph = graph = self.base.graph
        x, y = make_batch(graph, args.batch, args.seed + 1)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.loss, self.need_records = make_loss(graph)
        self.decode = getattr(decode_module, registry.DECODERS[graph.decoding])
        self.notes: list[str] = []
        self.only = only  # build just this variant (and what it is copied from)
        self.variants = self._variants()

    def _copy(self, schedule="layered"):
        import snncompile

        net = snncompile.build(self.spec, schedule=schedule).to(self.device)
        net.load_state_dict(self.base.state_dict())
        return net

    def _variants(self) -> list[Variant]:
        graph, args = self.graph, self.args
        reason = snntorch_reason(graph)
        if args.reference == "snntorch" and reason:
            raise UserError(f"no snnTorch reference for '{graph.name}': {reason}")
        plan = []  # (key, label, factory)
        if args.reference != "step" and reason is None:
            plan.append(
                (
                    "reference",
                    "snnTorch tutorial loop",
                    lambda: TutorialLoop(self.base, graph).to(self.device),
                )
            )
            plan.append(
                ("step", "snncompile step schedule", lambda: self._copy("step"))
            )
        else:
            if reason and args.reference == "auto":
                self.notes.append(f"reference is the per-step schedule ({reason})")
            plan.append(("reference", "per-step loop", lambda: self._copy("step")))
        if any(n.descriptor.fused_kernel for n in graph.neuron_nodes):
            # the plain model, as build() gives it: every neuron's step loop
            plan.append(("loops", "snncompile eager, Leaky step loops", self._copy))
        plan.append(("eager", "snncompile eager", lambda: apply(self._copy(), "none")))
        if not args.no_compile:
            why = "the C kernels run on the CPU"
            if self.device.type == "cpu":
                why = native_problem()
            if why is None:
                plan.append(
                    (
                        "native",
                        "snncompile native (train's default)",
                        lambda: apply(self._copy(), "native"),
                    )
                )
                self.notes.append(native_note())
            else:
                self.notes.append(f"no native row: {why}")
            plan.append(
                (
                    "compiled",
                    "snncompile torch.compile neurons",
                    lambda: apply(self._copy(), "neurons"),
                )
            )
            plan.append(
                (
                    "whole",
                    "snncompile whole-model torch.compile",
                    lambda: apply(self._copy(), "model"),
                )
            )
        out = [
            # the whole-model compile returns the output layer only: another graph
            Variant(key, label, factory(), records=key != "whole")
            for key, label, factory in plan
            if self.only in (None, key)
        ]
        if self.only is None:
            onnx = self._onnx_variant()
            out += [onnx] if onnx is not None else []
        fused = not args.plain_optimizer
        for variant in out:
            if variant.key == "native":  # as train runs it: the loss by loss.c
                variant.loss = make_loss(graph, native=True)[0]
            if variant.trainable:
                own = variant.key not in ("reference", "step")
                parameters = variant.model.parameters()
                variant.optimizer = make_optimizer(parameters, self.spec, fused and own)
        if fused:
            self.notes.append(
                "snncompile eager/compiled variants step the optimizer with "
                "torch's fused kernel (fused=True); --plain-optimizer to compare "
                "without"
            )
        return out

    def _onnx_variant(self) -> Variant | None:
        try:
            from snncompile.export.onnx import export_onnx
        except ImportError as err:
            self.notes.append(f"onnxruntime skipped: exporter not importable ({err})")
            return None
        if self.graph.encoding["type"] != "direct":
            self.notes.append("onnxruntime skipped: the ONNX model takes encoded input")
            return None
        if self.device.type != "cpu":
            self.notes.append("onnxruntime skipped: it runs on the CPU here")
            return None
        import onnxruntime as ort

        self._tmp = tempfile.TemporaryDirectory(prefix="snncompile-bench-")
        path = Path(self._tmp.name) / f"{self.graph.name}.onnx"
        export_onnx(self._copy(), path, mode="sequence")
        options = ort.SessionOptions()
        # no spinning threads after a run: they would slow the next variant down
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.args.threads:
            options.intra_op_num_threads = self.args.threads
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        x = self.x.numpy()

        def run(_x=None, all_spikes=False):
            spk, mem = session.run(["spk", "mem"], {"x": x})
            return torch.from_numpy(spk), torch.from_numpy(mem)

        def infer():
            return session.run(["scores"], {"x": x})[0].argmax(-1)

        return Variant(
            "onnx",
            "onnxruntime (ONNX)",
            run,
            records=False,
            trainable=False,
            infer=infer,
        )

    # ----------------------------------------------------------------- steps
    def train_step(self, variant: Variant):
        """One optimizer step; returns the forward's (spk, mem), detached."""
        if self.need_records:
            spk, mem, records = variant.model(self.x, all_spikes=True)
        else:
            (spk, mem), records = variant.model(self.x), None
        loss = (variant.loss or self.loss)(spk, mem, self.y, records)
        variant.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        variant.optimizer.step()
        return spk.detach(), mem.detach()

    def infer_step(self, variant: Variant, all_spikes: bool = False):
        """Eval-mode no_grad forward + decoding (or the forward's outputs)."""
        if variant.infer is not None and not all_spikes:
            return variant.infer()
        model = variant.model
        if isinstance(model, nn.Module):
            model.eval()
        try:
            with torch.no_grad():
                if all_spikes:
                    if variant.records:
                        return model(self.x, all_spikes=True)
                    return (*model(self.x), None)
                spk, mem = model(self.x)
                return self.decode(spk, mem).argmax(-1)
        finally:
            if isinstance(model, nn.Module):
                model.train()

    def _timed(self, func, variant) -> float:
        """Seconds of one call on the chosen clock (queued GPU work included)."""
        clock = time.process_time if self.args.clock == "process" else time.perf_counter
        self._sync()
        start = clock()
        func(variant)
        self._sync()
        return clock() - start

    def _wall(self, func, variant):
        """(result, wall seconds) of one call, queued GPU work included."""
        self._sync()
        start = time.perf_counter()
        out = func(variant)
        self._sync()
        return out, time.perf_counter() - start

    def _sync(self) -> None:
        """Wait for queued GPU work, so that a step's time is the step's own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------- phases
    def check_exactness(self) -> dict:
        """Every variant's spikes vs the reference's on the benchmark batch, from
        the same weights: the inference forward (every spiking layer where the
        variant returns them) and the forward of the first training step (which
        then also gives each variant's first-call time, compilation included)."""
        inference, training = {}, {}
        for variant in self.variants:
            out, variant.first_infer_s = self._wall(
                lambda v: self.infer_step(v, all_spikes=True), variant
            )
            inference[variant.key] = out
        dropout = any(n.type == "dropout" for n in self.graph.nodes)
        for variant in self.variants:
            if variant.trainable:
                out, variant.first_train_s = self._wall(self.train_step, variant)
                training[variant.key] = (*out, None)
        if dropout:  # every variant draws its own dropout masks
            training = {}
            self.notes.append("training forward not compared: dropout is random")
        ref = self.variants[0].key
        results, passed = {}, True
        for variant in self.variants[1:]:
            entry = compare_outputs(inference[variant.key], inference[ref])
            if variant.key in training:
                train = compare_outputs(training[variant.key], training[ref])
                entry["train_spikes_equal"] = train["spikes_equal"]
                entry["train_spikes_match"] = train["spikes_match"]
                entry["train_near_threshold"] = train["near_threshold"]
                entry["train_spike_mismatches"] = train["spike_mismatches"]["output"]
            if variant.key == "onnx":
                entry["informative"] = True  # another runtime's float arithmetic
            elif not (entry["spikes_match"] and entry.get("train_spikes_match", True)):
                passed = False
            results[variant.key] = entry
        label = self.variants[0].label
        return {"reference": label, "passed": passed, "variants": results}

    def warm_up(self) -> None:
        """Untimed rounds; the first also gives the wall time of a normal call,
        which compile times subtract from the first (compiling) call."""
        for r in range(self.args.warmup):
            for variant in self.variants:
                train = 0.0
                if variant.trainable:
                    train = self._wall(self.train_step, variant)[1]
                infer = self._wall(self.infer_step, variant)[1]
                if r == 0:
                    variant.normal_s = (train, infer)

    def time_rounds(self) -> None:
        """Each round gives every variant a turn of `--run` training steps back
        to back, then as many inference calls, each timed on its own."""
        count, run = len(self.variants), self.args.run
        for r in range(self.args.repeats):
            order = self.variants[r % count :] + self.variants[: r % count]
            for variant in order:
                if variant.trainable:
                    for _ in range(run):
                        variant.train_s.append(self._timed(self.train_step, variant))
                for _ in range(run):
                    variant.infer_s.append(self._timed(self.infer_step, variant))

    def measure_memory(self) -> None:
        for variant in self.variants:
            if variant.trainable:
                step = functools.partial(self.train_step, variant)
                if self.device.type == "cuda":
                    variant.peak_bytes = peak_cuda_bytes(step, self.device)
                else:
                    variant.peak_bytes = peak_tensor_bytes(step)

    def measure_rss(self, spec_path: str) -> None:
        for variant in self.variants:
            if variant.trainable:
                variant.rss = rss_probe(spec_path, variant.key, self.args)

    # ----------------------------------------------------------------- report
    def report(self, exact: dict) -> dict:
        ref = self.variants[0]
        ref_train = statistics.median(ref.train_s)
        ref_infer = statistics.median(ref.infer_s)
        batch = self.args.batch
        rows = []
        for v in self.variants:
            row: dict[str, Any] = {"key": v.key, "variant": v.label}
            if v.train_s:
                median = statistics.median(v.train_s)
                row["train_ms"] = median * 1e3
                row["train_samples_per_s"] = batch / median
                row["train_speedup"] = ref_train / median
            infer = statistics.median(v.infer_s)
            row["infer_ms"] = infer * 1e3
            row["infer_samples_per_s"] = batch / infer
            row["infer_speedup"] = ref_infer / infer
            if v.peak_bytes is not None:
                row["peak_train_mb"] = v.peak_bytes / 2**20
            if v.rss is not None:
                row["peak_rss_mb"] = v.rss["peak_mb"]
            if v.key in COMPILED:
                train, infer = v.normal_s or (statistics.median(v.train_s), infer)
                row["compile_train_s"] = v.first_train_s - train
                row["compile_infer_s"] = v.first_infer_s - infer
            rows.append(row)
        return {
            "spec": self.graph.name,
            "steps": self.graph.steps,
            "batch": batch,
            "repeats": self.args.repeats,
            "run": self.args.run,
            "warmup": self.args.warmup,
            "threads": torch.get_num_threads(),
            "clock": self.args.clock,
            "torch": torch.__version__,
            "device": str(self.device)
            + (
                f" ({torch.cuda.get_device_name(self.device)})"
                if self.device.type == "cuda"
                else ""
            ),
            "rows": rows,
            "exactness": exact,
            "notes": self.notes,
        }


NEAR = 1e-4  # membranes this close (relative, at least 1) are equal to rounding


def near_threshold_flips(spk, mem, spk_ref, mem_ref) -> int | None:
    """How many output neurons' spike trains part at a step where the two
    membranes still agree to rounding (one lies just above the threshold, the
    other just below: a float summation order decided it); None if a train
    parts where the membranes differ by more (a real difference). Records
    [T, ...]; after the first parting step a train may differ anyhow."""
    differ = spk != spk_ref
    parted = differ.any(0)
    if not parted.any():
        return 0
    first = differ.float().argmax(0, keepdim=True)  # first parting step
    gap = (mem.gather(0, first) - mem_ref.gather(0, first)).abs()[0]
    scale = mem_ref.gather(0, first).abs()[0].clamp(min=1.0)
    if (gap[parted] > NEAR * scale[parted]).any():
        return None
    return int(parted.sum())


def native_note() -> str:
    """What the native row's kernels cost this process before any step (not in
    its compile column): built here, or loaded from the cache."""
    from snncompile import native

    seconds = native.STATS["seconds"]
    where = native.cache_dir() / "native"
    if native.STATS["builds"]:
        return f"native kernels built in {seconds:.1f} s (once per machine; in {where})"
    return f"native kernels loaded from {where} in {seconds:.2f} s"


def compare_outputs(outputs, reference) -> dict:
    """Spike mismatches per record (output, then each layer both give), the
    largest membrane difference, and whether the spikes match: identical, except
    for output neurons that part at the threshold to rounding (counted in
    `near_threshold`; see near_threshold_flips), between two (spk, mem, records)
    triples."""
    (spk, mem, records), (spk_ref, mem_ref, rec_ref) = outputs, reference
    layers = {"output": int((spk != spk_ref).sum())}
    if records is not None and rec_ref is not None:
        for name, rec in records.items():
            layers[name] = int((rec != rec_ref[name]).sum())
    near = near_threshold_flips(spk, mem, spk_ref, mem_ref)
    hidden = any(count for name, count in layers.items() if name != "output")
    return {
        "spikes_equal": not any(layers.values()),
        "spikes_match": near is not None and not hidden,
        "near_threshold": near or 0,
        "spike_mismatches": layers,
        "max_mem_diff": float((mem - mem_ref).abs().max()),
    }


# --------------------------------------------------------------------------- memory
def peak_tensor_bytes(step: Callable[[], None]) -> int:
    """Peak of live tensor bytes during `step`, above those live when it starts,
    from the allocator's events (every CPU allocation and free, in order)."""
    from torch.profiler import ProfilerActivity, profile

    with (
        quiet_stderr(),  # the profiler logs "no GPU found" and the like
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        step()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    ]
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda event: event[0]):  # stable
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_cuda_bytes(step: Callable[[], None], device) -> int:
    """Peak of allocated CUDA bytes during `step`, above those allocated before."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def rss_probe(spec_path: str, key: str, args) -> dict:
    """Peak RSS of a fresh process that builds the benchmark and trains one variant."""
    options = {
        "spec": spec_path,
        "key": key,
        "batch": args.batch,
        "seed": args.seed,
        "reference": args.reference,
        "threads": args.threads,
        "plain_optimizer": args.plain_optimizer,
        "steps": max(3, args.warmup + 2),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RSS_CHILD,
            str(Path(__file__).resolve()),
            json.dumps(options),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"peak_mb": None, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# the child loads this file by its path, as snncompile/benchmark.py does
RSS_CHILD = """\
import importlib.util, sys
spec = importlib.util.spec_from_file_location("snncompile_benchmarks_bench", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module._rss_child(sys.argv[2])
"""


def _rss_child(options_json: str) -> None:
    import gc

    import snncompile

    options = json.loads(options_json)
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    args = argparse.Namespace(
        batch=options["batch"],
        seed=options["seed"],
        reference=options["reference"],
        no_compile=options["key"] not in COMPILED,
        threads=options["threads"],
        plain_optimizer=options["plain_optimizer"],
        clock="wall",
    )
    bench = Bench(snncompile.load(options["spec"]), args, only=options["key"])
    (variant,) = bench.variants
    gc.collect()
    before = _status_kb("VmRSS")
    for _ in range(options["steps"]):
        bench.train_step(variant)
    peak = _status_kb("VmHWM")
    print(
        json.dumps({"peak_mb": (peak - before) / 1024, "rss_before_mb": before / 1024})
    )


# --------------------------------------------------------------------------- table
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    rows = report["rows"]
    header = [
        "variant",
        "train samples/s",
        "train ms",
        "train x",
        "infer samples/s",
        "infer x",
        "peak train MB",
    ]
    rss = any("peak_rss_mb" in r for r in rows)
    if rss:
        header.append("peak RSS MB")
    header.append("compile s (train/infer)")
    title = (
        f"{report['spec']}: batch {report['batch']}, {report['steps']} steps, "
        f"{report['threads']} threads, torch {report['torch']}; {report['clock']} "
        f"time, medians of {report['repeats']} interleaved rounds of "
        f"{report.get('run', 1)} steps per variant after {report['warmup']} warm-up"
    )
    if report.get("device", "cpu") != "cpu":
        title += f"; on {report['device']}"
    lines = [
        title,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    for r in rows:
        cells = [
            r["variant"],
            _fmt(r.get("train_samples_per_s"), ",.0f"),
            _fmt(r.get("train_ms"), ".1f"),
            _fmt(r.get("train_speedup"), ".2f"),
            _fmt(r.get("infer_samples_per_s"), ",.0f"),
            _fmt(r.get("infer_speedup"), ".2f"),
            _fmt(r.get("peak_train_mb"), ".2f"),
        ]
        if rss:
            cells.append(_fmt(r.get("peak_rss_mb"), ".0f"))
        if "compile_train_s" in r:
            # first call minus a normal one: noise around zero reads as 0.0
            train_s, infer_s = (
                max(0.0, r[k]) for k in ("compile_train_s", "compile_infer_s")
            )
            cells.append(f"{train_s:.1f} / {infer_s:.1f}")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    exact = report["exactness"]
    lines += ["", f"exactness vs {exact['reference']} (same weights, this batch):"]
    labels = {r["key"]: r["variant"] for r in rows}
    for key, entry in exact["variants"].items():
        records = len(entry["spike_mismatches"])
        if entry["spikes_equal"]:
            verdict = f"identical spikes ({records} records)"
        elif entry["spikes_match"]:
            verdict = (
                f"identical spikes ({records} records) but for "
                f"{entry['near_threshold']} output neurons parting at the threshold"
            )
        else:
            bad = {k: v for k, v in entry["spike_mismatches"].items() if v}
            verdict = f"DIFFERENT spikes {bad}"
        if "train_spikes_equal" in entry:
            verdict += "; training forward " + (
                "identical"
                if entry["train_spikes_equal"]
                else f"identical but for {entry['train_near_threshold']} near the "
                "threshold"
                if entry["train_spikes_match"]
                else f"DIFFERENT ({entry['train_spike_mismatches']} output spikes)"
            )
        extra = " (informative only)" if entry.get("informative") else ""
        lines.append(
            f"  {labels[key]}: {verdict}, max |mem diff| "
            f"{entry['max_mem_diff']:.2e}{extra}"
        )
    lines.append("exactness check: " + ("PASSED" if exact["passed"] else "FAILED"))
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from snncompile.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
