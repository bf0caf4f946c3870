"""Semantic analysis: Spec -> Graph.

Resolves neuron defaults, names every layer, infers every shape, marks state and
the time-invariant prefix, and rejects impossible networks with located errors
before any torch code runs.
"""

from __future__ import annotations

import math
from typing import Any

from ..spec.errors import Problem, SpecError
from ..spec.load import source_of
from ..spec.schema import NEURON_TYPES, Spec
from .graph import Graph, Node, Shape, freeze

# name, per-sample shape and classes of each dataset (None: any)
DATASETS: dict[str, tuple[Shape | None, int | None]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "kmnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "synthetic": (None, None),
}
NEURON_DEFAULTS = {
    "threshold": 1.0,
    "reset": "subtract",
    "learn_beta": False,
    "learn_threshold": False,
    "learn_alpha": False,
    "per_neuron": False,
    "surrogate": {"type": "atan", "alpha": 2.0},
}
STATES = {
    "leaky": ("mem",),
    "synaptic": ("syn", "mem"),
    "alpha": ("syn_exc", "syn_inh", "mem"),
    "rleaky": ("spk", "mem"),
    "rsynaptic": ("spk", "syn", "mem"),
}
PREFIX = {  # default layer names
    "linear": "fc",
    "conv1d": "conv",
    "conv2d": "conv",
    "maxpool2d": "pool",
    "avgpool2d": "pool",
    "flatten": "flatten",
    "dropout": "dropout",
    "batchnorm1d": "bn",
    "batchnorm2d": "bn",
    "leaky": "lif",
    "synaptic": "syn",
    "alpha": "alpha",
    "rleaky": "rlif",
    "rsynaptic": "rsyn",
}
# layers whose output may not be computed once for all steps (randomness, running stats)
NOT_HOISTABLE = ("dropout", "batchnorm1d", "batchnorm2d")


MAX_ELEMENTS = 2**31 - 1  # per tensor: beyond it torch kernels cannot index


class _Checker:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.source = source_of(spec)
        self.problems: list[Problem] = []

    def error(self, path: tuple, message: str) -> None:
        self.problems.append(self.source.problem(path, message))

    def has(self, path: tuple) -> bool:
        """Whether the file sets the key at `path` (a spec built in code: never)."""
        return path in self.source.keys


def _describe(shape: Shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _sizes(value: Any, dims: int) -> list[int] | None:
    """An int or a list of 1 or `dims` ints -> `dims` ints (None if the list is
    longer than `dims`)."""
    if value is None or isinstance(value, int):
        return [value] * dims
    if len(value) == 1:
        return list(value) * dims
    return list(value) if len(value) == dims else None


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _window(layer: dict, shape: Shape, where: str, me: str, chk: _Checker, path):
    """Output shape, parameter count and normalized sizes of a conv or pool."""
    kind = layer["type"]
    dims = 1 if kind == "conv1d" else 2
    if len(shape) != dims + 1:
        layout = "[channels, length]" if dims == 1 else "[channels, height, width]"
        chk.error(path, f"{me} needs {layout} but {where} gives {_describe(shape)}")
        return None
    sizes = {}
    for key in ("kernel_size", "stride", "padding"):
        sizes[key] = _sizes(layer.get(key), dims)
        if sizes[key] is None:
            chk.error(
                path + (key,),
                f"{kind} takes one {key} or a list of one, got {layer[key]}",
            )
            return None
    kernel, stride, padding = sizes["kernel_size"], sizes["stride"], sizes["padding"]
    conv = kind.startswith("conv")
    if stride[0] is None:
        stride = kernel  # pooling default
    out = []
    for axis, (size, k, s, p) in enumerate(zip(shape[1:], kernel, stride, padding)):
        if k > size + 2 * p:
            axis_name = "length" if dims == 1 else ("height", "width")[axis]
            padded = f" + 2 x padding {p}" if p else ""
            chk.error(
                path + ("kernel_size",),
                f"kernel {k} of {me} is larger than the input {axis_name} "
                f"{size}{padded}: {where} gives {_describe(shape)}",
            )
            return None
        if not conv and p > k // 2:
            chk.error(
                path + ("padding",), f"padding {p} must be at most half the kernel {k}"
            )
            return None
        out.append(_conv_out(size, k, s, p))
    params = dict(layer, kernel_size=kernel, padding=padding)
    params["stride"] = stride if conv or layer.get("stride") is not None else None
    if dims == 1:  # conv1d takes plain ints
        params.update(kernel_size=kernel[0], stride=stride[0], padding=padding[0])
    if not conv:
        return (shape[0], *out), 0, params
    cin, cout = shape[0], layer["out_channels"]
    weights = cout * cin * math.prod(kernel) + (cout if layer["bias"] else 0)
    return (cout, *out), weights, params


def _stateless(layer: dict, shape: Shape, where: str, me: str, chk: _Checker, path):
    """Output shape, parameter count and params of a stateless layer (None on error)."""
    kind = layer["type"]
    params = dict(layer)
    if kind == "flatten":
        return (math.prod(shape),), 0, params
    if kind == "linear":
        if len(shape) != 1:
            chk.error(
                path,
                f"{me} needs flat features [features] but {where} gives "
                f"{_describe(shape)}; add a flatten layer before it",
            )
            return None
        out = layer["out_features"]
        return (out,), shape[0] * out + (out if layer["bias"] else 0), params
    if kind in ("conv1d", "conv2d", "maxpool2d", "avgpool2d"):
        return _window(layer, shape, where, me, chk, path)
    if kind == "dropout":
        return shape, 0, params
    if kind in ("batchnorm1d", "batchnorm2d"):
        ok = len(shape) in (1, 2) if kind == "batchnorm1d" else len(shape) == 3
        if not ok:
            layout = (
                "[features] or [channels, length]"
                if kind == "batchnorm1d"
                else "[channels, height, width]"
            )
            chk.error(path, f"{me} needs {layout} but {where} gives {_describe(shape)}")
            return None
        return shape, 2 * shape[0], params
    raise AssertionError(f"unhandled layer type {kind}")  # the schema admits no other


NEURON_FIELDS = (
    "beta",
    "threshold",
    "reset",
    "learn_beta",
    "learn_threshold",
    "per_neuron",
    "surrogate",
)


def _resolve(layer: dict, defaults: dict, chk: _Checker, path: tuple):
    """A neuron layer's parameters: its own, else `defaults`, else built-in."""
    kind = layer["type"]
    fields = list(NEURON_FIELDS)
    if kind in ("synaptic", "alpha", "rsynaptic"):
        fields += ["alpha", "learn_alpha"]
    params: dict[str, Any] = {}
    for key in fields:
        for source in (layer, defaults, NEURON_DEFAULTS):
            if source.get(key) is not None:
                params[key] = source[key]
                break
        else:
            chk.error(
                path + (key,),
                f"{kind} needs '{key}': set it on the layer or in 'defaults'",
            )
    if len(params) < len(fields):
        return None
    if kind == "alpha":
        alpha, beta = params["alpha"], params["beta"]
        if not 0 < beta < alpha < 1:
            key = "alpha" if chk.has(path + ("alpha",)) else "beta"
            at = path + (key,) if chk.has(path + (key,)) else path
            chk.error(
                at,
                f"alpha neurons need 0 < beta < alpha < 1 (their time constant uses "
                f"log(beta)), got alpha {alpha} and beta {beta}",
            )
            return None
    if "recurrence" in layer:
        params["recurrence"] = dict(layer["recurrence"])
    return params


def _neuron(params: dict, shape: Shape, me: str, chk: _Checker, path: tuple):
    """Learnable parameter count of a spiking layer (None on error); completes the
    recurrence parameters."""
    numel = math.prod(shape) if params["per_neuron"] else 1
    learnable = numel * (
        params["learn_beta"]
        + params["learn_threshold"]
        + params.get("learn_alpha", False)
    )
    rec = params.get("recurrence")
    if rec is None:
        return learnable
    if rec["type"] == "linear":
        if len(shape) != 1:
            chk.error(
                path + ("recurrence",),
                f"linear recurrence of {me} needs flat features [features], "
                f"got {_describe(shape)}; use a conv or one_to_one recurrence",
            )
            return None
        learnable += shape[0] * shape[0] + shape[0]
    elif rec["type"] == "conv":
        k = _sizes(rec["kernel_size"], 2)
        if len(shape) != 3:
            chk.error(
                path + ("recurrence",),
                f"conv recurrence of {me} needs [channels, height, width], "
                f"got {_describe(shape)}",
            )
            return None
        if k is None or k[0] % 2 == 0 or k[1] % 2 == 0:
            chk.error(
                path + ("recurrence", "kernel_size"),
                f"conv recurrence needs an odd kernel (same padding), got {rec['kernel_size']}",
            )
            return None
        rec["kernel_size"] = k
        learnable += shape[0] * shape[0] * k[0] * k[1] + shape[0]
    elif rec["learn"]:
        learnable += 1
    return learnable


def _name(layer: dict, names: dict, counters: dict) -> str:
    """The layer's own name, else its type's prefix and the next free number."""
    if layer.get("name") is not None:
        return layer["name"]
    prefix = PREFIX[layer["type"]]
    while True:
        counters[prefix] = counters.get(prefix, 0) + 1
        name = f"{prefix}{counters[prefix]}"
        if name not in names:
            return name


def analyze(spec: Spec) -> Graph:
    """Check a validated spec semantically and lower it to the IR (raises SpecError
    with every problem found)."""
    chk = _Checker(spec)
    data = spec.model_dump()
    defaults = {k: v for k, v in (data.get("defaults") or {}).items() if v is not None}
    encoding = data["input"]["encoding"]
    dataset = data["train"]["dataset"]
    shape: Shape | None = tuple(data["input"]["shape"])
    expected_shape, classes = DATASETS[dataset]
    if expected_shape is not None and shape != expected_shape:
        chk.error(
            ("input", "shape"),
            f"dataset {dataset} has samples of shape {_describe(expected_shape)}, "
            f"not {_describe(shape)}",
        )

    nodes: list[Node] = []
    names: dict[str, int] = {}
    counters: dict[str, int] = {}
    invariant = encoding["type"] == "direct"
    where = "the input"
    for i, layer in enumerate(data["layers"]):
        path = ("layers", i)
        kind = layer["type"]
        name = _name(layer, names, counters)
        if name in names:
            first = chk.source.locate(("layers", names[name]))[0]
            on_line = f" (line {first})" if first is not None else ""
            chk.error(
                path + ("name",),
                f"name '{name}' is already used by layers[{names[name]}]{on_line}",
            )
        if layer.get("name") is not None and name in _reserved_attributes():
            chk.error(
                path + ("name",),
                f"name '{name}' is taken by the network itself (an attribute of "
                "torch.nn.Module or Net, such as train, eval, forward, steps); "
                "choose another name",
            )
        names.setdefault(name, i)
        me = f"{name} ({kind})"
        stateful = kind in NEURON_TYPES
        result = None
        if stateful:
            params = _resolve(layer, defaults, chk, path)
            if params is not None and shape is not None:
                count = _neuron(params, shape, me, chk, path)
                if count is not None:
                    result = shape, count, params
            invariant = False
        elif shape is not None:
            result = _stateless(layer, shape, where, me, chk, path)
            invariant = invariant and kind not in NOT_HOISTABLE
        if result is None:
            shape = None  # later shapes are unknown: check names and fields only
            continue
        out_shape, count, params = result
        if math.prod(out_shape) > MAX_ELEMENTS or count > MAX_ELEMENTS:
            chk.error(
                path,
                f"{me} is too large: output {_describe(out_shape)}, {count:,} "
                f"parameters (at most {MAX_ELEMENTS:,} elements per tensor)",
            )
            shape = None
            continue
        params = {k: v for k, v in params.items() if k not in ("type", "name")}
        nodes.append(
            Node(
                name=name,
                type=kind,
                index=i,
                in_shape=shape,
                out_shape=out_shape,
                params=freeze(params),
                stateful=stateful,
                time_invariant=invariant and not stateful,
                num_params=count,
                neurons=math.prod(out_shape) if stateful else 0,
                states=STATES.get(kind, ()),
            )
        )
        shape = out_shape
        where = me

    _check_output(chk, data, nodes, shape, classes)
    if chk.problems:
        raise SpecError(chk.problems)
    last = nodes[-1]
    return Graph(
        name=spec.name,
        steps=spec.steps,
        input_shape=tuple(data["input"]["shape"]),
        encoding=freeze(encoding),
        nodes=tuple(nodes),
        decoding=data["decoding"]["type"],
        loss=freeze(data["loss"]),
        train=freeze(_train(data["train"])),
        num_classes=last.out_shape[0],
        spec_json=spec.model_dump_json(),
    )


def _train(train: dict) -> dict:
    """The spec's `train` with its defaults that depend on other fields resolved
    (eval_batch_size: the training batch size), once for every backend."""
    return {**train, "eval_batch_size": train["eval_batch_size"] or train["batch_size"]}


def _check_output(chk: _Checker, data: dict, nodes: list, shape, classes) -> None:
    """The decoding and the loss read the last layer: one spiking neuron per class."""
    layers = data["layers"]
    last_path = ("layers", len(layers) - 1)
    kind = layers[-1]["type"]
    if kind not in NEURON_TYPES:
        chk.error(
            last_path,
            f"the last layer must be a spiking neuron layer, not {kind}: decoding "
            f"'{data['decoding']['type']}' and loss '{data['loss']['type']}' read "
            "its spikes and membrane",
        )
        return
    if shape is None:
        return  # its shape is unknown after an earlier error
    last = nodes[-1]
    if len(shape) != 1:
        chk.error(
            last_path,
            f"the output layer {last.name} must give one neuron per class "
            f"[classes], got {_describe(shape)}; add flatten and linear layers",
        )
    elif classes is not None and shape[0] != classes:
        chk.error(
            last_path,
            f"dataset {data['train']['dataset']} has {classes} classes but the "
            f"output layer {last.name} has {shape[0]} neurons",
        )
    elif shape[0] < 2:
        chk.error(last_path, "a classifier needs at least 2 output neurons")


def _reserved_attributes() -> frozenset[str]:
    """Layer names that would shadow attributes of the generated network."""
    from ..codegen.render import reserved_attributes

    return reserved_attributes()
