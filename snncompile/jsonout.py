"""Strict JSON for every file and `--json` output snncompile writes: a NaN or
infinite figure becomes null (Python's json module would write the bare tokens
NaN and Infinity, which JSON readers refuse). Imports nothing from snncompile."""

from __future__ import annotations

import json
import math


def strict(value):
    """`value` with every NaN and infinity replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value, **options) -> str:
    """json.dumps that writes strict JSON: non-finite floats become null."""
    return json.dumps(strict(value), allow_nan=False, **options)
