"""Semantic analysis: Spec -> Graph.

In order: expand `block` uses into their layers; name every layer; resolve each
layer's `inputs` (default: the layer before it); order the layers
topologically (a cycle is an error listing it); resolve neuron fields from
`defaults`; infer every shape through the layer types' descriptors; mark the
time-invariant nodes; check that every layer reaches the output and that the
output fits the task. Every problem is reported with its place in the file,
all at once, before any torch code runs.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

from .. import registry
from ..spec.errors import Problem, SpecError
from ..spec.load import source_of
from ..spec.schema import Spec
from ..types import get
from ..types.base import Context, count_too_large, describe
from .graph import INPUT, Graph, Node, Shape, freeze

# name, per-sample shape and classes of each dataset (None: any)
DATASETS: dict[str, tuple[Shape | None, int | None]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "kmnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "synthetic": (None, None),
    "synthetic_regression": (None, None),
}
REGRESSION_DATASETS = ("synthetic_regression",)


@functools.cache
def reserved_attributes() -> frozenset[str]:
    """Names a layer may not take: `self.<name>` must be the layer itself, not an
    attribute of torch.nn.Module (train, eval, zero_grad...) or of Net."""
    from ..types.fields import MODULE_ATTRIBUTES  # dir(nn.Module()), tested

    return frozenset(MODULE_ATTRIBUTES) | {"steps", "forward", "graph", INPUT}


@dataclass
class _Item:
    """One layer of the expanded spec; `scope` maps the names its `inputs` may
    use to node names (or to the `_Use` whose input a block's layer reads)."""

    path: tuple  # where its fields are: ("layers", 3) or ("blocks", "res", 1)
    layer: dict
    name: str
    origin: str
    scope: dict
    default_input: Any  # a node key, INPUT or a _Use
    key: str = ""  # unique even where a name is (wrongly) used twice
    inputs: tuple[str, ...] = ()  # the keys of what it reads


@dataclass
class _Use:
    """A `{type: block}` layer: its block's layers read what it reads."""

    path: tuple
    layer: dict
    default_input: str


class _Checker:
    def __init__(self, spec: Spec):
        self.source = source_of(spec)
        self.problems: list[Problem] = []

    def error(self, path: tuple, message: str) -> None:
        problem = self.source.problem(path, message)
        if problem not in self.problems:
            self.problems.append(problem)

    def has(self, path: tuple) -> bool:
        """Whether the file sets the key at `path` (a spec built in code: never)."""
        return path in self.source.keys


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Namer:
    """The layer's own name, else its type's prefix and the next free number."""

    def __init__(self, layers: list[dict]):
        self.taken = {x["name"] for x in layers if x.get("name")}
        self.counters: dict[str, int] = {}

    def __call__(self, layer: dict) -> str:
        if layer.get("name") is not None:
            return layer["name"]
        kind = layer["type"]
        prefix = layer["use"] if kind == "block" else get(kind).prefix
        while True:
            self.counters[prefix] = self.counters.get(prefix, 0) + 1
            name = f"{prefix}{self.counters[prefix]}"
            if name not in self.taken:
                return name


def _expand(data: dict, chk: _Checker) -> list[_Item]:
    """The spec's layers with every block use replaced by its named layers
    (<use>_<layer>), each with its `inputs` resolved to node names."""
    blocks = data.get("blocks") or {}
    namer = _Namer(data["layers"])
    items: list[_Item] = []
    top: dict[str, Any] = {INPUT: INPUT}
    previous = INPUT
    used: set[str] = set()

    def keyed(item: _Item) -> _Item:
        item.key = item.name if item.name not in used else f"{item.name}#{len(items)}"
        used.add(item.name)
        items.append(item)
        return item

    for i, layer in enumerate(data["layers"]):
        path, name = ("layers", i), namer(layer)
        if layer["type"] != "block":
            item = keyed(_Item(path, layer, name, f"layers[{i}]", top, previous))
            top.setdefault(name, item.key)
            previous = item.key
            continue
        use = layer["use"]
        if use not in blocks:
            known = (
                f"; blocks: {', '.join(blocks)}"
                if blocks
                else "; the spec has no blocks"
            )
            chk.error(
                path + ("use",), f"unknown block '{use}'{_suggest(use, blocks)}{known}"
            )
            continue
        entry = _Use(path, layer, previous)
        local: dict[str, Any] = {INPUT: entry}
        inner = _Namer(blocks[use])
        last: Any = entry
        for j, part in enumerate(blocks[use]):
            ppath = ("blocks", use, j)
            if part["type"] == "block":
                chk.error(ppath + ("type",), "a block may not use another block")
                continue
            short = inner(part)
            full = f"{name}_{short}"
            origin = f"layers[{i}] > blocks.{use}[{j}]"
            item = keyed(_Item(ppath, part, full, origin, local, last))
            local.setdefault(short, item.key)
            top.setdefault(full, item.key)
            last = item.key
        top.setdefault(name, last)  # the use's name stands for its last layer
        previous = last
    _check_names(items, chk)
    for item in items:
        item.inputs = tuple(_inputs(item, top, chk))
    return items


def _check_names(items: list[_Item], chk: _Checker) -> None:
    """Node names are unique and shadow nothing of the network."""
    first: dict[str, tuple] = {}
    for item in items:
        if item.name in first:
            line = chk.source.locate(first[item.name])[0]
            on_line = f" (line {line})" if line is not None else ""
            chk.error(
                item.path + ("name",),
                f"name '{item.name}' is already used by "
                f"{_where(first[item.name])}{on_line}",
            )
        own = item.layer.get("name")
        if (
            item.path[0] == "layers"
            and own is not None
            and own in reserved_attributes()
        ):
            chk.error(
                item.path + ("name",),
                f"name '{own}' is taken by the network itself (an attribute of "
                "torch.nn.Module or Net, such as train, eval, forward, steps, or "
                "the input); choose another name",
            )
        first.setdefault(item.name, item.path)


def _where(path: tuple) -> str:
    if path[0] == "layers":
        return f"layers[{path[1]}]"
    return f"blocks.{path[1]}[{path[2]}]"


def _inputs(item: _Item, top: dict, chk: _Checker):
    """Node names of what an item reads (an unknown name: an error)."""
    wanted = item.layer.get("inputs")
    if wanted is None:
        yield _resolved(item.default_input, top, chk)
        return
    for k, name in enumerate(wanted):
        target = item.scope.get(name)
        if target is None:
            names = [n for n in item.scope if n != INPUT and isinstance(n, str)]
            inner = item.scope is not top
            listing = ", ".join(names + [INPUT]) if names else INPUT
            chk.error(
                item.path + ("inputs", k),
                f"unknown input '{name}'{_suggest(name, item.scope)}; "
                + ("in this block: " if inner else "layers: ")
                + listing,
            )
            yield f"?{name}"  # unknown: the layer's shape is not inferred
            continue
        yield _resolved(target, top, chk)


def _resolved(target: Any, top: dict, chk: _Checker) -> str:
    """A node name for a scope entry (a block use: what the use reads)."""
    if not isinstance(target, _Use):
        return target
    wanted = target.layer.get("inputs")
    if wanted is None:
        return _resolved(target.default_input, top, chk)
    name = wanted[0]
    if name not in top:
        names = [n for n in top if n != INPUT]
        chk.error(
            target.path + ("inputs", 0),
            f"unknown input '{name}'{_suggest(name, top)}; layers: "
            + ", ".join(names + [INPUT]),
        )
        return INPUT
    return _resolved(top[name], top, chk)


def _toposort(items: list[_Item], chk: _Checker) -> list[_Item] | None:
    """Items in topological order, earliest spec position first among the ready
    ones (a chain keeps its order); None after reporting a cycle."""
    by_key = {item.key: item for item in items}
    waiting = {
        item.key: {n for n in item.inputs if n != INPUT and n in by_key}
        for item in items
    }
    done: set[str] = set()
    order: list[_Item] = []
    while len(order) < len(items):
        ready = [x for x in items if x.key not in done and waiting[x.key] <= done]
        if not ready:
            break
        order.append(ready[0])
        done.add(ready[0].key)
    if len(order) == len(items):
        return order
    # a cycle: follow inputs among the unfinished until a key repeats
    name = next(x.key for x in items if x.key not in done)
    trail: list[str] = []
    while name not in trail:
        trail.append(name)
        name = min(waiting[name] - done)
    # listed in the direction data flows (each layer feeds the next)
    cycle = list(reversed(trail[trail.index(name) :] + [name]))
    chk.error(
        by_key[cycle[0]].path + ("inputs",),
        "the layers form a cycle: "
        + " -> ".join(by_key[k].name for k in cycle)
        + " (only a neuron's "
        "own recurrence may feed back; use a recurrent neuron type such as rleaky)",
    )
    return None


def analyze(spec: Spec) -> Graph:
    """Check a validated spec semantically and lower it to the IR (raises SpecError
    with every problem found)."""
    chk = _Checker(spec)
    data = spec.model_dump()
    defaults = {k: v for k, v in (data.get("defaults") or {}).items() if v is not None}
    encoding = data["input"]["encoding"]
    dataset = data["train"]["dataset"]
    input_shape: Shape = tuple(data["input"]["shape"])
    if isinstance(dataset, str):
        expected_shape, classes = DATASETS[dataset]
        label = dataset
    else:
        expected_shape, classes = _check_source(chk, spec, input_shape)
        label = dataset["type"]
    if expected_shape is not None and input_shape != expected_shape:
        chk.error(
            ("input", "shape"),
            f"dataset {label} has samples of shape {describe(expected_shape)}, "
            f"not {describe(input_shape)}",
        )
    steps = spec.steps
    if steps == "auto":
        steps = _auto_steps(chk, spec)
    items = _expand(data, chk)
    order = _toposort(items, chk) if items else None
    nodes: list[Node] = []
    if order is not None:
        nodes = _infer(order, input_shape, encoding["type"] == "direct", defaults, chk)
        if len(nodes) == len(order):
            _check_reach(order, chk)
            _check_output(chk, data, order[-1], nodes[-1], (label, classes))
    if chk.problems:
        raise SpecError(chk.problems)
    return Graph(
        name=spec.name,
        steps=steps,
        input_shape=input_shape,
        encoding=freeze(encoding),
        nodes=tuple(nodes),
        decoding=data["decoding"]["type"],
        loss=freeze(data["loss"]),
        train=freeze(_train(data["train"])),
        num_classes=nodes[-1].out_shape[0],
        spec_json=spec.model_dump_json(),
        task=data["task"],
    )


def _infer(
    order, input_shape, direct: bool, defaults: dict, chk: _Checker
) -> list[Node]:
    """Nodes with shapes, parameters and flags, through each type's descriptor.
    A layer whose inputs' shapes are unknown after an earlier error still has
    its neuron fields checked."""
    shapes: dict[str, Shape] = {INPUT: input_shape}
    invariant: dict[str, bool] = {INPUT: direct}
    labels: dict[str, str] = {INPUT: "the input"}
    nodes: list[Node] = []
    for item in order:
        kind = item.layer["type"]
        descriptor = get(kind)
        me = f"{item.name} ({kind})"
        ctx = Context(
            lambda field, message, path=item.path: chk.error(path + field, message),
            me,
            [labels.get(n, n) for n in item.inputs],
            lambda field, path=item.path: chk.has(path + field),
        )
        params = {k: v for k, v in item.layer.items() if k not in ("name", "inputs")}
        if descriptor.role == "neuron":
            params = descriptor.resolve(params, defaults, ctx)
        low, high = descriptor.arity
        count = len(item.inputs)
        if count < low or (high is not None and count > high):
            want = f"at least {low}" if high is None else f"{low}"
            chk.error(
                item.path + ("inputs",),
                f"{me} takes {want} input{'s' if (high or low) != 1 else ''}, "
                f"got {count}",
            )
            continue
        if params is None or any(n not in shapes for n in item.inputs):
            continue  # an input's shape is unknown after an earlier error
        in_shapes = tuple(shapes[n] for n in item.inputs)
        found = descriptor.infer(params, list(in_shapes), ctx)
        if found is None:
            continue
        if count_too_large(found.shape, found.num_params):
            chk.error(
                item.path,
                f"{me} is too large: output {describe(found.shape)}, "
                f"{found.num_params:,} parameters (at most 2,147,483,647 elements "
                "per tensor)",
            )
            continue
        kept = {k: v for k, v in found.params.items() if k != "type"}
        steady = descriptor.hoistable and all(invariant[n] for n in item.inputs)
        nodes.append(
            Node(
                name=item.name,
                type=kind,
                origin=item.origin,
                inputs=item.inputs,
                in_shapes=in_shapes,
                out_shape=tuple(found.shape),
                params=freeze(kept),
                time_invariant=steady,
                num_params=found.num_params,
                states=descriptor.states,
            )
        )
        shapes[item.key] = tuple(found.shape)
        invariant[item.key] = steady
        labels[item.key] = me
    return nodes


def _check_reach(order: list[_Item], chk: _Checker) -> None:
    """Every layer feeds the output (the spec's last layer): none computed for nothing."""
    needed = {order[-1].key}
    for item in reversed(order):
        if item.key in needed:
            needed.update(item.inputs)
    output = order[-1].name
    for item in order:
        if item.key not in needed:
            chk.error(
                item.path,
                f"{item.name} is not used: the output layer {output} does not read "
                "it, directly or through other layers",
            )


def _check_source(chk: _Checker, spec: Spec, input_shape: Shape):
    """The sample shape and class count a `train.dataset` mapping implies (None:
    known only from its files), after checking that the spec can read it."""
    source = spec.train.dataset
    sequence = spec.input.encoding.type == "spikes"
    if source.type == "image_folder":
        if len(input_shape) != 3 or input_shape[0] not in (1, 3):
            chk.error(
                ("input", "shape"),
                "image_folder images are resized to input.shape [C, H, W] with C 1 "
                f"(grayscale) or 3 (RGB), not {describe(input_shape)}",
            )
        if sequence:
            chk.error(
                ("input", "encoding", "type"),
                "image_folder holds still images: encode them (direct, rate, "
                "latency or delta), not `spikes`",
            )
        return None, None
    if source.type == "tensors":
        return None, None
    # event data: frames [T, ...] per sample
    if not sequence:
        chk.error(
            ("input", "encoding", "type"),
            f"{source.type} is event data, framed into [T, ...] per sample: set "
            "`input.encoding: {type: spikes}`",
        )
    if source.denoise is not None and not source.TWO_D:
        chk.error(
            ("train", "dataset", "denoise"),
            f"denoise needs a 2-D sensor; {source.type} has 1-D channels",
        )
    width = source.SENSOR[0]
    if source.downsample > width:
        chk.error(
            ("train", "dataset", "downsample"),
            f"downsample {source.downsample} leaves nothing of {source.type}'s "
            f"{width} pixels or channels",
        )
    bins = source.frames.n_time_bins
    if bins is not None and spec.steps not in ("auto", bins):
        chk.error(
            ("steps",),
            f"frames.n_time_bins gives {bins} frames per sample but steps is "
            f"{spec.steps}: set `steps: auto` or {bins}",
        )
    # the class count is checked against the labels when they are read: files
    # in a public dataset's format may hold recordings of other classes
    return source.sample_shape(), None


def _auto_steps(chk: _Checker, spec: Spec) -> int:
    """T of `steps: auto`: a fixed number of frames, or 0 (each batch's length);
    only time-series data has a T of its own."""
    source = spec.train.dataset
    if isinstance(source, str) or spec.input.encoding.type != "spikes":
        chk.error(
            ("steps",),
            "steps: auto takes T from time-series data (event datasets, or tensors "
            "[N, T, ...] with `input.encoding: {type: spikes}`); give a number",
        )
        return 1
    frames = getattr(source, "frames", None)
    return frames.n_time_bins if frames is not None and frames.fixed else 0


def _train(train: dict) -> dict:
    """The spec's `train` with its defaults that depend on other fields resolved
    (eval_batch_size: the training batch size), once for every backend."""
    return {**train, "eval_batch_size": train["eval_batch_size"] or train["batch_size"]}


def _check_task(chk: _Checker, data: dict) -> None:
    """Loss, decoding and dataset fit the task: integer labels and class scores,
    or float targets and predictions."""
    task, loss, decoding = data["task"], data["loss"]["type"], data["decoding"]["type"]
    dataset = data["train"]["dataset"]
    regression = task == "regression"
    if regression and loss not in registry.REGRESSION_LOSSES:
        chk.error(
            ("loss", "type"),
            f"task regression needs a regression loss "
            f"({', '.join(registry.REGRESSION_LOSSES)}), not {loss}",
        )
    if not regression and loss in registry.REGRESSION_LOSSES:
        chk.error(
            ("loss", "type"),
            f"{loss} compares float targets: set `task: regression`, or choose a "
            "classification loss such as ce_membrane",
        )
    if regression and decoding not in registry.REGRESSION_DECODINGS:
        chk.error(
            ("decoding", "type"),
            f"task regression predicts with a membrane decoding "
            f"({', '.join(registry.REGRESSION_DECODINGS)}), not {decoding}",
        )
    if not isinstance(dataset, str):
        if regression and dataset["type"] != "tensors":
            chk.error(
                ("train", "dataset"),
                f"{dataset['type']} is a classification dataset; regression "
                "targets come from `type: tensors`",
            )
    elif regression != (dataset in REGRESSION_DATASETS):
        kind = "regression" if dataset in REGRESSION_DATASETS else "classification"
        chk.error(
            ("train", "dataset"),
            f"dataset {dataset} is a {kind} dataset but the task is {task}",
        )


def _check_output(chk: _Checker, data: dict, item: _Item, last: Node, known) -> None:
    """The decoding and the loss read the last layer: one neuron per class (or per
    regression target); `known`: (the dataset's label, its class count or None)."""
    label, classes = known
    _check_task(chk, data)
    if not last.stateful:
        chk.error(
            item.path,
            f"the last layer must be a spiking neuron layer, not {last.type}: decoding "
            f"'{data['decoding']['type']}' and loss '{data['loss']['type']}' read "
            "its spikes and membrane",
        )
        return
    shape = last.out_shape
    if len(shape) != 1:
        chk.error(
            item.path,
            f"the output layer {last.name} must give one neuron per class (or "
            f"regression target) [outputs], got {describe(shape)}; add flatten and "
            "linear layers",
        )
    elif classes is not None and shape[0] != classes:
        chk.error(
            item.path,
            f"dataset {label} has {classes} classes but the "
            f"output layer {last.name} has {shape[0]} neurons",
        )
    elif shape[0] < 2 and data["task"] == "classification":
        chk.error(item.path, "a classifier needs at least 2 output neurons")
