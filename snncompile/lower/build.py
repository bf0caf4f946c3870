"""Lowering: IR -> torch.nn.Module by executing the rendered model source.

`build()` runs exactly the code that `snncompile codegen` writes, registered with
`linecache` so tracebacks and `inspect` show the real generated lines.
"""

from __future__ import annotations

import hashlib
import linecache
import sys
import types

import torch

from ..codegen.render import render_model
from ..ir.graph import Graph


def load_source(source: str, module_name: str) -> types.ModuleType:
    """Execute model source as a real module (importable classes, real tracebacks)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    filename = f"<snncompile:{module_name}:{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"snncompile_generated_{module_name}_{digest}")
    module.__file__ = filename
    sys.modules[module.__name__] = (
        module  # lets pickle and torch.compile find the classes
    )
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102
    return module


def build_graph(
    graph: Graph, schedule: str = "layered", seed: int | None = None
) -> torch.nn.Module:
    """Instantiate `Net` for a graph; `seed` makes the initial weights reproducible."""
    module = load_source(render_model(graph, schedule), graph.name)
    if seed is not None:
        torch.manual_seed(seed)
    net = module.Net()
    net.graph = graph
    return net
