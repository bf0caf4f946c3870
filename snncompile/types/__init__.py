"""The table of layer and neuron types: one descriptor per type (see base.py).

Importing this package registers every built-in type; `REGISTRY` maps each
spec `type` tag to its descriptor.
"""

from . import merge, neurons, stateless  # noqa: F401 - registers the types
from .base import REGISTRY, LayerType, get, missing_pieces, of_role

__all__ = ["REGISTRY", "LayerType", "get", "missing_pieces", "of_role"]
