"""Pydantic models of the snncompile spec language (format version 1).

Every model forbids unknown keys, every field has a description (it becomes the
JSON Schema that editors use for completion), and every polymorphic block is a
mapping discriminated by its ``type`` key.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
FORMAT_VERSION = 1


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable,
    numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_identifier(value: str | None) -> str | None:
    """Only plain ASCII identifiers may name things: they reach generated code."""
    if value is None:
        return value
    odd = [c for c in value if not (c.isascii() and (c.isalnum() or c == "_"))]
    if odd:
        raise ValueError(
            f"{value!r} is not a valid name: {odd[0]!r} (U+{ord(odd[0]):04X}) is not "
            "allowed; use ASCII letters, digits and '_'"
        )
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use ASCII letters, digits and '_', "
            "starting with a letter or '_', at most 64 characters"
        )
    if value.startswith("__"):
        raise ValueError(f"{value!r} is not a valid name: it may not start with '__'")
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        raise ValueError(f"{value!r} is not a valid name: it is a Python keyword")
    return value


PositiveInt = Annotated[int, Field(gt=0)]
Size = PositiveInt | Annotated[list[PositiveInt], Field(min_length=1, max_length=2)]
Padding = (
    Annotated[int, Field(ge=0)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=2)]
)


# --------------------------------------------------------------------------- surrogates
class ATan(Strict):
    type: Literal["atan"] = Field(
        description="Arctangent surrogate (snnTorch default)."
    )
    alpha: float = Field(
        2.0, gt=0, description="Steepness; dS/dU = (alpha/2) / (1 + (pi/2 alpha U)^2)."
    )


class FastSigmoid(Strict):
    type: Literal["fast_sigmoid"] = Field(description="Fast sigmoid surrogate.")
    slope: float = Field(25.0, gt=0, description="dS/dU = 1 / (slope |U| + 1)^2.")


class Sigmoid(Strict):
    type: Literal["sigmoid"] = Field(description="Logistic sigmoid surrogate.")
    slope: float = Field(
        25.0, gt=0, description="dS/dU = slope e^(-slope U) / (e^(-slope U) + 1)^2."
    )


class Triangular(Strict):
    type: Literal["triangular"] = Field(
        description="Triangular surrogate, as snnTorch defines it."
    )
    threshold: float = Field(
        1.0, gt=0, description="Gradient magnitude; negated where U >= 0."
    )


class StraightThrough(Strict):
    type: Literal["straight_through"] = Field(
        description="Straight-through estimator: dS/dU = 1."
    )


class SpikeRateEscape(Strict):
    type: Literal["spike_rate_escape"] = Field(description="Escape-noise surrogate.")
    beta: float = Field(1.0, description="dS/dU = slope e^(-beta |U - 1|).")
    slope: float = Field(25.0, gt=0, description="Gradient scale.")


Surrogate = Annotated[
    ATan | FastSigmoid | Sigmoid | Triangular | StraightThrough | SpikeRateEscape,
    Field(discriminator="type"),
]
ResetMode = Literal["subtract", "zero", "none"]


# --------------------------------------------------------------------------- encodings
class DirectEncoding(Strict):
    type: Literal["direct"] = Field(
        description="The same input frame is presented at every step."
    )


class RateEncoding(Strict):
    type: Literal["rate"] = Field(
        description="Bernoulli rate code: P(spike) = clamp(gain * x, 0, 1)."
    )
    gain: float = Field(1.0, gt=0, description="Scales the spike probability.")


class LatencyEncoding(Strict):
    type: Literal["latency"] = Field(
        description="Latency code: brighter inputs spike earlier, once."
    )
    tau: float = Field(1.0, gt=0, description="RC time constant of the latency model.")
    threshold: float = Field(
        0.01, gt=0, lt=1, description="Inputs below it never spike."
    )
    linear: bool = Field(False, description="Linear instead of logarithmic latency.")
    normalize: bool = Field(False, description="Stretch spike times over all steps.")
    clip: bool = Field(False, description="Drop spikes of inputs below threshold.")


class DeltaEncoding(Strict):
    type: Literal["delta"] = Field(
        description="Delta modulation of a sequence input [T, B, ...]: a spike when it rises by threshold."
    )
    threshold: float = Field(0.1, gt=0, description="Change needed for a spike.")
    off_spike: bool = Field(False, description="Emit -1 spikes on falls as well.")
    padding: bool = Field(
        False, description="Compare the first step with itself instead of zero."
    )


class SpikesEncoding(Strict):
    type: Literal["spikes"] = Field(
        description="Input is already a spike train of shape [T, B, *shape]."
    )


Encoding = Annotated[
    DirectEncoding | RateEncoding | LatencyEncoding | DeltaEncoding | SpikesEncoding,
    Field(discriminator="type"),
]


class Input(Strict):
    shape: Annotated[list[PositiveInt], Field(min_length=1, max_length=3)] = Field(
        description="Shape of one sample without batch or time, e.g. [1, 28, 28]."
    )
    encoding: Encoding = Field(
        default_factory=lambda: DirectEncoding(type="direct"),
        description="How a sample becomes a spike train over the steps.",
    )


# --------------------------------------------------------------------------- layers
class LayerBase(Strict):
    name: str | None = Field(
        None, description="Identifier of the layer; derived from its type if omitted."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value):
        return check_identifier(value)


class Linear(LayerBase):
    type: Literal["linear"] = Field(
        description="Fully connected layer over the last axis."
    )
    out_features: PositiveInt = Field(description="Number of output features.")
    bias: bool = Field(True, description="Learn an additive bias.")


class ConvBase(LayerBase):
    out_channels: PositiveInt = Field(description="Number of output channels.")
    kernel_size: Size = Field(description="Kernel size (int or list).")
    stride: Size = Field(1, description="Stride.")
    padding: Padding = Field(0, description="Zero padding on each side.")
    bias: bool = Field(True, description="Learn an additive bias.")


class Conv1d(ConvBase):
    type: Literal["conv1d"] = Field(description="1-d convolution over [C, L].")


class Conv2d(ConvBase):
    type: Literal["conv2d"] = Field(description="2-d convolution over [C, H, W].")


class PoolBase(LayerBase):
    kernel_size: Size = Field(description="Pooling window.")
    stride: Size | None = Field(None, description="Stride; defaults to kernel_size.")
    padding: Padding = Field(0, description="Implicit padding on each side.")


class MaxPool2d(PoolBase):
    type: Literal["maxpool2d"] = Field(description="2-d max pooling.")


class AvgPool2d(PoolBase):
    type: Literal["avgpool2d"] = Field(description="2-d average pooling.")


class Flatten(LayerBase):
    type: Literal["flatten"] = Field(description="Flatten all feature axes into one.")


class Dropout(LayerBase):
    type: Literal["dropout"] = Field(description="Dropout (active in training only).")
    p: float = Field(0.5, ge=0, lt=1, description="Probability of zeroing an element.")


class BatchNormBase(LayerBase):
    eps: float = Field(1e-5, gt=0, description="Added to the variance for stability.")
    momentum: float = Field(0.1, ge=0, le=1, description="Running statistics momentum.")


class BatchNorm1d(BatchNormBase):
    type: Literal["batchnorm1d"] = Field(
        description="Batch normalization over features [C] or [C, L]."
    )


class BatchNorm2d(BatchNormBase):
    type: Literal["batchnorm2d"] = Field(
        description="Batch normalization over [C, H, W]."
    )


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


class Leaky(LayerBase, NeuronFields):
    type: Literal["leaky"] = Field(
        description="Leaky integrate-and-fire neuron (snnTorch Leaky)."
    )


class Synaptic(LayerBase, SynapticFields):
    type: Literal["synaptic"] = Field(
        description="Two-state LIF with synaptic current (snnTorch Synaptic)."
    )


class Alpha(LayerBase, SynapticFields):
    type: Literal["alpha"] = Field(
        description="Alpha neuron with excitatory/inhibitory currents (snnTorch Alpha)."
    )


class RLeaky(LayerBase, NeuronFields):
    type: Literal["rleaky"] = Field(
        description="Recurrent leaky neuron (snnTorch RLeaky)."
    )
    recurrence: Recurrence = Field(
        default_factory=lambda: LinearRecurrence(type="linear"),
        description="How output spikes feed back into the neuron.",
    )


class RSynaptic(LayerBase, SynapticFields):
    type: Literal["rsynaptic"] = Field(
        description="Recurrent synaptic neuron (snnTorch RSynaptic)."
    )
    recurrence: Recurrence = Field(
        default_factory=lambda: LinearRecurrence(type="linear"),
        description="How output spikes feed back into the neuron.",
    )


Layer = Annotated[
    Linear
    | Conv1d
    | Conv2d
    | MaxPool2d
    | AvgPool2d
    | Flatten
    | Dropout
    | BatchNorm1d
    | BatchNorm2d
    | Leaky
    | Synaptic
    | Alpha
    | RLeaky
    | RSynaptic,
    Field(discriminator="type"),
]
NEURON_TYPES = ("leaky", "synaptic", "alpha", "rleaky", "rsynaptic")


class Defaults(SynapticFields):
    """Neuron fields set once for the whole network; a layer's own value wins."""


# --------------------------------------------------------------------------- decoding / loss
class Decoding(Strict):
    type: Literal["rate", "latency", "max_membrane", "mean_membrane"] = Field(
        description="How output spikes/membranes become class scores: spike count, first spike, "
        "max or mean membrane."
    )


class RateRegularization(Strict):
    weight: float = Field(
        gt=0, description="Weight of the firing-rate penalty in the loss."
    )
    target: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Target mean rate: penalty weight*(rate-target)^2; else weight*rate.",
    )


class LossBase(Strict):
    rate_regularization: RateRegularization | None = Field(
        None,
        description="Optional penalty on the mean firing rate of all spiking layers.",
    )


class CEMembrane(LossBase):
    type: Literal["ce_membrane"] = Field(
        description="Cross-entropy of the output membrane at every step, summed."
    )


class CERate(LossBase):
    type: Literal["ce_rate"] = Field(
        description="Cross-entropy of output spikes at every step (snnTorch ce_rate_loss)."
    )


class CECount(LossBase):
    type: Literal["ce_count"] = Field(
        description="Cross-entropy of spike counts (snnTorch ce_count_loss)."
    )


class MSECount(LossBase):
    type: Literal["mse_count"] = Field(
        description="MSE of spike counts against target rates (snnTorch mse_count_loss)."
    )
    correct_rate: float = Field(
        1.0, ge=0, le=1, description="Target firing rate of the correct class."
    )
    incorrect_rate: float = Field(
        0.0, ge=0, le=1, description="Target firing rate of the other classes."
    )


class CEMaxMembrane(LossBase):
    type: Literal["ce_max_membrane"] = Field(
        description="Cross-entropy of the max membrane over time."
    )


class MSEMembrane(LossBase):
    type: Literal["mse_membrane"] = Field(
        description="MSE of the membrane against on/off targets at every step."
    )
    on_target: float = Field(1.0, description="Membrane target of the correct class.")
    off_target: float = Field(0.0, description="Membrane target of the other classes.")


class CETemporal(LossBase):
    type: Literal["ce_temporal"] = Field(
        description="Cross-entropy of first-spike times (snnTorch ce_temporal_loss)."
    )


Loss = Annotated[
    CEMembrane | CERate | CECount | MSECount | CEMaxMembrane | MSEMembrane | CETemporal,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- training
class Adam(Strict):
    type: Literal["adam"] = Field(description="Adam optimizer.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    betas: Annotated[
        list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)
    ] = Field([0.9, 0.999], description="Moment decay rates.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty.")


class AdamW(Adam):
    type: Literal["adamw"] = Field(
        description="AdamW optimizer (decoupled weight decay)."
    )
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")


class SGD(Strict):
    type: Literal["sgd"] = Field(description="Stochastic gradient descent.")
    lr: float = Field(gt=0, description="Learning rate.")
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum factor.")
    nesterov: bool = Field(False, description="Nesterov momentum.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty.")


Optimizer = Annotated[Adam | AdamW | SGD, Field(discriminator="type")]


class NoSchedule(Strict):
    type: Literal["none"] = Field(description="Constant learning rate.")


class CosineSchedule(Strict):
    type: Literal["cosine"] = Field(
        description="Cosine annealing over all training iterations."
    )
    eta_min: float = Field(0.0, ge=0, description="Final learning rate.")


class StepSchedule(Strict):
    type: Literal["step"] = Field(
        description="Multiply the learning rate by gamma every step_size epochs."
    )
    step_size: PositiveInt = Field(description="Epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor.")


Schedule = Annotated[
    NoSchedule | CosineSchedule | StepSchedule, Field(discriminator="type")
]

DatasetName = Literal["mnist", "fashion_mnist", "kmnist", "cifar10", "synthetic"]


class Normalize(Strict):
    mean: Annotated[list[float], Field(min_length=1)] = Field(
        description="Per-channel mean."
    )
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(
        description="Per-channel std."
    )


class Train(Strict):
    dataset: DatasetName = Field(
        description="torchvision dataset by name, or `synthetic` (random separable data for tests)."
    )
    normalize: Normalize | None = Field(
        None, description="Normalize inputs after scaling to [0, 1]."
    )
    batch_size: PositiveInt = Field(128, description="Samples per training iteration.")
    epochs: PositiveInt = Field(1, description="Passes over the training set.")
    optimizer: Optimizer = Field(
        default_factory=lambda: Adam(type="adam"), description="Optimizer."
    )
    schedule: Schedule = Field(
        default_factory=lambda: NoSchedule(type="none"), description="LR schedule."
    )
    seed: int = Field(0, ge=0, description="Seed of weights, data order and encodings.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks CUDA when present."
    )
    drop_last: bool = Field(
        True,
        description="Drop the last incomplete training batch (as the tutorials do).",
    )
    eval_every: PositiveInt = Field(
        1, description="Evaluate on the test set every N epochs (and after the last)."
    )
    eval_batch_size: PositiveInt | None = Field(
        None,
        description="Samples per evaluation batch (default: batch_size, so that "
        "evaluation reuses the training batch's compiled kernels).",
    )
    limit_train: PositiveInt | None = Field(
        None, description="Use only the first N training samples."
    )
    limit_test: PositiveInt | None = Field(
        None, description="Use only the first N test samples."
    )


# --------------------------------------------------------------------------- the spec
class Spec(Strict):
    snncompile: Literal[1] = Field(
        description="Spec format version; this is version 1."
    )
    name: str = Field(
        description="Identifier of the model; names generated files and runs."
    )
    description: str | None = Field(None, description="Free text about the model.")
    input: Input = Field(description="Input shape and encoding.")
    steps: int = Field(
        ge=1, le=100000, description="Number of simulation time steps T (>= 1)."
    )
    defaults: Defaults | None = Field(
        None, description="Neuron fields for every spiking layer."
    )
    layers: Annotated[list[Layer], Field(min_length=1)] = Field(
        description="Layers in order, input to output."
    )
    decoding: Decoding = Field(
        default_factory=lambda: Decoding(type="rate"),
        description="How the output becomes class scores.",
    )
    loss: Loss = Field(
        default_factory=lambda: CEMembrane(type="ce_membrane"),
        description="Training loss.",
    )
    train: Train = Field(description="Data and training settings.")

    _source: object = PrivateAttr(default=None)  # SourceMap of the file it came from

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value):
        return check_identifier(value)
