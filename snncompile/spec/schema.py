"""Pydantic models of the snncompile spec language (format version 1).

Every model forbids unknown keys, every field has a description (it becomes the
JSON Schema that editors use for completion), and every polymorphic block is a
mapping discriminated by its ``type`` key.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    create_model,
    field_validator,
)

from ..types import REGISTRY, get, of_role
from ..types.fields import (  # noqa: F401 - part of the spec language
    IDENTIFIER,
    PositiveInt,
    ResetMode,
    Strict,
    Surrogate,
    check_identifier,
    check_module_name,
)
from ..types.neurons import Recurrence  # noqa: F401 - part of the spec language
from .datasets import Source
from .sweep import Metric, SweepBlock

FORMAT_VERSION = 1


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
class Block(Strict):
    """A use of a named block: its layers, instantiated under this layer's name."""

    type: Literal["block"] = Field(
        description="The layers of a `blocks` entry, named <name>_<layer>."
    )
    use: str = Field(description="Name of the block in `blocks`.")
    name: str | None = Field(
        None, description="Name of this use; derived from the block's name if omitted."
    )
    inputs: list[str] | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="The layer the block reads; default: the layer before it.",
    )

    @field_validator("name", "use")
    @classmethod
    def _valid_name(cls, value):
        return check_identifier(value)


# every registered layer and neuron type, plus block uses
Layer = Annotated[
    Union[tuple(d.schema for d in REGISTRY.values()) + (Block,)],  # noqa: UP007
    Field(discriminator="type"),
]
NEURON_TYPES = of_role("neuron")
# the fields a `defaults` block may set: every neuron type's, once each
_NEURON_FIELDS = {
    name: (info.annotation, info)
    for kind in NEURON_TYPES
    for name, info in get(kind).schema.model_fields.items()
    if name in type(get(kind)).fields()
}
Defaults = create_model(
    "Defaults",
    __base__=Strict,
    __doc__="Neuron fields set once for the whole network; a layer's own value wins.",
    **_NEURON_FIELDS,
)


# --------------------------------------------------------------------------- decoding / loss
class Decoding(Strict):
    type: Literal[
        "rate", "latency", "max_membrane", "mean_membrane", "last_membrane"
    ] = Field(
        description="How output spikes/membranes become class scores (classification: "
        "spike count, first spike, max, mean or last membrane) or predictions "
        "(regression: mean or last membrane)."
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


Readout = Literal["every_membrane", "last_membrane", "mean_membrane", "rate"]


class MSE(LossBase):
    type: Literal["mse"] = Field(
        description="Regression: mean squared error of the readout against float targets."
    )
    readout: Readout = Field(
        "every_membrane",
        description="What is compared with the targets: the output membrane at every "
        "step (averaged over steps), at the last step, its mean over steps, or the "
        "spike rate (mean over steps).",
    )


class L1(MSE):
    type: Literal["l1"] = Field(
        description="Regression: mean absolute error of the readout against float targets."
    )


Loss = Annotated[
    CEMembrane
    | CERate
    | CECount
    | MSECount
    | CEMaxMembrane
    | MSEMembrane
    | CETemporal
    | MSE
    | L1,
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


# the figures a run records per epoch that a schedule or early stopping may
# watch (val_*: with a validation split); accuracy and r2 are better higher
Monitored = Literal[
    Metric,  # test_* and val_* (spec/sweep.py)
    "train_loss",
    "train_accuracy",
    "train_mse",
    "train_mae",
    "train_r2",
]


NonNegativeInt = Annotated[int, Field(ge=0)]


def _warmup_steps():
    return Field(
        0,
        description="Linear warmup over the first N iterations: the learning rate "
        "is lr * (i + 1) / N at iteration i < N, times the schedule's factor.",
    )


def _warmup_epochs():
    return Field(
        0, description="Linear warmup over the first N epochs (N * iterations)."
    )


class Warmup(Strict):
    """A schedule that a linear warmup may precede (warmup_steps or _epochs)."""

    @field_validator("warmup_epochs", check_fields=False)
    @classmethod
    def _one_warmup(cls, value, info):
        if value and info.data.get("warmup_steps"):
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        return value


class NoSchedule(Warmup):
    type: Literal["none"] = Field(description="Constant learning rate.")
    warmup_steps: NonNegativeInt = _warmup_steps()
    warmup_epochs: NonNegativeInt = _warmup_epochs()


class CosineSchedule(Warmup):
    type: Literal["cosine"] = Field(
        description="Cosine annealing over all training iterations (those after "
        "the warmup, if any)."
    )
    eta_min: float = Field(0.0, ge=0, description="Final learning rate.")
    warmup_steps: NonNegativeInt = _warmup_steps()
    warmup_epochs: NonNegativeInt = _warmup_epochs()


class StepSchedule(Warmup):
    type: Literal["step"] = Field(
        description="Multiply the learning rate by gamma every step_size epochs."
    )
    step_size: PositiveInt = Field(description="Epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor.")
    warmup_steps: NonNegativeInt = _warmup_steps()
    warmup_epochs: NonNegativeInt = _warmup_epochs()


class OneCycleSchedule(Strict):
    type: Literal["one_cycle"] = Field(
        description="One cycle (Smith 2018; torch OneCycleLR without momentum "
        "cycling): from lr / div_factor up to the optimizer's lr over pct_start of "
        "the iterations, then down to lr / (div_factor * final_div_factor), both "
        "by cosine. It has its own warmup."
    )
    pct_start: float = Field(
        0.3, gt=0, lt=1, description="Fraction of the iterations spent rising."
    )
    div_factor: float = Field(
        25.0, ge=1, description="The first learning rate is lr / div_factor."
    )
    final_div_factor: float = Field(
        1e4, ge=1, description="The last is lr / (div_factor * final_div_factor)."
    )


class PlateauSchedule(Warmup):
    type: Literal["plateau"] = Field(
        description="Multiply the learning rate by factor when `metric` has not "
        "improved for `patience` epochs (as torch ReduceLROnPlateau, relative "
        "threshold); checked at the end of every epoch that records the metric."
    )
    metric: Monitored = Field("test_loss", description="The figure watched.")
    factor: float = Field(0.1, gt=0, lt=1, description="Reduction factor.")
    patience: NonNegativeInt = Field(
        10, description="Epochs without improvement before a reduction."
    )
    threshold: float = Field(
        1e-4, ge=0, description="Relative change that counts as an improvement."
    )
    cooldown: NonNegativeInt = Field(
        0, description="Epochs to wait after a reduction before watching again."
    )
    min_lr: float = Field(0.0, ge=0, description="The learning rate's floor.")
    warmup_steps: NonNegativeInt = _warmup_steps()
    warmup_epochs: NonNegativeInt = _warmup_epochs()


Schedule = Annotated[
    NoSchedule | CosineSchedule | StepSchedule | OneCycleSchedule | PlateauSchedule,
    Field(discriminator="type"),
]


class EarlyStopping(Strict):
    metric: Monitored = Field(
        "test_loss",
        description="The figure watched (test_* are measured on evaluated epochs "
        "only: see eval_every).",
    )
    patience: PositiveInt = Field(
        5, description="Stop after this many checks of the metric without improvement."
    )
    min_delta: float = Field(
        0.0, ge=0, description="An improvement must be larger than this (absolute)."
    )


DatasetName = Literal[
    "mnist", "fashion_mnist", "kmnist", "cifar10", "synthetic", "synthetic_regression"
]


def _dataset_kind(value) -> str:
    """A name (string, or any other scalar: refused as an unknown name), or a
    source (a mapping when validating, a source model when serializing)."""
    return "source" if isinstance(value, (dict, BaseModel)) else "name"


# a name, or a mapping validated as the source its `type` names
Dataset = Annotated[
    Annotated[DatasetName, Tag("name")] | Annotated[Source, Tag("source")],
    Discriminator(_dataset_kind),
]


class Normalize(Strict):
    mean: Annotated[list[float], Field(min_length=1)] = Field(
        description="Per-channel mean."
    )
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(
        description="Per-channel std."
    )


class Train(Strict):
    dataset: Dataset = Field(
        description="torchvision dataset by name, `synthetic` (random separable "
        "classes), `synthetic_regression` (amplitudes of sinusoids, generated), or "
        "a mapping with a `type`: tensors, image_folder, nmnist, shd, ssc, "
        "dvs_gesture."
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Hold out this fraction of the training samples (a fixed, "
        "seeded choice) for validation after every epoch. A `val` file of the "
        "dataset wins over it; it wins over SSC's own ssc_valid.h5 (which is the "
        "validation split when this is 0).",
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
    grad_clip: float | None = Field(
        None,
        gt=0,
        description="Clip the gradients' total L2 norm to this value before every "
        "optimizer step (torch.nn.utils.clip_grad_norm_).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; bf16: forward and loss under bfloat16 autocast (CPU and "
        "GPU); fp16: float16 autocast with loss scaling (CUDA only).",
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop when `metric` stops improving; the best epoch's "
        "checkpoint is kept as best.pt beside checkpoint.pt.",
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
    steps: Annotated[int, Field(ge=1, le=100000)] | Literal["auto"] = Field(
        description="Number of simulation time steps T (>= 1); with time-series "
        "data, `auto` takes T from the data and an integer caps it."
    )
    defaults: Defaults | None = Field(
        None, description="Neuron fields for every spiking layer."
    )
    blocks: dict[str, Annotated[list[Layer], Field(min_length=1)]] | None = Field(
        None,
        description="Named lists of layers, used (several times) by {type: block, use: NAME}.",
    )
    layers: Annotated[list[Layer], Field(min_length=1)] = Field(
        description="Layers in order, input to output; a layer reads the one before "
        "it unless it names its `inputs`."
    )
    task: Literal["classification", "regression"] = Field(
        "classification",
        description="classification: integer labels, a class score per output neuron; "
        "regression: float targets, one per output neuron.",
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
    sweep: SweepBlock | None = Field(
        None,
        description="What `snncompile sweep` searches (dotted field paths and ranges), its metric and direction; ignored by other commands.",
    )

    _source: object = PrivateAttr(default=None)  # SourceMap of the file it came from

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value):
        return check_module_name(check_identifier(value))
