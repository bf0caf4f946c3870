"""The `sweep:` block of a spec: what `snncompile sweep` searches, and for what.

```yaml
sweep:
  trials: 8                        # default number of trials (--trials N wins)
  metric: test_accuracy            # default: test_accuracy, or test_mse (regression)
  direction: maximize              # default: from the metric (losses, errors: minimize)
  pruning: true                    # stop poor trials early (median pruner, by epoch)
  parameters:                      # dotted field paths, as --set takes them
    train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
    layers.lif1.beta: {uniform: [0.8, 0.99]}
    train.batch_size: {choice: [64, 128, 256]}
    layers.fc1.out_features: {int: [100, 1000]}
```

Each parameter is checked when the spec is: its path must name a field (a list
item by index or layer name, as `--set` resolves it: spec/load.py's
apply_overrides), and the ends of its range (every value of a choice) must be
values that field takes; a problem is located at the parameter's line. The
metric must be one the task records (val_* needs a validation split:
train.val_fraction, a source's val file, or SSC's ssc_valid.h5).
"""

from __future__ import annotations

import builtins
import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from ..types.fields import PositiveInt, Strict
from .datasets import validation_kind

KINDS = ("choice", "uniform", "loguniform", "int")
SPLITS = ("test", "val")
FIGURES = {
    "classification": ("loss", "accuracy"),
    "regression": ("loss", "mse", "mae", "r2"),
}
MAXIMIZED = ("accuracy", "r2")  # the other figures (loss, mse, mae) are minimized

Metric = Literal[
    "test_loss",
    "test_accuracy",
    "test_mse",
    "test_mae",
    "test_r2",
    "val_loss",
    "val_accuracy",
    "val_mse",
    "val_mae",
    "val_r2",
]

Bounds = Annotated[list[float], Field(min_length=2, max_length=2)]


class Parameter(Strict):
    """One swept field: exactly one of `choice`, `uniform`, `loguniform`, `int`."""

    choice: Annotated[list[Any], Field(min_length=1)] | None = Field(
        None, description="Values to choose among (any values the field takes)."
    )
    uniform: Bounds | None = Field(
        None, description="[low, high]: a number drawn uniformly in the range."
    )
    loguniform: Bounds | None = Field(
        None,
        description="[low, high], low > 0: a number drawn uniformly in log space "
        "(learning rates, weight decay).",
    )
    int: Annotated[list[builtins.int], Field(min_length=2, max_length=2)] | None = (
        Field(None, description="[low, high]: an integer in the range, both included.")
    )

    @field_validator("uniform", "loguniform", "int")
    @classmethod
    def _range(cls, value, info):
        if value is None:
            return value
        low, high = value
        if not low < high:
            raise ValueError(
                f"the range [{low}, {high}] is empty or one value: write "
                f"[low, high] with low < high (one value: set the field instead)"
            )
        if info.field_name == "loguniform" and low <= 0:
            raise ValueError(
                f"a loguniform range needs low > 0, got {low} (use uniform for "
                "ranges that include 0)"
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ValueError(
                f"give exactly one of {', '.join(KINDS)} (got {what}), e.g. "
                "{loguniform: [1.0e-4, 1.0e-2]} or {choice: [64, 128]}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> list:
        """The choices, or the range [low, high]."""
        return list(getattr(self, self.kind))

    def samples(self) -> list[tuple[tuple, str, Any]]:
        """Values to try the field with at validation: (where, what, value)."""
        if self.kind == "choice":
            return [
                ((self.kind, i), f"choice {v!r}", v) for i, v in enumerate(self.choice)
            ]
        low, high = self.values
        return [
            ((self.kind, 0), f"the low end {low!r}", low),
            ((self.kind, 1), f"the high end {high!r}", high),
        ]


class Sweep(Strict):
    """What `snncompile sweep` searches; each trial is a normal run."""

    trials: PositiveInt = Field(
        20, description="Number of trials (`snncompile sweep --trials N` wins)."
    )
    metric: Metric | None = Field(
        None,
        description="The figure optimized, from each trial's last measured epoch "
        "(default test_accuracy; regression: test_mse). val_* needs a validation "
        "split: train.val_fraction, a val file, or SSC's ssc_valid.h5.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None,
        description="Default: maximize accuracy and r2, minimize loss, mse and mae.",
    )
    pruning: bool = Field(
        True,
        description="Stop a trial after an epoch whose metric is worse than the "
        "median of earlier trials at that epoch (Optuna's median pruner; needs "
        "train.epochs > 1 to save anything).",
    )
    seed: builtins.int = Field(
        0, ge=0, description="Seed of the sampler (Optuna's TPE) that picks the values."
    )
    parameters: Annotated[dict[str, Parameter], Field(min_length=1)] = Field(
        description="Dotted field path (as --set takes it: train.optimizer.lr, "
        "layers.1.beta, layers.lif1.beta) -> {choice: [...]}, {uniform: [lo, hi]}, "
        "{loguniform: [lo, hi]} or {int: [lo, hi]}."
    )


# --------------------------------------------------------------------------- defaults
def default_metric(task: str) -> str:
    return "test_mse" if task == "regression" else "test_accuracy"


def metric_of(spec) -> str:
    """The sweep's metric (its default for the spec's task)."""
    return spec.sweep.metric or default_metric(spec.task)


def direction_of(spec) -> str:
    """The sweep's direction (its default for the metric)."""
    if spec.sweep.direction is not None:
        return spec.sweep.direction
    return "maximize" if metric_of(spec).split("_", 1)[1] in MAXIMIZED else "minimize"


def assignment(path: str, value: Any) -> str:
    """The `--set` assignment that gives field `path` the value."""
    return f"{path}={json.dumps(value)}"


# --------------------------------------------------------------------------- checks
def _raw(value: Any) -> Any:
    """Validated spec fields as plain data (to apply overrides to)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _raw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_raw(v) for v in value]
    return value


def _metric_problem(metric: str, data: dict) -> str | None:
    task = data.get("task", "classification")
    split, figure = metric.split("_", 1)
    if figure not in FIGURES.get(task, ()):
        choices = ", ".join(f"{s}_{f}" for s in SPLITS for f in FIGURES[task])
        return f"{metric} is not measured for a {task} task; choose among {choices}"
    train = data.get("train")
    if (
        split == "val"
        and train is not None
        and validation_kind(train.dataset, train.val_fraction) is None
    ):
        return (
            f"{metric} needs a validation split: set train.val_fraction (e.g. 0.1) "
            "or a val file"
        )
    return None


def _problems(sweep: Sweep, data: dict) -> list[tuple[tuple, str]]:
    """(location under `sweep`, message) of each metric and parameter problem."""
    from .errors import SpecError, format_path
    from .load import SourceMap, apply_overrides, split_assignment
    from .schema import Spec

    problems = []
    if sweep.metric is not None:
        problem = _metric_problem(sweep.metric, data)
        if problem:
            problems.append((("metric",), problem))
    if not all(k in data for k in ("name", "input", "steps", "layers", "train")):
        return problems  # the spec has problems of its own: reported already
    base = {k: _raw(v) for k, v in data.items() if k != "sweep"}
    try:
        Spec.model_validate(base, strict=True)
        checkable = True
    except (SpecError, ValidationError):
        checkable = False  # only paths are checked then
    fields: dict[tuple, str] = {}
    for path, parameter in sweep.parameters.items():
        at = ("parameters", path)
        try:
            parts, _ = split_assignment(f"{path}=0")
        except SpecError:
            problems.append(
                (
                    at,
                    (
                        f"'{path}' is not a dotted field path, e.g. "
                        "train.optimizer.lr, layers.1.beta or layers.lif1.beta"
                    ),
                )
            )
            continue
        if parts[0] in ("sweep", "snncompile", "name"):
            problems.append((at, f"{parts[0]} cannot be swept"))
            continue
        for where, what, value in parameter.samples():
            source = SourceMap("<sweep>")
            try:
                changed = apply_overrides(base, [assignment(path, value)], source)
            except SpecError as err:  # the path names no field
                problems.append((at, "; ".join(p.message for p in err.problems)))
                break
            resolved = max(source.overrides, key=len)  # the field it sets
            if fields.setdefault(resolved, path) != path:
                problems.append(
                    (
                        at,
                        (
                            f"names the same field as '{fields[resolved]}' "
                            f"({format_path(resolved)})"
                        ),
                    )
                )
                break
            if not checkable:
                break
            if isinstance(value, float) and not math.isfinite(value):
                continue  # refused by the range already
            try:
                Spec.model_validate(changed, strict=True)
            except SpecError as err:
                messages = [
                    f"{format_path(p.path)}: {p.message}"
                    if p.path != resolved
                    else p.message
                    for p in err.problems
                ]
                problems.append(
                    (
                        (*at, *where),
                        f"{what} is not a value of {path}: {'; '.join(messages)}",
                    )
                )
                if parameter.kind != "choice" and messages[0].startswith("expected "):
                    break  # the other end is of the same kind: said once
            except ValidationError as err:  # load.py not imported: pydantic's text
                problems.append(((*at, *where), f"{what}: {err}"))
    return problems


def _in_spec(value: Any, handler, info) -> Sweep | None:
    """Validate the block, then check it against the rest of the spec (the
    fields before `sweep`, validated already): each problem located at its
    parameter or the metric."""
    sweep = handler(value)
    if sweep is None:
        return sweep
    problems = _problems(sweep, dict(info.data))
    if problems:
        raise ValidationError.from_exception_data(
            "Sweep",
            [
                InitErrorDetails(
                    type="value_error",
                    loc=where,
                    input=value if not isinstance(value, dict) else _get(value, where),
                    ctx={"error": ValueError(message)},
                )
                for where, message in problems
            ],
        )
    return sweep


def _get(data: Any, where: tuple) -> Any:
    for part in where:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# the type of Spec.sweep: the block, checked against the spec it is in
SweepBlock = Annotated[Sweep, WrapValidator(_in_spec)]
