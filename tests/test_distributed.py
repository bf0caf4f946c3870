"""Data-parallel training (snncompile/train/distributed.py) on CPU with gloo:
ranks as processes, started by `snncompile train --nproc N` (torchrun's
launcher) or here by multiprocessing with torchrun's environment variables."""

import argparse
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from snncompile.cli import main
from snncompile.train import distributed, loop
from snncompile.train.data import Split, shard

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="no torch.distributed"
)

SPEC = """
snncompile: 1
name: tiny
input: {{shape: [1, 8, 8], encoding: {encoding}}}
steps: 8
defaults: {{beta: 0.9}}
layers:
  - type: flatten
  - {{type: linear, name: fc1, out_features: 32}}
  - {{type: leaky, name: lif1}}{dropout}
  - {{type: linear, name: fc2, out_features: 10}}
  - {{type: leaky, name: lif2}}
loss: {{type: ce_rate, rate_regularization: {{weight: 0.01}}}}
train:
  dataset: synthetic
  batch_size: 64
  epochs: {epochs}
  optimizer: {optimizer}
  schedule: {{type: step, step_size: 1, gamma: 0.5}}
  limit_train: {limit_train}
  limit_test: 250
  drop_last: false
  device: cpu
"""


def write_spec(
    tmp_path,
    name="tiny.yaml",
    encoding="{type: direct}",
    dropout=False,
    epochs=2,
    optimizer="{type: sgd, lr: 0.5}",
    limit_train=129,  # batches of 64, 64 and 1: the last one leaves a rank empty
):
    path = tmp_path / name
    path.write_text(
        SPEC.format(
            encoding=encoding,
            dropout="\n  - {type: dropout, p: 0.2}" if dropout else "",
            epochs=epochs,
            optimizer=optimizer,
            limit_train=limit_train,
        )
    )
    return path


def weights(run):
    return torch.load(Path(run) / "checkpoint.pt", weights_only=True)


def largest_difference(run_a, run_b) -> float:
    a, b = weights(run_a)["model"], weights(run_b)["model"]
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def assert_same_weights(run_a, run_b):
    a, b = weights(run_a), weights(run_b)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["iteration_loss"], b["iteration_loss"])


# --------------------------------------------------------------------------- ranks
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ACTIONS = {  # what a rank does at a (rank, epoch, iteration) of a job
    "stop": lambda: signal.raise_signal(signal.SIGINT),  # a Ctrl-C to it alone
    "die": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "stall": lambda: time.sleep(3600),  # alive, but no longer answering
}


def _rank(rank, world, port, report, jobs, timeout):
    """One rank, as torchrun would start it (its environment variables): the
    train() calls of `jobs` ((options, {action: (rank, epoch, iteration)})
    each) one after the other, in the same process group."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        SNNCOMPILE_DIST_TIMEOUT=str(timeout),
    )
    results = []
    for options, actions in jobs:

        def on_iteration(epoch, step, actions=actions):
            for action, where in actions.items():
                if where == (rank, epoch, step):
                    ACTIONS[action]()

        started = time.monotonic()
        try:
            loop.train(**options, progress=False, on_iteration=on_iteration)
            result = {"status": "ok"}
        except KeyboardInterrupt:
            result = {"status": "interrupted"}
        except Exception as err:  # noqa: BLE001 - reported to the test
            result = {"status": type(err).__name__, "message": str(err)}
        result["seconds"] = time.monotonic() - started
        results.append(result)
        Path(report).write_text(json.dumps(results))


def run_ranks(tmp_path, world, *jobs, stalled=(), dist_timeout=60, timeout=120):
    """In `world` processes, train(**options) for each job (options, or
    (options, {action: (rank, epoch, iteration)}), ACTIONS); per rank, the
    outcome of each job it finished. The ranks in `stalled` are ended after
    the others have."""
    jobs = [(job, {}) if isinstance(job, dict) else job for job in jobs]
    jobs = [({"compile": "none", **options}, actions) for options, actions in jobs]
    context = multiprocessing.get_context("spawn")
    port = free_port()
    reports = [tmp_path / f"rank{r}-{port}.json" for r in range(world)]
    procs = [
        context.Process(
            target=_rank, args=(r, world, port, str(reports[r]), jobs, dist_timeout)
        )
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    for rank, proc in enumerate(procs):
        if rank not in stalled:
            proc.join(timeout)
            assert proc.exitcode is not None, f"rank {rank} hangs"
    for rank in stalled:
        procs[rank].kill()
        procs[rank].join()
    return [
        json.loads(report.read_text()) if report.exists() else [] for report in reports
    ]


# --------------------------------------------------------------------------- units
def test_each_global_batch_is_split_into_consecutive_parts():
    assert [shard(0, 64, r, 2) for r in range(2)] == [(0, 32), (32, 64)]
    assert [shard(128, 137, r, 4) for r in range(4)] == [
        (128, 131),
        (131, 133),
        (133, 135),
        (135, 137),
    ]
    assert [shard(128, 129, r, 2) for r in range(2)] == [(128, 129), (129, 129)]
    split = Split(torch.arange(10.0).view(10, 1), torch.arange(10), (1,))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    whole = [y.tolist() for _, y, _ in split.batches(4, order)]
    parts = [
        [y.tolist() for _, y, _ in split.batches(4, order, rank=r, world=3)]
        for r in range(3)
    ]
    for step, batch in enumerate(whole):
        assert [y for part in parts for y in part[step]] == batch
    assert [split.batch_size_at(s, 4) for s in (1, 2, 3, 4)] == [4, 4, 2, 0]
    assert [len(y) for _, y, _ in split.batches(4, order, skip=2, rank=1, world=2)] == [
        1
    ]


def test_threads_and_worker_arguments(monkeypatch):
    monkeypatch.setattr(distributed, "cores", lambda: 16)
    assert [distributed.default_threads(n) for n in (1, 2, 3, 32)] == [16, 8, 5, 1]
    from snncompile.train.command import configure_train

    parser = argparse.ArgumentParser()
    configure_train(parser)
    given = ["s.yaml", "--nproc", "2", "--epochs", "3", "--quiet", "--compile",
             "none", "--threads-per-rank", "4", "--data-root", "d"]  # fmt: skip
    args = parser.parse_args(given)
    argv = distributed.worker_argv(args, parser)
    assert "--nproc" not in argv
    again = vars(parser.parse_args(argv))
    assert again == {**vars(args), "nproc": None}
    assert distributed.rank_seed(7, 0) == 7 and distributed.rank_seed(7, 1) != 7


def test_batch_size_must_divide_among_the_processes(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["train", str(spec), "--nproc", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.batch_size 64" in err and "3 processes" in err


# --------------------------------------------------------------------------- runs
def test_two_processes_train_like_one(tmp_path, capfd):
    """torchrun's launcher, 2 ranks (native kernels, the default), against one
    process: the same weights up to float summation order. The last batch of
    one sample leaves rank 1 empty (it joins the average with weight 0)."""
    spec = write_spec(tmp_path)
    one = loop.train(spec, out=tmp_path / "one", progress=False)
    args = ["train", str(spec), "--out", str(tmp_path / "two"), "--quiet"]
    assert main(args + ["--nproc", "2"]) == 0
    out = capfd.readouterr().out  # rank 0's, from its process
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert "2 processes" in out and two["world_size"] == 2
    difference = largest_difference(tmp_path / "one", tmp_path / "two")
    print(f"largest weight difference, 2 processes against 1: {difference:.3g}")
    assert difference < 1e-6
    torch.testing.assert_close(
        weights(tmp_path / "one")["iteration_loss"],
        weights(tmp_path / "two")["iteration_loss"],
        rtol=1e-6,
        atol=1e-6,
    )
    assert two["test_accuracy"] == one["test_accuracy"]
    for key in ("train_accuracy", "train_loss", "test_loss"):
        for a, b in zip(one["history"], two["history"]):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert two["firing_rates"] == pytest.approx(one["firing_rates"], rel=1e-6)
    # a rank's user error (here all of them) is said once, by the launcher
    assert (
        main(["train", str(spec), "--resume", str(tmp_path / "two"), "--nproc", "2"])
        == 2
    )
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has finished all 2 epochs" in err, err
    names = {p.name for p in (tmp_path / "two").iterdir()}
    assert names == {"checkpoint.pt", "metrics.json", "metrics.csv", "curves.png",
                     "raster.png", "spec.yaml"}  # fmt: skip


def test_ctrl_c_reaching_one_rank_stops_all_and_resumes_exactly(tmp_path, capsys):
    """Random draws (rate encoding, dropout): a mid-epoch checkpoint holds every
    rank's random state, so resuming with as many processes is bit-identical;
    with another number it finishes (other draws for the rest of that epoch)."""
    spec = write_spec(tmp_path, encoding="{type: rate}", dropout=True, limit_train=320)
    options = {"spec": str(spec), "compile": "native"}
    ranks = run_ranks(
        tmp_path,
        2,
        {**options, "out": str(tmp_path / "full")},
        ({**options, "out": str(tmp_path / "cut")}, {"stop": (1, 1, 3)}),
        {**options, "resume": str(tmp_path / "cut"), "out": str(tmp_path / "two")},
    )
    for results in ranks:
        assert [r["status"] for r in results] == ["ok", "interrupted", "ok"], results
    payload = weights(tmp_path / "cut")
    assert (payload["epoch"], payload["step"], payload["world_size"]) == (0, 3, 2)
    assert len(payload["rng_ranks"]) == 1
    assert_same_weights(tmp_path / "full", tmp_path / "two")
    capsys.readouterr()
    metrics = loop.train(
        spec, resume=tmp_path / "cut", out=tmp_path / "one", progress=False
    )
    assert "other random numbers" in capsys.readouterr().err
    assert metrics["epochs"] == 2 and metrics["world_size"] == 1


def test_a_dead_or_stalled_rank_does_not_hang_the_others(tmp_path):
    """Without torchrun's agent to stop them: after a rank died, the survivor's
    next collective fails at once; after a rank stalled, at the timeout
    (SNNCOMPILE_DIST_TIMEOUT, 3 s here). Either way it ends with one message,
    and the last checkpoint is intact."""
    spec = write_spec(tmp_path, epochs=3)
    options = {"spec": str(spec), "out": str(tmp_path / "run")}
    survivor, dead = run_ranks(tmp_path, 2, (options, {"die": (1, 2, 1)}))
    assert dead == []
    (result,) = survivor
    print(result)
    assert result["status"] == "PeerLost", result
    assert result["message"].startswith("rank 0 of 2: lost contact")
    assert weights(tmp_path / "run")["epoch"] == 1
    options["out"] = str(tmp_path / "stalled")
    survivor, stalled = run_ranks(
        tmp_path, 2, (options, {"stall": (1, 2, 1)}), stalled=(1,), dist_timeout=3
    )
    (result,) = survivor
    print(result)
    assert stalled == [] and result["status"] == "PeerLost", result
    assert result["seconds"] < 40
    assert weights(tmp_path / "stalled")["epoch"] == 1


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes `parent` started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_killed_rank_ends_the_run_and_it_resumes_with_another_n(tmp_path):
    spec = write_spec(tmp_path, epochs=500, limit_train=2048)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "snncompile", "train", str(spec), "--out",
               str(run), "--quiet", "--nproc", "2"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (run / "metrics.json").exists():  # an epoch is done
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        pids = _rank_pids(proc.pid)
        assert set(pids) == {0, 1}
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - killed
    finally:
        proc.kill()
    err = err.decode().strip()
    print(f"the run ended {seconds:.1f} s after rank 1 was killed: {err}")
    assert proc.returncode == 1 and seconds < 15
    assert len(err.splitlines()) == 1
    assert "rank 1" in err and "SIGKILL" in err and f"--resume {run}" in err
    payload = weights(run)  # intact: written atomically by rank 0
    done = payload["epoch"]
    assert done >= 1 and payload["step"] == 0
    metrics = loop.train(spec, resume=run, epochs=done + 1, progress=False)
    assert metrics["epochs"] == done + 1 and not metrics["interrupted"]
