"""Speed put on top of a built net, without changing what it computes.

`build()` gives the plain model, the very source `snncompile codegen` writes.
`accelerate(net)` puts the fast kernels on top of it, in place:
- each neuron module becomes an instance of a subclass of its own class (the
  same parameters, buffers and state_dict) whose `forward` runs a kernel
  provider's whole-sequence kernel where `compiled` is one that has it
  (snncompile's native C kernels: every neuron type), else its type's fused
  sequence kernel (runtime/fused.py: Leaky's, one autograd node for all steps),
  else its plain step loop, through torch.compile when `compiled` is True
  (lower/optimize.py);
- the net's `forward` becomes the one rendered from the same IR under the
  fusing plan (ir/passes.py), where a hidden Leaky layer and the narrow linear
  layer it feeds run as one node.
Every fast path gives the same spikes and membranes as the plain model (tests
compare them); gradients agree up to float summation order.
"""

from __future__ import annotations

import torch

from ..codegen.render import render_forward
from ..ir import passes
from ..runtime.fused import fused_leaky, torch_compiled
from .build import load_source

_FAST: dict[tuple[type, bool], type] = {}  # (plain class, fused) -> fast class
_NETS: dict[tuple[type, str], type] = {}  # (plain Net, forward source) -> fast Net


def _neuron_forward(self, cur, record_mem=True):
    """A kernel provider's whole-sequence kernel where it has one for this
    layer (native: every neuron type), else the fused kernel where the type has
    one, else the step loop, compiled when `compiled` is True (not inside a
    whole-model torch.compile: traced)."""
    provider = self.compiled
    if provider and provider is not True and not torch.compiler.is_compiling():
        own = self.fused and getattr(provider, "fits", lambda _: True)(self)
        sequence = getattr(provider, "sequence", None)
        if not own and sequence is not None:
            out = sequence(self, cur, record_mem)
            if out is not None:
                return out
    if self.fused:
        return fused_leaky(self, cur, compiled=self.compiled, record_mem=record_mem)
    if self.compiled is True and not torch.compiler.is_compiling():
        return torch_compiled(type(self).loop)(self, cur, record_mem)
    return self.loop(cur, record_mem)  # a provider's misfit too: never compiled


def fast_class(cls: type, fused: bool) -> type:
    """The fast subclass of a plain neuron class (made once per class)."""
    if getattr(cls, "accelerated", False):
        return cls
    key = (cls, fused)
    if key not in _FAST:
        _FAST[key] = type(
            cls.__name__,
            (cls,),
            {
                "__module__": cls.__module__,
                "__doc__": cls.__doc__,
                "accelerated": True,
                "forward": _neuron_forward,
                "loop": cls.forward,  # the plain step loop
                "fused": fused,  # runs its type's fused sequence kernel
                "compiled": False,  # True or a kernel provider: see optimize.py
            },
        )
    return _FAST[key]


def accelerate(net: torch.nn.Module, fuse: bool = True) -> torch.nn.Module:
    """Put the fast kernels on top of a net from build() (in place); returns it."""
    graph = net.graph
    for node in graph.neuron_nodes:
        module = getattr(net, node.name)
        module.__class__ = fast_class(type(module), node.descriptor.fused_kernel)
    plan = passes.plan(graph, fuse=fuse)
    if plan.fused and not getattr(type(net), "accelerated", False):
        source = render_forward(graph, plan)
        key = (type(net), source)
        if key not in _NETS:
            forward = load_source(source, f"{graph.name}_fast").forward
            _NETS[key] = type(
                type(net).__name__,
                (type(net),),
                {
                    "__module__": type(net).__module__,
                    "forward": forward,
                    "accelerated": True,
                },
            )
        net.__class__ = _NETS[key]
    return net


def neurons(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The accelerated neuron modules of a net (they have a `compiled` flag)."""
    return [
        m
        for m in net.modules()
        if getattr(type(m), "accelerated", False) and hasattr(type(m), "compiled")
    ]
