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
from ..ir.graph import Graph, Node
from ..spec.schema import IDENTIFIER

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


@functools.cache
def reserved_attributes() -> frozenset[str]:
    """Names a layer may not take: `self.<name>` must be the layer itself, not an
    attribute of torch.nn.Module (train, eval, zero_grad...) or of Net."""
    from torch import nn

    return frozenset(dir(nn.Module())) | {"steps", "forward", "graph"}


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


def _pair(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _stateless_ctor(node: Node, indent: str) -> str:
    p = node.params
    cls = registry.TORCH_LAYERS[node.type]
    if node.type == "linear":
        args = [lit(node.in_shape[0]), lit(p["out_features"])]
        return _call(cls, args, {"bias": lit(p["bias"])}, indent)
    if node.type in ("conv1d", "conv2d"):
        args = [lit(node.in_shape[0]), lit(p["out_channels"])]
        kwargs = {
            "kernel_size": lit(_pair(p["kernel_size"])),
            "stride": lit(_pair(p["stride"])),
            "padding": lit(_pair(p["padding"])),
            "bias": lit(p["bias"]),
        }
        return _call(cls, args, kwargs, indent)
    if node.type in ("maxpool2d", "avgpool2d"):
        kwargs = {"kernel_size": lit(_pair(p["kernel_size"]))}
        if p["stride"] is not None:
            kwargs["stride"] = lit(_pair(p["stride"]))
        if p["padding"]:
            kwargs["padding"] = lit(_pair(p["padding"]))
        return _call(cls, [], kwargs, indent)
    if node.type == "flatten":
        return f"{cls}()"
    if node.type == "dropout":
        return f"{cls}(p={lit(p['p'])})"
    if node.type in ("batchnorm1d", "batchnorm2d"):
        kwargs = {"eps": lit(p["eps"]), "momentum": lit(p["momentum"])}
        return _call(cls, [lit(node.in_shape[0])], kwargs, indent)
    raise ValueError(f"no lowering for layer type {node.type}")


def _neuron_ctor(node: Node, indent: str) -> str:
    p = node.params
    cls = registry.NEURONS[node.type]
    surrogate, fields = registry.SURROGATES[p["surrogate"]["type"]]
    kwargs: dict[str, str] = {}
    if "alpha" in p:
        kwargs["alpha"] = lit(float(p["alpha"]))
    kwargs["beta"] = lit(float(p["beta"]))
    kwargs["threshold"] = lit(float(p["threshold"]))
    kwargs["reset"] = lit(p["reset"])
    kwargs["learn_beta"] = lit(p["learn_beta"])
    kwargs["learn_threshold"] = lit(p["learn_threshold"])
    if "learn_alpha" in p:
        kwargs["learn_alpha"] = lit(p["learn_alpha"])
    kwargs["per_neuron"] = lit(p["per_neuron"])
    kwargs["surrogate"] = surrogate
    kwargs["surrogate_args"] = lit(tuple(float(p["surrogate"][f]) for f in fields))
    if "recurrence" in p:
        rec = p["recurrence"]
        rkw = {"features": lit(node.out_shape[0])}
        if rec["type"] == "one_to_one":
            rkw = {"V": lit(float(rec["V"])), "learn": lit(rec["learn"])}
        elif rec["type"] == "conv":
            rkw["kernel_size"] = lit(tuple(rec["kernel_size"]))
        kwargs["recurrent"] = _call(
            "Recurrent", [lit(rec["type"])], rkw, indent + "    "
        )
    return _call(cls, [lit(tuple(node.out_shape))], kwargs, indent)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


# a linear layer after a hidden Leaky layer is fused into its node when its output
# is this narrow: its input gradient is then formed inside the Leaky backward
# loop (out_features multiply-adds per neuron and step), where a skinny matrix
# product would write and read back a [T, B, N] tensor
FUSED_LINEAR_MAX_OUT = 32


def fuses_with_linear(node: Node, after: Node | None, last: Node) -> bool:
    """Whether `node` and the `after` it run as one fused_leaky_linear node."""
    return (
        node.type == "leaky"
        and node is not last
        and after is not None
        and after.type == "linear"
        and len(node.out_shape) == 1
        and after.params["out_features"] <= FUSED_LINEAR_MAX_OUT
    )


def _forward_layered(graph: Graph) -> list[str]:
    """Whole-sequence schedule: each layer runs once over all T steps."""
    lines: list[str] = []
    prefix = [n for n in graph.nodes if n.time_invariant]
    if prefix:
        lines.append(
            f"# time-invariant prefix: computed once, shared by all {graph.steps} steps"
        )
        lines.append("h = x")
        for node in prefix:
            lines.append(f"h = self.{node.name}(h)  # {_shape(node.out_shape)}")
        lines.append("h = h.expand(self.steps, *h.shape)  # [T, B, ...] without a copy")
    else:
        lines.append(_encode_line(graph, "h"))
    spikes = []
    last = graph.neuron_nodes[-1]
    rest = graph.nodes[len(prefix) :]
    skip = None
    for node, after in zip(rest, [*rest[1:], None]):
        if node is skip:
            continue
        if fuses_with_linear(node, after, last):
            lines.append(
                f"# {node.name} and {after.name}, one node: {_shape(after.out_shape)}"
            )
            args = [f"self.{node.name}", f"self.{after.name}", "h", "spikes=all_spikes"]
            head = f"spk_{node.name}, h = "
            lines.append(_fit(head, "fused_leaky_linear", args, "        "))
            spikes.append(node.name)
            skip = after
            continue
        if node is last:
            lines.append(f"spk_{node.name}, mem_{node.name} = self.{node.name}(h)")
            spikes.append(node.name)
        elif node.stateful:
            lines.append(f"spk_{node.name}, _ = self.{node.name}(h, record_mem=False)")
            lines.append(f"h = spk_{node.name}")
            spikes.append(node.name)
        elif node.type.startswith("batchnorm"):
            lines.append(
                f"h = per_step(self.{node.name}, h)  # {_shape(node.out_shape)}"
            )
        else:
            lines.append(
                f"h = time_batched(self.{node.name}, h)  # {_shape(node.out_shape)}"
            )
    return lines + _returns(graph, spikes)


def _encode_line(graph: Graph, target: str) -> str:
    enc = graph.encoding
    func = registry.ENCODERS[enc["type"]]
    if func is None:
        return f"{target} = x  # already a spike train [T, B, ...]"
    args = ["x"] if graph.sequence_input else ["x", "self.steps"]
    args += [f"{ident(k)}={lit(v)}" for k, v in enc.items() if k != "type"]
    return _fit(f"{target} = ", func, args, "        ", "  # [T, B, ...]")


def _returns(graph: Graph, spikes: list[str]) -> list[str]:
    out = graph.neuron_nodes[-1].name
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


def _forward_step(graph: Graph) -> list[str]:
    """Per-step schedule, as hand-written snnTorch loops do it (the reference)."""
    batch = "x.shape[1]" if graph.sequence_input else "x.shape[0]"
    lines = [f"batch = {batch}", _encode_line(graph, "seq")]
    neurons = graph.neuron_nodes
    for node in neurons:
        shape = ", ".join(str(s) for s in node.out_shape)
        lines.append(
            f"state_{node.name} = self.{node.name}.init_state(x.new_zeros(batch, {shape}))"
        )
        lines.append(f"rec_{node.name} = []")
    out = neurons[-1].name
    lines.append("mem_rec = []")
    lines.append("for t in range(self.steps):")
    lines.append("    h = seq[t]")
    for node in graph.nodes:
        if node.stateful:
            lines.append(
                f"    h, state_{node.name} = self.{node.name}.step(h, state_{node.name})"
            )
            lines.append(f"    rec_{node.name}.append(h)")
        else:
            lines.append(f"    h = self.{node.name}(h)")
    lines.append(f"    mem_rec.append(state_{out}[-1])")
    for node in neurons:
        lines.append(f"spk_{node.name} = torch.stack(rec_{node.name})")
    lines.append(f"mem_{out} = torch.stack(mem_rec)")
    return lines + _returns(graph, [n.name for n in neurons])


def model_context(graph: Graph, schedule: str = "layered") -> dict[str, Any]:
    """Prepared values for templates/model.py.j2."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    ident(graph.name)
    for node in graph.nodes:
        layer_attribute(node.name)
    neurons = graph.neuron_nodes
    surrogates = sorted(
        {registry.SURROGATES[n.params["surrogate"]["type"]][0] for n in neurons}
    )
    classes = ["SpikingNeuron"]
    if any("recurrence" in n.params for n in neurons):
        classes.append("Recurrent")
    classes += [
        c
        for c in registry.NEURONS.values()
        if c in {registry.NEURONS[n.type] for n in neurons}
    ]
    blocks = [runtime_definitions("surrogates")[s] for s in surrogates]
    # the sequence kernels: every Leaky runs by fused.py's; torch_compiled serves
    # every neuron's compiled loop
    fused = runtime_definitions("fused")
    leaky = registry.NEURONS["leaky"] in classes
    blocks += [v for k, v in fused.items() if leaky or k == "torch_compiled"]
    blocks += [runtime_definitions("neurons")[c] for c in classes]
    forward = _forward_layered(graph) if schedule == "layered" else _forward_step(graph)
    body = "\n".join(forward)
    helpers = [h for h in ("time_batched", "per_step") if f"{h}(" in body]
    blocks += [runtime_definitions("layers")[h] for h in helpers]
    encoder = registry.ENCODERS[graph.encoding["type"]]
    if encoder is not None and f"{encoder}(" in body:
        blocks.append(runtime_definitions("encode")[encoder])
    layers = []
    for node in graph.nodes:
        ctor = (
            _neuron_ctor(node, "        ")
            if node.stateful
            else _stateless_ctor(node, "        ")
        )
        flags = []
        if node.time_invariant:
            flags.append("time-invariant")
        if node.stateful:
            flags.append("state: " + ", ".join(node.states))
        comment = (
            f"layers[{node.index}] {node.name} ({node.type}): "
            f"{_shape(node.in_shape)} -> {_shape(node.out_shape)}"
            + (f"; {'; '.join(flags)}" if flags else "")
        )
        layers.append({"name": node.name, "ctor": ctor, "comment": comment})
    in_shape = ("T, B, " if graph.sequence_input else "B, ") + ", ".join(
        str(s) for s in graph.input_shape
    )
    out = neurons[-1]
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


# --------------------------------------------------------------------------- scripts
DATASET_TITLES = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "Fashion-MNIST"),
    "kmnist": ("KMNIST", "KMNIST"),
    "cifar10": ("CIFAR10", "CIFAR-10"),
    "synthetic": (None, "synthetic data"),
}
# snncompile/train/data.py's synthetic dataset (tests/test_codegen.py compares them)
SYNTHETIC = {"prototype_seed": 1234, "train": 2048, "test": 512, "noise": 0.35}
OPTIMIZERS = {
    "adam": "torch.optim.Adam",
    "adamw": "torch.optim.AdamW",
    "sgd": "torch.optim.SGD",
}


def _kwargs(params: dict[str, Any]) -> list[str]:
    return [f"{ident(k)}={lit(v)}" for k, v in params.items()]


def _loss_lines(graph: Graph) -> tuple[list[str], list[str], str]:
    """Body of forward_loss, the runtime loss sources it needs, and a note."""
    params = dict(graph.loss)
    func = registry.LOSSES[params.pop("type")]
    regularization = params.pop("rate_regularization", None)
    sources = runtime_definitions("losses")
    blocks = [sources[func]]
    call = _fit("loss = ", func, ["spk", "mem", "targets"] + _kwargs(params), "    ")
    if not regularization:
        return ["spk, mem = model(x)", *call.split("\n")], blocks, ""
    blocks.append(sources["rate_regularization"])
    reg = _fit(
        "loss = loss + ",
        "rate_regularization",
        ["list(records.values())"] + _kwargs(dict(regularization)),
        "    ",
    )
    lines = [
        "spk, mem, records = model(x, all_spikes=True)",
        *call.split("\n"),
        "# `loss.rate_regularization`: firing rates of every spiking layer",
        *reg.split("\n"),
    ]
    return lines, blocks, " plus firing-rate regularization"


def _to_input(graph: Graph, dataset: str) -> list[str]:
    """Body of to_input(x): stored samples -> one model input batch."""
    steps = []  # (expression of x, comment)
    if dataset != "synthetic":
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


def _schedule(graph: Graph) -> dict[str, Any]:
    """The LR factor per iteration, as snncompile train computes it."""
    schedule = graph.train["schedule"]
    if schedule["type"] == "none":
        return {"schedule_lines": [], "schedule_arg": "", "schedule_call": ""}
    if schedule["type"] == "cosine":
        floor = float(schedule["eta_min"]) / float(graph.train["optimizer"]["lr"])
        lines = ["cosine = math.cos(math.pi * min(iteration, total) / total)"]
        if floor:
            lines.append(f"floor = {lit(floor)}  # eta_min / lr")
            lines.append("return floor + (1 - floor) * (1 + cosine) / 2")
        else:  # eta_min 0: the same value as the general formula, exactly
            lines.append("return (1 + cosine) / 2")
        return {
            "schedule_lines": lines,
            "schedule_arg": "total",
            "schedule_call": "per_epoch * epochs",
        }
    every = schedule["step_size"]
    gamma = lit(float(schedule["gamma"]))
    if every == 1:
        decay = f"return {gamma}**epoch  # times gamma after every epoch"
    else:
        decay = f"return {gamma} ** (epoch // {lit(every)})  # every {every} epochs"
    lines = ["epoch = iteration // per_epoch", decay]
    return {
        "schedule_lines": lines,
        "schedule_arg": "per_epoch",
        "schedule_call": "per_epoch",
    }


def _docstring(graph: Graph, title: str, synthetic: bool) -> str:
    name = ident(graph.name)
    root = "" if synthetic else " --data-root DATA"
    needs = "torch" if synthetic else "torch and torchvision"
    return f'''"""Train `{name}` on {title} with plain PyTorch.

A spiking neural network and its training, generated from the spec `{name}` by
`snncompile codegen`: change the spec and regenerate rather than editing this
file. Needs only {needs}:

    python {name}.py{root} --epochs {lit(graph.train["epochs"])} --out runs/{name}

Every epoch prints the training loss and accuracy and the test loss and accuracy;
--out receives metrics.json and model.pt (the trained state_dict). The model
alone is `Net`: input {_net_input(graph)} -> (spk, mem) of the output layer,
each [T, B, {graph.num_classes}].
"""'''


def _net_input(graph: Graph) -> str:
    lead = "T, B" if graph.sequence_input else "B"
    return "[" + ", ".join([lead] + [str(s) for s in graph.input_shape]) + "]"


def script_context(graph: Graph, description: str | None = None) -> dict[str, Any]:
    """Prepared values for templates/script.py.j2 (a standalone training script)."""
    net, model = render_net(graph)
    train = graph.train
    dataset = train["dataset"]
    cls, title = DATASET_TITLES[dataset]
    synthetic = dataset == "synthetic"
    decode = registry.DECODERS[graph.decoding]
    decode_sources = runtime_definitions("decode")
    decode_blocks = [decode_sources[decode], decode_sources["accuracy"]]
    loss_lines, loss_blocks, note = _loss_lines(graph)
    to_input = _to_input(graph, dataset)
    optimizer = dict(train["optimizer"])
    opt_type = optimizer.pop("type")
    shape = ", ".join(str(s) for s in graph.input_shape)
    blocks = [net, *decode_blocks, *loss_blocks]
    schedule = _schedule(graph)
    drop_last = train["drop_last"]
    return {
        "docstring": _docstring(graph, title, synthetic),
        "name_lit": lit(ident(graph.name)),
        "description_lit": lit(
            f"Train {graph.name} ({title})." if description is None else description
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
        "decode_blocks": decode_blocks,
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
        if synthetic
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
        "root_arg": "" if synthetic else "data_root, ",
        "per_epoch_expr": (
            "len(train_labels) // BATCH_SIZE"
            if drop_last
            else "math.ceil(len(train_labels) / BATCH_SIZE)"
        ),
        "stop_expr": "per_epoch * BATCH_SIZE" if drop_last else "len(train_labels)",
        "seen_expr": "(per_epoch * BATCH_SIZE)" if drop_last else "len(train_labels)",
        "uses_math": model["uses_math"]
        or any("math." in b for b in blocks)
        or schedule["schedule_arg"] == "total"
        or not drop_last,
        "uses_functional": any("F." in b for b in blocks),
    }


def render_script(graph: Graph, description: str | None = None) -> str:
    """A standalone training script for the graph (torch and torchvision only)."""
    context = script_context(graph, description)
    return _environment().get_template("script.py.j2").render(context)
