"""Learning-rate schedules of `train.schedule`: one LambdaLR stepped every
iteration, whose factor depends on the iteration (a linear warmup, then none,
cosine, step or one_cycle), times the reductions of a `plateau` schedule.

Generated scripts compute the same factors with the same float operations in
the same order (codegen/render.py writes them; tests/test_safeguards.py holds
the two to equality, iteration by iteration).
"""

from __future__ import annotations

import math

import torch

HIGHER_IS_BETTER = ("accuracy", "r2")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` (test_accuracy, val_r2...) is better."""
    return metric.rsplit("_", 1)[-1] in HIGHER_IS_BETTER


def warmup_iterations(schedule, per_epoch: int) -> int:
    """The iterations of the schedule's linear warmup (0: none)."""
    steps = getattr(schedule, "warmup_steps", 0)
    epochs = getattr(schedule, "warmup_epochs", 0)
    return steps or epochs * per_epoch


class Plateau:
    """The factor a `plateau` schedule multiplies the learning rate by: after
    `patience` epochs without a relative improvement of `threshold`, times
    `factor` (torch ReduceLROnPlateau's rule, relative threshold), not below
    min_lr / lr, then `cooldown` epochs without watching."""

    def __init__(self, schedule, lr: float):
        self.higher = higher_is_better(schedule.metric)
        self.factor, self.patience = schedule.factor, schedule.patience
        self.threshold, self.cooldown_epochs = schedule.threshold, schedule.cooldown
        self.floor = schedule.min_lr / lr
        self.scale, self.best, self.bad, self.cooldown = 1.0, None, 0, 0

    def observe(self, value: float) -> bool:
        """One epoch's value of the metric; whether the factor was reduced."""
        if self.best is None:
            better = True
        elif self.higher:
            better = value > self.best * (1 + self.threshold)
        else:
            better = value < self.best * (1 - self.threshold)
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown > 0:
            self.cooldown -= 1
            self.bad = 0
        if self.bad > self.patience:
            self.bad, self.cooldown = 0, self.cooldown_epochs
            scale = max(self.scale * self.factor, self.floor)
            if scale < self.scale:
                self.scale = scale
                return True
        return False

    def state(self) -> dict:
        return {
            "scale": self.scale,
            "best": self.best,
            "bad": self.bad,
            "cooldown": self.cooldown,
        }

    def load(self, state: dict) -> None:
        self.scale, self.best = float(state["scale"]), state["best"]
        self.bad, self.cooldown = int(state["bad"]), int(state["cooldown"])


class Scheduler(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose state also holds the plateau rule's (`plateau`)."""

    def __init__(self, optimizer, factor, plateau: Plateau | None = None):
        self.plateau = plateau
        super().__init__(optimizer, factor)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("plateau", None)
        if self.plateau is not None:
            state["plateau"] = self.plateau.state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        saved = state.pop("plateau", None)
        plateau = self.plateau
        super().load_state_dict(state)
        self.plateau = plateau
        if plateau is not None and saved is not None:
            plateau.load(saved)

    def observe(self, value) -> bool:
        """The end of an epoch that measured the plateau's metric (None: not
        measured); a reduction applies from the next iteration on."""
        if self.plateau is None or value is None:
            return False
        reduced = self.plateau.observe(value)
        if reduced:
            self.reapply()
        return reduced

    def reapply(self) -> None:
        """Set the learning rates of the current iteration again."""
        for group, base, factor in zip(
            self.optimizer.param_groups, self.base_lrs, self.lr_lambdas
        ):
            group["lr"] = base * factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def one_cycle(schedule, total: int):
    """torch OneCycleLR's factor (cosine annealing, two phases), relative to
    the peak lr."""
    up = schedule.pct_start * total - 1
    first = 1 / schedule.div_factor
    last = 1 / (schedule.div_factor * schedule.final_div_factor)

    def factor(it):
        if it <= up:
            start, end = first, 1.0
            pct = it / up if up > 0 else 1.0
        else:
            start, end, rest = 1.0, last, total - 1 - up
            pct = min(1.0, (it - up) / rest) if rest > 0 else 1.0
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    return factor


def make(optimizer, spec, per_epoch: int, total: int) -> Scheduler:
    """The scheduler of spec.train.schedule for `per_epoch` iterations an
    epoch, `total` in all."""
    schedule = spec.train.schedule
    warm = warmup_iterations(schedule, per_epoch)
    plateau = None
    if schedule.type == "cosine":
        floor = schedule.eta_min / spec.train.optimizer.lr
        span = max(total - warm, 1)

        def base(it):
            it = it - warm if it > warm else 0
            return (
                floor + (1 - floor) * (1 + math.cos(math.pi * min(it, span) / span)) / 2
            )

    elif schedule.type == "step":

        def base(it):
            return schedule.gamma ** ((it // per_epoch) // schedule.step_size)

    elif schedule.type == "one_cycle":
        base = one_cycle(schedule, total)
    elif schedule.type == "plateau":
        plateau = Plateau(schedule, spec.train.optimizer.lr)

        def base(it):
            return plateau.scale

    else:

        def base(it):
            return 1.0

    if not warm:
        return Scheduler(optimizer, base, plateau)

    def factor(it):
        return ((it + 1) / warm if it < warm else 1.0) * base(it)

    return Scheduler(optimizer, factor, plateau)
