"""Checkpoints: plain types and tensors only, so `torch.load(weights_only=True)` works.

Keys: format, version, spec (the validated spec as JSON text), epoch, seed,
model, optimizer, scheduler (state dicts), rng (torch CPU state, CUDA states),
history (metrics of finished epochs, JSON text), iteration_loss (tensor).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..spec.errors import UserError

FORMAT = "snncompile-checkpoint-1"
NETWORK_KEYS = ("input", "steps", "defaults", "layers")  # what fixes the weights


def save(path: str | os.PathLike, payload: dict) -> None:
    """Write a checkpoint atomically (save_atomically)."""
    save_atomically({"format": FORMAT, **payload}, path)


def save_atomically(obj, path: str | os.PathLike) -> None:
    """torch.save to `path` so that a reader sees the old file or the new one,
    never half: into a temporary file of its own beside it (removed if writing
    fails; OSError then propagates), then renamed over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, weights_ok: bool = False) -> dict:
    """Read a checkpoint file (or DIR/checkpoint.pt); UserError if unusable.

    With `weights_ok` (evaluation, export), weights from elsewhere are accepted
    too: a bare state dict (what generated scripts save) or a dict whose "model"
    is one (and whose "spec", if any, is the spec as JSON text); they come back
    as {"model": state_dict, "spec": JSON text or None, "epoch": None}.
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
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        for key in ("spec", "model", "epoch"):
            if key not in payload:
                raise UserError(f"{path} is incomplete: it has no {key!r}")
        return payload
    if not weights_ok:
        raise UserError(f"{path} is not an snncompile checkpoint")
    if _bare_weights(payload):
        return {"format": FORMAT, "model": payload, "spec": None, "epoch": None}
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        spec = payload.get("spec")
        spec = spec if isinstance(spec, str) else None
        return {
            "format": FORMAT,
            "model": payload["model"],
            "spec": spec,
            "epoch": None,
        }
    raise UserError(
        f"{path} holds no model weights (expected an snncompile checkpoint, a state "
        "dict, or a dict whose 'model' is a state dict)"
    )


def _bare_weights(payload) -> bool:
    return (
        isinstance(payload, dict)
        and bool(payload)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items())
    )


def check_spec(payload: dict, spec_json: str, where: str) -> None:
    """UserError unless the checkpoint's network equals the spec's network."""
    if payload["spec"] is None:  # bare weights: load_weights checks the shapes
        return
    try:
        saved = json.loads(payload["spec"])
    except ValueError:
        raise UserError(f"{where} holds a spec that is not readable JSON") from None
    given = json.loads(spec_json)
    differ = [key for key in NETWORK_KEYS if saved.get(key) != given.get(key)]
    if differ:
        raise UserError(
            f"{where} was trained from a different network "
            f"(spec {saved.get('name')!r}); these parts differ from this spec: "
            + ", ".join(differ)
        )


def load_weights(net: torch.nn.Module, state: dict, where: str) -> None:
    """load_state_dict, translating every mismatch into one UserError. Keys that
    a torch.compile'd net saved (prefixed "_orig_mod.") are accepted."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    own = net.state_dict()
    problems = {
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
        "not a tensor": sorted(k for k in state if not torch.is_tensor(state[k])),
        "wrong shape": [
            f"{k} {list(state[k].shape)} (the spec has {list(own[k].shape)})"
            for k in own
            if torch.is_tensor(state.get(k)) and state[k].shape != own[k].shape
        ],
    }
    parts = [
        f"{label}: {', '.join(keys[:5])}"
        + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        for label, keys in problems.items()
        if keys
    ]
    if parts:
        raise UserError(
            f"the weights in {where} do not fit this spec: " + "; ".join(parts)
        )
    net.load_state_dict(state)


def load_into(net: torch.nn.Module, path: str | os.PathLike) -> str:
    """Load a checkpoint (or run directory), a generated script's state dict, or
    {"model": state_dict, "spec": json} into the built `net`, for evaluation and
    export; UserError on anything that does not fit. Returns where they came from."""
    payload = load(path, weights_ok=True)
    where = f"checkpoint {path}"
    check_spec(payload, net.graph.spec_json, where)
    load_weights(net, payload["model"], where)
    return where
