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
    spiking: ClassVar[bool] = True  # False: a readout whose spikes are always 0
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
        """The layer's fields, else `defaults`, else the built-in defaults;
        checked by the type (None on error)."""
        params = self.gather(layer, defaults, ctx)
        return None if params is None else self.check(params, ctx)

    def gather(self, layer: dict, defaults: dict, ctx: Context) -> dict | None:
        """Each field from the layer, else `defaults`, else the built-in defaults."""
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
        return params

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
            elif p[key] is None:
                continue  # left open (lapicque's R or C): the runtime's None
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
class CubaType(NeuronType):
    class Cuba(LayerBase, SynapticFields):
        type: Literal["cuba"] = Field(
            description="Current-based LIF that resets in the step it fires "
            "(NIR's CubaLIF): syn[t] = alpha syn[t-1] + I[t], mem[t] = beta "
            "mem'[t-1] + syn[t], mem' the membrane after its reset."
        )

    schema = Cuba
    type = "cuba"
    prefix = "cuba"
    states = ("syn", "mem")
    runtime_class = "Cuba"
    example = ({"type": "cuba", "alpha": 0.8, "beta": 0.9, "reset": "zero"},)


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


@register
class LapicqueType(NeuronType):
    class Lapicque(LayerBase):
        type: Literal["lapicque"] = Field(
            description="Lapicque's RC-circuit neuron (snnTorch Lapicque): leaky "
            "integration set by R, C and the time step; give beta, or R and C, or "
            "beta with one of them."
        )
        beta: float | None = NeuronFields.model_fields["beta"]
        R: float | None = Field(
            None, gt=0, description="Resistance of the RC circuit, > 0."
        )
        C: float | None = Field(
            None, gt=0, description="Capacitance of the RC circuit, > 0."
        )
        time_step: float | None = Field(
            None, gt=0, description="Duration of one time step, > 0 (default 1.0)."
        )
        threshold: float | None = NeuronFields.model_fields["threshold"]
        reset: ResetMode | None = NeuronFields.model_fields["reset"]
        learn_threshold: bool | None = NeuronFields.model_fields["learn_threshold"]
        per_neuron: bool | None = NeuronFields.model_fields["per_neuron"]
        surrogate: Surrogate | None = NeuronFields.model_fields["surrogate"]

    schema = Lapicque
    type = "lapicque"
    prefix = "lapicque"
    states = ("mem",)
    runtime_class = "Lapicque"
    defaults: ClassVar[dict[str, Any]] = {**NeuronType.defaults, "time_step": 1.0}
    example = ({"type": "lapicque", "R": 2.0, "C": 3.0},)
    RC: ClassVar[tuple[str, ...]] = ("beta", "R", "C")

    def gather(self, layer, defaults, ctx):
        """beta, R and C are one choice: the layer's own if it sets any of them,
        else the `defaults` block's (beta alone, or two of them, as snnTorch
        takes them); the other fields as any neuron's."""
        own = {k: layer.get(k) for k in self.RC}
        if all(v is None for v in own.values()):
            own = {k: defaults.get(k) for k in self.RC}
        rest = {k: v for k, v in layer.items() if k not in self.RC}
        placeholders = {k: 0.5 for k in self.RC}  # replaced by the choice
        params = super().gather({**rest, **placeholders}, defaults, ctx)
        return None if params is None else {**params, **own}

    def check(self, params, ctx):
        beta = params["beta"]
        given = [k for k in self.RC if params[k] is not None]
        if given not in (["beta"], ["R", "C"], ["beta", "R"], ["beta", "C"]):
            got = ", ".join(given) if given else "none of them"
            at = (given[-1],) if given and ctx.has(given[-1]) else ()
            ctx.error(
                "lapicque needs beta, or R and C, or beta with one of R and C "
                f"(the third follows from beta = exp(-time_step / (R C))); got {got}",
                *at,
            )
            return None
        if beta is not None and not 0 < beta < 1:
            at = ("beta",) if ctx.has("beta") else ()
            ctx.error(
                f"lapicque needs 0 < beta < 1 (R or C follows from log(1 / beta)), "
                f"got {beta}",
                *at,
            )
            return None
        return params


@register
class LIType(NeuronType):
    class LI(LayerBase):
        type: Literal["li"] = Field(
            description="Leaky integrator readout that never spikes: "
            "mem[t] = beta mem[t-1] + I[t], spikes all zero (for membrane "
            "decodings and losses)."
        )
        beta: float | None = NeuronFields.model_fields["beta"]
        learn_beta: bool | None = NeuronFields.model_fields["learn_beta"]
        per_neuron: bool | None = NeuronFields.model_fields["per_neuron"]

    schema = LI
    type = "li"
    prefix = "li"
    spiking = False
    states = ("mem",)
    runtime_class = "LI"
    example = ({"type": "li", "beta": 0.9},)

    def definitions(self, node):
        return [("neurons", self.runtime_class)]  # no surrogate: it never fires


class AdaptiveFields(NeuronFields):
    rho: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Decay per step of the threshold adaptation, in [0, 1].",
    )
    adapt: float | None = Field(
        None,
        ge=0,
        description="Threshold increase per unit of adaptation, >= 0: "
        "thr = threshold + adapt * a (default 1.8).",
    )
    learn_rho: bool | None = Field(None, description="Learn rho (default false).")
    learn_adapt: bool | None = Field(None, description="Learn adapt (default false).")


class AdaptiveType(NeuronType):
    """Adaptive-threshold LIF neurons: the runtime class ALIF."""

    states = ("spk", "a", "mem")
    runtime_class = "ALIF"
    defaults: ClassVar[dict[str, Any]] = {
        **NeuronType.defaults,
        "adapt": 1.8,
        "learn_rho": False,
        "learn_adapt": False,
    }


@register
class ALIFType(AdaptiveType):
    class ALIF(LayerBase, AdaptiveFields):
        type: Literal["alif"] = Field(
            description="Adaptive-threshold LIF (Bellec et al. 2018's LSNN): each "
            "spike raises the threshold, which decays back by rho."
        )

    schema = ALIF
    type = "alif"
    prefix = "alif"
    example = ({"type": "alif", "beta": 0.9, "rho": 0.8, "adapt": 0.5},)


@register
class RALIFType(AdaptiveType):
    class RALIF(LayerBase, AdaptiveFields, RecurrentFields):
        type: Literal["ralif"] = Field(
            description="Recurrent adaptive-threshold LIF (alif with its spikes fed "
            "back, as in Bellec et al. 2018 and Yin et al. 2021)."
        )

    schema = RALIF
    type = "ralif"
    prefix = "ralif"
    example = (
        {
            "type": "ralif",
            "beta": 0.9,
            "rho": 0.8,
            "adapt": 0.5,
            "learn_rho": True,
            "recurrence": {"type": "linear"},
        },
    )
