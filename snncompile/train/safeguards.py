"""Training safeguards: mixed precision and gradient clipping around the
optimizer step, early stopping with a best checkpoint, a stop at the first
non-finite loss, warnings for silent or saturated spiking layers, and the
check of a resumed run's spec against the one it was started with.
"""

from __future__ import annotations

import contextlib
import json
import math

import torch

from ..spec.datasets import validation_kind
from ..spec.errors import UserError
from . import logs
from .schedules import higher_is_better

# the fields of a spec that `--resume` applies when they changed (the others
# would make the resumed run a different one); a prefix covers its fields
RESUMABLE = (
    "name",
    "description",
    "train.epochs",
    "train.eval_every",
    "train.eval_batch_size",
    "train.limit_test",
    "train.device",
    "train.grad_clip",
    "train.precision",
    "train.early_stopping",
)


# --------------------------------------------------------------------------- metrics
def available(metric: str, task: str, validation: bool) -> str | None:
    """Why `metric` is not recorded by this run (None: it is)."""
    split, figure = metric.split("_", 1)
    figures = (
        ("loss", "accuracy")
        if task == "classification"
        else ("loss", "mse", "mae", "r2")
    )
    if figure not in figures:
        return (
            f"{metric} is not measured for a {task} task (choose among "
            + ", ".join(f"{split}_{f}" for f in figures)
            + ")"
        )
    if split == "val" and not validation:
        return (
            f"{metric} needs a validation split (train.val_fraction > 0, a val "
            "file, or SSC's ssc_valid.h5)"
        )
    return None


def watched_metrics(spec) -> list[tuple[str, str]]:
    """(field, metric) of what a plateau schedule and early stopping watch."""
    train = spec.train
    watched = []
    if train.schedule.type == "plateau":
        watched.append(("train.schedule.metric", train.schedule.metric))
    if train.early_stopping is not None:
        watched.append(("train.early_stopping.metric", train.early_stopping.metric))
    return watched


def check_metrics(spec, task: str) -> None:
    """UserError for a schedule or early stopping metric this run never records."""
    validation = validation_kind(spec.train.dataset, spec.train.val_fraction)
    validation = validation is not None
    for where, metric in watched_metrics(spec):
        problem = available(metric, task, validation)
        if problem:
            raise UserError(f"{where}: {problem}")


def check_validation(spec, has_split: bool) -> None:
    """After the data loads: a val_* metric with no validation split after all
    (a dataset's own validation file missing from its folder)."""
    if has_split:
        return
    for where, metric in watched_metrics(spec):
        if metric.startswith("val_"):
            raise UserError(
                f"{where}: {metric} needs a validation split, and "
                f"the dataset's {type(spec.train.dataset).VALID} is not in its folder; "
                "set train.val_fraction (e.g. 0.1)"
            )


# --------------------------------------------------------------------------- precision
class Precision:
    """`train.precision` around the forward, backward and optimizer step: fp32
    as is; bf16 under bfloat16 autocast (CPU and CUDA); fp16 under float16
    autocast with a GradScaler (CUDA only). Gradient clipping (`clip`) and the
    gradient norm come from the unscaled gradients."""

    def __init__(self, precision: str, device: torch.device, clip: float | None):
        self.precision, self.device, self.clip = precision, device, clip
        if precision == "fp16" and device.type != "cuda":
            raise UserError(
                "train.precision fp16 needs a CUDA device (its loss scaling is "
                f"CUDA's); this run is on {device.type}: use bf16 (CPU and CUDA) "
                "or fp32"
            )
        cuda = device.type == "cuda"
        if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise UserError(
                "train.precision bf16: this GPU has no bfloat16 support; use "
                "fp16 or fp32"
            )
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self, loss, optimizer, parameters, want_norm: bool):
        """backward(), clipping, optimizer step; the gradients' total norm
        before clipping (a tensor) when clipping or `want_norm`, else None."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
        norm = None
        if self.clip or want_norm:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            if self.clip:
                norm = torch.nn.utils.clip_grad_norm_(parameters(), self.clip)
            else:
                norm = logs.grad_norm(parameters())
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
        return norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# --------------------------------------------------------------------------- early stop
class EarlyStopping:
    """Counts the epochs that record `metric` without improving it by more
    than `min_delta`; `patience` of them in a row stop the run."""

    def __init__(self, config):
        self.metric, self.patience = config.metric, config.patience
        self.min_delta = config.min_delta
        self.higher = higher_is_better(config.metric)
        self.best, self.best_epoch, self.bad = None, None, 0

    def observe(self, epoch: int, value) -> str | None:
        """`improved`, `stop`, or None (no change, or not measured)."""
        if value is None:
            return None
        if not math.isfinite(value):
            better = False
        elif self.best is None:
            better = True
        elif self.higher:
            better = value > self.best + self.min_delta
        else:
            better = value < self.best - self.min_delta
        if better:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return "improved"
        self.bad += 1
        return "stop" if self.bad >= self.patience else None

    def state(self) -> dict:
        return {
            "metric": self.metric,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
        }

    def load(self, state: dict | None) -> None:
        """A checkpoint's state (of the same metric; another starts afresh)."""
        if state and state.get("metric") == self.metric:
            self.best, self.best_epoch = state["best"], state["best_epoch"]
            self.bad = int(state["bad"])


# --------------------------------------------------------------------------- divergence
class Diverged(UserError):
    """A non-finite loss or weights: the run stopped (the last checkpoint is the
    last good one)."""


def first_bad(losses: list) -> int | None:
    """The index of the first non-finite loss among `losses` (tensors)."""
    if not losses:
        return None
    finite = torch.isfinite(torch.stack(losses))
    if bool(finite.all()):
        return None
    return int((~finite).nonzero()[0, 0])


def finite_weights(net) -> bool:
    """Whether every parameter is finite (one wait for the device)."""
    flags = [torch.isfinite(p).all() for p in net.parameters()]
    return not flags or bool(torch.stack(flags).all())


# --------------------------------------------------------------------------- firing
def firing_problems(rates: dict, graph) -> list[str]:
    """'lif1 is silent (no spikes)' for each spiking layer that never fired in
    `rates` (firing rates per layer), or fired at every step (saturated); a
    leaky-integrator readout (li) never spikes and is left out."""
    readouts = {n.name for n in graph.neuron_nodes if n.type == "li"}
    problems = []
    for name, rate in rates.items():
        if name in readouts:
            continue
        if rate == 0:
            problems.append(f"{name} is silent (no spikes)")
        elif rate == 1:
            problems.append(f"{name} is saturated (every neuron spikes at every step)")
    return problems


# --------------------------------------------------------------------------- resume
def differences(old, new, path: str = "") -> list[tuple[str, object, object]]:
    """(dotted path, old value, new value) of every field that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            found += differences(old.get(key), new.get(key), where)
        return found
    return [] if old == new else [(path, old, new)]


def resumable(path: str) -> bool:
    return any(path == r or path.startswith(r + ".") for r in RESUMABLE)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def describe(changes) -> str:
    return ", ".join(f"{p} ({_short(a)} -> {_short(b)})" for p, a, b in changes)


def resume_changes(
    started: dict, given: dict, where: str, ignore=(), effective: dict | None = None
) -> list:
    """The changes from the spec a run was started with (`started`) to the one
    given now that --resume applies; UserError naming the others. Fields in
    `ignore` are left out, and so are those whose new value is what the run used
    (`effective`: its spec after its flags, as its spec.yaml holds it)."""
    changes = [
        c
        for c in differences(started, given)
        if c[0] not in ignore
        and (effective is None or get_path(effective, c[0]) != c[2])
    ]
    refused = [c for c in changes if not resumable(c[0])]
    if refused:
        raise UserError(
            f"the spec differs from the one the run in {where} was started with, "
            f"in {describe(refused)}; --resume applies changes to only "
            f"{', '.join(RESUMABLE)}: start a new run (another --out) to train "
            "with the others"
        )
    return changes


def get_path(data, path: str):
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def set_path(data: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[last] = value
