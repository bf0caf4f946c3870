"""`snncompile bench SPEC`: one network, every way of running it, side by side.

The benchmark harness. It is no part of the installed package: `snncompile
bench` (snncompile/benchmark.py) loads this file from a source checkout.

    snncompile bench specs/mnist_fc.yaml [--batch 128] [--repeats 20] [--run 5]
                     [--warmup 3]
                     [--no-compile] [--reference auto|snntorch|step] [--rss]
                     [--threads N] [--clock wall|process] [--plain-optimizer]
                     [--seed N] [--no-peers] [--json FILE]
    snncompile bench --workload open-neuromorphic [--neurons 4096] [--steps 500]
                     [--batch 16] [--input currents|spikes] [--repeats 3] [...]

Variants (all start from the same weights, copied from one `build(spec)`, and
each forward that the exactness check compares starts from the same RNG state,
so that a rate encoding gives each the same spike train; `build` gives the
plain model, the very code `snncompile codegen` writes, and
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
  (default settings, but random ops on torch's own kernels, so that a rate code
  draws the same spikes as the others from the same seed). Compile
  time (both compiled variants) = first call minus a normal call, for training
  and for inference (separate graphs); inductor's on-disk cache from an earlier
  run makes it much shorter than a cold compile.
- onnxruntime: inference of the ONNX sequence export (`export_onnx`), when the
  exporter is importable and the input is the raw frame (direct encoding).
- peers: SpikingJelly's multi-step LIFNode and Norse's LIFBoxCell, where
  installed and the spec is a chain of leaky neurons (subtract reset) and plain
  layers (benchmarks/peers.py): the same weights and schedule as eager, each
  peer's neuron configured as close to snnTorch's Leaky as it allows; what still
  differs is listed in the output, and checked: each peer's spikes must equal a
  plain-torch restatement of its equations, bit for bit (against the reference
  they are informative). `--no-peers` leaves them out.

`--workload open-neuromorphic` runs the Open Neuromorphic SNN library benchmark
instead of a spec (OpenNeuromorphicBench below): one Linear + LIF layer, batch
16, T = 500, 4096 neurons by default, forward + backward of spikes.sum().

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
import importlib.util
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
    parser.add_argument(
        "spec",
        metavar="SPEC",
        nargs="?",
        help="YAML or JSON spec file (or none, with --workload)",
    )
    parser.add_argument(
        "--workload",
        choices=(ON_WORKLOAD,),
        help="a built-in workload instead of a spec: open-neuromorphic, the Open "
        "Neuromorphic SNN library benchmark (one Linear + LIF layer; forward and "
        "backward of spikes.sum(); see --neurons, --steps, --input)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help=f"batch size ({DEFAULTS['spec']['batch']}; "
        f"open-neuromorphic: {DEFAULTS[ON_WORKLOAD]['batch']})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"timed rounds ({DEFAULTS['spec']['repeats']}; "
        f"open-neuromorphic: {DEFAULTS[ON_WORKLOAD]['repeats']})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"untimed rounds ({DEFAULTS['spec']['warmup']}; "
        f"open-neuromorphic: {DEFAULTS[ON_WORKLOAD]['warmup']})",
    )
    parser.add_argument(
        "--run",
        type=int,
        help="steps per variant per round, back to back as in training "
        f"({DEFAULTS['spec']['run']}; open-neuromorphic: "
        f"{DEFAULTS[ON_WORKLOAD]['run']})",
    )
    parser.add_argument(
        "--neurons",
        type=int,
        help="open-neuromorphic: input and output neurons of the layer (4096 on a "
        "CPU, 16384 on a GPU, as the published benchmark)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help=f"open-neuromorphic: time steps ({DEFAULTS[ON_WORKLOAD]['steps']})",
    )
    parser.add_argument(
        "--input",
        choices=("currents", "spikes"),
        help="open-neuromorphic: the [T, B, N] input, random currents "
        "(torch.randn, as the published benchmark; the default) or spikes "
        f"(Bernoulli, rate {ON_SPIKE_RATE})",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="no SpikingJelly or Norse rows (shown where installed)",
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


def resolve_options(args: argparse.Namespace) -> None:
    """Fill in the options left unset with the defaults of the spec benchmark
    or of the workload, and check them."""
    workload = getattr(args, "workload", None)
    if workload is None and getattr(args, "spec", None) is None:
        raise UserError("give a SPEC file, or --workload open-neuromorphic")
    if workload is not None and getattr(args, "spec", None) is not None:
        raise UserError(f"give a SPEC file or --workload {workload}, not both")
    defaults = DEFAULTS[workload or "spec"]
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if workload is None:
        given = [f"--{n}" for n in ON_ONLY if getattr(args, n, None) is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only with --workload {ON_WORKLOAD}")
    elif args.rss:
        raise UserError(
            f"--rss measures a spec's variants; not with --workload {workload}"
        )
    if args.batch < 1 or args.repeats < 1 or args.run < 1 or args.warmup < 0:
        raise UserError("--batch, --repeats and --run must be >= 1, --warmup >= 0")
    if workload is not None and (args.neurons < 1 or args.steps < 1):
        raise UserError("--neurons and --steps must be >= 1")


def run_bench(args: argparse.Namespace) -> int:
    import snncompile

    resolve_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_device(args)
    if device.type != "cpu" and (args.rss or args.clock == "process"):
        raise UserError("--rss and --clock process measure the CPU; not with --device")
    if args.workload == ON_WORKLOAD:
        spec = open_neuromorphic_spec(args.neurons, args.steps, args.batch)
    else:
        spec = snncompile.load(args.spec)
    tuned = tune_allocator()  # as `snncompile train` runs; every variant alike
    bench = (OpenNeuromorphicBench if args.workload else Bench)(spec, args)
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


COMPILED = ("native", "default", "compiled", "whole")  # rows that compile
ON_WORKLOAD = "open-neuromorphic"
ON_SPIKE_RATE = 0.1  # --input spikes: each input neuron fires with this probability
DEFAULTS = {  # options left unset: the spec benchmark's, or the workload's
    "spec": {"batch": 128, "repeats": 20, "warmup": 3, "run": 5},
    ON_WORKLOAD: {
        "batch": 16,
        "repeats": 3,
        "warmup": 1,
        "run": 1,
        "neurons": 4096,
        "steps": 500,
        "input": "currents",
    },
}
ON_ONLY = ("neurons", "steps", "input")  # options of the workload alone


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
    peer: Any = None  # a peer library's row (benchmarks/peers.py Peer)
    forward_s: list[float] = field(default_factory=list)  # open-neuromorphic


def snntorch_reason(graph) -> str | None:
    """Why the snnTorch tutorial loop cannot express this graph, or None."""
    try:
        import snntorch  # noqa: F401
    except ImportError:
        return "snntorch is not installed"
    if graph.encoding["type"] not in ("direct", "spikes"):  # spikes: x[t] per step
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
    """The per-step loop as snnTorch's tutorials write it, with `net`'s weights
    (a sequence input [T, B, ...], spikes encoding, is read as x[t] at step t,
    as the Open Neuromorphic benchmark's snnTorch model does)."""

    def __init__(self, net, graph):
        import snntorch as snn
        from snntorch import surrogate

        super().__init__()
        self.steps = graph.steps
        self.sequence = graph.sequence_input
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
        for step in range(self.steps or x.shape[0]):  # 0: steps auto, the input's
            h = x[step] if self.sequence else x
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
        x, y = self._batch()
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.loss, self.need_records = make_loss(graph)
        self.decode = getattr(decode_module, registry.DECODERS[graph.decoding])
        self.notes: list[str] = []
        self.differences: dict[str, dict] = {}  # peer key -> what still differs
        self.only = only  # build just this variant (and what it is copied from)
        self.variants = self._variants()

    def _batch(self):
        return make_batch(self.graph, self.args.batch, self.args.seed + 1)

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
                        native_label(),
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
            out += self._peer_variants()
        fused = not args.plain_optimizer
        for variant in out:
            if variant.key == "native":  # as train runs it: the loss by loss.c
                variant.loss = make_loss(graph, native=True)[0]
            if variant.trainable:
                own = variant.key not in ("reference", "step") and not variant.peer
                parameters = variant.model.parameters()
                variant.optimizer = make_optimizer(parameters, self.spec, fused and own)
        if fused:
            self.notes.append(
                "snncompile eager/compiled variants step the optimizer with "
                "torch's fused kernel (fused=True); --plain-optimizer to compare "
                "without"
            )
        return out

    def _peer_variants(self, record_mem: bool = True) -> list[Variant]:
        """A row per peer library (SpikingJelly, Norse) that is installed and
        can run this graph; a note for each that cannot."""
        if getattr(self.args, "no_peers", False):
            return []
        out = []
        for peer in peers_module().PEERS:
            version = peer.version()
            if version is None:
                self.notes.append(
                    f"no {peer.package} row: not installed (pip install {peer.package})"
                )
                continue
            reason = peer.reason(self.graph)
            if reason is not None:
                self.notes.append(f"no {peer.package} row: {reason}")
                continue
            model = peers_module().PeerNet(self.base, self.graph, peer, record_mem)
            out.append(
                Variant(peer.key, peer.label(version), model.to(self.device), peer=peer)
            )
            surrogates = {
                peer.surrogates[n.params["surrogate"]["type"]]
                for n in self.graph.neuron_nodes
            }
            self.differences[peer.key] = {
                "label": peer.label(version),
                "differences": [
                    *peer.differences,
                    *(f"surrogate: {line}" for line in sorted(surrogates)),
                ],
            }
        if out:
            optimizer = (
                "; they step the optimizer with torch's default implementation, as "
                "the reference"
                if getattr(self.args, "workload", None) is None
                else ""
            )
            self.notes.append(
                "peer rows run snncompile eager's schedule, written by hand: the "
                "time-invariant prefix once (direct encoding), stateless layers over "
                "[T*B, ...], each neuron over the whole sequence"
                f"{optimizer} (benchmarks/peers.py)"
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
        then also gives each variant's first-call time, compilation included).
        Each of these forwards starts from the same RNG state (`_seeded`): a
        rate encoding gives every variant the same spike train."""
        inference, training, stated = {}, {}, {}
        for variant in self.variants:
            out, variant.first_infer_s = self._wall(
                self._seeded(lambda v: self.infer_step(v, all_spikes=True)), variant
            )
            inference[variant.key] = out
            if variant.peer is not None:  # from the same weights, before training
                stated[variant.key] = self._stated(variant)
        dropout = any(n.type == "dropout" for n in self.graph.nodes)
        for variant in self.variants:
            if variant.trainable:
                out, variant.first_train_s = self._wall(
                    self._seeded(self.train_step), variant
                )
                training[variant.key] = (*out, None)
        if dropout:  # every variant draws its own dropout masks
            training = {}
            self.notes.append("training forward not compared: dropout is random")
        ref = self.variants[0].key
        results, passed = {}, True
        for variant in self.variants[1:]:
            if variant.peer is not None:
                entry = self._peer_entry(
                    inference[variant.key], inference[ref], stated[variant.key]
                )
                passed = passed and entry["equations_match"] is not False
                results[variant.key] = entry
                continue
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

    def _seeded(self, func: Callable):
        """`func(variant)` from the same global RNG state for every variant (and
        the caller's state restored after): a random encoding (rate) draws its
        spike train inside the forward, so that variants run one after another
        would otherwise each read another train, and compare nothing."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []

        def run(variant):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.args.seed + 2)  # + 1: the batch's
                return func(variant)

        return run

    def _stated(self, variant: Variant):
        """A peer row's forward with each neuron replaced by its stated
        equations (peers.py), on the benchmark batch, from its current weights."""
        model = variant.model
        model.eval()
        model.equations = True
        try:
            with torch.no_grad():
                return model(self.x, all_spikes=True)
        finally:
            model.equations = False
            model.train()

    def _peer_entry(self, outputs, reference, stated) -> dict:
        """A peer's spikes against its own stated equations (bit for bit on
        the CPU: the list of differences is complete), and against the
        reference (informative: other dynamics)."""
        entry = peer_comparison(outputs, reference, stated)
        if entry["equations_mismatches"] and self.device.type != "cpu":
            # another device's kernels may round otherwise (fused multiply-add)
            entry["equations_match"] = None
        return entry

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
        return {**report_fields(self, exact), "rows": rows}


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


def peer_comparison(outputs, reference, stated) -> dict:
    """A peer's (spk, mem, records) against the reference's and against its
    stated equations' run on the same input."""
    (spk, _, records), (spk_ref, _, rec_ref), (spk_eq, _, rec_eq) = (
        outputs,
        reference,
        stated,
    )
    vs_equations = {"output": int((spk != spk_eq).sum())}
    for name, rec in (records or {}).items():
        if rec_eq and name in rec_eq:
            vs_equations[name] = int((rec != rec_eq[name]).sum())
    vs_reference = {"output": int((spk != spk_ref).sum())}
    for name, rec in (records or {}).items():
        if rec_ref and name in rec_ref:
            vs_reference[name] = int((rec != rec_ref[name]).sum())
    return {
        "informative": True,  # another library's dynamics: not failed on
        "equations_match": not any(vs_equations.values()),
        "equations_mismatches": {k: v for k, v in vs_equations.items() if v},
        "records": len(vs_equations),
        "spike_mismatches": vs_reference,
        "spikes": int(spk.numel()),
        "rate": float(spk.float().mean()),
        "rate_reference": float(spk_ref.float().mean()),
    }


def native_label() -> str:
    """The native row's label: "(train's default)" while it is."""
    from snncompile.lower.optimize import DEFAULT_MODE, as_mode

    if as_mode(DEFAULT_MODE) == "native":
        return "snncompile native (train's default)"
    return "snncompile native"


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


# --------------------------------------------------------------------------- peers
PEERS_NAME = "snncompile_benchmarks_peers"  # benchmarks/peers.py, once loaded


def peers_module():
    """benchmarks/peers.py (SpikingJelly and Norse rows), loaded by its path as
    this file is, and registered before it runs (its dataclasses need that)."""
    module = sys.modules.get(PEERS_NAME)
    if module is None:
        path = Path(__file__).resolve().with_name("peers.py")
        spec = importlib.util.spec_from_file_location(PEERS_NAME, path)
        module = sys.modules[PEERS_NAME] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PEERS_NAME]
            raise
    return module


# --------------------------------------------------------------------------- workload
ON_SPEC = """\
snncompile: 1
name: open_neuromorphic
description: the Open Neuromorphic SNN library benchmark, one Linear + LIF layer
input: {{shape: [{neurons}], encoding: {{type: spikes}}}}  # [T, B, N] per call
steps: {steps}
defaults:  # snnTorch's Leaky as the benchmark's snnTorch model configures it
  beta: 0.95
  threshold: 1.0
  reset: subtract
  surrogate: {{type: atan, alpha: 2.0}}
layers:
  - {{type: linear, name: fc, out_features: {neurons}}}
  - {{type: leaky, name: lif}}
decoding: {{type: rate}}
loss: {{type: ce_rate}}  # unused: the workload's step backpropagates spikes.sum()
train:
  dataset: synthetic
  batch_size: {batch}
  optimizer: {{type: adam, lr: 1.0e-3}}
"""


def open_neuromorphic_spec(neurons: int, steps: int, batch: int):
    """The workload as a spec: N input neurons fed a [T, B, N] sequence (input
    encoding `spikes`: the input as given, here random currents or spikes), a
    linear layer of N outputs and a Leaky layer of N neurons."""
    import snncompile

    text = ON_SPEC.format(neurons=neurons, steps=steps, batch=batch)
    return snncompile.loads(text, file="<open-neuromorphic workload>")


class OpenNeuromorphicBench(Bench):
    """The Open Neuromorphic SNN library benchmark (open-neuromorphic.org, "SNN
    library benchmarks", 2023-2024): one Linear(N, N) + LIF layer, a [T, B, N]
    input of random currents (torch.randn) at every step, B = 16, T = 500; a
    step is the forward and the backward of spikes.sum() (no optimizer), both
    timed. Rows: snnTorch's per-step loop (the benchmark's own snnTorch model,
    beta 0.95: the reference), snncompile's default mode and eager, and the
    installed peers (SpikingJelly's multi-step LIFNode, Norse's LIFBoxCell).

    Each round gives every row `--run` steps; "forward" is the forward's share
    of a step, "backward" the rest (gradients are set to None before each)."""

    def _batch(self):
        gen = torch.Generator().manual_seed(self.args.seed + 1)
        shape = (self.graph.steps, self.args.batch, *self.graph.input_shape)
        if self.args.input == "spikes":
            x = torch.bernoulli(torch.full(shape, ON_SPIKE_RATE), generator=gen)
        else:
            x = torch.randn(shape, generator=gen)
        return x, torch.zeros(self.args.batch, dtype=torch.long)

    def _variants(self) -> list[Variant]:
        graph, args = self.graph, self.args
        reason = snntorch_reason(graph)
        plan = []
        if reason is None and args.reference != "step":
            import snntorch

            plan.append(
                (
                    "reference",
                    f"snnTorch {snntorch.__version__} (Leaky, per-step loop)",
                    lambda: TutorialLoop(self.base, graph).to(self.device),
                )
            )
        else:
            if reason is not None:
                self.notes.append(f"reference is the per-step schedule ({reason})")
            plan.append(("reference", "per-step loop", lambda: self._copy("step")))
        out = [Variant(key, label, factory()) for key, label, factory in plan]
        if not args.no_compile:
            out.append(self._default_variant())
        out.append(Variant("eager", "snncompile eager", apply(self._copy(), "none")))
        return out + self._peer_variants(record_mem=False)

    def _default_variant(self) -> Variant:
        """snncompile's default mode as `snncompile.compile(spec)` and `train`
        resolve it on this machine (auto: what its measurement chooses)."""
        from snncompile.lower.optimize import DEFAULT_MODE, as_mode, preflight

        net = self._copy()
        mode, problem = preflight(DEFAULT_MODE, net)
        if problem:
            self.notes.append(problem)
        default = as_mode(DEFAULT_MODE)
        shown = mode if mode == default else f"{default}: {mode}"
        variant = Variant("default", f"snncompile default ({shown})", apply(net, mode))
        if mode == "native":  # built (or loaded) by now
            self.notes.append(native_note())
        return variant

    # ----------------------------------------------------------------- steps
    def _step(self, variant: Variant):
        """(forward seconds, step seconds, (spk, mem)) of one step on the
        chosen clock: forward, then backward of spikes.sum()."""
        clock = time.process_time if self.args.clock == "process" else time.perf_counter
        for parameter in variant.model.parameters():
            parameter.grad = None
        self._sync()
        start = clock()
        spk, mem = variant.model(self.x)[:2]
        self._sync()
        middle = clock()
        spk.sum().backward()
        self._sync()
        end = clock()
        mem = None if mem is None else mem.detach()
        return middle - start, end - start, (spk.detach(), mem)

    def train_step(self, variant: Variant):
        return self._step(variant)[2]

    # ----------------------------------------------------------------- phases
    def check_exactness(self) -> dict:
        """Every row's spikes (and the snncompile rows' membranes) in the
        forward of the first step against the reference's, from the same
        weights; peers also against their stated equations."""
        outputs, stated = {}, {}
        for variant in self.variants:
            out, variant.first_train_s = self._wall(self.train_step, variant)
            outputs[variant.key] = (*out, None)
            if variant.peer is not None:  # no optimizer: the same weights
                stated[variant.key] = self._stated(variant)
        ref = self.variants[0]
        results, passed = {}, True
        for variant in self.variants[1:]:
            if variant.peer is not None:
                entry = self._peer_entry(
                    outputs[variant.key], outputs[ref.key], stated[variant.key]
                )
                passed = passed and entry["equations_match"] is not False
            else:
                entry = compare_outputs(outputs[variant.key], outputs[ref.key])
                passed = passed and entry["spikes_match"]
            results[variant.key] = entry
        return {"reference": ref.label, "passed": passed, "variants": results}

    def warm_up(self) -> None:
        for r in range(self.args.warmup):
            for variant in self.variants:
                seconds = self._wall(self.train_step, variant)[1]
                if r == 0:
                    variant.normal_s = (seconds, 0.0)

    def time_rounds(self) -> None:
        count = len(self.variants)
        for r in range(self.args.repeats):
            order = self.variants[r % count :] + self.variants[: r % count]
            for variant in order:
                for _ in range(self.args.run):
                    forward, step, _ = self._step(variant)
                    variant.forward_s.append(forward)
                    variant.train_s.append(step)

    # ----------------------------------------------------------------- report
    def report(self, exact: dict) -> dict:
        ref = statistics.median(self.variants[0].train_s)
        rows = []
        for v in self.variants:
            step = statistics.median(v.train_s)
            forward = statistics.median(v.forward_s)
            backward = statistics.median(
                total - fwd for total, fwd in zip(v.train_s, v.forward_s)
            )
            row: dict[str, Any] = {
                "key": v.key,
                "variant": v.label,
                "train_ms": step * 1e3,
                "forward_ms": forward * 1e3,
                "backward_ms": backward * 1e3,
                "train_samples_per_s": self.args.batch / step,
                "train_speedup": ref / step,
            }
            if v.peak_bytes is not None:
                row["peak_train_mb"] = v.peak_bytes / 2**20
            if v.key in COMPILED and v.normal_s is not None:
                row["compile_train_s"] = v.first_train_s - v.normal_s[0]
            rows.append(row)
        out = report_fields(self, exact)
        out.update(
            {
                "workload": ON_WORKLOAD,
                "neurons": self.args.neurons,
                "input": self.args.input,
                "rows": rows,
            }
        )
        return out


def report_fields(bench: Bench, exact: dict) -> dict:
    """The fields every report has, besides its rows."""
    device = bench.device
    return {
        "spec": bench.graph.name,
        "steps": bench.graph.steps,
        "batch": bench.args.batch,
        "repeats": bench.args.repeats,
        "run": bench.args.run,
        "warmup": bench.args.warmup,
        "threads": torch.get_num_threads(),
        "clock": bench.args.clock,
        "torch": torch.__version__,
        "device": str(device)
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "exactness": exact,
        "differences": bench.differences,
        "notes": bench.notes,
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
    if report.get("workload") == ON_WORKLOAD:
        return format_on_report(report)
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
        if "equations_match" in entry:
            lines.append(f"  {labels[key]}: {peer_verdict(entry)}")
            continue
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
    lines += format_differences(report)
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_on_report(report: dict) -> str:
    """The Open Neuromorphic workload's table, exactness and notes."""
    header = [
        "variant",
        "fwd+bwd ms",
        "x",
        "forward ms",
        "backward ms",
        "samples/s",
        "peak MB",
        "compile s",
    ]
    title = (
        f"Open Neuromorphic workload: Linear({report['neurons']}, "
        f"{report['neurons']}) + LIF, batch {report['batch']}, T = {report['steps']}, "
        f"input {report['input']}; forward + backward of spikes.sum(); "
        f"{report['threads']} threads, torch {report['torch']}; {report['clock']} "
        f"time, medians of {report['repeats']} interleaved rounds of "
        f"{report['run']} steps per row after {report['warmup']} warm-up"
    )
    if report.get("device", "cpu") != "cpu":
        title += f"; on {report['device']}"
    lines = [
        title,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    for r in report["rows"]:
        compile_s = r.get("compile_train_s")
        cells = [
            r["variant"],
            _fmt(r["train_ms"], ",.0f"),
            _fmt(r["train_speedup"], ".2f"),
            _fmt(r["forward_ms"], ",.0f"),
            _fmt(r["backward_ms"], ",.0f"),
            _fmt(r["train_samples_per_s"], ",.1f"),
            _fmt(r.get("peak_train_mb"), ",.1f"),
            "-" if compile_s is None else f"{max(0.0, compile_s):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    exact = report["exactness"]
    labels = {r["key"]: r["variant"] for r in report["rows"]}
    lines += ["", f"exactness vs {exact['reference']} (same weights, first step):"]
    for key, entry in exact["variants"].items():
        if "equations_match" in entry:
            lines.append(f"  {labels[key]}: {peer_verdict(entry)}")
        elif entry["spikes_equal"]:
            lines.append(
                f"  {labels[key]}: identical spikes, max |mem diff| "
                f"{entry['max_mem_diff']:.2e}"
            )
        elif entry["spikes_match"]:
            lines.append(
                f"  {labels[key]}: identical spikes but for {entry['near_threshold']} "
                "neurons parting at the threshold to rounding, max |mem diff| "
                f"{entry['max_mem_diff']:.2e}"
            )
        else:
            lines.append(
                f"  {labels[key]}: DIFFERENT spikes "
                f"({entry['spike_mismatches']['output']:,}), max |mem diff| "
                f"{entry['max_mem_diff']:.2e}"
            )
    lines.append("exactness check: " + ("PASSED" if exact["passed"] else "FAILED"))
    lines += format_differences(report)
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def peer_verdict(entry: dict) -> str:
    """One line on a peer row: its stated equations, and the reference."""
    if entry["equations_match"]:
        own = f"spikes identical to its stated equations ({entry['records']} records)"
    elif entry["equations_match"] is None:
        own = (
            f"spikes differ from its stated equations {entry['equations_mismatches']} "
            "(another device's rounding; checked on the CPU)"
        )
    else:
        own = f"spikes DIFFER from its stated equations {entry['equations_mismatches']}"
    output = entry["spike_mismatches"]["output"]
    return (
        f"{own}; against the reference (other dynamics, informative): "
        f"{output:,} of {entry['spikes']:,} output spikes differ, firing rate "
        f"{entry['rate']:.4f} vs {entry['rate_reference']:.4f}"
    )


def format_differences(report: dict) -> list[str]:
    """The peers' remaining differences from snnTorch's Leaky, one per line."""
    lines = []
    for entry in report.get("differences", {}).values():
        lines.append(f"{entry['label']}, what differs from snnTorch's Leaky:")
        lines += [f"  - {line}" for line in entry["differences"]]
    return lines


if __name__ == "__main__":  # pragma: no cover
    from snncompile.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
