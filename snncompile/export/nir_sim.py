"""A reference simulation of a NIR graph, step by step, in plain numpy (float64).

It reads nothing but the NIR nodes' own parameters and runs the discretization
that snncompile/export/nir.py documents (forward Euler with step dt, every
state zero at the start, a spike resets the membrane to v_reset in the step it
fires, inputs arriving on several edges are summed, a neuron's spikes that
travel around a cycle arrive one step later). It never calls snncompile's
build() or torch: it is the independent side of `--verify`.

Also here, because the importer needs the same view of a file: `flat_graph`
(nested NIRGraph nodes inlined, their Input/Output nodes passed through) and
`infer_shapes` (each node's per-sample output shape, every edge checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec.errors import UserError

NEURONS = ("LIF", "IF", "LI", "I", "CubaLIF", "CubaLI")  # state over time
FIRING = ("LIF", "IF", "CubaLIF")  # spiking neurons with a reset
ANALOG = ("LI", "I", "CubaLI")  # their output is the membrane


class GraphError(UserError):
    """A NIR graph that cannot be simulated or imported as it stands."""


def kind(node) -> str:
    return type(node).__name__


def shape_text(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# --------------------------------------------------------------------------- structure
def flat_graph(graph) -> tuple[dict, list[tuple[str, str]]]:
    """(nodes, edges) of `graph` with every nested NIRGraph inlined: its nodes
    named "outer.inner", edges into it led to what its Input feeds, edges out of
    it taken from what feeds its Output (also edges that name "outer.input")."""
    nodes: dict = {}
    edges: list[tuple[str, str]] = []
    through: set[str] = set()  # inner Input/Output nodes: pass-through

    def add(prefix: str, graph) -> None:
        ports_in: dict[str, str] = {}
        ports_out: dict[str, str] = {}
        for name, node in graph.nodes.items():
            full = f"{prefix}{name}"
            if kind(node) == "NIRGraph":
                inner_in, inner_out = add(f"{full}.", node)
                ports_in[full], ports_out[full] = inner_in, inner_out
                continue
            nodes[full] = node
        for a, b in graph.edges:
            a, b = f"{prefix}{a}", f"{prefix}{b}"
            edges.append((ports_out.get(a, a), ports_in.get(b, b)))
        if not prefix:
            return "", ""
        inputs = [
            n for n in nodes if n.startswith(prefix) and kind(nodes[n]) == "Input"
        ]
        outputs = [
            n for n in nodes if n.startswith(prefix) and kind(nodes[n]) == "Output"
        ]
        outer = prefix[:-1]
        if len(inputs) != 1 or len(outputs) != 1:
            raise GraphError(
                f"subgraph '{outer}' needs one Input and one Output node, has "
                f"{len(inputs)} and {len(outputs)}"
            )
        through.update(inputs + outputs)
        return inputs[0], outputs[0]

    add("", graph)
    for name in sorted(through, key=len, reverse=True):  # innermost first
        preds = [a for a, b in edges if b == name]
        succs = [b for a, b in edges if a == name]
        edges = [e for e in edges if name not in e]
        edges += [(a, b) for a in preds for b in succs]
        del nodes[name]
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise GraphError(f"edge {a} -> {b} names '{end}', which is no node")
    if len(set(edges)) != len(edges):
        dup = next(e for e in edges if edges.count(e) > 1)
        raise GraphError(f"edge {dup[0]} -> {dup[1]} appears twice")
    return nodes, edges


@dataclass
class Structure:
    """A flat NIR graph's nodes, edges, order and shapes."""

    nodes: dict
    edges: list[tuple[str, str]]
    input: str
    output: str
    order: list[str]  # evaluation order: edges out of neurons in cycles cut
    delayed: set[tuple[str, str]]  # those edges: they carry the previous step
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def preds(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]

    def succs(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]


def structure(graph) -> Structure:
    """Flatten, find the one Input and Output, order, infer every shape."""
    nodes, edges = flat_graph(graph)
    inputs = [n for n, node in nodes.items() if kind(node) == "Input"]
    outputs = [n for n, node in nodes.items() if kind(node) == "Output"]
    if len(inputs) != 1:
        raise GraphError(f"the graph needs exactly one Input node, has {len(inputs)}")
    if len(outputs) != 1:
        raise GraphError(f"the graph needs exactly one Output node, has {len(outputs)}")
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)

    def reaches(a: str, target: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            if n == target:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(succ[n])
        return False

    delayed = {(a, b) for a, b in edges if kind(nodes[a]) in NEURONS and reaches(b, a)}
    order = _toposort(nodes, [e for e in edges if e not in delayed])
    s = Structure(nodes, edges, inputs[0], outputs[0], order, delayed)
    infer_shapes(s)
    return s


def _toposort(nodes: dict, edges: list[tuple[str, str]]) -> list[str]:
    waiting = {n: 0 for n in nodes}
    for _, b in edges:
        waiting[b] += 1
    ready = [n for n in nodes if waiting[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for a, b in edges:
            if a == n:
                waiting[b] -= 1
                if waiting[b] == 0:
                    ready.append(b)
    if len(order) < len(nodes):
        stuck = [n for n in nodes if n not in order]
        raise GraphError(
            "nodes " + ", ".join(stuck) + " form a cycle that passes through no "
            "neuron (a loop within one time step)"
        )
    return order


def _param(node, name: str) -> np.ndarray:
    return np.asarray(getattr(node, name), dtype=np.float64)


def _window(node, key: str, dims: int) -> tuple[int, ...]:
    value = getattr(node, key)
    arr = np.atleast_1d(np.asarray(value)).astype(int).tolist()
    if len(arr) == 1:
        arr = arr * dims
    if len(arr) != dims:
        raise GraphError(f"{key} {value} of a {dims}-d window is not {dims} numbers")
    least = 0 if key == "padding" else 1
    if min(arr) < least:
        raise GraphError(f"{key} {value}: each must be at least {least}")
    return tuple(int(a) for a in arr)


def conv_padding(node, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """A conv node's padding as numbers ('valid': 0; 'same': half of odd kernels)."""
    pad = node.padding
    if isinstance(pad, bytes):
        pad = pad.decode()
    if isinstance(pad, np.ndarray) and pad.dtype.kind in "SUO":
        pad = str(pad.astype(str))
    if isinstance(pad, str):
        if pad == "valid":
            return (0,) * len(kernel)
        if pad == "same" and all(k % 2 == 1 for k in kernel):
            return tuple(k // 2 for k in kernel)
        raise GraphError(f"padding {pad!r} with kernel {list(kernel)}")
    return _window(node, "padding", len(kernel))


def conv_setup(node) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(kernel, stride, padding) of a Conv1d/Conv2d node; dilation and groups 1."""
    dims = 1 if kind(node) == "Conv1d" else 2
    weight = np.asarray(node.weight)
    if weight.ndim != dims + 2:
        raise GraphError(f"weight of shape {shape_text(weight.shape)}")
    kernel = tuple(int(k) for k in weight.shape[2:])
    if any(d != 1 for d in _window(node, "dilation", dims)):
        raise GraphError(f"dilation {node.dilation} (only 1 is supported)")
    if int(np.asarray(node.groups)) != 1:
        raise GraphError(f"groups {node.groups} (only 1 is supported)")
    return kernel, _window(node, "stride", dims), conv_padding(node, kernel)


def pool_setup(node) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    return (
        _window(node, "kernel_size", 2),
        _window(node, "stride", 2),
        _window(node, "padding", 2),
    )


def _out_size(size, k, s, p) -> int:
    return (size + 2 * p - k) // s + 1


NEURON_PARAMS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "IF": ("r", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "I": ("r",),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
}


def _shape_of(s: Structure, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of node `name` for its (summed) input shape; GraphError
    naming the node when its parameters do not fit that input."""
    node = s.nodes[name]
    k = kind(node)
    me = f"node '{name}' ({k})"

    def expect(want, what="takes") -> None:
        if tuple(int(x) for x in want) != tuple(shape):
            feeders = ", ".join(s.preds(name)) or "nothing"
            raise GraphError(
                f"shape mismatch on the edge into {me}: {feeders} gives "
                f"{shape_text(shape)}, it {what} {shape_text(want)}"
            )

    if k in ("Affine", "Linear"):
        weight = np.asarray(node.weight)
        if weight.ndim != 2:
            raise GraphError(f"{me} has a weight of shape {shape_text(weight.shape)}")
        expect((weight.shape[1],))
        if k == "Affine" and np.asarray(node.bias).shape not in (
            (weight.shape[0],),
            (),
        ):
            raise GraphError(f"{me}: bias shape does not match weight")
        return (int(weight.shape[0]),)
    if k == "Scale":
        scale = np.asarray(node.scale)
        if scale.shape not in ((), (1,), tuple(shape)):
            expect(scale.shape)
        return shape
    if k in ("Conv1d", "Conv2d"):
        try:
            kernel, stride, pad = conv_setup(node)
        except GraphError as err:
            raise GraphError(f"{me}: {err}") from None
        weight = np.asarray(node.weight)
        dims = len(kernel)
        if len(shape) != dims + 1 or shape[0] != weight.shape[1]:
            layout = "[channels, length]" if dims == 1 else "[channels, height, width]"
            raise GraphError(
                f"shape mismatch on the edge into {me}: "
                f"{', '.join(s.preds(name))} gives {shape_text(shape)}, it takes "
                f"{layout} with {weight.shape[1]} channels"
            )
        given = node.input_shape
        if given is not None:
            expect((shape[0], *np.atleast_1d(np.asarray(given)).astype(int)))
        out = [_out_size(*a) for a in zip(shape[1:], kernel, stride, pad)]
        if min(out) < 1:
            raise GraphError(f"{me}: its kernel is larger than its input")
        if np.asarray(node.bias).shape not in ((weight.shape[0],), ()):
            raise GraphError(f"{me}: bias shape does not match weight")
        return (int(weight.shape[0]), *out)
    if k in ("AvgPool2d", "SumPool2d"):
        if len(shape) != 3:
            raise GraphError(
                f"shape mismatch on the edge into {me}: it takes [channels, height, "
                f"width], gets {shape_text(shape)}"
            )
        try:
            kernel, stride, pad = pool_setup(node)
        except GraphError as err:
            raise GraphError(f"{me}: {err}") from None
        out = [_out_size(*a) for a in zip(shape[1:], kernel, stride, pad)]
        if min(out) < 1:
            raise GraphError(f"{me}: its window is larger than its input")
        return (shape[0], *out)
    if k == "Flatten":
        given = node.input_type.get("input") if node.input_type else None
        if given is not None and np.asarray(given).size:
            expect(np.asarray(given).astype(int))
        start, end = int(node.start_dim), int(node.end_dim)
        ndim = len(shape)
        start, end = start % ndim if ndim else 0, end % ndim if ndim else 0
        middle = int(np.prod(shape[start : end + 1]))
        return (*shape[:start], middle, *shape[end + 1 :])
    if k == "Output":
        given = np.asarray(node.output_type["output"]).astype(int)
        expect(given)
        return shape
    if k in NEURON_PARAMS or k == "Threshold":
        params = NEURON_PARAMS.get(k, ("threshold",))
        for p in params:
            arr = np.asarray(getattr(node, p))
            if arr.shape not in ((), (1,), tuple(shape)):
                raise GraphError(
                    f"shape mismatch on the edge into {me}: "
                    f"{', '.join(s.preds(name))} gives {shape_text(shape)}, its "
                    f"{p} has shape {shape_text(arr.shape)}"
                )
        return shape
    if k == "Delay":
        return shape
    raise GraphError(f"{me}: this node type is not supported")


def infer_shapes(s: Structure) -> None:
    """Every node's per-sample output shape (s.shapes), in an order where each
    node follows what feeds it outside cycles; each edge's shapes checked."""
    given = s.nodes[s.input].input_type["input"]
    s.shapes[s.input] = tuple(int(x) for x in np.atleast_1d(np.asarray(given)))
    # depth-first from the input: edges back to a node on the path close cycles
    back: set[tuple[str, str]] = set()
    post: list[str] = []
    state: dict[str, int] = {}
    stack = [(s.input, iter(s.succs(s.input)))]
    state[s.input] = 1
    while stack:
        name, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            state[name] = 2
            post.append(name)
            stack.pop()
        elif state.get(nxt) == 1:
            back.add((name, nxt))
        elif nxt not in state:
            state[nxt] = 1
            stack.append((nxt, iter(s.succs(nxt))))
    missing = [n for n in s.nodes if n not in state]
    if missing:
        raise GraphError(
            f"node '{missing[0]}' ({kind(s.nodes[missing[0]])}) is not reached from "
            "the input"
        )
    for name in reversed(post):
        if name == s.input:
            continue
        if kind(s.nodes[name]) == "Input":
            raise GraphError(f"node '{name}': an Input node inside the graph")
        feeds = [a for a in s.preds(name) if (a, name) not in back]
        shapes = {s.shapes[a] for a in feeds}
        if len(shapes) != 1:
            listing = ", ".join(f"{a} gives {shape_text(s.shapes[a])}" for a in feeds)
            raise GraphError(
                f"shape mismatch on the edges into node '{name}' "
                f"({kind(s.nodes[name])}): {listing} (summed inputs need one shape)"
            )
        s.shapes[name] = _shape_of(s, name, shapes.pop())
    for a, b in back:
        b_in = {s.shapes[p] for p in s.preds(b) if (p, b) not in back}.pop()
        if s.shapes[a] != b_in:
            raise GraphError(
                f"shape mismatch on the edge {a} -> {b}: {a} gives "
                f"{shape_text(s.shapes[a])}, {b} takes {shape_text(b_in)}"
            )


# --------------------------------------------------------------------------- numerics
def _windows(x: np.ndarray, kernel, stride, pad) -> np.ndarray:
    """[B, C, *spatial] -> [B, C, *out, *kernel], zero padded."""
    dims = len(kernel)
    width = [(0, 0), (0, 0)] + [(p, p) for p in pad]
    x = np.pad(x, width)
    view = np.lib.stride_tricks.sliding_window_view(
        x, kernel, axis=tuple(range(2, 2 + dims))
    )
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)
    return view[index]


def conv(x: np.ndarray, weight: np.ndarray, bias, stride, pad) -> np.ndarray:
    kernel = weight.shape[2:]
    win = _windows(x, kernel, stride, pad)  # [B, Cin, *out, *kernel]
    if len(kernel) == 1:
        y = np.einsum("bcli,oci->bol", win, weight)
    else:
        y = np.einsum("bchwij,ocij->bohw", win, weight)
    bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), (weight.shape[0],))
    return y + bias.reshape((1, -1) + (1,) * len(kernel))


def pool(x: np.ndarray, kernel, stride, pad, average: bool) -> np.ndarray:
    win = _windows(x, kernel, stride, pad)
    total = win.sum(axis=(-2, -1))
    return total / (kernel[0] * kernel[1]) if average else total


@dataclass
class Trace:
    """What a simulation recorded, each [T, B, ...] by node name."""

    output: np.ndarray  # the Output node's value
    out: dict[str, np.ndarray]  # every node's output (spikes of a LIF)
    v: dict[str, np.ndarray]  # neurons: the membrane before any reset
    threshold: dict[str, np.ndarray]  # firing neurons: v_threshold


def simulate(graph_or_structure, x: np.ndarray, dt: float = 1.0) -> Trace:
    """Run the graph on x [T, B, *input shape] (the input at each step)."""
    s = (
        graph_or_structure
        if isinstance(graph_or_structure, Structure)
        else structure(graph_or_structure)
    )
    x = np.asarray(x, dtype=np.float64)
    steps, batch = x.shape[:2]
    if tuple(x.shape[2:]) != s.shapes[s.input]:
        raise GraphError(
            f"input of shape {shape_text(x.shape[2:])}, the graph takes "
            f"{shape_text(s.shapes[s.input])}"
        )
    for name in s.order:
        if kind(s.nodes[name]) == "Delay":
            raise GraphError(f"node '{name}' (Delay): not simulated")
    feeds = {n: s.preds(n) for n in s.nodes}
    prev = {n: np.zeros((batch, *s.shapes[n])) for n in s.nodes}
    state = {n: {} for n in s.nodes}
    out = {n: [] for n in s.nodes}
    vs = {n: [] for n in s.nodes if kind(s.nodes[n]) in NEURONS}
    for t in range(steps):
        now: dict[str, np.ndarray] = {}
        for name in s.order:
            node = s.nodes[name]
            if name == s.input:
                now[name] = x[t]
                continue
            total = sum(
                prev[a] if (a, name) in s.delayed else now[a] for a in feeds[name]
            )
            value, v = _step(node, total, state[name], dt, s.shapes[name])
            now[name] = value
            if v is not None:
                vs[name].append(v)
        for name in s.nodes:
            out[name].append(now[name])
        prev = now
    stacked = {n: np.stack(v) for n, v in out.items()}
    thresholds = {
        n: np.broadcast_to(_param(s.nodes[n], "v_threshold"), s.shapes[n])
        for n in s.nodes
        if kind(s.nodes[n]) in FIRING
    }
    return Trace(
        output=stacked[s.output],
        out=stacked,
        v={n: np.stack(v) for n, v in vs.items()},
        threshold=thresholds,
    )


def _step(node, x: np.ndarray, state: dict, dt: float, shape):
    """One node, one step: (output, membrane before reset or None)."""
    k = kind(node)
    if k == "Output":
        return x, None
    if k == "Affine":
        return x @ _param(node, "weight").T + _param(node, "bias"), None
    if k == "Linear":
        return x @ _param(node, "weight").T, None
    if k == "Scale":
        return x * _param(node, "scale"), None
    if k in ("Conv1d", "Conv2d"):
        _, stride, pad = conv_setup(node)
        return conv(x, _param(node, "weight"), _param(node, "bias"), stride, pad), None
    if k in ("AvgPool2d", "SumPool2d"):
        kernel, stride, pad = pool_setup(node)
        return pool(x, kernel, stride, pad, k == "AvgPool2d"), None
    if k == "Flatten":
        return x.reshape((x.shape[0], *shape)), None
    if k == "Threshold":
        return (x > _param(node, "threshold")).astype(np.float64), None
    p = {name: _param(node, name) for name in NEURON_PARAMS[k]}
    v = state.get("v", np.zeros_like(x))
    if k in ("CubaLIF", "CubaLI"):
        i = state.get("i", np.zeros_like(x))
        i = i + dt / p["tau_syn"] * (-i + p["w_in"] * x)
        state["i"] = i
        v = v + dt / p["tau_mem"] * (p["v_leak"] - v + p["r"] * i)
    elif k in ("LIF", "LI"):
        v = v + dt / p["tau"] * (p["v_leak"] - v + p["r"] * x)
    else:  # IF, I
        v = v + dt * p["r"] * x
    if k in ANALOG:
        state["v"] = v
        return v, v
    z = v > p["v_threshold"]
    state["v"] = np.where(z, p["v_reset"], v)
    return z.astype(np.float64), v
