"""What a run records besides its checkpoint: strict JSON, the metrics CSV
(`metrics.csv`, always) and TensorBoard event files (`train --tensorboard`).

metrics.csv has one row every `log_every` iterations (kind `step`: the mean
training loss of those iterations, the running figure of the epoch, the
learning rate and the gradient norm) and one at the end of every epoch (kind
`epoch`: the epoch's training and test figures and each spiking layer's firing
rate). A resumed run drops the rows past its checkpoint and appends.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import torch

from ..spec.errors import UserError

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


# --------------------------------------------------------------------------- JSON
from ..jsonout import dumps, strict  # noqa: F401 - strict JSON, shared


# --------------------------------------------------------------------------- helpers
def grad_norm(parameters) -> torch.Tensor | None:
    """The total L2 norm of the parameters' gradients (None without any)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads)


def _number(value):
    if value is None:
        return ""
    if torch.is_tensor(value):
        value = value.item()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value).lower()
    return value


# --------------------------------------------------------------------------- the log
class RunLog:
    """metrics.csv of a run directory, and with `tensorboard` its event files
    (tensorboard/); rank 0 only. Scalars are written at the global iteration
    (the optimizer steps so far): `train/loss`, `train/<metric>`, `train/lr`,
    `train/grad_norm` every log_every iterations; `epoch/train_loss`,
    `epoch/train_<metric>`, `epoch/test_loss`, `epoch/test_<metric>` (and
    `epoch/val_*`), `epoch/lr` and `firing_rate/<layer>` after every epoch."""

    def __init__(
        self,
        run_dir: Path,
        metric_keys,
        layers,
        tensorboard: bool = False,
        resume_step: int | None = None,
        validation: bool = False,
    ):
        self.path = Path(run_dir) / CSV_NAME
        figures = ["loss", *metric_keys]
        self.columns = [
            "kind",
            "epoch",
            "iteration",
            "step",
            "lr",
            "grad_norm",
            *(f"train_{k}" for k in figures),
            *(f"val_{k}" for k in figures if validation),
            *(f"test_{k}" for k in figures),
            *(f"rate_{name}" for name in layers),
            "seconds",
        ]
        kept = self._kept_rows(resume_step)
        try:
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._csv = csv.DictWriter(
                self._file, self.columns, restval="", extrasaction="ignore"
            )
            self._csv.writeheader()
            self._csv.writerows(kept)
            self._file.flush()
        except OSError as err:
            raise UserError(
                f"cannot write {self.path}: {err.strerror or err}"
            ) from None
        self.writer = None
        if tensorboard:
            # events past the checkpoint (a crash after it) are hidden
            purge = None if resume_step is None else resume_step + 1
            self.writer = _summary_writer(Path(run_dir) / TENSORBOARD_DIR, purge)

    def _kept_rows(self, resume_step):
        """The rows of an earlier part of this run up to its checkpoint."""
        if resume_step is None or not self.path.is_file():
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return []
        rows = []
        for row in csv.DictReader(io.StringIO(text)):
            try:
                if int(row.get("step") or 0) <= resume_step:
                    rows.append(row)
            except ValueError:
                continue
        return rows

    def _write(self, row: dict) -> None:
        try:
            self._csv.writerow({k: _number(v) for k, v in row.items()})
            self._file.flush()
        except OSError as err:
            raise UserError(
                f"cannot write {self.path}: {err.strerror or err}"
            ) from None

    def _scalars(self, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is None:
                continue
            value = float(value.item() if torch.is_tensor(value) else value)
            self.writer.add_scalar(tag, value, step)

    def step(self, epoch: int, iteration: int, step: int, figures: dict) -> None:
        """A row every log_every iterations: `figures` holds loss, the task's
        running metric(s), lr and grad_norm."""
        row = {"kind": "step", "epoch": epoch, "iteration": iteration, "step": step}
        for key, value in figures.items():
            row[key if key in ("lr", "grad_norm") else f"train_{key}"] = value
        self._write(row)
        self._scalars({f"train/{k}": v for k, v in figures.items()}, step)

    def epoch(self, entry: dict, step: int, lr: float, grad: float | None) -> None:
        """The row of a finished epoch (a history entry and its firing rates)."""
        rates = entry.get("firing_rates") or {}
        row = {
            "kind": "epoch",
            "epoch": entry["epoch"],
            "iteration": "",
            "step": step,
            "lr": lr,
            "grad_norm": grad,
            **{
                k: v
                for k, v in entry.items()
                if k.startswith(("train_", "val_", "test_"))
            },
            **{f"rate_{name}": rate for name, rate in rates.items()},
            "seconds": entry.get("seconds"),
        }
        self._write(row)
        scalars = {
            f"epoch/{k}": v
            for k, v in entry.items()
            if k.startswith(("train_", "val_", "test_")) and isinstance(v, (int, float))
        }
        scalars["epoch/lr"] = lr
        scalars.update({f"firing_rate/{name}": rate for name, rate in rates.items()})
        self._scalars(scalars, step)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if not self._file.closed:
            self._file.close()


def _summary_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    try:
        folder.mkdir(exist_ok=True)
        return SummaryWriter(log_dir=str(folder), purge_step=purge_step)
    except OSError as err:
        raise UserError(f"cannot write {folder}: {err.strerror or err}") from None


def check_tensorboard() -> None:
    """UserError now, before any work, if --tensorboard cannot work here."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None


def remove_events(run_dir: Path) -> None:
    """The event files of an earlier run in this directory (--overwrite)."""
    folder = Path(run_dir) / TENSORBOARD_DIR
    if folder.is_dir():
        for path in folder.glob("events.out.tfevents.*"):
            path.unlink(missing_ok=True)
        try:
            os.rmdir(folder)
        except OSError:
            pass
