"""The building blocks of every spec model: strict pydantic models, identifiers,
sizes and surrogate gradients (the fields that layer and neuron types share).

This is the bottom of the package: it imports nothing from snncompile.
"""

from __future__ import annotations

import keyword
import re
import sys
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


# attributes of torch.nn.Module (torch 2.x; names starting with '__' are refused
# anyway) that a layer's name may not take, since `self.<name>` must be the layer:
# listed here so that checking a spec needs no torch import
# (tests/test_validate_fast.py compares it with the installed torch's)
MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination",
        "_apply",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_buffers",
        "_call_impl",
        "_compiled_call_impl",
        "_forward_hooks",
        "_forward_hooks_always_called",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_get_backward_hooks",
        "_get_backward_pre_hooks",
        "_get_name",
        "_is_full_backward_hook",
        "_load_from_state_dict",
        "_load_state_dict_post_hooks",
        "_load_state_dict_pre_hooks",
        "_maybe_warn_non_full_backward_hook",
        "_modules",
        "_named_members",
        "_non_persistent_buffers_set",
        "_parameters",
        "_register_load_state_dict_pre_hook",
        "_register_state_dict_hook",
        "_replicate_for_data_parallel",
        "_save_to_state_dict",
        "_slow_forward",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_version",
        "_wrapped_call_impl",
        "add_module",
        "apply",
        "bfloat16",
        "buffers",
        "call_super_init",
        "children",
        "compile",
        "cpu",
        "cuda",
        "double",
        "dump_patches",
        "eval",
        "extra_repr",
        "float",
        "forward",
        "get_buffer",
        "get_extra_state",
        "get_parameter",
        "get_submodule",
        "half",
        "ipu",
        "load_state_dict",
        "modules",
        "mtia",
        "named_buffers",
        "named_children",
        "named_modules",
        "named_parameters",
        "parameters",
        "register_backward_hook",
        "register_buffer",
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook",
        "register_module",
        "register_parameter",
        "register_state_dict_post_hook",
        "register_state_dict_pre_hook",
        "requires_grad_",
        "set_extra_state",
        "set_submodule",
        "share_memory",
        "state_dict",
        "to",
        "to_empty",
        "train",
        "training",
        "type",
        "xpu",
        "zero_grad",
    }
)


# modules a generated script (generated/NAME.py) imports, directly or through
# torch at import time: a script of that name would import itself instead
THIRD_PARTY_MODULES = frozenset(
    {
        "torch",
        "torchvision",
        "torchaudio",
        "torchgen",
        "numpy",
        "PIL",
        "sympy",
        "mpmath",
        "networkx",
        "jinja2",
        "markupsafe",
        "filelock",
        "fsspec",
        "typing_extensions",
        "triton",
        "nvidia",
        "cuda",
        "tqdm",
        "colorama",
        "setuptools",
        "pkg_resources",
        "packaging",
        "yaml",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "snntorch",
        "snncompile",
    }
)
# compared in lower case: macOS and Windows find json.py for Json.py
SHADOWED_MODULES = frozenset(
    name.lower() for name in (*sys.stdlib_module_names, *THIRD_PARTY_MODULES)
)


def check_module_name(value: str | None) -> str | None:
    """A spec's name names its script (generated/NAME.py): it may not be the name
    of a module that script imports (any standard library module, torch, numpy,
    torchvision...), or running it would import the script itself."""
    if value is not None and value.lower() in SHADOWED_MODULES:
        std = {m.lower(): m for m in sys.stdlib_module_names}
        if value.lower() in std:
            module = f"the standard library module '{std[value.lower()]}'"
        else:
            name = next(m for m in THIRD_PARTY_MODULES if m.lower() == value.lower())
            module = f"the module '{name}' (generated scripts import it)"
        raise ValueError(
            f"{value!r} cannot name a spec: its generated script {value}.py would "
            f"shadow {module}; choose another name (e.g. {value}_net)"
        )
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
