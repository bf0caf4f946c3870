"""Render Python source from the IR through Jinja templates.

The model part (runtime classes + `Net`) is what `build()` executes and what the
generated script contains, byte for byte: one semantics by construction.
Only validated identifiers and `repr()`-quoted literals reach the source; the
templates run with StrictUndefined and receive prepared strings.
"""

from __future__ import annotations

import ast
import functools
import keyword
import math
from pathlib import Path
from typing import Any

import jinja2

from .. import registry
from ..ir import passes
from ..ir.analyze import reserved_attributes
from ..ir.graph import INPUT, Graph, Node
from ..runtime.datasets import REGRESSION_SEEDS
from ..types.base import Call, Name
from ..types.fields import IDENTIFIER

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"
TEMPLATES = Path(__file__).resolve().parent / "templates"
SCHEDULES = ("layered", "step")


@functools.cache
def runtime_definitions(module: str) -> dict[str, str]:
    """Top-level classes/functions of runtime/<module>.py, name -> exact source."""
    text = (RUNTIME / f"{module}.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    return {
        node.name: ast.get_source_segment(text, node)
        for node in tree.body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef))
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def ident(name: str) -> str:
    """Guard: only plain ASCII identifiers become Python names in generated code
    (no keywords, no dunders; fullmatch, so not even a trailing newline)."""
    if (
        not isinstance(name, str)
        or not IDENTIFIER.fullmatch(name)
        or keyword.iskeyword(name)
        or name.startswith("__")
    ):
        raise ValueError(f"refusing to render {name!r} as an identifier")
    return name


def layer_attribute(name: str) -> str:
    """A layer name as an attribute of Net: an identifier that shadows nothing."""
    if ident(name) in reserved_attributes():
        raise ValueError(
            f"refusing layer name {name!r}: it is an attribute of the network "
            "(torch.nn.Module or Net); choose another name"
        )
    return name


def lit(value: Any) -> str:
    """A Python literal for plain data (numbers, strings, bools, None, lists)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"refusing to render non-finite number {value!r}")
        return repr(float(value))
    if isinstance(value, str):
        text = repr(str(value))
        if text.startswith("'") and '"' not in value:
            text = '"' + text[1:-1] + '"'  # ruff's preferred quotes
        return text
    if isinstance(value, (list, tuple)):
        items = [lit(v) for v in value]
        if isinstance(value, tuple) and len(items) == 1:
            return f"({items[0]},)"
        return (
            ("(" if isinstance(value, tuple) else "[")
            + ", ".join(items)
            + (")" if isinstance(value, tuple) else "]")
        )
    raise ValueError(f"refusing to render {type(value).__name__} as a literal")


LINE = 88  # ruff's line length: long lines are laid out as `ruff format` would


def _fit(head: str, func: str, parts: list[str], indent: str, tail: str = "") -> str:
    """`head func(parts)tail` on one line if it fits at `indent`, else split as
    ruff does it; lines joined by newlines, indented relative to the first."""
    one = f"{head}{func}({', '.join(parts)}){tail}"
    if len(indent + one) <= LINE:
        return one
    inner = f"    {', '.join(parts)}"
    if len(indent + inner) <= LINE:
        return f"{head}{func}(\n{inner}\n){tail}"
    lines = "".join(f"    {p},\n" for p in parts)
    return f"{head}{func}(\n{lines}){tail}"


def _call(func: str, args: list[str], kwargs: dict[str, str], indent: str) -> str:
    """A call with one argument per line and a trailing comma (ruff keeps it)."""
    parts = args + [f"{ident(k)}={v}" for k, v in kwargs.items()]
    if not parts:
        return f"{func}()"
    inner = "".join(f"{indent}    {p},\n" for p in parts)
    return f"{func}(\n{inner}{indent})"


def source(value: Any, indent: str = "        ") -> str:
    """A constructor argument as source: a `Call`, a `Name` or a literal."""
    if isinstance(value, Call):
        return render_call(value, indent)
    if isinstance(value, Name):
        return ident(value.text)
    return lit(value)


def render_call(call: Call, indent: str = "        ", head: str = "") -> str:
    """`head` and a descriptor's constructor call, laid out as ruff would."""
    parts = [source(a, indent + "    ") for a in call.args]
    parts += [
        f"{ident(k)}={source(v, indent + '    ')}" for k, v in call.kwargs.items()
    ]
    func = ".".join(ident(p) for p in call.func.split("."))
    if any("\n" in p for p in parts):  # a nested call over several lines
        return head + _call(func, parts, {}, indent)
    lines = _fit(head, func, parts, indent).split("\n")
    return "\n".join([lines[0], *(indent + line for line in lines[1:])])


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _variables(graph: Graph, source: str) -> dict[str, str]:
    """The variable of each node's output: spk_<name> for spikes, `h` for a
    value read only by the next node, else h_<name>; `source` is the input's."""
    names = {INPUT: source}
    order = [n.name for n in graph.nodes]
    for i, node in enumerate(graph.nodes):
        readers = graph.consumers(node.name)
        follows = order[i + 1] if i + 1 < len(order) else None
        if node.stateful:
            names[node.name] = f"spk_{ident(node.name)}"
        elif len(readers) == 1 and readers[0].name == follows:
            names[node.name] = "h"
        else:
            names[node.name] = f"h_{ident(node.name)}"
    return names


class _Values:
    """What the layered forward reads for each node's output: its variable
    (`_variables`), or for a value the same at every step read by a node that
    runs per step, its expansion over the steps."""

    def __init__(self, graph: Graph):
        self.names = _variables(graph, "x")
        # a value the same at every step, read by a node that runs per step
        self.expanded: dict[str, str] = {}
        steady = {
            INPUT: not graph.sequence_input and graph.encoding["type"] == "direct"
        }
        steady.update({n.name: n.time_invariant for n in graph.nodes})
        for name, is_steady in steady.items():
            readers = graph.consumers(name)
            moving = [r for r in readers if not r.time_invariant]
            if is_steady and moving:
                var = self.names[name]
                self.expanded[name] = (
                    var if len(moving) == len(readers) else f"{var}_seq"
                )

    def read(self, name: str, reader: Node) -> str:
        if not reader.time_invariant and name in self.expanded:
            return self.expanded[name]
        return self.names[name]

    def expand_line(self, name: str) -> str | None:
        """The line that presents a steady value at every step, if one is needed."""
        if name not in self.expanded:
            return None
        var = self.names[name]
        return (
            f"{self.expanded[name]} = {var}.expand(self.steps, *{var}.shape)"
            "  # [T, B, ...] without a copy"
        )


def _forward_layered(graph: Graph, plan: passes.Plan, encode: bool = True) -> list[str]:
    """Whole-sequence schedule: each node runs once over all T steps (or once
    over the batch, for a time-invariant value), following the DAG. Without
    `encode`, x is the encoded spike train already (ONNX export)."""
    values = _Values(graph)
    lines: list[str] = []
    if encode and graph.encoding["type"] != "direct":
        encode = _encode_line(graph, "x")
        if encode:
            lines.append(encode)
    if plan.hoisted:
        lines.append(
            f"# time-invariant: computed once, shared by all {graph.steps} steps"
        )
    first = values.expand_line(INPUT)
    if first:
        lines.append(first)
    fused = {linear: neuron for neuron, linear in plan.fused.items()}
    out_node = graph.output
    spikes = []
    for node in graph.nodes:
        if node.name in fused:
            continue  # formed by its neuron's node
        args = [values.read(n, node) for n in node.inputs]
        out = values.names[node.name]
        me = f"self.{node.name}"
        shape = f"  # {_shape(node.out_shape)}"
        if node.name in plan.fused:
            linear = graph.node(plan.fused[node.name])
            lines.append(
                f"# {node.name} and {linear.name}, one node: {_shape(linear.out_shape)}"
            )
            call = [me, f"self.{linear.name}", args[0], "spikes=all_spikes"]
            head = f"{out}, {values.names[linear.name]} = "
            lines.append(_fit(head, "fused_leaky_linear", call, "        "))
            spikes.append(node.name)
        elif node is out_node:
            lines.append(f"{out}, mem_{node.name} = {me}({args[0]})")
            spikes.append(node.name)
        elif node.stateful:
            lines.append(f"{out}, _ = {me}({args[0]}, record_mem=False)")
            spikes.append(node.name)
        elif node.descriptor.role == "merge":
            lines.append(f"{out} = {node.descriptor.expression(node, args)}{shape}")
        elif node.name in plan.hoisted:
            lines.append(f"{out} = {me}({args[0]}){shape}")
        elif node.name in plan.per_step:
            lines.append(f"{out} = per_step({me}, {args[0]}){shape}")
        else:
            lines.append(f"{out} = time_batched({me}, {args[0]}){shape}")
        expand = values.expand_line(node.name)
        if expand:
            lines.append(expand)
    return lines + _returns(graph, spikes)


def _encode_line(graph: Graph, target: str) -> str | None:
    enc = graph.encoding
    func = registry.ENCODERS[enc["type"]]
    if func is None:
        return None  # already a spike train [T, B, ...]
    args = ["x"] if graph.sequence_input else ["x", "self.steps"]
    args += [f"{ident(k)}={lit(v)}" for k, v in enc.items() if k != "type"]
    return _fit(f"{target} = ", func, args, "        ", "  # [T, B, ...]")


def _returns(graph: Graph, spikes: list[str]) -> list[str]:
    out = graph.output.name
    items = [f"{lit(n)}: spk_{n}" for n in spikes]
    record = "{" + ", ".join(items) + "}"
    values = [f"spk_{out}", f"mem_{out}", record]
    lines = ["if all_spikes:", f"    return {', '.join(values)}"]
    if len(" " * 8 + lines[1]) > LINE:  # split as ruff does: one value per line
        if len(" " * 16 + record + ",") > LINE:
            record = "\n".join(["{", *(f"    {i}," for i in items), "},"])
        else:
            record += ","
        values = [f"spk_{out},", f"mem_{out},", *record.split("\n")]
        lines[1:] = ["    return (", *(f"        {v}" for v in values), "    )"]
    return lines + [f"return spk_{out}, mem_{out}"]


def _step_body(graph: Graph, record: bool) -> list[str]:
    """One time step over every node in order: x_t -> spk_<neuron>, states
    state_<neuron> advanced; with `record`, spikes appended to rec_<neuron>."""
    values = _variables(graph, "x_t")
    lines = []
    for node in graph.nodes:
        args = [values[n] for n in node.inputs]
        out_var = values[node.name]
        if node.stateful:
            lines.append(
                f"{out_var}, state_{node.name} = "
                f"self.{node.name}.step({args[0]}, state_{node.name})"
            )
            if record:
                lines.append(f"rec_{node.name}.append({out_var})")
        elif node.descriptor.role == "merge":
            lines.append(f"{out_var} = {node.descriptor.expression(node, args)}")
        else:
            lines.append(f"{out_var} = self.{node.name}({args[0]})")
    return lines


def _forward_step(graph: Graph) -> list[str]:
    """Per-step schedule, as hand-written snnTorch loops do it (the reference)."""
    batch = "x.shape[1]" if graph.sequence_input else "x.shape[0]"
    encode = (
        _encode_line(graph, "seq") or "seq = x  # already a spike train [T, B, ...]"
    )
    lines = [f"batch = {batch}", encode]
    neurons = graph.neuron_nodes
    for node in neurons:
        shape = ", ".join(str(s) for s in node.out_shape)
        lines.append(
            f"state_{node.name} = self.{node.name}.init_state(x.new_zeros(batch, {shape}))"
        )
        lines.append(f"rec_{node.name} = []")
    out = graph.output.name
    lines.append("mem_rec = []")
    lines.append("for x_t in seq:")
    lines += ["    " + line for line in _step_body(graph, record=True)]
    lines.append(f"    mem_rec.append(state_{out}[-1])")
    for node in neurons:
        lines.append(f"spk_{node.name} = torch.stack(rec_{node.name})")
    lines.append(f"mem_{out} = torch.stack(mem_rec)")
    return lines + _returns(graph, [n.name for n in neurons])


@functools.cache
def _bases(module: str, name: str) -> tuple[str, ...]:
    """The classes of runtime/<module>.py that class `name` derives from."""
    tree = ast.parse(runtime_definitions(module)[name])
    found = tree.body[0].bases if isinstance(tree.body[0], ast.ClassDef) else []
    own = runtime_definitions(module)
    bases = [b.id for b in found if isinstance(b, ast.Name) and b.id in own]
    return tuple(b for base in bases for b in (*_bases(module, base), base))


def _definitions(graph: Graph, body: str) -> list[str]:
    """Source of the runtime definitions the nodes and the forward use, with
    their base classes, in the runtime modules' order: surrogates, neurons,
    helpers, encoder."""
    wanted: dict[tuple[str, str], None] = {}
    for node in graph.nodes:
        for module, name in getattr(node.descriptor, "definitions", lambda n: ())(node):
            for base in _bases(module, name):
                wanted[(module, base)] = None
            wanted[(module, name)] = None
    blocks = []
    for module in ("surrogates", "neurons"):
        names = [name for m, name in wanted if m == module]
        ordered = [d for d in runtime_definitions(module) if d in names]
        blocks += [runtime_definitions(module)[d] for d in ordered]
    helpers = [h for h in ("time_batched", "per_step") if f"{h}(" in body]
    blocks += [runtime_definitions("layers")[h] for h in helpers]
    encoder = registry.ENCODERS[graph.encoding["type"]]
    if encoder is not None and f"{encoder}(" in body:
        blocks.append(runtime_definitions("encode")[encoder])
    return blocks


def model_context(
    graph: Graph, schedule: str = "layered", plan: passes.Plan | None = None
) -> dict[str, Any]:
    """Prepared values for templates/net.py.j2: the plain model, or with a
    `plan` from lower.passes the forward that plan schedules."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    ident(graph.name)
    for node in graph.nodes:
        layer_attribute(node.name)
    plan = plan or passes.plan(graph)
    forward = (
        _forward_layered(graph, plan) if schedule == "layered" else _forward_step(graph)
    )
    body = "\n".join(forward)
    blocks = _definitions(graph, body)
    layers = []
    order = [n.name for n in graph.nodes]
    for node in graph.nodes:
        call = (
            node.descriptor.constructor(node)
            if node.descriptor.role != "merge"
            else None
        )
        flags = []
        if node.time_invariant:
            flags.append("time-invariant")
        if node.stateful:
            flags.append("state: " + ", ".join(node.states))
        previous = (
            order[order.index(node.name) - 1] if node is not graph.nodes[0] else INPUT
        )
        reads = (
            "" if node.inputs == (previous,) else f" reads {', '.join(node.inputs)};"
        )
        comment = (
            f"{node.origin} {node.name} ({node.type}):{reads} "
            f"{' + '.join(_shape(s) for s in node.in_shapes)} -> {_shape(node.out_shape)}"
            + (f"; {'; '.join(flags)}" if flags else "")
        )
        if call is not None:
            head = f"self.{node.name} = "
            layers.append(
                {"comment": comment, "line": render_call(call, "        ", head)}
            )
    in_shape = ("T, B, " if graph.sequence_input else "B, ") + ", ".join(
        str(s) for s in graph.input_shape
    )
    out = graph.output
    return {
        "name": graph.name,
        "steps": graph.steps,
        "blocks": blocks,
        "layers": layers,
        "forward": [
            "        " + line if line else ""
            for block in forward
            for line in block.split("\n")
        ],
        "input_doc": f"[{in_shape}]",
        "output_doc": f"(spk, mem) of {out.name}, each [T, B, {graph.num_classes}]",
        "schedule": schedule,
        "uses_math": any("math." in b for b in blocks),
        "uses_functional": any("F." in b for b in blocks),
    }


def render_net(graph: Graph, schedule: str = "layered") -> tuple[str, dict[str, Any]]:
    """The runtime pieces the graph needs and `Net`, without imports; and its context."""
    context = model_context(graph, schedule)
    return _environment().get_template("net.py.j2").render(context), context


def render_model(graph: Graph, schedule: str = "layered") -> str:
    """Source of an importable module defining `Net` (what `build()` executes)."""
    net, context = render_net(graph, schedule)
    return (
        _environment()
        .get_template("model.py.j2")
        .render(context, net=net.rstrip() + "\n")
    )


def render_export(graph: Graph) -> str:
    """A module of two functions of a built net for ONNX export, rendered from
    the IR like its forward: `sequence(net, x)`, the layered forward on the
    encoded input, and `step(net, x_t, *states)`, one time step with every
    neuron state passed in and out (in graph order, each neuron's states in
    its descriptor's order)."""
    for node in graph.nodes:
        layer_attribute(node.name)
    sequence = _forward_layered(graph, passes.plan(graph), encode=False)
    lines = [
        f'"""ONNX export functions of `{ident(graph.name)}`, rendered by snncompile."""',
        "",
        "import torch",
        "",
        "from snncompile.runtime.layers import per_step, time_batched",
        "",
        "",
        "def sequence(self, x, all_spikes=False):",
        '    """x, encoded: [B, ...] (direct) or [T, B, ...] -> (spk, mem)."""',
        *("    " + line for block in sequence for line in block.split("\n")),
        "",
        "",
        "def step(self, x_t, *state):",
        '    """One time step: (x_t, *states) -> (spk, mem, *new states)."""',
    ]
    at = 0
    for node in graph.neuron_nodes:
        count = len(node.states)
        lines.append(f"    state_{node.name} = state[{at}:{at + count}]")
        at += count
    lines += ["    " + line for line in _step_body(graph, record=False)]
    out = graph.output.name
    news = ", ".join(f"*state_{n.name}" for n in graph.neuron_nodes)
    lines.append(f"    return (spk_{out}, state_{out}[-1], {news})")
    return "\n".join(lines) + "\n"


def render_forward(graph: Graph, plan: passes.Plan) -> str:
    """Only Net's layered `forward` under `plan` (with fusions), as a module that
    defines `forward` for lower.kernels to put on top of a built net."""
    context = model_context(graph, "layered", plan)
    return _environment().get_template("forward.py.j2").render(context)


# --------------------------------------------------------------------------- scripts
DATASET_TITLES = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "Fashion-MNIST"),
    "kmnist": ("KMNIST", "KMNIST"),
    "cifar10": ("CIFAR10", "CIFAR-10"),
    "synthetic": (None, "synthetic data"),
    "synthetic_regression": (None, "synthetic regression data"),
}
SOURCE_TITLES = {
    "tensors": "your tensor files",
    "image_folder": "your image folders",
    "nmnist": "N-MNIST",
    "shd": "the Spiking Heidelberg Digits",
    "ssc": "the Spiking Speech Commands",
    "dvs_gesture": "DVS Gesture",
}
DATASET_TITLES.update({k: (None, v) for k, v in SOURCE_TITLES.items()})
# snncompile/train/data.py's synthetic dataset (tests/test_codegen.py compares them)
SYNTHETIC = {"prototype_seed": 1234, "train": 2048, "test": 512, "noise": 0.35}
OPTIMIZERS = {
    "adam": "torch.optim.Adam",
    "adamw": "torch.optim.AdamW",
    "sgd": "torch.optim.SGD",
}
# torch's own defaults: arguments equal to them are left out of the script
OPTIMIZER_DEFAULTS = {
    "adam": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
    "sgd": {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
}


def _kwargs(params: dict[str, Any]) -> list[str]:
    return [f"{ident(k)}={lit(v)}" for k, v in params.items()]


def _loss_lines(graph: Graph, series: bool = False) -> tuple[list[str], list[str], str]:
    """Body of forward_loss, the runtime loss sources it needs, and a note;
    `series`: padded sequences, scored over their real steps when `mask` is set."""
    params = dict(graph.loss)
    func = registry.LOSSES[params.pop("type")]
    regularization = params.pop("rate_regularization", None)
    sources = runtime_definitions("losses")
    helpers = [h for h in sources if h != func and f"{h}(" in sources[func]]
    blocks = [*(sources[h] for h in helpers), sources[func]]
    call = _fit("loss = ", func, ["spk", "mem", "targets"] + _kwargs(params), "    ")
    lines = ["spk, mem, records = model(x, all_spikes=True)"]
    if not regularization:
        lines = ["spk, mem = model(x)"]
    if series:
        blocks.append(sources["loss_by_length"])
        masked = _fit(
            "loss = ",
            "loss_by_length",
            [func, "spk", "mem", "targets", "mask"] + _kwargs(params),
            "        ",
        )
        lines += [
            "if mask is None:",
            *("    " + line for line in call.split("\n")),
            "else:  # padded sequences: each sample over its own steps",
            *("    " + line for line in masked.split("\n")),
        ]
    else:
        lines += call.split("\n")
    if not regularization:
        return lines, blocks, ""
    blocks.append(sources["rate_regularization"])
    reg = _fit(
        "loss = loss + ",
        "rate_regularization",
        ["list(records.values())"] + _kwargs(dict(regularization)),
        "    ",
    )
    lines.append("# `loss.rate_regularization`: firing rates of every spiking layer")
    if series:
        blocks.append(sources["masked_rate_regularization"])
        masked = _fit(
            "loss = loss + ",
            "masked_rate_regularization",
            ["list(records.values())", "mask"] + _kwargs(dict(regularization)),
            "        ",
        )
        lines += [
            "if mask is None:",
            *("    " + line for line in reg.split("\n")),
            "else:",
            *("    " + line for line in masked.split("\n")),
        ]
    else:
        lines += reg.split("\n")
    return lines, blocks, " plus firing-rate regularization"


def _to_input(graph: Graph, source: dict | None) -> list[str]:
    """Body of to_input(x): stored samples -> one model input batch."""
    steps = []  # (expression of x, comment)
    dataset = graph.dataset_label
    if source is not None and not source["images"]:
        steps.append(("x.to(torch.float32)", "samples as stored"))
    elif source is not None and source["kind"] == "tensors":
        scaled = "x.to(torch.float32).div_(255) if x.dtype == torch.uint8"
        steps.append((f"{scaled} else x.to(torch.float32)", "uint8: images"))
    elif dataset not in ("synthetic", "synthetic_regression"):
        steps.append(("x.to(torch.float32).div_(255)", "as torchvision's ToTensor"))
    if graph.train["normalize"]:
        view = "(" + ", ".join(["-1"] + ["1"] * (len(graph.input_shape) - 1)) + ")"
        mean, std = f"x.new_tensor(MEAN).view{view}", f"x.new_tensor(STD).view{view}"
        steps.append((f"(x - {mean}) / {std}", ""))
    if graph.sequence_input:
        kind = graph.encoding["type"]
        steps.append(("x.unsqueeze(0).expand(Net.steps, *x.shape)", f"{kind} input"))
        if kind == "spikes":
            steps.append(("torch.bernoulli(x.clamp(0, 1))", "spikes of intensities"))
    if not steps:
        return ["return x  # synthetic samples are model inputs already"]
    lines = [f"x = {expr}" + (f"  # {note}" if note else "") for expr, note in steps]
    lines[-1] = "return " + lines[-1][len("x = ") :]
    return lines


def _scores(decode: str) -> str:
    """scores(spk, mem, mask) of a script over padded sequences."""
    return (
        "def scores(spk, mem, mask):\n"
        '    """The decoding; padded sequences over their real steps (`mask`)."""\n'
        "    if mask is None:\n"
        f"        return {decode}(spk, mem)\n"
        f"    return decode_by_length({decode}, spk, mem, mask)"
    )


def _series_input(graph: Graph, source: dict) -> list[str]:
    """Body of to_input(inputs, lengths, index) for time-series samples, as
    train/data.py's Split.batch: cut to the longest, mask the padding, time first."""
    shape = ", ".join(str(s) for s in graph.input_shape)
    if source["kind"] == "events":  # sparse rows [N, T_max * cells]
        pick = [
            "x = inputs.index_select(0, index).to_dense()",
            f"x = x.view(len(index), -1, {shape})",
        ]
    else:
        pick = ["x = inputs[index]"]
    return [
        *pick,
        "lengths = lengths[index]",
        "x = x[:, : int(lengths.max())].to(torch.float32)",
        "steps = torch.arange(x.shape[1], device=x.device)",
        "mask = steps.unsqueeze(1) < lengths.unsqueeze(0)",
        f"x = x.reshape(*x.shape[:2], {shape}).transpose(0, 1)",
        "return x, (None if bool(mask.all()) else mask)",
    ]


def _dict_lit(value: dict) -> str:
    return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in value.items()) + "}"


def _source_context(graph: Graph) -> dict[str, Any] | None:
    """What the script needs to read a `train.dataset` mapping as `snncompile
    train` does (train/sources.py): the runtime readers, constants and the body
    of load_split(root, train, limit, device)."""
    source = graph.source
    if source is None:
        return None
    readers = runtime_definitions("sources")
    kind = source.type if source.type in ("tensors", "image_folder") else "events"
    series = kind == "events" or (
        kind == "tensors" and graph.encoding["type"] == "spikes"
    )
    constants, lines, needed = [], [], [source.reader]
    if kind == "events":
        frames = {k: v for k, v in source.frames.model_dump().items() if v is not None}
        constants += [
            ("FOLDER", lit(source.path or source.FOLDER) + "  # under --data-root"),
            ("SENSOR", lit(tuple(source.sensor())) + "  # (W, H, P) after downsample"),
            ("FRAMES", _dict_lit(frames) + "  # tonic's ToFrame"),
            ("DENOISE", lit(source.denoise)),
            ("DOWNSAMPLE", lit(source.downsample)),
        ]
        needed += ["frame_events"]
        doc = (
            f"{SOURCE_TITLES[source.type]} recordings framed into event counts:\n"
            "    inputs (sparse rows of frames), labels [N], lengths (frames) [N]."
        )
        needed.append("sparse_frames")
        lines += [
            f"events, labels = {source.reader}(os.path.join(root, FOLDER), train)",
            "job = (SENSOR, FRAMES, DENOISE, DOWNSAMPLE)",
            "frames = [frame_events(e, *job) for e in events]  # [T_i, ...] each",
            "labels = torch.tensor(labels)",
        ]
    else:
        paths = {"train": source.train, "test": source.test}
        constants.append(("FILES", _dict_lit(paths) + "  # under --data-root"))
        path = 'os.path.join(root, FILES["train" if train else "test"])'
        if kind == "tensors":
            keys = [source.inputs_key, source.targets_key, source.lengths_key]
            call = _fit(
                "inputs, labels, lengths = ",
                "read_tensors",
                [path, *(lit(k) for k in keys)],
                "    ",
            )
            lines += call.split("\n")
            lines.append(
                "inputs = inputs.to(torch.uint8) if inputs.dtype == torch.bool else inputs"
            )
            if graph.task == "regression":
                lines.append(
                    "labels = labels.to(torch.float32).reshape(len(labels), -1)"
                )
            else:
                lines.append("labels = labels.to(torch.int64)")
            if series:
                lines.append("if lengths is None:  # sequences of one length")
                lines.append(
                    "    lengths = torch.full((len(labels),), inputs.shape[1])"
                )
            doc = "Your arrays: inputs, targets" + (" and lengths." if series else ".")
        else:
            shape = lit(tuple(graph.input_shape))
            lines.append(f"inputs, labels, _ = read_image_folder({path}, {shape})")
            doc = "Images of a folder per class as uint8 [N, C, H, W] and labels [N]."
    fraction = graph.train.get("val_fraction", 0.0)
    if fraction and getattr(source, "val", None) is None:
        constants.append(("VAL_FRACTION", lit(fraction) + "  # held out of training"))
        lines += [
            "if train:  # without the validation hold-out (as snncompile train)",
            "    keep = validation_split(len(labels), VAL_FRACTION)[0]",
        ]
        if kind == "events":
            lines.append("    frames = [frames[i] for i in keep.tolist()]")
            lines.append("    labels = labels[keep]")
        else:
            lines.append("    inputs, labels = inputs[keep], labels[keep]")
            if series:
                lines.append("    lengths = lengths[keep]")
    if kind == "events":
        if graph.steps:
            lines.append(
                f"frames = [f[:{graph.steps}] for f in frames]  # `steps` caps T"
            )
        lines += [
            "frames, labels = frames[:limit], labels[:limit]",
            "lengths = torch.tensor([len(f) for f in frames])",
            "inputs = sparse_frames(frames)  # [N, T_max * cells]",
            "return inputs.to(device), labels.to(device), lengths.to(device)",
        ]
    elif series and graph.steps:
        lines += [
            f"inputs = inputs[:, :{graph.steps}]  # `steps` caps T",
            f"lengths = lengths.clamp(max={graph.steps})",
        ]
    if kind == "events":
        pass
    elif series:
        lines += [
            "return (",
            "    inputs[:limit].to(device),",
            "    labels[:limit].to(device),",
            "    lengths[:limit].to(device),",
            ")",
        ]
    else:
        lines.append("return inputs[:limit].to(device), labels[:limit].to(device)")
    for name in needed:  # and what they call, in the file's order
        needed += [h for h in readers if f"{h}(" in readers[name] and h not in needed]
    blocks = [text for name, text in readers.items() if name in needed]
    if fraction and getattr(source, "val", None) is None:
        blocks.append(runtime_definitions("datasets")["validation_split"])
    return {
        "kind": kind,
        "series": series,
        "images": kind != "events" and not series,
        "constants": constants,
        "blocks": blocks,
        "doc": doc,
        "lines": lines,
    }


def _normalize(graph: Graph) -> dict[str, str] | None:
    norm = graph.train["normalize"]
    if not norm:
        return None
    channels = graph.input_shape[0] if len(graph.input_shape) > 1 else 1
    for key in ("mean", "std"):
        if len(norm[key]) not in (1, channels):
            raise ValueError(
                f"train.normalize.{key} has {len(norm[key])} values for "
                f"{channels} channel(s)"
            )
    return {key: lit(tuple(float(v) for v in norm[key])) for key in ("mean", "std")}


PLATEAU = """\
class Plateau:
    \"\"\"spec `train.schedule: plateau`: the learning rate's factor, times {factor}
    after {patience} epoch(s) without a relative improvement of {threshold} in {metric}
    (torch ReduceLROnPlateau's rule), not below min_lr / lr.\"\"\"

    def __init__(self):
        self.scale, self.best, self.bad, self.cooldown = 1.0, None, 0, 0

    def observe(self, value):
        \"\"\"The metric after an epoch; whether the learning rate was reduced.\"\"\"
        if self.best is None:
            better = True
        else:
            better = value {compare} self.best * ({better})
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown > 0:
            self.cooldown -= 1
            self.bad = 0
        if self.bad > {patience}:
            self.bad, self.cooldown = 0, {cooldown}
            scale = max(self.scale * {factor}, {floor})
            if scale < self.scale:
                self.scale = scale
                return True
        return False
"""


def _warmup(schedule: dict) -> tuple[list[str], bool]:
    """Lines that set `warm`, the linear warmup's factor of the iteration (none
    without a warmup), and whether they need per_epoch."""
    steps = schedule.get("warmup_steps", 0)
    epochs = schedule.get("warmup_epochs", 0)
    if not (steps or epochs):
        return [], False
    if steps:
        first = f"warmup = {lit(steps)}  # iterations of linear warmup"
    else:
        first = (
            f"warmup = {lit(epochs)} * per_epoch  # linear warmup: {epochs} epoch(s)"
        )
    return [first, "warm = (iteration + 1) / warmup if iteration < warmup else 1.0"], (
        bool(epochs)
    )


def _schedule(graph: Graph) -> dict[str, Any]:
    """The LR factor per iteration, as snncompile train computes it
    (snncompile/train/schedules.py: the same float operations in the same order)."""
    schedule = graph.train["schedule"]
    kind = schedule["type"]
    lr = float(graph.train["optimizer"]["lr"])
    warm, needs_per_epoch = _warmup(schedule)
    params = ["optimizer"]
    call = ["optimizer"]
    plateau = None
    if kind == "none" and not warm:
        return {
            "schedule_lines": [],
            "schedule_params": "",
            "schedule_call": "",
            "plateau_block": None,
            "plateau_metric": None,
        }
    if kind == "none":
        lines = [
            warm[0],
            "return (iteration + 1) / warmup if iteration < warmup else 1.0",
        ]
    elif kind == "cosine":
        floor = float(schedule["eta_min"]) / lr
        params.append("total")
        call.append("per_epoch * epochs")
        if warm:
            lines = [
                warm[0],
                "span = max(total - warmup, 1)  # the iterations after the warmup",
                "after = iteration - warmup if iteration > warmup else 0",
                "cosine = math.cos(math.pi * min(after, span) / span)",
            ]
        else:
            lines = ["cosine = math.cos(math.pi * min(iteration, total) / total)"]
        if floor:
            lines.append(f"floor = {lit(floor)}  # eta_min / lr")
            decay = "floor + (1 - floor) * (1 + cosine) / 2"
        else:  # eta_min 0: the same value as the general formula, exactly
            decay = "(1 + cosine) / 2"
        if warm:
            lines += [f"decay = {decay}", warm[1], "return warm * decay"]
        else:
            lines.append(f"return {decay}")
    elif kind == "step":
        every = schedule["step_size"]
        gamma = lit(float(schedule["gamma"]))
        params.append("per_epoch")
        call.append("per_epoch")
        needs_per_epoch = False
        power = (
            f"{gamma}**epoch" if every == 1 else f"{gamma} ** (epoch // {lit(every)})"
        )
        note = (
            "times gamma after every epoch" if every == 1 else f"every {every} epochs"
        )
        lines = ["epoch = iteration // per_epoch"]
        if warm:
            lines += [*warm, f"return warm * {power}  # {note}"]
        else:
            lines.append(f"return {power}  # {note}")
    elif kind == "one_cycle":
        params.append("total")
        call.append("per_epoch * epochs")
        div, final = float(schedule["div_factor"]), float(schedule["final_div_factor"])
        lines = [
            f"up = {lit(float(schedule['pct_start']))} * total - 1  # rising until",
            "if iteration <= up:  # from lr / div_factor up to lr",
            f"    start, end = {lit(1 / div)}, 1.0",
            "    pct = iteration / up if up > 0 else 1.0",
            "else:  # then down to lr / (div_factor * final_div_factor)",
            f"    start, end, rest = 1.0, {lit(1 / (div * final))}, total - 1 - up",
            "    pct = min(1.0, (iteration - up) / rest) if rest > 0 else 1.0",
            "return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)",
        ]
    else:  # plateau
        higher = schedule["metric"].rsplit("_", 1)[-1] in ("accuracy", "r2")
        threshold = float(schedule["threshold"])
        plateau = PLATEAU.format(
            factor=lit(float(schedule["factor"])),
            patience=lit(schedule["patience"]),
            threshold=lit(threshold),
            metric=ident(schedule["metric"]),
            compare=">" if higher else "<",
            better=f"1 + {lit(threshold)}" if higher else f"1 - {lit(threshold)}",
            cooldown=lit(schedule["cooldown"]),
            floor=lit(float(schedule["min_lr"]) / lr),
        )
        if warm:
            lines = [*warm, "return warm * plateau.scale"]
        else:
            lines = ["return plateau.scale  # reduced by Plateau.observe"]
    if needs_per_epoch:
        params.append("per_epoch")
        call.append("per_epoch")
    if kind == "plateau":
        params.append("plateau")
        call.append("plateau")
    return {
        "schedule_lines": lines,
        "schedule_params": ", ".join(params),
        "schedule_call": ", ".join(call),
        "plateau_block": plateau.rstrip("\n") if plateau else None,
        "plateau_metric": lit(schedule["metric"]) if plateau else None,
    }


def _train_only_note(train) -> list[str]:
    """Comment lines naming the spec's `train` settings that only `snncompile
    train` applies (mixed precision, early stopping)."""
    fields = []
    if train.get("precision", "fp32") != "fp32":
        fields.append(f"`train.precision: {ident(train['precision'])}`")
    if train.get("early_stopping"):
        fields.append("`train.early_stopping`")
    if not fields:
        return []
    return [
        f"# spec {' and '.join(fields)}: applied by `snncompile train` only;",
        "# this script trains in float32 for all its epochs",
    ]


def _assigned(name: str, value: str) -> str:
    """The right-hand side of `name = value`, in parentheses over three lines
    when the line would pass ruff's length (as ruff format lays it out)."""
    if len(f"{name} = {value}") <= LINE or len(f"    {value}") > LINE:
        return value
    return f"(\n    {value}\n)"


def _plain(value: Any) -> Any:
    """Frozen IR data as plain lists, for comparison with literals."""
    return list(value) if isinstance(value, tuple) else value


NEEDS = {  # what a script reading each source imports besides torch
    "tensors": "torch, and numpy for .npz or h5py for .h5 files",
    "image_folder": "torch and torchvision",
    "nmnist": "torch, numpy and tonic",
    "shd": "torch, numpy, h5py and tonic",
    "ssc": "torch, numpy, h5py and tonic",
    "dvs_gesture": "torch, numpy and tonic",
}


def _needs(graph: Graph) -> str:
    """The packages a script for the graph needs."""
    label = graph.dataset_label
    if label in ("synthetic", "synthetic_regression"):
        return "torch"
    return NEEDS.get(label, "torch and torchvision")


def _docstring(graph: Graph, title: str, synthetic: bool, needs: str) -> str:
    name = ident(graph.name)
    root = "" if synthetic else " --data-root DATA"
    return f'''"""Train `{name}` on {title} with plain PyTorch; needs only {needs}:

    python {name}.py{root} --epochs {lit(graph.train["epochs"])} --out runs/{name}

Generated from the spec `{name}` by `snncompile codegen` (regenerate rather than
edit). `Net` maps input {_net_input(graph)} to (spk, mem) of the output layer,
each [T, B, {graph.num_classes}]; --out receives metrics.json and model.pt.
"""'''


def _net_input(graph: Graph) -> str:
    lead = "T, B" if graph.sequence_input else "B"
    return "[" + ", ".join([lead] + [str(s) for s in graph.input_shape]) + "]"


def script_context(graph: Graph, description: str | None = None) -> dict[str, Any]:
    """Prepared values for templates/script.py.j2 (a standalone training script)."""
    net, model = render_net(graph)
    train = graph.train
    dataset = graph.dataset_label
    cls, title = DATASET_TITLES[dataset]
    generated = dataset in ("synthetic", "synthetic_regression")
    source = _source_context(graph)
    series = source is not None and source["series"]
    regression = graph.task == "regression"
    decode = registry.DECODERS[graph.decoding]
    decode_sources = runtime_definitions("decode")
    metrics = ("regression_sums", "regression_metrics") if regression else ("accuracy",)
    decode_blocks = [decode_sources[decode], *(decode_sources[m] for m in metrics)]
    dataset_blocks = (
        [runtime_definitions("datasets")["synthetic_regression"]]
        if dataset == "synthetic_regression"
        else []
    )
    loss_lines, loss_blocks, note = _loss_lines(graph, series)
    to_input = _series_input(graph, source) if series else _to_input(graph, source)
    if series:
        decode_blocks += [decode_sources["decode_by_length"], _scores(decode)]
    optimizer = dict(train["optimizer"])
    opt_type = optimizer.pop("type")
    defaults = OPTIMIZER_DEFAULTS[opt_type]
    optimizer = {
        k: v
        for k, v in optimizer.items()
        if k not in defaults or _plain(v) != defaults[k]
    }
    shape = ", ".join(str(s) for s in graph.input_shape)
    blocks = [net, *decode_blocks, *loss_blocks, *dataset_blocks]
    if source:
        blocks += source["blocks"]
    schedule = _schedule(graph)
    drop_last = train["drop_last"]
    return {
        "docstring": _docstring(graph, title, generated, _needs(graph)),
        "generated": generated,
        "regression": regression,
        "regression_data": dataset == "synthetic_regression",
        "dataset_blocks": dataset_blocks,
        "regression_seeds": tuple(REGRESSION_SEEDS[split] for split in (True, False)),
        "name_lit": lit(ident(graph.name)),
        "description_lit": _assigned(
            "DESCRIPTION",
            lit(
                f"Train {graph.name} ({title})." if description is None else description
            ),
        ),
        "epochs": lit(train["epochs"]),
        "seed": lit(train["seed"]),
        "device_lit": lit(train["device"]),
        "limit_train": lit(train["limit_train"]),
        "limit_test": lit(train["limit_test"]),
        "batch_size": lit(train["batch_size"]),
        "eval_batch_size": lit(train["eval_batch_size"]),
        "eval_every": train["eval_every"],
        "normalize": _normalize(graph),
        "net": net.rstrip() + "\n",
        "decoding": ident(graph.decoding),
        "decode": decode,
        "decode_call": "scores(spk, mem, mask)" if series else f"{decode}(spk, mem)",
        "decode_blocks": decode_blocks,
        "source": source,
        "series": series,
        "loss_type": ident(graph.loss["type"]),
        "regularization_note": note,
        "loss_blocks": loss_blocks,
        "loss_lines": loss_lines,
        "dataset": ident(dataset),
        "synthetic": {
            "prototype_seed": SYNTHETIC["prototype_seed"],
            "prototypes_shape": f"{graph.num_classes}, {shape}",
            "sample_shape": shape,
            "train_count": SYNTHETIC["train"],
            "test_count": SYNTHETIC["test"],
            "noise": lit(SYNTHETIC["noise"]),
        }
        if generated
        else None,
        "classes": graph.num_classes,
        "dataset_class": cls,
        "images_expr": (
            "torch.as_tensor(dataset.data).permute(0, 3, 1, 2).contiguous()"
            if dataset == "cifar10"
            else "dataset.data.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]"
        ),
        "shape_doc": shape,
        "to_input_lines": to_input,
        "optimizer_type": ident(opt_type),
        "optimizer_lines": _fit(
            "return ",
            OPTIMIZERS[opt_type],
            ["model.parameters()", *_kwargs(optimizer), "fused=True"],
            "    ",
        ).split("\n"),
        "schedule_type": ident(train["schedule"]["type"]),
        **schedule,
        "grad_clip": lit(float(train["grad_clip"])) if train.get("grad_clip") else None,
        "train_only_note": _train_only_note(train),
        "root_arg": "" if generated else "data_root, ",
        "per_epoch_expr": (
            "len(train_labels) // BATCH_SIZE"
            if drop_last
            else "math.ceil(len(train_labels) / BATCH_SIZE)"
        ),
        "stop_expr": "per_epoch * BATCH_SIZE" if drop_last else "len(train_labels)",
        "seen_expr": "(per_epoch * BATCH_SIZE)" if drop_last else "len(train_labels)",
        "uses_math": model["uses_math"]
        or any("math." in b for b in blocks)
        or any("math." in line for line in schedule["schedule_lines"])
        or not drop_last,
        "uses_functional": any("F." in b for b in blocks),
    }


def render_script(graph: Graph, description: str | None = None) -> str:
    """A standalone training script for the graph (torch and torchvision only)."""
    context = script_context(graph, description)
    return _environment().get_template("script.py.j2").render(context)
