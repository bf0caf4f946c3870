"""Data-parallel training over processes: torchrun, or `snncompile train --nproc N`.

A worker process is one that torchrun (or `--nproc`, which runs torchrun's
launcher in-process) started: WORLD_SIZE > 1 and RANK in its environment.
`setup()` joins the process group (gloo for CPU tensors, NCCL for CUDA tensors
where CUDA is present: one process group serving both) with a timeout on every
collective, so that a rank waiting for a dead or stuck peer ends with an error
instead of hanging; it returns a `Context` (rank, world size, the reductions
the training loop needs). Outside a worker `setup()` returns `SINGLE`, whose
methods do nothing: the one-process path is the same code as before.

What is split (loop.py): every epoch's global permutation (seeded as for one
process) is cut into global batches of train.batch_size, and each global batch
into consecutive per-rank parts (data.shard). DistributedDataParallel averages
the gradients of the ranks' losses; each rank scales its loss by
n_rank * N / n_batch, so that the average is the gradient of the global batch's
mean loss, also for a last partial batch with uneven (or empty) parts. Rank 0
alone reads the checkpoint to resume from (and passes it to the others: the
other machines need no copy) and writes the run directory.

`launch()` is `--nproc`: torchrun's elastic agent for one machine (rendezvous
c10d on localhost, as `torchrun --standalone`), and one line instead of the
agent's report when a rank fails.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from ..spec.errors import UserError

TIMEOUT_ENV = "SNNCOMPILE_DIST_TIMEOUT"  # seconds a collective may wait
DEFAULT_TIMEOUT = 300
LAUNCHER_ENV = "SNNCOMPILE_LAUNCHER"  # set for the workers that launch() starts
SHUTDOWN_SECONDS = 60  # a stopped run's ranks have this long to save and exit


class PeerLost(UserError):
    """A collective failed: another rank died or stopped answering."""


@dataclass
class Context:
    """This process's place among the ranks; the collective operations of the
    training loop (no-ops for one process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank (every rank gets the same answer)."""
        if not self.active:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def share(self, make):
        """`make()` run on rank 0, its result given to every rank; a UserError
        it raises is raised on every rank."""
        if not self.active:
            return make()
        import torch.distributed as dist

        box = [None]
        if self.main:
            try:
                box[0] = ("ok", make())
            except UserError as err:
                box[0] = ("error", str(err))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise UserError(value)
        return value

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def local_first(self):
        """The block runs on each machine's local rank 0 first, then on the
        others (one download of a missing dataset per machine, not N)."""
        if self.active and self.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.active and self.local_rank == 0:
                self.barrier()

    def close(self) -> None:
        """Wait for every rank (rank 0 writes last); the process group stays
        for later train() calls of the process, and goes at its exit."""
        self.barrier()


SINGLE = Context()


def environment() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


def is_worker() -> bool:
    """Whether this process is one of several ranks that torchrun started."""
    return "RANK" in os.environ and environment()[1] > 1


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(local_world: int) -> int:
    """Threads per rank: this machine's cores shared among its ranks."""
    return max(1, cores() // max(1, local_world))


def timeout_seconds() -> int:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return max(1, int(value)) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise UserError(
            f"{TIMEOUT_ENV} must be a number of seconds, not {value!r}"
        ) from None


def setup(threads: int | None = None) -> Context:
    """Join the process group when torchrun started this process (else SINGLE),
    and set the torch (and native kernel) threads: `threads`, by default
    this machine's cores divided among its ranks (one process: unchanged)."""
    rank, world, local_rank, local_world = environment()
    if world <= 1 or "RANK" not in os.environ:
        if threads:
            torch.set_num_threads(threads)
        return SINGLE
    torch.set_num_threads(threads or default_threads(local_world))
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed")
    if not dist.is_initialized():  # else: an earlier train() of this process
        backend = "gloo"
        if torch.cuda.is_available():  # CUDA tensors by NCCL, on this rank's GPU
            backend = "cpu:gloo,cuda:nccl"
            if local_rank < torch.cuda.device_count():
                torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
        atexit.register(leave)
    return Context(rank, world, local_rank, local_world)


def leave() -> None:
    """Leave the process group (the command does when training has ended; at
    the latest at the process's exit)."""
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def device_for(device: torch.device, ctx: Context) -> torch.device:
    """One device per rank: CUDA device `local_rank` (made current)."""
    if device.type != "cuda" or not ctx.active:
        return device
    count = torch.cuda.device_count()
    if ctx.local_rank >= count:
        raise UserError(
            f"{ctx.local_world} processes on this machine but {count} CUDA "
            f"device(s): use --nproc {count} (one process per GPU) or "
            "train.device: cpu"
        )
    device = torch.device("cuda", ctx.local_rank)
    torch.cuda.set_device(device)
    return device


def check_world(batch_size: int, world: int) -> None:
    """UserError unless the global batch divides evenly among the ranks."""
    if world > 1 and batch_size % world:
        raise UserError(
            f"train.batch_size {batch_size} does not divide among {world} "
            f"processes: the global batch is split evenly across ranks; use a "
            f"batch size that is a multiple of {world}, or another number of "
            "processes"
        )


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's seed for the random numbers drawn in the model (encodings,
    dropout) from one process's `seed`: rank 0 keeps it."""
    return seed if rank == 0 else (seed + rank * 0x9E3779B97F4A7C15) % 2**63


def wrap(net, mode: str, device: torch.device):
    """(module to train, module to evaluate) under DistributedDataParallel:
    DDP around the net with its kernels on top (optimize.apply: native, neurons,
    none, plain), or torch.compile around DDP (model; dynamo's DDP optimizer
    splits the graph at the gradient buckets). Evaluation runs the net itself
    (no collectives: ranks may evaluate different numbers of batches)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..lower import optimize

    ids = [device.index] if device.type == "cuda" else None
    if mode == "model":
        return optimize.compile_model(DDP(net, device_ids=ids)), (
            optimize.compile_model(net)
        )
    model = optimize.apply(net, mode)
    return DDP(model, device_ids=ids), model


def is_peer_error(err: BaseException) -> bool:
    """Whether `err` is a failed collective (a peer died, hung or left)."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed")
    )


def record_error(err: BaseException) -> None:
    """Write `err` to the error file torchrun's agent reads (TORCHELASTIC_ERROR_FILE);
    the agent's report (and launch()'s one line) then shows its message."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    with contextlib.suppress(Exception):
        ErrorHandler().record_exception(err)


def under_launcher() -> bool:
    """Whether launch() started this worker (it reports the failures itself)."""
    return os.environ.get(LAUNCHER_ENV) == "1"


# --------------------------------------------------------------------------- launch
def worker_argv(args, parser) -> list[str]:
    """The `snncompile train` arguments that give `args` again, without --nproc."""
    argv = []
    for action in parser._actions:  # argparse has no public iterator over them
        if action.dest in ("help", "nproc") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if not action.option_strings:
            argv.append(str(value))
        elif value is None or value is False:
            continue
        elif value is True and action.nargs == 0:
            argv.append(action.option_strings[-1])
        else:
            argv += [action.option_strings[-1], str(value)]
    return argv


def _quiet_elastic_logs() -> None:
    """The agent logs every step at WARNING and failures at ERROR; launch()
    reports what matters in one line."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _recorded(failure) -> str:
    """What a failed rank wrote to its error file ("Type: message"), or ""."""
    message = failure.message
    if isinstance(message, dict):  # ErrorHandler.record_exception's layout
        message = message.get("message", "")
    return message if isinstance(message, str) else ""


def _user_message(failure) -> str | None:
    """The message of a UserError a rank recorded (record_error), else None."""
    message = _recorded(failure)
    for prefix in (f"{UserError.__name__}: ", f"{PeerLost.__name__}: "):
        if failure.exitcode == 2 and message.startswith(prefix):
            return message[len(prefix) :]
    return None


def _root_cause(failures: dict) -> tuple[int, object]:
    """The failure that started it: a user error, else a rank killed by a
    signal other than the agent's SIGTERM or one that crashed, else the
    agent's stopping of the others (SIGTERM), else a rank that lost its peers
    (PeerLost: a consequence); the earliest first."""

    def order(item):
        rank, failure = item
        if _recorded(failure).startswith(f"{PeerLost.__name__}: "):
            kind = 4
        elif _user_message(failure) is not None:
            kind = 0
        elif failure.exitcode == -signal.SIGTERM:
            kind = 3
        else:
            kind = 1 if failure.exitcode < 0 else 2
        return kind, failure.timestamp, rank

    return min(failures.items(), key=order)


def _describe(rank: int, failure) -> str:
    message = _user_message(failure)
    if message is not None:
        return message
    if failure.exitcode < 0:
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = f"signal {-failure.exitcode}"
        return f"rank {rank} (pid {failure.pid}) was killed by {name}"
    return (
        f"rank {rank} (pid {failure.pid}) exited with code {failure.exitcode}"
        " (its output is above)"
    )


def _checkpoint_note(run_dir: Path | None, spec: str, nproc: int) -> str:
    if run_dir is None or not (run_dir / "checkpoint.pt").is_file():
        return ""
    try:
        payload = torch.load(
            run_dir / "checkpoint.pt", map_location="cpu", weights_only=True
        )
        epoch, step = payload["epoch"], payload.get("step", 0)
        at = f"epoch {epoch} done"
        if step:  # a mid-epoch checkpoint: `step` iterations of the next epoch
            at = f"epoch {epoch + 1}, iteration {step} done"
    except Exception:  # noqa: BLE001 - the note is optional
        return ""
    return (
        f"; the last checkpoint is {run_dir / 'checkpoint.pt'} ({at}): "
        f"continue with snncompile train {spec} --resume {run_dir} --nproc {nproc}"
    )


def launch(nproc: int, argv: list[str], run_dir: Path | None, spec: str) -> int:
    """Run `snncompile train ARGV` as `nproc` ranks on this machine by
    torchrun's elastic launcher (rendezvous on localhost, no restarts); the
    exit status: 0, 2 (a user error, printed once), 1 (a rank failed: the
    others are stopped, one line says which and how to resume), 130 (Ctrl-C:
    the ranks saved a checkpoint)."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        shutdown_timeout=SHUTDOWN_SECONDS,
    )
    _quiet_elastic_logs()
    previous = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = "1"  # the workers inherit it
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "snncompile", "train", *argv)
    except ChildFailedError as err:
        rank, failure = _root_cause(err.failures)
        text = _describe(rank, failure)
        lost = _recorded(failure).startswith(f"{PeerLost.__name__}: ")
        if _user_message(failure) is not None and not lost:
            print(f"error: {text}", file=sys.stderr)  # the ranks printed nothing
            return 2
        note = _checkpoint_note(run_dir, spec, nproc)
        print(f"error: {text}; the other ranks were stopped{note}", file=sys.stderr)
        return 1
    except SignalException:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is None:
            os.environ.pop(LAUNCHER_ENV, None)
        else:
            os.environ[LAUNCHER_ENV] = previous
    return 0
