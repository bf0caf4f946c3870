"""Train and evaluate a spec: `train(spec, ...)` and `evaluate(spec, ...)`.

Reproducibility: the weights come from build(spec, seed); before epoch e the
global torch RNG (rate encodings, dropout) is reseeded from (seed, e) and the data
order is a permutation drawn from a generator seeded the same way. A checkpoint
therefore needs only the model, optimizer and scheduler states to continue: a run
resumed after epoch 1 ends bit-identical to an uninterrupted one (on CPU). A first
Ctrl-C stops after the current iteration and saves a mid-epoch checkpoint (with
the RNG state), which resumes exactly as well; a second Ctrl-C aborts at once.

No host synchronization per iteration: losses and correct counts stay tensors;
the progress bar reads them every PROGRESS_EVERY iterations.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml

from .. import __version__, registry
from ..lower import checkpoint as ckpt
from ..lower import optimize
from ..runtime import decode as decoders
from ..runtime import losses
from ..spec.errors import UserError
from ..spec.load import as_spec, loads
from ..spec.schema import Spec
from . import plots
from .data import load_split

PROGRESS_EVERY = 20
RESUME_KEYS = ("optimizer", "scheduler", "step", "rng", "partial", "history")


# --------------------------------------------------------------------------- setup
def with_train(spec: Spec, **changes) -> Spec:
    """The spec with train fields replaced (None values are left alone)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return spec
    data = spec.model_dump(mode="json")
    data["train"].update(changes)
    return Spec.model_validate(data)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "train.device is 'cuda' but no CUDA device is available; use auto or cpu"
        )
    return torch.device(name)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def make_optimizer(params, spec: Spec, fused: bool = True) -> torch.optim.Optimizer:
    """The spec's optimizer; `fused`: torch's single-kernel implementation of the
    same update (same math, not bit-identical to the default; 3x faster here).
    Generated scripts construct theirs with fused=True as well."""
    options = spec.train.optimizer.model_dump()
    kind = options.pop("type")
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    if fused:
        options["fused"] = True
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    try:
        return cls[kind](params, **options)
    except ValueError as err:
        raise UserError(f"train.optimizer: {err}") from None


def make_scheduler(optimizer, spec: Spec, per_epoch: int, total: int):
    """One LambdaLR stepped every iteration; the factor depends on the iteration."""
    schedule = spec.train.schedule
    if schedule.type == "cosine":
        floor = schedule.eta_min / spec.train.optimizer.lr

        def factor(it):
            return (
                floor
                + (1 - floor) * (1 + math.cos(math.pi * min(it, total) / total)) / 2
            )

    elif schedule.type == "step":

        def factor(it):
            return schedule.gamma ** ((it // per_epoch) // schedule.step_size)

    else:

        def factor(it):
            return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss(graph, native: bool = False):
    """loss(spk, mem, targets, records) from the registry, plus rate regularization;
    `native`: by snncompile/native's loss.c where it has the loss (compile mode
    native; the same values up to rounding)."""
    params = dict(graph.loss)
    name = registry.LOSSES[params.pop("type")]
    function = getattr(losses, name)
    if native:
        from .. import native as kernels

        function = kernels.LOSSES.get(name, function)
    regularization = params.pop("rate_regularization", None)
    regularization = dict(regularization) if regularization else None

    def loss(spk, mem, targets, records=None):
        value = function(spk, mem, targets, **params)
        if regularization:
            value = value + losses.rate_regularization(
                list(records.values()), **regularization
            )
        return value

    return loss, regularization is not None


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(
        devices=[device.index or 0] if device.type == "cuda" else []
    )


METRICS = {"classification": ("accuracy",), "regression": ("mse", "mae", "r2")}


class Score:
    """What a task counts over batches and reports: correct predictions
    (classification: accuracy), or the sums behind MSE, MAE and R^2 (regression;
    runtime/decode.py). The running total stays on the device (no host sync)."""

    def __init__(self, graph, device, total=None):
        self.regression = graph.task == "regression"
        self.decode = getattr(decoders, registry.DECODERS[graph.decoding])
        kind = (5,), torch.float64
        if not self.regression:
            kind = (), torch.int64
        self.total = torch.zeros(kind[0], dtype=kind[1], device=device)
        if total is not None:
            self.total += total.to(device)

    def add(self, spk, mem, targets) -> None:
        pred = self.decode(spk, mem)
        if self.regression:
            self.total += decoders.regression_sums(pred, targets)
        else:
            self.total += decoders.accuracy(pred, targets)

    def result(self, count: int) -> dict:
        if self.regression:
            return decoders.regression_metrics(self.total)
        return {"accuracy": self.total.item() / max(count, 1)}

    def postfix(self, count: int) -> dict:
        """The figure a progress bar shows."""
        if self.regression:
            return {"mse": f"{self.result(count)['mse']:.4f}"}
        return {"acc": f"{self.result(count)['accuracy']:.3f}"}


def describe(result: dict, prefix: str = "test") -> str:
    """'accuracy 93.59%' or 'MSE 0.0123, MAE 0.0871, R^2 0.912' of a result."""
    if f"{prefix}_accuracy" in result:
        value = result[f"{prefix}_accuracy"]
        return "accuracy -" if value is None else f"accuracy {value:.2%}"
    parts = []
    for key, label in (("mse", "MSE"), ("mae", "MAE"), ("r2", "R^2")):
        value = result.get(f"{prefix}_{key}")
        parts.append(f"{label} {'-' if value is None else f'{value:.4g}'}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def run_evaluation(model, split, graph, batch_size: int, seed: int, device) -> dict:
    """Test loss, the task's metrics and per-layer firing rates of `model` on
    `split`."""
    training = model.training
    model.eval()
    loss_of, _ = make_loss(graph)
    total_loss = torch.zeros((), device=device)
    score = Score(graph, device)
    spikes, counts = {}, {}
    with _fork_rng(device):
        torch.manual_seed(seed)  # the same rate-coded test inputs every time
        for x, y in split.batches(batch_size):
            with optimize.batch_runner(model, y.shape[0] != batch_size) as run:
                spk, mem, records = run(x, all_spikes=True)
            total_loss += loss_of(spk, mem, y, records) * y.shape[0]
            score.add(spk, mem, y)
            for name, record in records.items():
                spikes[name] = spikes.get(name, 0) + record.sum(dtype=torch.float64)
                counts[name] = counts.get(name, 0) + record.numel()
    model.train(training)
    n = len(split)
    return {
        "test_loss": total_loss.item() / n,
        **{f"test_{k}": v for k, v in score.result(n).items()},
        "firing_rates": {k: spikes[k].item() / counts[k] for k in spikes},
        "test_samples": n,
    }


def evaluate(
    spec,
    checkpoint=None,
    net=None,
    data_root=None,
    limit_test=None,
    device=None,
    download=True,
) -> dict:
    """Evaluate a checkpoint file (or run dir), or a built `net`, on the test set."""
    spec = as_spec(spec)
    if (checkpoint is None) == (net is None):
        raise ValueError("pass exactly one of checkpoint and net")
    spec = with_train(spec, limit_test=limit_test)
    device = torch.device(device) if device else pick_device(spec.train.device)
    if net is None:
        from .. import build

        net = build(spec)
        ckpt.load_into(net, checkpoint)
    graph = net.graph
    test = load_split(
        graph,
        train=False,
        root=data_root,
        limit=spec.train.limit_test,
        normalize=_normalize(spec),
        download=download,
    ).to(device)
    net.to(device)
    start = time.perf_counter()
    result = run_evaluation(
        net, test, graph, graph.train["eval_batch_size"], spec.train.seed, device
    )
    result.update(
        name=spec.name, device=str(device), seconds=time.perf_counter() - start
    )
    return result


def _normalize(spec: Spec):
    return spec.train.normalize.model_dump() if spec.train.normalize else None


# --------------------------------------------------------------------------- interrupts
class DeferredInterrupt:
    """First Ctrl-C sets `.requested` (the loop stops at a safe point); second aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this iteration (Ctrl-C again to abort)", file=sys.stderr
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------- training
def _run_dir(out, resume, name: str) -> Path:
    if out is not None:
        path = Path(out)
    elif resume is not None:
        path = Path(resume)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path("runs") / f"{name}-{stamp}-{suffix}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resume_spec(
    payload: dict, spec: Spec, where: str, epochs, seed, limit_train, limit_test
):
    """The run's own spec from the checkpoint; only epochs and limit_test may change."""
    from .. import analyze

    ckpt.check_spec(payload, analyze(spec).spec_json, where)
    saved = loads(payload["spec"], file=where, fmt="json")
    for flag, value, old in (
        ("--seed", seed, saved.train.seed),
        ("--limit-train", limit_train, saved.train.limit_train),
    ):
        if value is not None and value != old:
            raise UserError(f"{flag} {value} differs from the resumed run's {old}")
    return with_train(saved, epochs=epochs or spec.train.epochs, limit_test=limit_test)


def train(
    spec,
    data_root=None,
    out=None,
    epochs=None,
    seed=None,
    resume=None,
    compile=optimize.DEFAULT_MODE,
    limit_train=None,
    limit_test=None,
    progress=True,
    download=True,
    on_iteration=None,
) -> dict:
    """Train a spec and write a run directory; returns the metrics (metrics.json).

    `on_iteration(epoch, iteration)` is called after every optimizer step.
    """
    from .. import build

    spec = as_spec(spec)
    payload = None
    if resume is not None:
        where = str(Path(resume) / "checkpoint.pt")
        payload = ckpt.load(Path(resume) / "checkpoint.pt")
        spec = _resume_spec(payload, spec, where, epochs, seed, limit_train, limit_test)
        missing = [k for k in RESUME_KEYS if k not in payload]
        if missing:
            raise UserError(
                f"cannot resume from {where}: it has no {', '.join(missing)}"
            )
        if payload["epoch"] >= spec.train.epochs:
            raise UserError(
                f"{where} has finished all {payload['epoch']} epochs; pass --epochs N "
                f"with N > {payload['epoch']} to train further"
            )
    else:
        spec = with_train(
            spec,
            epochs=epochs,
            seed=seed,
            limit_train=limit_train,
            limit_test=limit_test,
        )
    cfg = spec.train
    device = pick_device(cfg.device)
    net = build(spec, seed=cfg.seed).to(device)
    graph = net.graph
    data = {"root": data_root, "normalize": _normalize(spec), "download": download}
    train_split = load_split(graph, True, limit=cfg.limit_train, **data).to(device)
    test_split = load_split(graph, False, limit=cfg.limit_test, **data).to(device)
    per_epoch = train_split.num_batches(cfg.batch_size, cfg.drop_last)
    if per_epoch == 0:
        raise UserError(
            f"the training set has {len(train_split)} samples, fewer than one batch "
            f"of {cfg.batch_size} (train.drop_last is on)"
        )
    optimizer = make_optimizer(net.parameters(), spec)
    scheduler = make_scheduler(optimizer, spec, per_epoch, per_epoch * cfg.epochs)
    metric_keys = METRICS[graph.task]

    run_dir = _run_dir(out, resume, spec.name)
    (run_dir / "spec.yaml").write_text(
        yaml.safe_dump(
            json.loads(graph.spec_json), sort_keys=False, default_flow_style=None
        )
    )
    history, iteration_loss, start_epoch, skip = [], [], 1, 0
    if payload is not None:
        ckpt.load_weights(net, payload["model"], where)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        history = json.loads(payload["history"])
        iteration_loss = payload.get("iteration_loss", torch.zeros(0)).tolist()
        start_epoch, skip = payload["epoch"] + 1, payload["step"]

    compile_before = optimize.compile_stats()  # preflight may build native code
    compile, problem = optimize.preflight(compile, net)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    compiled = compile not in ("none", "plain")
    model = optimize.apply(net, compile)  # compiled kernels on top (optimize.MODES)
    loss_of, need_records = make_loss(graph, native=compile == "native")

    def state(epoch, step, partial=None):
        return {
            "version": __version__,
            "spec": graph.spec_json,
            "epoch": epoch,
            "step": step,
            "seed": cfg.seed,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            },
            "partial": partial or {},
            "history": json.dumps(history),
            "iteration_loss": torch.tensor(iteration_loss, dtype=torch.float32),
        }

    def finish(interrupted: bool) -> dict:
        compile_cost = {}
        if compiled:  # this run's share of the process's compilation
            after = optimize.compile_stats()
            compile_cost = {k: after[k] - compile_before[k] for k in after}
        last = next(
            (h for h in reversed(history) if h.get("test_loss") is not None), {}
        )
        metrics = {
            "name": spec.name,
            "seed": cfg.seed,
            "device": str(device),
            "dataset": cfg.dataset,
            "epochs": len(history),
            "batch_size": cfg.batch_size,
            "iterations_per_epoch": per_epoch,
            "train_samples": len(train_split),
            "test_samples": len(test_split),
            "task": graph.task,
            **{f"test_{k}": last.get(f"test_{k}") for k in metric_keys},
            "test_loss": last.get("test_loss"),
            "firing_rates": last.get("firing_rates", {}),
            "compile": compile,
            "compile_seconds": compile_cost.get("seconds"),
            "compile_cache": {k: v for k, v in compile_cost.items() if k != "seconds"},
            "interrupted": interrupted,
            "snncompile_version": __version__,
            "run_dir": str(run_dir),
            "history": [
                {k: v for k, v in h.items() if k != "firing_rates"} for h in history
            ],
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plots.curves(history, iteration_loss, run_dir / "curves.png", metric_keys[0])
        return metrics

    if payload is None:
        ckpt.save(run_dir / "checkpoint.pt", state(0, 0))  # resumable from the start
    with DeferredInterrupt() as stop:
        for epoch in range(start_epoch, cfg.epochs + 1):
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            order_gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
            order = torch.randperm(len(train_split), generator=order_gen).to(device)
            loss_sum = torch.zeros((), device=device)
            score = Score(graph, device)
            seen, losses_now = 0, []
            if skip:  # continue a mid-epoch checkpoint exactly where it stopped
                torch.set_rng_state(payload["rng"]["cpu"])
                if device.type == "cuda" and payload["rng"]["cuda"]:
                    torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
                loss_sum += payload["partial"]["loss_sum"].to(device)
                partial = payload["partial"]  # "correct": a checkpoint of before 0.2
                score = Score(
                    graph, device, partial.get("score", partial.get("correct"))
                )
                seen = int(payload["partial"]["seen"])
            model.train()
            bar = _bar(progress, per_epoch, skip, f"epoch {epoch}/{cfg.epochs}")
            started = time.perf_counter()
            batches = train_split.batches(cfg.batch_size, order, cfg.drop_last, skip)
            for step, (x, y) in enumerate(batches, start=skip + 1):
                with optimize.batch_runner(model, y.shape[0] != cfg.batch_size) as run:
                    if need_records:
                        spk, mem, records = run(x, all_spikes=True)
                    else:
                        (spk, mem), records = run(x), None
                loss = loss_of(spk, mem, y, records)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss = loss.detach()
                losses_now.append(loss)
                loss_sum += loss
                score.add(spk.detach(), mem.detach(), y)
                seen += y.shape[0]
                bar.update(1)
                if progress and (step % PROGRESS_EVERY == 0 or step == per_epoch):
                    bar.set_postfix(loss=f"{loss.item():.3f}", **score.postfix(seen))
                if on_iteration is not None:
                    on_iteration(epoch, step)
                if stop.requested and step < per_epoch:
                    bar.close()
                    iteration_loss += torch.stack(losses_now).tolist()
                    partial = {"loss_sum": loss_sum, "score": score.total, "seen": seen}
                    ckpt.save(
                        run_dir / "checkpoint.pt", state(epoch - 1, step, partial)
                    )
                    finish(interrupted=True)
                    _resume_hint(run_dir, epoch, step, per_epoch)
                    raise KeyboardInterrupt
            bar.close()
            seconds = time.perf_counter() - started
            if losses_now:
                iteration_loss += torch.stack(losses_now).tolist()
            entry = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / per_epoch,
                **{f"train_{k}": v for k, v in score.result(seen).items()},
                "test_loss": None,
                **{f"test_{k}": None for k in metric_keys},
                "seconds": seconds,
            }
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                started = time.perf_counter()
                result = run_evaluation(
                    model,
                    test_split,
                    graph,
                    graph.train["eval_batch_size"],
                    cfg.seed,
                    device,
                )
                entry.update(
                    {k: result[k] for k in result if k.startswith("test_")},
                    firing_rates=result["firing_rates"],
                    eval_seconds=time.perf_counter() - started,
                )
                entry.pop("test_samples")
            history.append(entry)
            skip = 0
            ckpt.save(run_dir / "checkpoint.pt", state(epoch, 0))
            metrics = finish(interrupted=False)
            if progress:
                _report(entry, cfg.epochs)
            if stop.requested and epoch < cfg.epochs:
                _resume_hint(run_dir, epoch + 1, 0, per_epoch)
                raise KeyboardInterrupt
    _raster(net, test_split, graph, cfg.seed, device, run_dir / "raster.png")
    return metrics


def _bar(progress: bool, total: int, done: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc=desc,
        disable=not progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _report(entry: dict, epochs: int) -> None:
    text = (
        f"epoch {entry['epoch']}/{epochs}: train loss {entry['train_loss']:.4f}, "
        f"{describe(entry, 'train')} ({entry['seconds']:.1f} s)"
    )
    if entry["test_loss"] is not None:
        text += f"; test loss {entry['test_loss']:.4f}, {describe(entry)}"
    print(text, file=sys.stderr)


def _resume_hint(run_dir: Path, epoch: int, step: int, per_epoch: int) -> None:
    where = f"epoch {epoch}" + (f", iteration {step + 1}/{per_epoch}" if step else "")
    print(
        f"saved {run_dir / 'checkpoint.pt'}; continue at {where} with:\n"
        f"  snncompile train SPEC --resume {run_dir}",
        file=sys.stderr,
    )


@torch.no_grad()
def _raster(net, split, graph, seed: int, device, path) -> None:
    """Spike raster of the first test sample through every spiking layer."""
    net.eval()
    x, y = split.batch(slice(0, 1))
    with _fork_rng(device), optimize.eager(net), torch.no_grad():
        torch.manual_seed(seed)
        spk, mem, records = net(x, all_spikes=True)  # one sample: not worth compiling
    decode = getattr(decoders, registry.DECODERS[graph.decoding])
    if graph.task == "regression":
        target = ", ".join(f"{v:.3g}" for v in y[0].flatten().tolist())
        predicted = ", ".join(f"{v:.3g}" for v in decode(spk, mem)[0].tolist())
        what = f"target {target}; predicted {predicted}"
    else:
        what = f"label {int(y[0])}, predicted {int(decode(spk, mem).argmax(-1)[0])}"
    samples = {name: record[:, 0].cpu() for name, record in records.items()}
    plots.raster(samples, what, path)
