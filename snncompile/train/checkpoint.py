"""Checkpoints: plain types and tensors only, so `torch.load(weights_only=True)` works.

Keys: format, version, spec (the validated spec as JSON text), epoch, seed,
model, optimizer, scheduler (state dicts), rng (torch CPU state, CUDA states),
history (metrics of finished epochs, JSON text), iteration_loss (tensor).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..spec.errors import UserError

FORMAT = "snncompile-checkpoint-1"
NETWORK_KEYS = ("input", "steps", "defaults", "layers")  # what fixes the weights


def save(path: str | os.PathLike, payload: dict) -> None:
    """Write atomically: a reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike, weights_ok: bool = False) -> dict:
    """Read a checkpoint file (or DIR/checkpoint.pt); UserError if unusable.

    With `weights_ok`, a bare state dict (what generated scripts save) is accepted
    as {"model": state_dict, "spec": None}.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (truncated, not torch, unsafe pickle)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {first})"
        ) from None
    bare = isinstance(payload, dict) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items()
    )
    if weights_ok and bare and payload:
        return {"format": FORMAT, "model": payload, "spec": None, "epoch": None}
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not an snncompile checkpoint")
    for key in ("spec", "model", "epoch"):
        if key not in payload:
            raise UserError(f"{path} is incomplete: it has no {key!r}")
    return payload


def check_spec(payload: dict, spec_json: str, where: str) -> None:
    """UserError unless the checkpoint's network equals the spec's network."""
    if payload["spec"] is None:  # bare weights: load_weights checks the shapes
        return
    saved = json.loads(payload["spec"])
    given = json.loads(spec_json)
    differ = [key for key in NETWORK_KEYS if saved.get(key) != given.get(key)]
    if differ:
        raise UserError(
            f"{where} was trained from a different network "
            f"(spec {saved.get('name')!r}); these parts differ from this spec: "
            + ", ".join(differ)
        )


def load_weights(net: torch.nn.Module, state: dict, where: str) -> None:
    """load_state_dict, translating mismatches into a UserError."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:5]))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:5]))
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:5]))
        raise UserError(
            f"the weights in {where} do not fit this spec: " + "; ".join(parts)
        )
    net.load_state_dict(state)
