"""Estimated training memory of a network, from its IR graph alone (no torch).

Training holds, in float32: the parameters, their gradients, the optimizer's
state (Adam and AdamW: two moments per parameter; SGD: a momentum buffer when
momentum > 0) and the activations autograd keeps for backpropagation through
time: for one batch of `train.batch_size` samples, every layer's output at
every step (once for a time-invariant layer, which runs once for all steps), a
spiking layer's state tensors and the input of its surrogate gradient, max
pooling's indices (int64) and batch norm's normalized input. Layer outputs that
are views (flatten) cost nothing. Those saved tensors are counted twice
(`WORKING`): the temporaries of the forward and the gradients of the backward
come on top of them; measured peaks of a training step on CPU (build(), Adam)
were 1.8 to 2.7 times the saved tensors alone for the example specs. Not counted: the dataset in memory (uint8
images: 55 MB for MNIST), the evaluation batch (no graph kept), torch itself
(a few hundred MB of code and allocator caches), mixed precision savings.

The estimate decides before any allocation whether a network can be trained
here: `check_fits` (train) and `fit_problem` (validate) refuse one larger than
this machine's memory; `inspect` and `validate` report it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from .ir.graph import Graph, Node
from .spec.errors import Problem, UserError

FLOAT = 4  # bytes of a float32
INDEX = 8  # bytes of an int64 index (max pooling)
WORKING = 2  # peak activation memory per byte of saved tensors (see above)


def size(count: float) -> str:
    """Bytes, briefly: '53.1 MB', '1.9 TB' (decimal units, as `inspect` prints)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


@dataclass(frozen=True)
class Estimate:
    """Bytes that training a graph needs (see the module's docstring)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    batch_size: int
    steps: int  # 0: `steps: auto`, counted per step of the data
    optimizer_name: str
    heaviest: str  # the layer holding the most (parameters and activations)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        """'63.5 MB (parameters 3.2 MB, gradients 3.2 MB, adam state 6.4 MB,
        activations 50.7 MB for a batch of 128 over 25 steps)'."""
        over = f"over {self.steps} steps" if self.steps else "per time step"
        return (
            f"{size(self.total)} (parameters {size(self.parameters)}, gradients "
            f"{size(self.gradients)}, {self.optimizer_name} state "
            f"{size(self.optimizer)}, activations {size(self.activations)} for a "
            f"batch of {self.batch_size} {over})"
        )

    def as_dict(self) -> dict:
        return {
            "total_bytes": self.total,
            "parameter_bytes": self.parameters,
            "gradient_bytes": self.gradients,
            "optimizer_bytes": self.optimizer,
            "activation_bytes": self.activations,
            "batch_size": self.batch_size,
            "steps": self.steps,
        }


def _saved(node: Node) -> float:
    """float32 tensors of the node's output size autograd keeps per step."""
    descriptor = node.descriptor
    if descriptor.role == "neuron":  # output spikes, states, surrogate input
        return 1 + len(node.states) + (1 if descriptor.spiking else 0)
    kind = node.type
    if kind == "flatten":
        return 0  # a view of its input
    if kind == "maxpool2d":
        return 1 + INDEX / FLOAT
    if kind.startswith("batchnorm") or kind == "dropout":
        return 2  # normalized input, or the mask
    return 1


def _optimizer_state(graph: Graph) -> tuple[str, int]:
    """The optimizer's name and its state in floats per parameter."""
    optimizer = graph.train.get("optimizer") or {}
    kind = optimizer.get("type", "adam")
    if kind == "sgd":
        return kind, 1 if optimizer.get("momentum", 0) else 0
    return kind, 2


def estimate(
    graph: Graph, batch_size: int | None = None, steps: int | None = None
) -> Estimate:
    """Training memory of `graph` at `batch_size` (default: train.batch_size)
    over `steps` (default: the spec's; with `steps: auto` pass the data's
    longest sequence, else activations are counted for one step)."""
    batch = batch_size or graph.train.get("batch_size") or 1
    steps = steps or graph.steps  # 0 (`auto`): per step of the data
    params = graph.num_params
    name, per_param = _optimizer_state(graph)
    weight: dict[str, float] = {}
    input_steps = 1
    if graph.encoding["type"] != "direct":  # a spike train: one frame per step
        input_steps = max(steps, 1)
    activations = math.prod(graph.input_shape) * batch * input_steps * FLOAT
    for node in graph.nodes:
        times = 1 if node.time_invariant else max(steps, 1)
        held = math.prod(node.out_shape) * batch * times * _saved(node) * FLOAT
        held *= WORKING
        activations += held
        weight[node.name] = held + node.num_params * FLOAT * (2 + per_param)
    heaviest = max(weight, key=weight.get) if weight else ""
    return Estimate(
        parameters=params * FLOAT,
        gradients=params * FLOAT,
        optimizer=params * FLOAT * per_param,
        activations=int(activations),
        batch_size=batch,
        steps=steps,
        optimizer_name=name,
        heaviest=heaviest,
    )


# --------------------------------------------------------------------------- this machine
def machine_memory() -> int | None:
    """Bytes of physical memory of this machine (None where unknown), at most
    a cgroup's (a container's) limit."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on POSIX
        pass
    for limit_file in (
        "/sys/fs/cgroup/memory.max",  # cgroup v2
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
    ):
        try:
            with open(limit_file, encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: none
            total = int(text) if total is None else min(total, int(text))
        break
    return total


def device_memory(device) -> tuple[int | None, str]:
    """Bytes of memory of a torch device and its name for messages: a CUDA
    device's own memory, else this machine's."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch  # only a CUDA device needs torch; train has it loaded

        index = getattr(device, "index", None)
        if index is None:
            index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return props.total_memory, f"cuda:{index} ({props.name})"
    return machine_memory(), "this machine"


def _refusal(graph: Graph, found: Estimate, limit: int, where: str) -> str:
    return (
        f"{graph.name} cannot be trained here: estimated training memory "
        f"{found.describe()} exceeds the {size(limit)} of {where}; the largest "
        f"part is layer {found.heaviest}. Make the network or train.batch_size "
        "smaller"
    )


def check_fits(
    graph: Graph,
    device=None,
    limit: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
) -> Estimate:
    """The estimate, or UserError (one line) if it exceeds `limit` bytes
    (default: the memory of `device`: a CUDA device's, else this machine's).
    train calls it before building the network (`steps`: see estimate)."""
    found = estimate(graph, batch_size, steps)
    where = "the given limit"
    if limit is None:
        limit, where = device_memory(device)
    if limit is not None and found.total > limit:
        raise UserError(_refusal(graph, found, limit, where))
    return found


def fit_problem(graph: Graph, source, limit: int | None = None) -> Problem | None:
    """check_fits for `validate`: a Problem located at the heaviest layer of the
    spec, or None. `source`: the spec's SourceMap."""
    found = estimate(graph)
    where = "the given limit"
    if limit is None:
        limit, where = machine_memory(), "this machine's memory"
    if limit is None or found.total <= limit:
        return None
    path: tuple = ("layers",)
    for node in graph.nodes:
        if node.name == found.heaviest:
            match = re.match(r"layers\[(\d+)\]", node.origin)
            if match:
                path = ("layers", int(match.group(1)))
    return source.problem(path, _refusal(graph, found, limit, where))
