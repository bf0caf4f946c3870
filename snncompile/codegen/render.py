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


@functools.lru_cache(maxsize=None)
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
    """Guard: only plain identifiers become Python names in generated code."""
    if not IDENTIFIER.match(name) or keyword.iskeyword(name) or name.startswith("__"):
        raise ValueError(f"refusing to render {name!r} as an identifier")
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


def _forward_layered(graph: Graph) -> list[str]:
    """Whole-sequence schedule: each layer runs once over all T steps."""
    enc = graph.encoding
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
    for node in graph.nodes[len(prefix) :]:
        if node is last:
            lines.append(f"spk_{node.name}, mem_{node.name} = self.{node.name}(h)")
            spikes.append(node.name)
        elif node.stateful:
            lines.append(f"spk_{node.name}, _ = self.{node.name}(h)")
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
    kwargs = "".join(f", {ident(k)}={lit(v)}" for k, v in enc.items() if k != "type")
    steps = "" if graph.sequence_input else ", self.steps"
    return f"{target} = {func}(x{steps}{kwargs})  # [T, B, ...]"


def _returns(graph: Graph, spikes: list[str]) -> list[str]:
    out = graph.neuron_nodes[-1].name
    record = ", ".join(f"{lit(n)}: spk_{n}" for n in spikes)
    return [
        "if all_spikes:",
        f"    return spk_{out}, mem_{out}, {{{record}}}",
        f"return spk_{out}, mem_{out}",
    ]


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
        ident(node.name)
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
        "forward": ["        " + line if line else "" for line in forward],
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
