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

import contextlib
import json
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import yaml

from .. import __version__, registry
from ..estimate import check_fits
from ..ir.analyze import analyze
from ..lower import checkpoint as ckpt
from ..lower import optimize
from ..runtime import decode as decoders
from ..runtime import losses
from ..spec.errors import UserError, first_line
from ..spec.load import as_spec, loads
from ..spec.schema import Spec
from . import distributed, logs, plots, rundir, safeguards, schedules
from .data import load_split, load_training, shard

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
    """One LambdaLR stepped every iteration; the factor depends on the iteration
    (a warmup, then the schedule), and a plateau schedule's reductions
    (schedules.py)."""
    return schedules.make(optimizer, spec, per_epoch, total)


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

    def loss(spk, mem, targets, records=None, mask=None):
        """`mask` [T, B]: the real steps of padded sequences (None: all)."""
        if mask is None:
            value = function(spk, mem, targets, **params)
        else:
            value = losses.loss_by_length(function, spk, mem, targets, mask, **params)
        if regularization:
            spikes = list(records.values())
            if mask is None:
                value = value + losses.rate_regularization(spikes, **regularization)
            else:
                value = value + losses.masked_rate_regularization(
                    spikes, mask, **regularization
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

    def add(self, spk, mem, targets, mask=None) -> None:
        if mask is None:
            pred = self.decode(spk, mem)
        else:
            pred = decoders.decode_by_length(self.decode, spk, mem, mask)
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
        for x, y, mask in split.batches(batch_size, rank=ctx.rank, world=ctx.world):
            if y.shape[0] == 0:  # a last batch with fewer samples than ranks
                continue
            with optimize.batch_runner(model, y.shape[0] != hi - lo) as run:
                spk, mem, records = run(x, all_spikes=True)
            total_loss += loss_of(spk, mem, y, records, mask) * y.shape[0]
            score.add(spk, mem, y, mask)
            for name, record in records.items():
                real = record.numel()
                if mask is not None:  # padded steps: neither spikes nor steps
                    m = mask.view(*mask.shape, *(1,) * (record.dim() - 2))
                    record = record * m
                    real = int(mask.sum()) * record[0, 0].numel()
                spikes[name] = spikes.get(name, 0) + record.sum(dtype=torch.float64)
                counts[name] = counts.get(name, 0) + real
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
    """First Ctrl-C (or SIGTERM) sets `.requested` (the loop stops at a safe
    point, saves a checkpoint and says how to resume); a second Ctrl-C aborts
    (another SIGTERM does not: it is stopping already)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce  # say so (one rank of several: rank 0 says it)
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        # under `--nproc` the launcher's agent stops the ranks by SIGTERM (and
        # says why): only a Ctrl-C is announced there
        quiet = signum == signal.SIGTERM and distributed.under_launcher()
        if self.announce and not quiet:
            what = "SIGTERM received: " if signum == signal.SIGTERM else ""
            print(
                f"\n{what}stopping after this iteration (Ctrl-C again to abort)",
                file=sys.stderr,
            )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name, None)
                if number is not None:
                    self._previous[number] = signal.signal(number, self._handler)
        return self

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}


# --------------------------------------------------------------------------- training
def _run_dir(out, resume, name: str) -> Path:
    """The run directory, created (rundir.prepare: a new one by default)."""
    return rundir.prepare(out, resume, name)


def _resume_spec(
    payload: dict, spec: Spec, where: str, epochs, seed, limit_train, limit_test
):
    """The run's own spec from the checkpoint, with the changes --resume can
    apply (safeguards.RESUMABLE) made in the spec given now; UserError naming
    any other change. The flags --epochs and --limit-test apply; --seed and
    --limit-train must be the run's."""
    from .. import analyze

    ckpt.check_spec(payload, analyze(spec).spec_json, where)
    saved = loads(payload["spec"], file=where, fmt="json")
    for flag, value, old in (
        ("--seed", seed, saved.train.seed),
        ("--limit-train", limit_train, saved.train.limit_train),
    ):
        if value is not None and value != old:
            raise UserError(f"{flag} {value} differs from the resumed run's {old}")
    given = spec.model_dump(mode="json")
    if isinstance(payload.get("source_spec"), str):  # the spec it was started with
        started = loads(payload["source_spec"], file=where, fmt="json")
        changes = safeguards.resume_changes(
            started.model_dump(mode="json"),
            given,
            where,
            effective=saved.model_dump(mode="json"),  # e.g. the run's spec.yaml
        )
    else:  # a checkpoint of before 0.2: only the run's spec, after its flags
        changes = safeguards.resume_changes(
            saved.model_dump(mode="json"),
            given,
            where,
            ignore=("train.seed", "train.limit_train", "train.limit_test"),
        )
    data = saved.model_dump(mode="json")
    notes = []
    for path, old, new in changes:
        safeguards.set_path(data, path, new)
        if path != "train.epochs":
            notes.append((path, old, new))
    if notes:
        print(
            f"resuming with the spec's changes: {safeguards.describe(notes)}",
            file=sys.stderr,
        )
    resumed = Spec.model_validate(data)
    return with_train(resumed, epochs=epochs, limit_test=limit_test)


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
    overwrite=False,
    tensorboard=False,
    log_every=PROGRESS_EVERY,
    on_epoch=None,
    stop=None,
) -> dict:
    """Train a spec and write a run directory; returns the metrics (metrics.json).

    `out` must be a new or empty directory unless `overwrite` (or the run
    being resumed); rundir.py. metrics.csv gets a row every `log_every`
    iterations and one per epoch; `tensorboard`: TensorBoard event files too
    (logs.py). A non-finite loss raises safeguards.Diverged (a UserError).
    `on_iteration(epoch, iteration)` is called after every optimizer step;
    `on_epoch(epoch, entry)` after each epoch is saved (entry: its history row).
    `stop`: the DeferredInterrupt that takes Ctrl-C and SIGTERM (default: a
    new one); its `.requested` tells the caller whether a stop was asked for,
    also one that came too late to cut the run short (in its last epoch).
    In a process that torchrun started (WORLD_SIZE > 1) this is one rank of a
    data-parallel run (distributed.py): every rank calls train() alike; rank 0
    writes the run directory. `threads_per_rank`: torch threads of each rank
    (default: the machine's cores divided among its ranks; one process:
    unchanged unless given).
    """
    ctx = distributed.setup(threads_per_rank)
    held = []  # the run directory's lock and log: released however train ends
    extra = {
        "overwrite": overwrite,
        "tensorboard": tensorboard,
        "log_every": log_every,
        "on_epoch": on_epoch,
        "stop": stop,
        "held": held,
    }
    try:
        with rundir.file_size_errors():
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
                extra,
            )
    except Exception as err:
        if ctx.active and distributed.is_peer_error(err):
            raise distributed.PeerLost(
                f"rank {ctx.rank} of {ctx.world}: lost contact with the other "
                f"ranks ({first_line(err)}); the run stopped"
            ) from None
        raise
    finally:
        for item in reversed(held):
            item.close()
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
    extra,
) -> dict:
    from .. import build

    spec_file = None if isinstance(spec, Spec) else spec  # not to be written over
    spec = source = as_spec(spec)  # as given: a later --resume compares with it
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
    safeguards.check_metrics(spec, spec.task)
    amp = safeguards.Precision(cfg.precision, device, cfg.grad_clip)
    if extra["tensorboard"]:
        logs.check_tensorboard()
    check_fits(analyze(spec), device)  # before allocating: a one-line refusal
    run_dir, keep = ctx.share(lambda: _open_run(spec, out, resume, spec_file, extra))
    net = build(spec, seed=cfg.seed).to(device)
    graph = net.graph
    if ctx.main:  # before the data: is there room for a checkpoint?
        rundir.check_space(run_dir, _checkpoint_bytes(net, spec))
    data = {"root": data_root, "normalize": _normalize(spec), "download": download}
    with ctx.local_first():  # one download per machine
        # the training samples read once, a validation hold-out included
        train_split, val_split = load_training(graph, limit=cfg.limit_train, **data)
        train_split = train_split.to(device)
        test_split = load_split(graph, False, limit=cfg.limit_test, **data).to(device)
        val_split = val_split and val_split.to(device)  # None: no validation split
    safeguards.check_validation(spec, val_split is not None)
    per_epoch = train_split.num_batches(cfg.batch_size, cfg.drop_last)
    if per_epoch == 0:
        raise UserError(
            f"the training set has {len(train_split)} samples, fewer than one batch "
            f"of {cfg.batch_size} (train.drop_last is on)"
        )
    optimizer = make_optimizer(net.parameters(), spec)
    scheduler = make_scheduler(optimizer, spec, per_epoch, per_epoch * cfg.epochs)
    metric_keys = METRICS[graph.task]
    if ctx.main and "spec.yaml" not in keep:
        with _writing(run_dir / "spec.yaml"):
            (run_dir / "spec.yaml").write_text(
                yaml.safe_dump(
                    json.loads(graph.spec_json),
                    sort_keys=False,
                    default_flow_style=None,
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
        amp.load_state_dict(payload.get("scaler"))

    compile_before = optimize.compile_stats()  # preflight may build native code
    compile, problem = optimize.preflight(compile, net, quiet=not progress)
    if problem and ctx.local_rank == 0:
        print(f"warning: {problem}", file=sys.stderr)
    # under train.precision's autocast every mode keeps its kernels: the neurons
    # cast their input current to float32 (runtime/neurons.py), as the plain model
    compiled = compile not in ("none", "plain")
    if ctx.active:
        _warn_batch_statistics(graph, ctx)
        model, evaluator = distributed.wrap(net, compile, device)
    else:
        model = evaluator = optimize.apply(net, compile)  # optimize.MODES
    loss_of, need_records = make_loss(graph, native=compile == "native")
    stopper = None
    if cfg.early_stopping is not None:
        stopper = safeguards.EarlyStopping(cfg.early_stopping)
        if payload is not None:
            stopper.load(payload.get("early_stopping"))
    log, log_every = None, extra["log_every"]
    if ctx.main:
        log = logs.RunLog(
            run_dir,
            metric_keys,
            [n.name for n in graph.neuron_nodes],
            tensorboard=extra["tensorboard"],
            resume_step=None if payload is None else _position(payload, per_epoch),
            validation=val_split is not None,
        )
        extra["held"].append(log)
    # a non-finite loss is looked for every iteration where that costs no wait
    # for the device (one process on the CPU), else every PROGRESS_EVERY
    check_every = 1 if device.type == "cpu" and not ctx.active else PROGRESS_EVERY
    last_save = "the start" if payload is None else _where(payload, per_epoch)

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
            "source_spec": source.model_dump_json(),
            "scaler": amp.state_dict(),
            "early_stopping": stopper.state() if stopper else None,
        }

    def save(name: str, payload: dict) -> None:
        nonlocal last_save
        path = run_dir / name
        note = f"; {run_dir / 'checkpoint.pt'} ({last_save}) is kept"
        with _writing(path, note if name == "checkpoint.pt" else ""):
            ckpt.save(path, payload)
        if name == "checkpoint.pt":
            last_save = _where(payload, per_epoch)

    def diverged(epoch: int, step: int, what: str):
        """Stop at a non-finite loss (or weights): nothing of it is saved."""
        stopped = {"reason": "non-finite", "epoch": epoch, "iteration": step}
        if ctx.main:
            finish(interrupted=False, stopped=stopped)
        return safeguards.Diverged(
            f"{what} at epoch {epoch}, iteration {step}/{per_epoch}: training "
            f"stopped; the last good checkpoint is {run_dir / 'checkpoint.pt'} "
            f"({last_save}). Set train.grad_clip (and --resume {run_dir}), or "
            "start again with a lower train.optimizer.lr"
        )

    def check_finite(epoch: int, losses_now: list, checked: int, skip: int):
        """Diverged if a loss since index `checked`, or a weight, is not finite
        (the ranks agree), else None."""
        bad = safeguards.first_bad(losses_now[checked:])
        weights = bad is None and not safeguards.finite_weights(net)
        if not ctx.any(bad is not None or weights):
            return None
        step = skip + len(losses_now)
        if bad is None:
            return diverged(epoch, step, "the weights are not finite after the update")
        at = checked + bad
        value = losses_now[at].item()
        return diverged(epoch, skip + 1 + at, f"the training loss is {value}")

    def finish(interrupted: bool, stopped: dict | None = None) -> dict:
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
            "dataset": graph.dataset_label,
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
            "stopped": stopped,
            **(
                {"best": {**stopper.state(), "checkpoint": str(run_dir / "best.pt")}}
                if stopper
                else {}
            ),
            "snncompile_version": __version__,
            "run_dir": str(run_dir),
            "history": [
                {k: v for k, v in h.items() if k != "firing_rates"} for h in history
            ],
        }
        if ctx.main:
            with _writing(run_dir / "metrics.json"):
                (run_dir / "metrics.json").write_text(
                    logs.dumps(metrics, indent=2) + "\n"
                )
            with _writing(run_dir / "curves.png"):
                plots.curves(
                    history, iteration_loss, run_dir / "curves.png", metric_keys[0]
                )
        return metrics

    if payload is None and ctx.main:
        save("checkpoint.pt", state(0, 0))  # resumable from the start
    with extra["stop"] or DeferredInterrupt(announce=ctx.main) as stop:
        for epoch in range(start_epoch, cfg.epochs + 1):
            seed_now = epoch_seed(cfg.seed, epoch)
            torch.manual_seed(distributed.rank_seed(seed_now, ctx.rank))
            order_gen = torch.Generator().manual_seed(seed_now)
            order = torch.randperm(len(train_split), generator=order_gen).to(device)
            loss_sum = torch.zeros((), device=device)
            score = Score(graph, device)
            seen, mine, losses_now, checked = 0, 0, [], 0
            window, norm = [], None  # the losses since the last log row
            if skip % log_every:  # resumed mid-epoch: the row's earlier losses
                earlier = iteration_loss[len(iteration_loss) - skip % log_every :]
                window = [torch.tensor(v) for v in earlier]
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
            for step, (x, y, mask) in enumerate(batches, start=skip + 1):
                count = size = y.shape[0]  # this rank's samples, the global batch's
                if ctx.active:
                    size = train_split.batch_size_at(
                        step, cfg.batch_size, cfg.drop_last
                    )
                    if count == 0:  # joins the gradient average with weight 0
                        x, y, mask = train_split.batch(order[:1])
                partial_batch = size != cfg.batch_size
                with optimize.batch_runner(model, partial_batch) as run, amp.autocast():
                    if need_records:
                        spk, mem, records = run(x, all_spikes=True)
                    else:
                        (spk, mem), records = run(x), None
                with amp.autocast():
                    loss = loss_of(spk, mem, y, records, mask)
                optimizer.zero_grad(set_to_none=True)
                # the ranks' gradients are averaged: weigh this rank's mean loss
                # by its share of the global batch (1 when the parts are equal)
                weight = count * ctx.world / size
                logged = log is not None and (
                    step % log_every == 0 or step == per_epoch
                )
                # backward, clipping (train.grad_clip), optimizer step
                norm = amp.step(
                    loss if weight == 1 else loss * weight,
                    optimizer,
                    net.parameters,
                    logged,
                )
                lr = optimizer.param_groups[0]["lr"]  # this iteration's
                scheduler.step()
                loss = shown = loss.detach()
                if ctx.active:  # summed over the ranks: the global batch's loss
                    loss = loss * (count / size)
                losses_now.append(loss)
                window.append(shown)
                loss_sum += loss
                if count:
                    score.add(spk.detach(), mem.detach(), y, mask)
                seen += size
                mine += count
                bar.update(1)
                if (progress and ctx.main) and (
                    step % PROGRESS_EVERY == 0 or step == per_epoch
                ):  # with several ranks: rank 0's part of the batch
                    bar.set_postfix(loss=f"{shown.item():.3f}", **score.postfix(mine))
                if step % check_every == 0 or step == per_epoch:
                    problem = check_finite(epoch, losses_now, checked, skip)
                    if problem is not None:
                        bar.close()
                        raise problem
                    checked = len(losses_now)
                if logged:
                    log.step(
                        epoch,
                        step,
                        (epoch - 1) * per_epoch + step,
                        {
                            "loss": torch.stack(window).float().mean(),
                            **score.result(mine if ctx.active else seen),
                            "lr": lr,
                            "grad_norm": norm,
                        },
                    )
                    window = []
                if on_iteration is not None:
                    on_iteration(epoch, step)
                if ctx.any(stop.requested) and step < per_epoch:
                    bar.close()
                    problem = check_finite(epoch, losses_now, checked, skip)
                    if problem is not None:
                        raise problem
                    iteration_loss += ctx.all_reduce(torch.stack(losses_now)).tolist()
                    ctx.all_reduce(loss_sum)
                    ctx.all_reduce(score.total)
                    rngs = ctx.gather(rng_state())
                    partial = {"loss_sum": loss_sum, "score": score.total, "seen": seen}
                    if ctx.main:
                        save("checkpoint.pt", state(epoch - 1, step, partial, rngs))
                        finish(interrupted=True)
                        _resume_hint(
                            run_dir, spec_file, epoch, step, per_epoch, ctx.world
                        )
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
            if val_split is not None:  # every epoch: what early stopping reads
                result = run_evaluation(
                    evaluator,
                    val_split,
                    graph,
                    graph.train["eval_batch_size"],
                    cfg.seed,
                    device,
                    ctx,
                )
                entry.update(
                    {
                        f"val_{k[5:]}": v
                        for k, v in result.items()
                        if k.startswith("test_") and k != "test_samples"
                    }
                )
            history.append(entry)
            skip = 0
            if ctx.main:
                for problem in safeguards.firing_problems(
                    entry.get("firing_rates", {}), graph
                ):
                    print(
                        f"warning: epoch {epoch}: {problem} on the test set",
                        file=sys.stderr,
                    )
            if cfg.schedule.type == "plateau":
                scheduler.observe(entry.get(cfg.schedule.metric))
            verdict = None
            if stopper is not None:
                verdict = stopper.observe(epoch, entry.get(stopper.metric))
            if ctx.main:
                snapshot = state(epoch, 0)
                save("checkpoint.pt", snapshot)
                if verdict == "improved":
                    save("best.pt", snapshot)
                log.epoch(entry, epoch * per_epoch, lr, norm)
            early = verdict == "stop" and epoch < cfg.epochs
            stopped = None
            if early:
                stopped = {"reason": "early_stopping", "epoch": epoch}
            metrics = finish(interrupted=False, stopped=stopped)
            if progress and ctx.main:
                _report(entry, cfg.epochs)
            if extra.get("on_epoch") is not None:  # e.g. a sweep's pruning
                extra["on_epoch"](epoch, entry)
            if early:
                if ctx.main:
                    print(
                        f"early stopping after epoch {epoch}: {stopper.metric} has "
                        f"not improved in {stopper.bad} measurement(s); the best, "
                        f"{stopper.best} at epoch {stopper.best_epoch}, is in "
                        f"{run_dir / 'best.pt'}",
                        file=sys.stderr,
                    )
                break
            if ctx.any(stop.requested) and epoch < cfg.epochs:
                if ctx.main:
                    _resume_hint(run_dir, spec_file, epoch + 1, 0, per_epoch, ctx.world)
                raise KeyboardInterrupt
    if ctx.main:
        with _writing(run_dir / "raster.png"):
            _raster(net, test_split, graph, cfg.seed, device, run_dir / "raster.png")
    return metrics


def _position(payload: dict, per_epoch: int) -> int:
    """The optimizer steps a checkpoint holds."""
    return payload["epoch"] * per_epoch + payload.get("step", 0)


def _where(payload: dict, per_epoch: int) -> str:
    """What a checkpoint holds, in words."""
    epoch, step = payload["epoch"], payload.get("step", 0)
    if step:
        return f"epoch {epoch + 1}, iteration {step}/{per_epoch}"
    return f"after epoch {epoch}" if epoch else "the start"


class _Closing:
    """Something held while training, closed however train() ends."""

    def __init__(self, close):
        self.close = close


def _open_run(spec, out, resume, spec_file, extra) -> tuple[Path, list[str]]:
    """Rank 0: the run directory created, locked (held until train() ends) and
    checked (rundir.py), before any work; the run files not to write."""
    existed = out is not None and Path(out).exists()
    path = rundir.prepare(out, resume, spec.name)
    lock = rundir.Lock(path)
    inputs = [spec_file, None if resume is None else Path(resume) / "checkpoint.pt"]
    try:
        keep = rundir.check_contents(path, resume, extra["overwrite"], inputs)
    except BaseException:
        lock.release()
        raise

    def release():
        lock.release()
        if resume is None and not existed and not rundir.entries(path):
            with contextlib.suppress(OSError):  # failed before writing: no litter
                path.rmdir()

    extra["held"].append(_Closing(release))
    return path, sorted(keep)


def _checkpoint_bytes(net, spec) -> int:
    """About the size of a checkpoint: the weights and the optimizer's state."""
    weights = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    optimizer = spec.train.optimizer
    moments = 2 if optimizer.type in ("adam", "adamw") else 0
    if optimizer.type == "sgd" and optimizer.momentum:
        moments = 1
    return weights * (1 + moments) + 64 * 1024


@contextlib.contextmanager
def _writing(path, note: str = ""):
    """A failed write of `path` as one UserError (disk full, file too large,
    permission); torch.save reports a full disk as a RuntimeError."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        raise rundir.write_error(path, err, note) from None


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
    if entry.get("val_loss") is not None:
        text += f"; val loss {entry['val_loss']:.4f}, {describe(entry, 'val')}"
    if entry["test_loss"] is not None:
        text += f"; test loss {entry['test_loss']:.4f}, {describe(entry)}"
    print(text, file=sys.stderr)


def _resume_hint(
    run_dir: Path,
    spec_file,
    epoch: int,
    step: int,
    per_epoch: int,
    world: int = 1,
) -> None:
    """The command that continues the run: with the spec file it was given
    (a Spec object: the run's own spec.yaml) and its --set overrides, quoted
    for the shell."""
    from ..spec.load import _cli_overrides

    where = f"epoch {epoch}" + (f", iteration {step + 1}/{per_epoch}" if step else "")
    nproc = f" --nproc {world}" if world > 1 else ""
    spec = run_dir / "spec.yaml" if spec_file is None else spec_file
    sets = "".join(
        f" --set {shlex.quote(a)}"
        for a in ([] if spec_file is None else _cli_overrides(str(spec_file)))
    )
    print(
        f"saved {run_dir / 'checkpoint.pt'}; continue at {where} with:\n"
        f"  snncompile train {shlex.quote(str(spec))}{sets} "
        f"--resume {shlex.quote(str(run_dir))}{nproc}",
        file=sys.stderr,
    )


@torch.no_grad()
def _raster(net, split, graph, seed: int, device, path) -> None:
    """Spike raster of the first test sample through every spiking layer."""
    net.eval()
    x, y, _ = split.batch(slice(0, 1))
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
