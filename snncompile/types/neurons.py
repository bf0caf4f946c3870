"""Spiking neuron types: snnTorch's neurons, one descriptor each.

A neuron's fields left out of its layer come from the spec's `defaults`, then
from the descriptor's built-in `defaults`. Its module is the runtime class of
the same name in snncompile/runtime/neurons.py, whose docstring holds the
equations.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from .. import registry
from .base import (
    Call,
    Context,
    Inferred,
    LayerBase,
    LayerType,
    Name,
    describe,
    register,
)
from .fields import ResetMode, Size, Strict, Surrogate
from .stateless import sizes


class NeuronFields(Strict):
    """Neuron parameters; any left out come from `defaults`, then built-in defaults."""

    beta: float | None = Field(
        None, ge=0, le=1, description="Membrane decay per step, in [0, 1]."
    )
    threshold: float | None = Field(
        None, gt=0, description="Firing threshold, > 0 (default 1.0)."
    )
    reset: ResetMode | None = Field(
        None, description="Reset after a spike: subtract (default), zero or none."
    )
    learn_beta: bool | None = Field(None, description="Learn beta (default false).")
    learn_threshold: bool | None = Field(
        None, description="Learn the threshold (default false)."
    )
    per_neuron: bool | None = Field(
        None,
        description="One beta/threshold (and alpha) per neuron instead of a scalar (default false).",
    )
    surrogate: Surrogate | None = Field(
        None, description="Surrogate gradient of the spike (default atan)."
    )


class SynapticFields(NeuronFields):
    alpha: float | None = Field(
        None, ge=0, le=1, description="Synaptic current decay per step, in [0, 1]."
    )
    learn_alpha: bool | None = Field(None, description="Learn alpha (default false).")


class LinearRecurrence(Strict):
    type: Literal["linear"] = Field(
        description="All-to-all recurrent weights (with bias) over the features."
    )


class OneToOneRecurrence(Strict):
    type: Literal["one_to_one"] = Field(
        description="Each neuron feeds back its own spike, scaled by V."
    )
    V: float = Field(1.0, description="Initial recurrent gain.")
    learn: bool = Field(True, description="Learn V.")


class ConvRecurrence(Strict):
    type: Literal["conv"] = Field(
        description="Same-padded conv2d recurrence over [C, H, W] feature maps."
    )
    kernel_size: Size = Field(
        description="Odd kernel size of the recurrent convolution."
    )


Recurrence = Annotated[
    LinearRecurrence | OneToOneRecurrence | ConvRecurrence,
    Field(discriminator="type"),
]


class RecurrentFields(Strict):
    recurrence: Recurrence = Field(
        default_factory=lambda: LinearRecurrence(type="linear"),
        description="How output spikes feed back into the neuron.",
    )


class NeuronType(LayerType):
    """A spiking neuron: resolves its fields, counts its learnable parameters and
    constructs its runtime class `runtime_class`."""

    role = "neuron"
    hoistable = False
    runtime_class: ClassVar[str] = ""
    fused_kernel: ClassVar[bool] = False  # runtime/fused.py has its sequence kernel
    defaults: ClassVar[dict[str, Any]] = {
        "threshold": 1.0,
        "reset": "subtract",
        "learn_beta": False,
        "learn_threshold": False,
        "learn_alpha": False,
        "per_neuron": False,
        "surrogate": {"type": "atan", "alpha": 2.0},
    }

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The neuron fields a `defaults` block may set for this type."""
        own = set(LayerBase.model_fields) | {"type", "recurrence"}
        return tuple(f for f in cls.schema.model_fields if f not in own)

    def resolve(self, layer: dict, defaults: dict, ctx: Context) -> dict | None:
        """The layer's fields, else `defaults`, else the built-in defaults."""
        params: dict[str, Any] = {}
        for key in self.fields():
            for source in (layer, defaults, self.defaults):
                if source.get(key) is not None:
                    params[key] = source[key]
                    break
            else:
                ctx.error(
                    f"{self.type} needs '{key}': set it on the layer or in 'defaults'",
                    key,
                )
        if len(params) < len(self.fields()):
            return None
        if "recurrence" in layer:
            params["recurrence"] = dict(layer["recurrence"])
        return self.check(params, ctx)

    def check(self, params: dict, ctx: Context) -> dict | None:
        """Type-specific checks of the resolved fields (None on error)."""
        return params

    def infer(self, params, shapes, ctx):
        (shape,) = shapes
        numel = math.prod(shape) if params["per_neuron"] else 1
        learned = sum(bool(params.get(k)) for k in params if k.startswith("learn_"))
        count = numel * learned
        rec = params.get("recurrence")
        if rec is not None:
            extra = self._recurrence(rec, shape, ctx)
            if extra is None:
                return None
            count += extra
        return Inferred(shape, count, params)

    def _recurrence(self, rec: dict, shape, ctx: Context) -> int | None:
        """Learnable parameters of the feedback (completes its kernel size)."""
        if rec["type"] == "linear":
            if len(shape) != 1:
                ctx.error(
                    f"linear recurrence of {ctx.me} needs flat features [features], "
                    f"got {describe(shape)}; use a conv or one_to_one recurrence",
                    "recurrence",
                )
                return None
            return shape[0] * shape[0] + shape[0]
        if rec["type"] == "conv":
            k = sizes(rec["kernel_size"], 2)
            if len(shape) != 3:
                ctx.error(
                    f"conv recurrence of {ctx.me} needs [channels, height, width], "
                    f"got {describe(shape)}",
                    "recurrence",
                )
                return None
            if k is None or k[0] % 2 == 0 or k[1] % 2 == 0:
                ctx.error(
                    f"conv recurrence needs an odd kernel (same padding), got {rec['kernel_size']}",
                    "recurrence",
                    "kernel_size",
                )
                return None
            rec["kernel_size"] = k
            return shape[0] * shape[0] * k[0] * k[1] + shape[0]
        return int(rec["learn"])

    def definitions(self, node) -> list[tuple[str, str]]:
        """Runtime definitions its module needs (their base classes follow):
        the surrogate, the feedback, its own class."""
        surrogate = registry.SURROGATES[node.params["surrogate"]["type"]][0]
        needs = [("surrogates", surrogate)]
        if "recurrence" in node.params:
            needs.append(("neurons", "Recurrent"))
        return [*needs, ("neurons", self.runtime_class)]

    def constructor(self, node):
        p = node.params
        kwargs: dict[str, Any] = {}
        for key in self.fields():
            if key == "surrogate":
                name, args = registry.SURROGATES[p["surrogate"]["type"]]
                kwargs["surrogate"] = Name(name)
                kwargs["surrogate_args"] = tuple(float(p["surrogate"][a]) for a in args)
            elif key in self.defaults and p[key] == self.defaults[key]:
                continue  # the runtime class's default too (a conformance test)
            else:
                value = p[key]
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                kwargs[key] = float(value) if number else value
        rec = p.get("recurrence")
        if rec is not None:
            if rec["type"] == "one_to_one":
                rkw = {"V": float(rec["V"]), "learn": rec["learn"]}
            else:
                rkw = {"features": node.out_shape[0]}
                if rec["type"] == "conv":
                    rkw["kernel_size"] = tuple(rec["kernel_size"])
            kwargs["recurrent"] = Call("Recurrent", (rec["type"],), rkw)
        return Call(self.runtime_class, (tuple(node.out_shape),), kwargs)


@register
class LeakyType(NeuronType):
    class Leaky(LayerBase, NeuronFields):
        type: Literal["leaky"] = Field(
            description="Leaky integrate-and-fire neuron (snnTorch Leaky)."
        )

    schema = Leaky
    type = "leaky"
    prefix = "lif"
    states = ("mem",)
    runtime_class = "Leaky"
    fused_kernel = True
    example = ({"type": "leaky", "beta": 0.9},)


@register
class IFType(NeuronType):
    class IF(LayerBase):
        type: Literal["if"] = Field(
            description="Integrate-and-fire neuron without leak (Leaky with beta 1)."
        )
        threshold: float | None = NeuronFields.model_fields["threshold"]
        reset: ResetMode | None = NeuronFields.model_fields["reset"]
        learn_threshold: bool | None = NeuronFields.model_fields["learn_threshold"]
        per_neuron: bool | None = NeuronFields.model_fields["per_neuron"]
        surrogate: Surrogate | None = NeuronFields.model_fields["surrogate"]

    schema = IF
    type = "if"
    prefix = "if"
    states = ("mem",)
    runtime_class = "IF"
    fused_kernel = True  # Leaky's, with b = 1
    example = ({"type": "if", "threshold": 0.7, "reset": "zero"},)


@register
class SynapticType(NeuronType):
    class Synaptic(LayerBase, SynapticFields):
        type: Literal["synaptic"] = Field(
            description="Two-state LIF with synaptic current (snnTorch Synaptic)."
        )

    schema = Synaptic
    type = "synaptic"
    prefix = "syn"
    states = ("syn", "mem")
    runtime_class = "Synaptic"
    example = ({"type": "synaptic", "alpha": 0.8, "beta": 0.9},)


@register
class AlphaType(NeuronType):
    class Alpha(LayerBase, SynapticFields):
        type: Literal["alpha"] = Field(
            description="Alpha neuron with excitatory/inhibitory currents (snnTorch Alpha)."
        )

    schema = Alpha
    type = "alpha"
    prefix = "alpha"
    states = ("syn_exc", "syn_inh", "mem")
    runtime_class = "Alpha"
    example = ({"type": "alpha", "alpha": 0.9, "beta": 0.8},)

    def check(self, params, ctx):
        alpha, beta = params["alpha"], params["beta"]
        if not 0 < beta < alpha < 1:
            key = "alpha" if ctx.has("alpha") else "beta"
            at = (key,) if ctx.has(key) else ()
            ctx.error(
                f"alpha neurons need 0 < beta < alpha < 1 (their time constant uses "
                f"log(beta)), got alpha {alpha} and beta {beta}",
                *at,
            )
            return None
        return params


@register
class RLeakyType(NeuronType):
    class RLeaky(LayerBase, NeuronFields, RecurrentFields):
        type: Literal["rleaky"] = Field(
            description="Recurrent leaky neuron (snnTorch RLeaky)."
        )

    schema = RLeaky
    type = "rleaky"
    prefix = "rlif"
    states = ("spk", "mem")
    runtime_class = "RLeaky"
    example = ({"type": "rleaky", "beta": 0.9},)


@register
class RSynapticType(NeuronType):
    class RSynaptic(LayerBase, SynapticFields, RecurrentFields):
        type: Literal["rsynaptic"] = Field(
            description="Recurrent synaptic neuron (snnTorch RSynaptic)."
        )

    schema = RSynaptic
    type = "rsynaptic"
    prefix = "rsyn"
    states = ("spk", "syn", "mem")
    runtime_class = "RSynaptic"
    example = (
        {
            "type": "rsynaptic",
            "alpha": 0.8,
            "beta": 0.9,
            "recurrence": {"type": "one_to_one"},
        },
    )
