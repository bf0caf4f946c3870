"""Helpers that run stateless layers over a whole sequence [T, B, ...].

Inlined verbatim into generated code (only torch is used).
"""

import torch


def time_batched(layer, x):
    """Run `layer` once over all steps: [T, B, ...] -> [T * B, ...] -> [T, B, ...]."""
    out = layer(x.flatten(0, 1))
    return out.reshape(x.shape[0], -1, *out.shape[1:])  # -1: the batch


def per_step(layer, x):
    """Run `layer` at each step on its own (batch statistics stay per step)."""
    return torch.stack([layer(x[t]) for t in range(x.shape[0])])
