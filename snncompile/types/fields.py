"""The building blocks of every spec model: strict pydantic models, identifiers,
sizes and surrogate gradients (the fields that layer and neuron types share).

This is the bottom of the package: it imports nothing from snncompile.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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
