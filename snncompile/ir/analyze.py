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


class _Checker:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.source = source_of(spec)
        self.problems: list[Problem] = []

    def error(self, path: tuple, message: str) -> None:
        self.problems.append(self.source.problem(path, message))


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _single(value: Any) -> int:
    return value if isinstance(value, int) else value[0]


def _describe(shape: Shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _stateless(layer: dict, shape: Shape, where: str, chk: _Checker, path: tuple):
    """Output shape and parameter count of a stateless layer (None on error)."""
    kind = layer["type"]
    if kind == "flatten":
        return (math.prod(shape),), 0
    if kind == "linear":
        if len(shape) != 1:
            chk.error(
                path,
                f"linear expects a flat input [features] but {where} gives "
                f"{_describe(shape)}; add a flatten layer before it",
            )
            return None
        out = layer["out_features"]
        return (out,), shape[0] * out + (out if layer["bias"] else 0)
    if kind in ("conv1d", "conv2d", "maxpool2d", "avgpool2d"):
        dims = 1 if kind == "conv1d" else 2
        if len(shape) != dims + 1:
            layout = "[channels, length]" if dims == 1 else "[channels, height, width]"
            chk.error(
                path, f"{kind} expects {layout} but {where} gives {_describe(shape)}"
            )
            return None
        conv = kind.startswith("conv")
        pick = _single if dims == 1 else _pair
        kernel = pick(layer["kernel_size"])
        stride = pick(
            layer["stride"] if layer["stride"] is not None else layer["kernel_size"]
        )
        padding = pick(layer["padding"])
        kernel, stride, padding = (
            (kernel,) if dims == 1 else kernel,
            (stride,) if dims == 1 else stride,
            (padding,) if dims == 1 else padding,
        )
        sizes = []
        for size, k, s, p in zip(shape[1:], kernel, stride, padding):
            if k > size + 2 * p:
                chk.error(
                    path + ("kernel_size",),
                    f"kernel {k} is larger than the input {_describe(shape)} from {where}"
                    + (f" padded by {p}" if p else ""),
                )
                return None
            if not conv and p > k // 2:
                chk.error(
                    path + ("padding",),
                    f"padding {p} must be at most half the kernel {k}",
                )
                return None
            sizes.append(_conv_out(size, k, s, p))
        if not conv:
            return (shape[0], *sizes), 0
        cin, cout = shape[0], layer["out_channels"]
        weights = cout * cin * math.prod(kernel) + (cout if layer["bias"] else 0)
        return (cout, *sizes), weights
    if kind == "dropout":
        return shape, 0
    if kind in ("batchnorm1d", "batchnorm2d"):
        ok = len(shape) in (1, 2) if kind == "batchnorm1d" else len(shape) == 3
        if not ok:
            layout = (
                "[features] or [channels, length]"
                if kind == "batchnorm1d"
                else "[channels, height, width]"
            )
            chk.error(
                path, f"{kind} expects {layout} but {where} gives {_describe(shape)}"
            )
            return None
        return shape, 2 * shape[0]
    raise AssertionError(f"unhandled layer type {kind}")  # the schema admits no other


def _neuron(layer: dict, defaults: dict, shape: Shape, chk: _Checker, path: tuple):
    """Resolved parameters and learnable count of a spiking layer (None on error)."""
    kind = layer["type"]
    params: dict[str, Any] = {}
    fields = [
        "beta",
        "threshold",
        "reset",
        "learn_beta",
        "learn_threshold",
        "per_neuron",
        "surrogate",
    ]
    if kind in ("synaptic", "alpha", "rsynaptic"):
        fields += ["alpha", "learn_alpha"]
    for key in fields:
        value = layer.get(key)
        if value is None:
            value = defaults.get(key)
        if value is None:
            value = NEURON_DEFAULTS.get(key)
        if value is None:
            chk.error(
                path, f"{kind} needs '{key}': set it on the layer or in 'defaults'"
            )
            return None
        params[key] = value
    numel = math.prod(shape) if params["per_neuron"] else 1
    learnable = numel * (
        params["learn_beta"]
        + params["learn_threshold"]
        + params.get("learn_alpha", False)
    )
    if kind == "alpha":
        if params["alpha"] <= params["beta"]:
            chk.error(
                path,
                f"alpha neurons need alpha > beta, got alpha {params['alpha']} and beta {params['beta']}",
            )
            return None
        if params["beta"] >= 1 or params["beta"] <= 0 or params["alpha"] >= 1:
            chk.error(
                path,
                "alpha neurons need 0 < beta < alpha < 1 (their time constant uses log(beta))",
            )
            return None
    if kind in ("rleaky", "rsynaptic"):
        rec = dict(layer["recurrence"])
        if rec["type"] == "linear":
            if len(shape) != 1:
                chk.error(
                    path + ("recurrence",),
                    f"linear recurrence needs flat features, got {_describe(shape)}",
                )
                return None
            learnable += shape[0] * shape[0] + shape[0]
        elif rec["type"] == "conv":
            k = _pair(rec["kernel_size"])
            if len(shape) != 3:
                chk.error(
                    path + ("recurrence",),
                    f"conv recurrence needs [channels, height, width], got {_describe(shape)}",
                )
                return None
            if k[0] % 2 == 0 or k[1] % 2 == 0:
                chk.error(
                    path + ("recurrence", "kernel_size"),
                    f"conv recurrence needs an odd kernel, got {list(k)}",
                )
                return None
            rec["kernel_size"] = list(k)
            learnable += shape[0] * shape[0] * k[0] * k[1] + shape[0]
        elif rec["learn"]:
            learnable += 1
        params["recurrence"] = rec
    return params, learnable


def analyze(spec: Spec) -> Graph:
    """Check a validated spec semantically and lower it to the IR (raises SpecError)."""
    chk = _Checker(spec)
    data = spec.model_dump()
    defaults = {k: v for k, v in (data.get("defaults") or {}).items() if v is not None}
    encoding = data["input"]["encoding"]
    dataset = data["train"]["dataset"]
    shape: Shape = tuple(data["input"]["shape"])
    expected_shape, classes = DATASETS[dataset]
    if expected_shape is not None and shape != expected_shape:
        chk.error(
            ("input", "shape"),
            f"dataset {dataset} has samples of shape {_describe(expected_shape)}, not {_describe(shape)}",
        )

    nodes: list[Node] = []
    names: dict[str, int] = {}
    counters: dict[str, int] = {}
    invariant = encoding["type"] == "direct"
    where = f"the input {_describe(shape)}"
    for i, layer in enumerate(data["layers"]):
        path = ("layers", i)
        kind = layer["type"]
        name = layer.get("name")
        if name is None:
            prefix = PREFIX[kind]
            counters[prefix] = counters.get(prefix, 0) + 1
            name = f"{prefix}{counters[prefix]}"
            while name in names:
                counters[prefix] += 1
                name = f"{prefix}{counters[prefix]}"
        if name in names:
            chk.error(
                path + ("name",),
                f"name '{name}' is already used by layers[{names[name]}]",
            )
            return _fail(chk)
        names[name] = i
        stateful = kind in NEURON_TYPES
        if stateful:
            result = _neuron(layer, defaults, shape, chk, path)
            if result is None:
                return _fail(chk)
            params, count = result
            out_shape, neurons = shape, math.prod(shape)
            invariant = False
        else:
            result = _stateless(layer, shape, where, chk, path)
            if result is None:
                return _fail(chk)
            out_shape, count = result
            params = {k: v for k, v in layer.items() if k not in ("type", "name")}
            neurons = 0
            if kind in NOT_HOISTABLE:
                invariant = False
        if math.prod(out_shape) < 1 or min(out_shape) < 1:
            chk.error(path, f"output shape {_describe(out_shape)} is empty")
            return _fail(chk)
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
                neurons=neurons,
                states=STATES.get(kind, ()),
            )
        )
        shape = out_shape
        where = f"{name} ({kind}) {_describe(out_shape)}"

    last = nodes[-1]
    last_path = ("layers", len(nodes) - 1)
    if not last.stateful:
        chk.error(
            last_path,
            f"the last layer must be a spiking neuron layer, not {last.type}: "
            f"decoding '{data['decoding']['type']}' and loss '{data['loss']['type']}' read its spikes and membrane",
        )
    elif len(last.out_shape) != 1:
        chk.error(
            last_path,
            f"the output layer must give one neuron per class [classes], got {_describe(last.out_shape)}; add flatten and linear layers",
        )
    elif classes is not None and last.out_shape[0] != classes:
        chk.error(
            last_path,
            f"dataset {dataset} has {classes} classes but the output layer {last.name} has {last.out_shape[0]} neurons",
        )
    elif last.out_shape[0] < 2:
        chk.error(last_path, "a classifier needs at least 2 output neurons")
    if chk.problems:
        raise SpecError(chk.problems)
    return Graph(
        name=spec.name,
        steps=spec.steps,
        input_shape=tuple(data["input"]["shape"]),
        encoding=freeze(encoding),
        nodes=tuple(nodes),
        decoding=data["decoding"]["type"],
        loss=freeze(data["loss"]),
        train=freeze(data["train"]),
        num_classes=last.out_shape[0],
        spec_json=spec.model_dump_json(),
    )


def _fail(chk: _Checker):
    raise SpecError(chk.problems)
