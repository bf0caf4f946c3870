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

Several processes (torchrun, or `--nproc`; distributed.py): every rank runs
train(); the epoch's permutation is the one above, each global batch of
train.batch_size is divided among the ranks, DistributedDataParallel averages
their gradients (each rank's loss weighted by its share of the batch), so N
ranks compute what one process does up to float summation order. Losses and
scores are summed over the ranks once per epoch (and at a Ctrl-C, which the
ranks agree on every iteration: one flag, reduced). Each rank draws its own
random numbers (rate encodings, dropout; rank 0 those of one process); a
mid-epoch checkpoint keeps every rank's state, so a resume with as many ranks
is exact, and with another number only the rest of that epoch draws others.
Rank 0 alone writes the run directory.
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
from ..spec.errors import UserError, first_line
from ..spec.load import as_spec, loads
from ..spec.schema import Spec
from . import distributed, plots
from .data import load_split, shard

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
def run_evaluation(
    model, split, graph, batch_size: int, seed: int, device, ctx=distributed.SINGLE
) -> dict:
    """Test loss, the task's metrics and per-layer firing rates of `model` on
    `split`; with several ranks (`ctx`), each evaluates its part of every batch
    and the sums are reduced over the ranks."""
    training = model.training
    model.eval()
    loss_of, _ = make_loss(graph)
    total_loss = torch.zeros((), device=device)
    score = Score(graph, device)
    spikes, counts = {}, {}
    lo, hi = shard(0, batch_size, ctx.rank, ctx.world)  # a full batch's part
    with _fork_rng(device):
        # the same rate-coded test inputs every time
        torch.manual_seed(distributed.rank_seed(seed, ctx.rank))
        for x, y in split.batches(batch_size, rank=ctx.rank, world=ctx.world):
            if y.shape[0] == 0:  # a last batch with fewer samples than ranks
                continue
            with optimize.batch_runner(model, y.shape[0] != hi - lo) as run:
                spk, mem, records = run(x, all_spikes=True)
            total_loss += loss_of(spk, mem, y, records) * y.shape[0]
            score.add(spk, mem, y)
            for name, record in records.items():
                spikes[name] = spikes.get(name, 0) + record.sum(dtype=torch.float64)
                counts[name] = counts.get(name, 0) + record.numel()
    model.train(training)
    n = len(split)
    rates = {k: spikes[k].item() / counts[k] for k in spikes}
    if ctx.active:
        ctx.all_reduce(total_loss)
        ctx.all_reduce(score.total)
        totals = {}
        for part in ctx.gather({k: (spikes[k].item(), counts[k]) for k in spikes}):
            for name, (fired, count) in part.items():
                old = totals.get(name, (0.0, 0))
                totals[name] = (old[0] + fired, old[1] + count)
        rates = {k: fired / count for k, (fired, count) in totals.items()}
    return {
        "test_loss": total_loss.item() / n,
        **{f"test_{k}": v for k, v in score.result(n).items()},
        "firing_rates": rates,
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

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce  # say so (one rank of several: rank 0 says it)
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print(
                "\nstopping after this iteration (Ctrl-C again to abort)",
                file=sys.stderr,
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
    threads_per_rank=None,
) -> dict:
    """Train a spec and write a run directory; returns the metrics (metrics.json).

    `on_iteration(epoch, iteration)` is called after every optimizer step.
    In a process that torchrun started (WORLD_SIZE > 1) this is one rank of a
    data-parallel run (distributed.py): every rank calls train() alike; rank 0
    writes the run directory. `threads_per_rank`: torch threads of each rank
    (default: the machine's cores divided among its ranks; one process:
    unchanged unless given).
    """
    ctx = distributed.setup(threads_per_rank)
    try:
        metrics = _train(
            ctx,
            spec,
            data_root,
            out,
            epochs,
            seed,
            resume,
            compile,
            limit_train,
            limit_test,
            progress,
            download,
            on_iteration,
        )
    except Exception as err:
        if ctx.active and distributed.is_peer_error(err):
            raise distributed.PeerLost(
                f"rank {ctx.rank} of {ctx.world}: lost contact with the other "
                f"ranks ({first_line(err)}); the run stopped"
            ) from None
        raise
    ctx.close()
    return metrics


def _train(
    ctx,
    spec,
    data_root,
    out,
    epochs,
    seed,
    resume,
    compile,
    limit_train,
    limit_test,
    progress,
    download,
    on_iteration,
) -> dict:
    from .. import build

    spec = as_spec(spec)
    payload = None
    if resume is not None:
        where = str(Path(resume) / "checkpoint.pt")
        # rank 0 reads it; the other machines need no copy
        payload = ctx.share(lambda: ckpt.load(Path(resume) / "checkpoint.pt"))
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
    distributed.check_world(cfg.batch_size, ctx.world)
    device = distributed.device_for(pick_device(cfg.device), ctx)
    net = build(spec, seed=cfg.seed).to(device)
    graph = net.graph
    data = {"root": data_root, "normalize": _normalize(spec), "download": download}
    with ctx.local_first():  # one download per machine
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

    run_dir = ctx.share(lambda: _run_dir(out, resume, spec.name))
    if ctx.main:
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
    if problem and ctx.local_rank == 0:
        print(f"warning: {problem}", file=sys.stderr)
    compiled = compile not in ("none", "plain")
    if ctx.active:
        _warn_batch_statistics(graph, ctx)
        model, evaluator = distributed.wrap(net, compile, device)
    else:
        model = evaluator = optimize.apply(net, compile)  # optimize.MODES
    loss_of, need_records = make_loss(graph, native=compile == "native")

    def rng_state():
        return {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        }

    def state(epoch, step, partial=None, rngs=None):
        rngs = rngs or [rng_state()]
        return {
            "version": __version__,
            "spec": graph.spec_json,
            "epoch": epoch,
            "step": step,
            "seed": cfg.seed,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rngs[0],  # rank 0's (a one-process run's)
            "rng_ranks": rngs[1:],  # the other ranks' states, in rank order
            "world_size": ctx.world,
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
            "world_size": ctx.world,
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
        if ctx.main:
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            plots.curves(
                history, iteration_loss, run_dir / "curves.png", metric_keys[0]
            )
        return metrics

    if payload is None and ctx.main:
        ckpt.save(run_dir / "checkpoint.pt", state(0, 0))  # resumable from the start
    with DeferredInterrupt(announce=ctx.main) as stop:
        for epoch in range(start_epoch, cfg.epochs + 1):
            seed_now = epoch_seed(cfg.seed, epoch)
            torch.manual_seed(distributed.rank_seed(seed_now, ctx.rank))
            order_gen = torch.Generator().manual_seed(seed_now)
            order = torch.randperm(len(train_split), generator=order_gen).to(device)
            loss_sum = torch.zeros((), device=device)
            score = Score(graph, device)
            seen, mine, losses_now = 0, 0, []
            if skip:  # continue a mid-epoch checkpoint exactly where it stopped
                _restore_rng(payload, ctx, device, seed_now, skip)
                partial = payload["partial"]  # "correct": a checkpoint of before 0.2
                if ctx.main:  # the sums over every rank so far: counted once
                    loss_sum += partial["loss_sum"].to(device)
                    score = Score(
                        graph, device, partial.get("score", partial.get("correct"))
                    )
                seen = int(partial["seen"])
            model.train()
            bar = _bar(
                progress and ctx.main, per_epoch, skip, f"epoch {epoch}/{cfg.epochs}"
            )
            started = time.perf_counter()
            batches = train_split.batches(
                cfg.batch_size, order, cfg.drop_last, skip, ctx.rank, ctx.world
            )
            for step, (x, y) in enumerate(batches, start=skip + 1):
                count = size = y.shape[0]  # this rank's samples, the global batch's
                if ctx.active:
                    size = train_split.batch_size_at(
                        step, cfg.batch_size, cfg.drop_last
                    )
                    if count == 0:  # joins the gradient average with weight 0
                        x, y = train_split.batch(order[:1])
                with optimize.batch_runner(model, size != cfg.batch_size) as run:
                    if need_records:
                        spk, mem, records = run(x, all_spikes=True)
                    else:
                        (spk, mem), records = run(x), None
                loss = loss_of(spk, mem, y, records)
                optimizer.zero_grad(set_to_none=True)
                # the ranks' gradients are averaged: weigh this rank's mean loss
                # by its share of the global batch (1 when the parts are equal)
                weight = count * ctx.world / size
                (loss if weight == 1 else loss * weight).backward()
                optimizer.step()
                scheduler.step()
                loss = shown = loss.detach()
                if ctx.active:  # summed over the ranks: the global batch's loss
                    loss = loss * (count / size)
                losses_now.append(loss)
                loss_sum += loss
                if count:
                    score.add(spk.detach(), mem.detach(), y)
                seen += size
                mine += count
                bar.update(1)
                if (progress and ctx.main) and (
                    step % PROGRESS_EVERY == 0 or step == per_epoch
                ):  # with several ranks: rank 0's part of the batch
                    bar.set_postfix(loss=f"{shown.item():.3f}", **score.postfix(mine))
                if on_iteration is not None:
                    on_iteration(epoch, step)
                if ctx.any(stop.requested) and step < per_epoch:
                    bar.close()
                    iteration_loss += ctx.all_reduce(torch.stack(losses_now)).tolist()
                    ctx.all_reduce(loss_sum)
                    ctx.all_reduce(score.total)
                    rngs = ctx.gather(rng_state())
                    partial = {"loss_sum": loss_sum, "score": score.total, "seen": seen}
                    if ctx.main:
                        ckpt.save(
                            run_dir / "checkpoint.pt",
                            state(epoch - 1, step, partial, rngs),
                        )
                        finish(interrupted=True)
                        _resume_hint(run_dir, epoch, step, per_epoch, ctx.world)
                    raise KeyboardInterrupt
            bar.close()
            seconds = time.perf_counter() - started
            if losses_now:
                iteration_loss += ctx.all_reduce(torch.stack(losses_now)).tolist()
            ctx.all_reduce(loss_sum)
            ctx.all_reduce(score.total)
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
                    evaluator,
                    test_split,
                    graph,
                    graph.train["eval_batch_size"],
                    cfg.seed,
                    device,
                    ctx,
                )
                entry.update(
                    {k: result[k] for k in result if k.startswith("test_")},
                    firing_rates=result["firing_rates"],
                    eval_seconds=time.perf_counter() - started,
                )
                entry.pop("test_samples")
            history.append(entry)
            skip = 0
            if ctx.main:
                ckpt.save(run_dir / "checkpoint.pt", state(epoch, 0))
            metrics = finish(interrupted=False)
            if progress and ctx.main:
                _report(entry, cfg.epochs)
            if ctx.any(stop.requested) and epoch < cfg.epochs:
                if ctx.main:
                    _resume_hint(run_dir, epoch + 1, 0, per_epoch, ctx.world)
                raise KeyboardInterrupt
    if ctx.main:
        _raster(net, test_split, graph, cfg.seed, device, run_dir / "raster.png")
    return metrics


def _restore_rng(payload: dict, ctx, device, seed_now: int, skip: int) -> None:
    """The random state a mid-epoch checkpoint left each rank in (exact when
    the run has as many ranks as the one that saved it); with another number of
    ranks, fresh per-rank streams for the rest of the epoch."""
    rngs = [payload["rng"], *payload.get("rng_ranks", [])]
    if payload.get("world_size", 1) == ctx.world == len(rngs):
        rng = rngs[ctx.rank]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        return
    fresh = (seed_now + skip * 1_000_003) % 2**63
    torch.manual_seed(distributed.rank_seed(fresh, ctx.rank))
    if ctx.main:
        print(
            f"warning: the checkpoint was saved mid-epoch by "
            f"{payload.get('world_size', 1)} process(es), this run has {ctx.world}: "
            "the rest of this epoch draws other random numbers (rate encodings, "
            "dropout) than an uninterrupted run would",
            file=sys.stderr,
        )


def _warn_batch_statistics(graph, ctx) -> None:
    """Batch norm layers see each rank's part of the batch, not all of it."""
    names = [n.name for n in graph.nodes if "batchnorm" in n.type]
    if names and ctx.main:
        print(
            f"warning: {', '.join(names)} normalize over each rank's part of the "
            f"batch (train.batch_size / {ctx.world} samples), not the global "
            "batch: this run differs from a one-process run",
            file=sys.stderr,
        )


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


def _resume_hint(
    run_dir: Path, epoch: int, step: int, per_epoch: int, world: int = 1
) -> None:
    where = f"epoch {epoch}" + (f", iteration {step + 1}/{per_epoch}" if step else "")
    nproc = f" --nproc {world}" if world > 1 else ""
    print(
        f"saved {run_dir / 'checkpoint.pt'}; continue at {where} with:\n"
        f"  snncompile train SPEC --resume {run_dir}{nproc}",
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
