"""The reliability corpus of issue 17: small hostile or careless uses of the
command line, each run through `snncompile.cli.main` in this process (or, for
signals and concurrent writers, in subprocesses).

Every probe must meet one contract (checked by `test_probe`, not by each probe):

- it ends with the exit status the table gives: 2 with exactly one line
  `error: ...` on stderr naming the thing and the problem (a spec error's
  `1 error` summary aside), 130 for an interrupt, 0 for uses that should work;
- no "Traceback" anywhere in its output;
- no file that existed before the probe's command is changed or lost (the
  bytes and mtime of every file under the probe's folder, except those the
  probe names as its command's own output), and a refused command leaves no
  new file behind.

Probes are registered with @probe(...) in the order of the table below; the
count shows with `pytest --collect-only -q tests/test_reliability.py`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch

from snncompile.cli import main
from snncompile.lower import checkpoint as ckpt
from snncompile.train import loop, rundir

SPEC = """\
snncompile: 1
name: {name}
input: {{shape: [1, 6, 6], encoding: {{type: rate}}}}
steps: {steps}
defaults: {{beta: 0.9}}
layers:
  - type: flatten
  - {{type: linear, name: fc1, out_features: {hidden}}}
  - {{type: leaky, name: lif1}}
  - {{type: linear, name: fc2, out_features: 10}}
  - {{type: leaky, name: lif2}}
loss: {{type: ce_rate}}
train:
  dataset: synthetic
  batch_size: 32
  epochs: {epochs}
  optimizer: {{type: adam, lr: {lr}}}
  limit_train: {limit_train}
  limit_test: 32
  device: cpu
{extra}"""

FAST = ("--quiet", "--compile", "none")
RUN_FILES = tuple(f"run/{name}" for name in rundir.RUN_FILES)


FIELDS = {"name": "tiny", "steps": 6, "hidden": 16, "epochs": 1, "lr": 0.01,
          "limit_train": 64, "extra": ""}  # fmt: skip


def spec_text(**fields) -> str:
    """The tiny spec (tiny.yaml), `fields` changed."""
    return SPEC.format(**{**FIELDS, **fields})


# --------------------------------------------------------------------------- harness
@dataclass
class Result:
    code: int
    out: str = ""
    err: str = ""


@dataclass
class Probe:
    id: str
    body: Callable
    code: int
    words: tuple[str, ...]
    changes: tuple[str, ...]  # globs (relative): earlier files the command may write
    creates: bool  # whether a refused command may leave new files
    marks: tuple


PROBES: list[Probe] = []


def probe(id, code=2, words=(), changes=(), creates=None, marks=()):
    """Register a probe: `body(ctx) -> Result`; the body calls ctx.freeze()
    right before the command under test (ctx.main does it when the body has not)."""

    def register(body):
        PROBES.append(
            Probe(
                id,
                body,
                code,
                tuple(words),
                tuple(changes),
                code != 2 if creates is None else creates,
                tuple(marks),
            )
        )
        return body

    return register


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its digest and mtime."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
    return found


class Ctx:
    def __init__(self, tmp: Path, monkeypatch, capsys, base: Path):
        self.tmp, self.base = tmp, base
        self.monkeypatch, self.capsys = monkeypatch, capsys
        self.before: dict | None = None

    # ------------------------------------------------------------ files
    def spec(self, file="tiny.yaml", **fields) -> Path:
        path = self.tmp / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec_text(**fields))
        return path

    def run(self, name="run", source="run") -> Path:
        """A copy of a finished one-epoch run of tiny.yaml (or of `other`)."""
        target = self.tmp / name
        shutil.copytree(self.base / source, target)
        return target

    def freeze(self) -> None:
        self.before = snapshot(self.tmp)

    # ------------------------------------------------------------ commands
    def main(self, *argv) -> Result:
        if self.before is None:
            self.freeze()
        self.capsys.readouterr()
        extra = ""
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:  # argparse
            code = exit.code if isinstance(exit.code, int) else 1
        except Exception:  # noqa: BLE001 (the command line would show a traceback)
            code, extra = 1, traceback.format_exc()
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err + extra)

    def train(self, spec, out="run", *more) -> Result:
        return self.main("train", spec, "--out", self.tmp / out, *FAST, *more)


def error_line(result: Result) -> str:
    """The one `error:` line of a refused command (a spec error's count line
    aside); fails on anything else on stderr."""
    lines = [
        line for line in result.err.replace("\r", "\n").splitlines() if line.strip()
    ]
    if len(lines) == 2 and lines[1] == "1 error":  # SpecError's summary
        lines = lines[:1]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"{path} is not strict JSON: {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def same_spec(a: Path, b: Path) -> bool:
    import snncompile

    return snncompile.load(a).model_dump() == snncompile.load(b).model_dump()


def finite(payload: dict) -> bool:
    return all(torch.isfinite(v).all() for v in payload["model"].values())


# --------------------------------------------------------------------------- run dirs
@probe("train-into-a-finished-run", words=["{tmp}/run", "is not empty", "--overwrite"])
def _(ctx):
    ctx.run()
    return ctx.train(ctx.spec())


@probe(
    "train-into-a-folder-of-other-files",
    words=["{tmp}/notes", "notes.txt", "is not empty"],
)
def _(ctx):
    (ctx.tmp / "notes").mkdir()
    (ctx.tmp / "notes" / "notes.txt").write_text("mine")
    return ctx.train(ctx.spec(), "notes")


@probe("overwrite-keeps-unrelated-files", code=0, changes=RUN_FILES)
def _(ctx):
    run = ctx.run()
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "mine.png").write_bytes(b"\x89PNG mine")
    spec = ctx.spec(epochs=2)
    result = ctx.train(spec, "run", "--overwrite")
    assert weights(run)["epoch"] == 2
    assert same_spec(run / "spec.yaml", spec)
    assert not (run / rundir.LOCK_NAME).exists()
    return result


@probe("out-empty-string", words=["--out is empty"])
def _(ctx):
    ctx.monkeypatch.chdir(ctx.tmp)
    spec = ctx.spec()
    return ctx.main("train", spec, "--out", "", *FAST)


@probe("out-is-a-file", words=["{tmp}/file", "is a file, not a directory"])
def _(ctx):
    (ctx.tmp / "file").write_text("x")
    return ctx.train(ctx.spec(), "file")


@probe("out-under-a-file", words=["{tmp}/file/run", "a part of the path is a file"])
def _(ctx):
    (ctx.tmp / "file").write_text("x")
    return ctx.train(ctx.spec(), "file/run")


@probe("out-without-write-permission", words=["{tmp}/locked", "permission denied"])
def _(ctx):
    # tests run as root, whom chmod does not stop: the check is simulated
    (ctx.tmp / "locked").mkdir()
    real = os.access
    ctx.monkeypatch.setattr(
        rundir.os,
        "access",
        lambda path, mode: False if str(path).endswith("locked") else real(path, mode),
    )
    return ctx.train(ctx.spec(), "locked")


@probe(
    "out-cannot-be-created",
    words=["cannot create run directory", "{tmp}/ro/run", "Permission denied"],
)
def _(ctx):
    (ctx.tmp / "ro").mkdir()
    real = Path.mkdir

    def mkdir(self, *args, **options):
        if self.parent.name == "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **options)

    ctx.monkeypatch.setattr(Path, "mkdir", mkdir)
    return ctx.train(ctx.spec(), "ro/run")


def _locked(ctx, folder, *argv):
    ctx.freeze()
    lock = rundir.Lock(folder)  # what a running `snncompile train` holds
    try:
        return ctx.main(*argv)
    finally:
        lock.release()


BUSY = ["is writing into run directory", "{tmp}/run", f"(pid {os.getpid()})"]


@probe("second-writer-into-a-new-folder", words=BUSY)
def _(ctx):
    spec = ctx.spec()
    (ctx.tmp / "run").mkdir()
    return _locked(ctx, ctx.tmp / "run", "train", spec, "--out", ctx.tmp / "run", *FAST)


@probe("second-writer-with-overwrite", words=BUSY)
def _(ctx):
    spec, run = ctx.spec(), ctx.run()
    return _locked(ctx, run, "train", spec, "--out", run, "--overwrite", *FAST)


@probe("second-writer-resuming", words=BUSY)
def _(ctx):
    spec, run = ctx.spec(), ctx.run()
    return _locked(ctx, run, "train", spec, "--resume", run, "--epochs", 2, *FAST)


@probe(
    "train-over-its-own-spec",
    words=["{tmp}/run/spec.yaml", "is an input of this command"],
)
def _(ctx):
    run = ctx.run()
    return ctx.train(run / "spec.yaml", "run", "--overwrite")


@probe(
    "resume-a-finished-run",
    words=["{tmp}/run/checkpoint.pt", "has finished all 1 epochs", "--epochs"],
)
def _(ctx):
    spec, run = ctx.spec(), ctx.run()
    return ctx.main("train", spec, "--resume", run, *FAST)


@probe("resume-a-missing-run", words=["no checkpoint at", "{tmp}/nothing"])
def _(ctx):
    return ctx.main("train", ctx.spec(), "--resume", ctx.tmp / "nothing", *FAST)


@probe(
    "resume-in-place-from-its-own-spec",
    code=0,
    changes=[f for f in RUN_FILES if f != "run/spec.yaml"],
)
def _(ctx):
    run = ctx.run()
    result = ctx.main("train", run / "spec.yaml", "--resume", run, "--epochs", 2, *FAST)
    assert weights(run)["epoch"] == 2
    return result


# --------------------------------------------------------------------------- inputs and outputs
@probe(
    "export-onto-its-own-checkpoint",
    words=["{tmp}/run/checkpoint.pt", "this command's input"],
)
def _(ctx):
    run = ctx.run()
    return ctx.main(
        "export", run / "spec.yaml", "--checkpoint", run, "-o", run / "checkpoint.pt"
    )


@probe(
    "export-onto-its-own-spec", words=["{tmp}/run/spec.yaml", "this command's input"]
)
def _(ctx):
    run = ctx.run()
    return ctx.main(
        "export", run / "spec.yaml", "--checkpoint", run, "-o", run / "spec.yaml"
    )


@probe("export-onto-a-directory", words=["{tmp}/run", "is a directory"])
def _(ctx):
    run = ctx.run()
    return ctx.main("export", ctx.spec(), "--checkpoint", run, "-o", run)


@probe("export-under-a-file", words=["{tmp}/file/m.onnx", "is a file, not a directory"])
def _(ctx):
    (ctx.tmp / "file").write_text("x")
    return ctx.main("export", ctx.spec(), "-o", ctx.tmp / "file" / "m.onnx")


@probe("export-into-a-missing-folder", words=["{tmp}/missing", "does not exist"])
def _(ctx):
    return ctx.main("export", ctx.spec(), "-o", ctx.tmp / "missing" / "m.onnx")


@probe("codegen-o-is-a-file", words=["{tmp}/file", "is a file, not a directory"])
def _(ctx):
    (ctx.tmp / "file").write_text("x")
    return ctx.main("codegen", ctx.spec(), "-o", ctx.tmp / "file")


@probe(
    "codegen-o-under-a-file", words=["{tmp}/file/gen", "a part of the path is a file"]
)
def _(ctx):
    (ctx.tmp / "file").write_text("x")
    return ctx.main("codegen", ctx.spec(), "-o", ctx.tmp / "file" / "gen")


@probe("codegen-onto-its-own-spec", words=["{tmp}/tiny.py", "this command's input"])
def _(ctx):
    spec = ctx.spec("tiny.py")  # a YAML spec in a file named as its script
    return ctx.main("codegen", spec, "-o", ctx.tmp)


@probe(
    "schema-o-into-a-missing-folder",
    words=["{tmp}/missing/schema.json", "No such file or directory"],
)
def _(ctx):
    return ctx.main("schema", "-o", ctx.tmp / "missing" / "schema.json")


@probe("schema-o-onto-a-directory", words=["{tmp}/folder", "Is a directory"])
def _(ctx):
    (ctx.tmp / "folder").mkdir()
    return ctx.main("schema", "-o", ctx.tmp / "folder")


def _bench_json(ctx, target) -> Result:
    """`bench --json TARGET` (the smallest benchmark: about 15 s) must fail
    before it benchmarks."""
    ctx.freeze()
    started = time.perf_counter()
    quick = ("--repeats", 1, "--run", 1, "--warmup", 0, "--no-compile")
    result = ctx.main("bench", ctx.tmp / "tiny.yaml", "--json", target, *quick)
    assert time.perf_counter() - started < 5, "benchmarked before checking --json"
    return result


@probe(
    "bench-json-into-a-missing-folder-fails-first",
    words=["--json", "{tmp}/missing/bench.json", "does not exist"],
)
def _(ctx):
    ctx.spec()
    return _bench_json(ctx, ctx.tmp / "missing" / "bench.json")


@probe(
    "bench-json-onto-its-own-spec",
    words=["--json", "{tmp}/tiny.yaml", "this command's input"],
)
def _(ctx):
    return _bench_json(ctx, ctx.spec())


def _nir_file(ctx) -> Path:
    """tiny's run as a NIR file (exported once, copied)."""
    pytest.importorskip("nir")
    from snncompile.export.nir import export_nir

    made = ctx.base / "tiny.nir"
    if not made.exists():
        export_nir(
            ctx.base / "run" / "spec.yaml",
            made,
            checkpoint=ctx.base / "run",
            approximate=True,
        )
    shutil.copy2(made, ctx.tmp / "tiny.nir")
    return ctx.tmp / "tiny.nir"


@probe(
    "import-o-onto-its-own-nir-file",
    words=["-o {tmp}/tiny.nir", "this command's input"],
)
def _(ctx):
    nir_file = _nir_file(ctx)
    return ctx.main(
        "import", nir_file, "-o", nir_file, "--checkpoint-out", ctx.tmp / "w.pt"
    )


@probe(
    "import-checkpoint-out-onto-its-own-nir-file",
    words=["--checkpoint-out {tmp}/tiny.nir", "this command's input"],
)
def _(ctx):
    nir_file = _nir_file(ctx)
    return ctx.main(
        "import", nir_file, "-o", ctx.tmp / "spec.yaml", "--checkpoint-out", nir_file
    )


@probe(
    "import-spec-and-checkpoint-to-one-file",
    words=["{tmp}/both", "-o and --checkpoint-out are the same file"],
)
def _(ctx):
    nir_file = _nir_file(ctx)
    both = ctx.tmp / "both"
    return ctx.main("import", nir_file, "-o", both, "--checkpoint-out", both)


@probe("import-o-onto-a-directory", words=["{tmp}/run", "is a directory"])
def _(ctx):
    nir_file, run = _nir_file(ctx), ctx.run()
    return ctx.main(
        "import", nir_file, "-o", ctx.tmp / "s.yaml", "--checkpoint-out", run
    )


SWEEP = "sweep:\n  parameters: {train.optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}}\n"


@probe("sweep-out-is-a-file", words=["{tmp}/file", "is a file, not a directory"])
def _(ctx):
    (ctx.tmp / "file").write_text("x")
    spec = ctx.spec(extra=SWEEP)
    return ctx.main("sweep", spec, "--trials", 1, "--out", ctx.tmp / "file", *FAST)


@probe("sweep-into-a-run-directory", words=["{tmp}/run", "no sweep (sweep.db)"])
def _(ctx):
    spec, run = ctx.spec(extra=SWEEP), ctx.run()
    return ctx.main("sweep", spec, "--trials", 1, "--out", run, *FAST)


# --------------------------------------------------------------------------- full disks
def _failing_save(ctx, error, fail_at=1):
    """torch.save, as checkpoint.save_atomically calls it, fails on call
    `fail_at` and later ones, after writing half a file."""
    real, calls = ckpt.torch.save, []

    def save(obj, path, *args, **options):
        calls.append(path)
        if len(calls) >= fail_at:
            Path(path).write_bytes(b"half")
            raise error
        return real(obj, path, *args, **options)

    ctx.monkeypatch.setattr(ckpt.torch, "save", save)
    return calls


ENOSPC = OSError(errno.ENOSPC, "No space left on device")
KEPT = ["cannot write {tmp}/run/checkpoint.pt", "(after epoch 1) is kept"]


def _fails_in_epoch_2(ctx, error) -> Result:
    spec = ctx.spec(epochs=2)
    ctx.freeze()
    _failing_save(ctx, error, fail_at=3)  # the start, epoch 1, then epoch 2
    result = ctx.train(spec)
    payload = weights(ctx.tmp / "run")
    assert payload["epoch"] == 1 and finite(payload)
    assert not list((ctx.tmp / "run").glob("*.tmp")), "a temporary file was left"
    return result


@probe(
    "checkpoint-enospc-keeps-the-last",
    words=[*KEPT, "No space left on device"],
    creates=True,
)
def _(ctx):
    return _fails_in_epoch_2(ctx, ENOSPC)


@probe("checkpoint-torch-full-disk-keeps-the-last", words=KEPT, creates=True)
def _(ctx):
    return _fails_in_epoch_2(
        ctx,
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64"),
    )


@probe("checkpoint-efbig-keeps-the-last", words=[*KEPT, "File too large"], creates=True)
def _(ctx):
    return _fails_in_epoch_2(ctx, OSError(errno.EFBIG, "File too large"))


@probe(
    "checkpoint-enospc-on-resume-keeps-the-previous",
    words=["cannot write {tmp}/run/checkpoint.pt", "No space left on device"],
    changes=["run/metrics.csv", "run/metrics.json", "run/spec.yaml"],
)
def _(ctx):
    spec, run = ctx.spec(), ctx.run()
    ctx.freeze()
    _failing_save(ctx, ENOSPC)
    result = ctx.main("train", spec, "--resume", run, "--epochs", 2, *FAST)
    assert weights(run)["epoch"] == 1
    return result


@probe(
    "metrics-json-enospc",
    words=["{tmp}/run/metrics.json", "No space left on device"],
    creates=True,
)
def _(ctx):
    spec = ctx.spec()
    real = Path.write_text

    def write_text(self, *args, **options):
        if self.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **options)

    ctx.monkeypatch.setattr(Path, "write_text", write_text)
    return ctx.train(spec)


@probe(
    "too-little-space-known-before-the-data",
    words=["not enough space in {tmp}/run", "MB free"],
)
def _(ctx):
    spec = ctx.spec()
    usage = shutil.disk_usage(ctx.tmp)
    ctx.monkeypatch.setattr(
        rundir.shutil, "disk_usage", lambda path: usage._replace(free=1000)
    )
    for name in ("load_training", "load_split"):
        ctx.monkeypatch.setattr(loop, name, lambda *a, **k: pytest.fail("loaded"))
    result = ctx.train(spec)
    assert not (ctx.tmp / "run").exists()
    return result


def _write_idx(path: Path, array: torch.Tensor) -> None:
    header = struct.pack(">I", 0x800 | array.dim())
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def _full_dataset_cache(ctx, error) -> Result:
    from snncompile.train import data

    raw = ctx.tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 64), ("t10k", 32)):
        images = torch.randint(0, 256, (count, 28, 28), generator=gen)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", torch.arange(count) % 10)
    spec = ctx.tmp / "mnist.yaml"
    spec.write_text(
        spec_text(hidden=8)
        .replace("dataset: synthetic", "dataset: mnist")
        .replace("[1, 6, 6]", "[1, 28, 28]")
    )

    def full(obj, path):
        raise error

    ctx.monkeypatch.setattr(data, "save_atomically", full)
    result = ctx.train(spec, "run", "--data-root", ctx.tmp / "data", "--no-download")
    assert strict_json(ctx.tmp / "run" / "metrics.json")["train_samples"] == 64
    cache = ctx.tmp / "cache"
    assert not cache.exists() or not list(cache.rglob("*.pt")), (
        "a cache file was written"
    )
    return result


@probe("dataset-cache-enospc-does-not-stop-training", code=0)
def _(ctx):
    return _full_dataset_cache(ctx, OSError(errno.ENOSPC, "No space left on device"))


@probe("dataset-cache-torch-full-disk-does-not-stop-training", code=0)
def _(ctx):
    return _full_dataset_cache(
        ctx,
        RuntimeError(
            "PytorchStreamWriter failed writing file data/0: file write failed"
        ),
    )


# --------------------------------------------------------------------------- divergence
@probe(
    "divergence-at-the-first-step",
    creates=True,
    words=["at epoch 1, iteration 1/2", "training stopped"],
)
def _(ctx):
    result = ctx.train(ctx.spec(lr="1.0e+300"))
    payload = weights(ctx.tmp / "run")
    assert payload["epoch"] == 0 and finite(payload)  # the start: finite
    metrics = strict_json(ctx.tmp / "run" / "metrics.json")
    assert metrics["stopped"]["reason"] == "non-finite"
    return result


@probe(
    "divergence-in-epoch-2-keeps-epoch-1",
    creates=True,
    words=["loss is nan at epoch 2, iteration 2/2", "training stopped"],
)
def _(ctx):
    make_loss, calls = loop.make_loss, []

    def poisoned(graph, native=False):
        loss_of, records = make_loss(graph, native)

        def loss(spk, mem, targets, records=None, mask=None):
            value = loss_of(spk, mem, targets, records, mask)
            calls.append(1)
            # 2 training and 1 test batch an epoch: the 5th is epoch 2, iteration 2
            return value * float("nan") if len(calls) == 5 else value

        return loss, records

    ctx.monkeypatch.setattr(loop, "make_loss", poisoned)
    result = ctx.train(ctx.spec(epochs=3))
    payload = weights(ctx.tmp / "run")
    assert payload["epoch"] == 1 and finite(payload)
    metrics = strict_json(ctx.tmp / "run" / "metrics.json")
    assert metrics["stopped"] == {"reason": "non-finite", "epoch": 2, "iteration": 2}
    assert len(metrics["history"]) == 1
    return result


# --------------------------------------------------------------------------- checkpoints
NOT_READABLE = ["{tmp}/run/checkpoint.pt", "is not a readable checkpoint"]


def _resume_from(ctx, damage) -> Result:
    spec, run = ctx.spec(), ctx.run()
    damage(run / "checkpoint.pt")
    return ctx.main("train", spec, "--resume", run, "--epochs", 2, *FAST)


@probe("resume-from-a-truncated-checkpoint", words=NOT_READABLE)
def _(ctx):
    def truncate(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return _resume_from(ctx, truncate)


@probe("resume-from-random-bytes", words=NOT_READABLE)
def _(ctx):
    return _resume_from(
        ctx, lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096))
    )


@probe("resume-from-an-empty-checkpoint", words=NOT_READABLE)
def _(ctx):
    return _resume_from(ctx, lambda path: path.write_bytes(b""))


@probe(
    "resume-from-a-checkpoint-of-another-spec",
    words=[
        "{tmp}/run/checkpoint.pt",
        "trained from a different network",
        "'other'",
        "layers",
    ],
)
def _(ctx):
    spec, run = ctx.spec(), ctx.run()
    shutil.copy2(ctx.base / "other" / "checkpoint.pt", run / "checkpoint.pt")
    return ctx.main("train", spec, "--resume", run, "--epochs", 2, *FAST)


@probe(
    "resume-with-a-changed-learning-rate",
    words=["train.optimizer.lr (0.01 -> 0.02)", "--resume applies changes to only"],
)
def _(ctx):
    spec, run = ctx.spec(lr=0.02), ctx.run()
    return ctx.main("train", spec, "--resume", run, "--epochs", 2, *FAST)


@probe("resume-with-a-changed-lr-by-set", words=["train.optimizer.lr (0.01 -> 0.5)"])
def _(ctx):
    spec, run = ctx.spec(), ctx.run()
    return ctx.main(
        "train",
        spec,
        "--resume",
        run,
        "--epochs",
        2,
        *FAST,
        "--set",
        "train.optimizer.lr=0.5",
    )


@probe(
    "eval-a-checkpoint-of-another-network",
    words=["{tmp}/other", "trained from a different network", "layers"],
)
def _(ctx):
    ctx.run("other", source="other")
    return ctx.main("eval", ctx.spec(), "--checkpoint", ctx.tmp / "other")


@probe(
    "eval-bare-weights-of-other-shapes",
    words=["{tmp}/bare.pt", "do not fit this spec", "fc1.weight [12, 36]"],
)
def _(ctx):
    state = torch.load(ctx.base / "other" / "checkpoint.pt", weights_only=True)
    torch.save(state["model"], ctx.tmp / "bare.pt")  # as a generated script saves
    return ctx.main("eval", ctx.spec(), "--checkpoint", ctx.tmp / "bare.pt")


@probe(
    "eval-a-checkpoint-of-random-bytes",
    words=["{tmp}/junk.pt", "is not a readable checkpoint"],
)
def _(ctx):
    (ctx.tmp / "junk.pt").write_bytes(np.random.default_rng(1).bytes(1000))
    return ctx.main("eval", ctx.spec(), "--checkpoint", ctx.tmp / "junk.pt")


@probe(
    "export-a-checkpoint-of-another-network",
    words=["{tmp}/other", "trained from a different network"],
)
def _(ctx):
    ctx.run("other", source="other")
    return ctx.main(
        "export",
        ctx.spec(),
        "--checkpoint",
        ctx.tmp / "other",
        "-o",
        ctx.tmp / "m.onnx",
    )


@probe(
    "eval-onnx-from-an-edited-spec-of-the-same-name",
    words=["exported from a different network", "layers"],
)
def _(ctx):
    pytest.importorskip("onnxruntime")
    from snncompile.export.onnx import export_onnx

    run = ctx.run()
    export_onnx(ctx.spec(), ctx.tmp / "tiny.onnx", checkpoint=run)
    edited = ctx.spec("edited.yaml", hidden=12)  # still named tiny
    return ctx.main("eval", edited, "--onnx", ctx.tmp / "tiny.onnx")


# --------------------------------------------------------------------------- specs
@probe(
    "spec-of-2-mb-refused-unread",
    words=["{tmp}/big.yaml", "2.0 MiB", "at most 1.0 MiB"],
)
def _(ctx):
    path = ctx.tmp / "big.yaml"
    with open(path, "wb") as handle:
        handle.write(spec_text().encode())
        handle.truncate(2 * 2**20)  # the rest sparse: never read
    ctx.freeze()
    started = time.perf_counter()
    result = ctx.train(path)
    assert time.perf_counter() - started < 2
    return result


def _yaml_11(ctx, old, new) -> Result:
    path = ctx.tmp / "tiny.yaml"
    text = spec_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return ctx.train(path)


@probe("yaml-11-octal-steps", words=["{tmp}/tiny.yaml:4:", "steps", "octal number 21"])
def _(ctx):
    return _yaml_11(ctx, "steps: 6", "steps: 025")


@probe(
    "yaml-11-sexagesimal-steps", words=["{tmp}/tiny.yaml:4:", "base-60", "number 90"]
)
def _(ctx):
    return _yaml_11(ctx, "steps: 6", "steps: 1:30")


@probe(
    "yaml-11-boolean-yes",
    words=["{tmp}/tiny.yaml:21:", "train.drop_last", "write true"],
)
def _(ctx):
    return _yaml_11(ctx, "device: cpu", "device: cpu\n  drop_last: yes")


@probe(
    "seed-above-2-64-in-the-spec",
    words=["{tmp}/tiny.yaml:21:", "train.seed", "at most 2**64 - 1"],
)
def _(ctx):
    return _yaml_11(ctx, "device: cpu", f"device: cpu\n  seed: {2**64}")


@probe("seed-flag-above-2-64", words=["train.seed", "at most 2**64 - 1"])
def _(ctx):
    return ctx.train(ctx.spec(), "run", "--seed", 2**64)


@probe("spec-named-json", words=["{tmp}/json.yaml:2:", "name", "json.py would shadow"])
def _(ctx):
    spec = ctx.spec("json.yaml", name="json")
    return ctx.main("codegen", spec, "-o", ctx.tmp / "gen")


@probe("spec-named-numpy", words=["{tmp}/numpy.yaml:2:", "the module 'numpy'"])
def _(ctx):
    return ctx.train(ctx.spec("numpy.yaml", name="numpy"))


@probe("spec-that-is-a-directory", words=["{tmp}/run", "Is a directory"])
def _(ctx):
    run = ctx.run()
    return ctx.main("train", run, "--out", ctx.tmp / "new", *FAST)


@probe("spec-that-is-not-utf8", words=["{tmp}/bad.yaml", "cannot read file", "utf-8"])
def _(ctx):
    (ctx.tmp / "bad.yaml").write_bytes(b"snncompile: 1\nname: \xff\xfe\n")
    return ctx.main("validate", ctx.tmp / "bad.yaml")


def huge_spec(tmp: Path) -> Path:
    """About 16e9 parameters (tests/test_limits.py): eight 44722 x 44722 layers."""
    width = 44_722
    layers = "\n".join(
        f"  - {{type: linear, name: fc{i}, out_features: {width}}}\n"
        f"  - {{type: leaky, name: lif{i}}}"
        for i in range(1, 9)
    )
    path = tmp / "huge.yaml"
    path.write_text(
        "snncompile: 1\nname: huge\ninput: {shape: [44722]}\nsteps: 2\n"
        f"defaults: {{beta: 0.9}}\nlayers:\n{layers}\ntrain: {{dataset: synthetic}}\n"
    )
    return path


def _skip_if_it_fits(path: Path) -> None:
    import snncompile
    from snncompile.estimate import estimate, machine_memory

    if (machine_memory() or 0) > estimate(
        snncompile.analyze(snncompile.load(path))
    ).total:
        pytest.skip("this machine could hold 16e9 parameters")


@probe(
    "validate-16e9-parameters",
    words=[
        "{tmp}/huge.yaml:",
        "huge cannot be trained here",
        "estimated training memory",
    ],
)
def _(ctx):
    path = huge_spec(ctx.tmp)
    _skip_if_it_fits(path)
    return ctx.main("validate", path)


@probe(
    "train-16e9-parameters",
    words=["huge cannot be trained here", "estimated training memory"],
)
def _(ctx):
    path = huge_spec(ctx.tmp)
    _skip_if_it_fits(path)
    result = ctx.train(path)
    assert not (ctx.tmp / "run").exists()  # refused before the run directory
    return result


# --------------------------------------------------------------------------- overrides
@probe(
    "set-a-misspelled-path",
    words=[
        "--set train.optimzer.lr=1",
        "unknown field 'optimzer'",
        "did you mean 'optimizer'",
    ],
)
def _(ctx):
    return ctx.train(ctx.spec(), "run", "--set", "train.optimzer.lr=1")


@probe("set-a-bad-value", words=["--set train.optimizer.lr=abc", "expected a number"])
def _(ctx):
    return ctx.train(ctx.spec(), "run", "--set", "train.optimizer.lr=abc")


@probe(
    "set-an-unknown-layer-name",
    words=["--set layers.fc3.beta=1", "no item named 'fc3' in layers"],
)
def _(ctx):
    return ctx.train(ctx.spec(), "run", "--set", "layers.fc3.beta=1")


@probe("set-a-yaml-11-value", words=["--set steps=025", "octal"])
def _(ctx):
    return ctx.main("validate", ctx.spec(), "--set", "steps=025")


# --------------------------------------------------------------------------- data
@probe(
    "tensors-labels-out-of-range", words=["d/train.npz:", "labels 0..12 outside 0..9"]
)
def _(ctx):
    import yaml

    root = ctx.tmp / "data"
    (root / "d").mkdir(parents=True)
    inputs = np.random.default_rng(0).random((13, 4)).astype(np.float32)
    np.savez(root / "d" / "train.npz", inputs=inputs, targets=np.arange(13))
    np.savez(root / "d" / "test.npz", inputs=inputs[:6], targets=np.arange(6))
    spec = {
        "snncompile": 1,
        "name": "corpus",
        "input": {"shape": [4], "encoding": {"type": "direct"}},
        "steps": 2,
        "layers": [
            {"type": "linear", "out_features": 10},
            {"type": "leaky", "beta": 0.9},
        ],
        "train": {
            "dataset": {
                "type": "tensors",
                "train": "d/train.npz",
                "test": "d/test.npz",
            },
            "batch_size": 4,
            "epochs": 1,
            "device": "cpu",
        },
    }
    path = ctx.tmp / "corpus.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = ctx.train(path, "run", "--data-root", root)
    assert not (ctx.tmp / "run").exists()
    return result


# --------------------------------------------------------------------------- processes
def _command(spec, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snncompile",
        "train",
        str(spec),
        "--out",
        str(out),
        *FAST,
    ]


@probe(
    "second-writer-held-by-another-process",
    words=["is writing into run directory", "{tmp}/run"],
)
def _(ctx):
    spec, run = ctx.spec(), ctx.tmp / "run"
    run.mkdir()
    code = (
        "import time; from snncompile.train import rundir; "
        f"rundir.Lock({str(run)!r}); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = ctx.train(spec, "run", "--overwrite")
        assert f"(pid {holder.pid})" in result.err
    finally:
        holder.kill()
        holder.wait()
    return result


@probe(
    "sigterm-during-training",
    code=130,
    words=["SIGTERM received", "--resume {tmp}/run"],
)
def _(ctx):
    spec, run = ctx.spec(epochs=1000), ctx.tmp / "run"
    ctx.freeze()
    proc = subprocess.Popen(
        _command(spec, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    result = Result(proc.returncode, out, err)
    payload = weights(run)
    assert payload["epoch"] >= 1 and finite(payload)
    assert not (run / rundir.LOCK_NAME).exists()
    # the checkpoint resumes (in this process)
    more = ctx.main(
        "train", spec, "--resume", run, "--epochs", payload["epoch"] + 1, *FAST
    )
    assert more.code == 0 and "Traceback" not in more.err, more.err
    assert weights(run)["epoch"] == payload["epoch"] + 1
    return result


@probe("two-concurrent-writers-into-one-out", creates=True)
def _(ctx):
    spec, run = ctx.spec(epochs=2, limit_train=256), ctx.tmp / "run"
    go = ctx.tmp / "go"
    ctx.freeze()
    # both processes import everything, then start at the same moment
    code = (
        "import sys, time, os\nfrom snncompile.cli import main\n"
        "import snncompile.train.loop\nprint('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f"sys.exit(main({_command(spec, run)[3:]!r}))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.write_text("")
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    go.unlink()
    results = sorted(
        (Result(p.returncode, *output) for p, output in zip(procs, outputs)),
        key=lambda r: r.code,
    )
    assert [r.code for r in results] == [0, 2], results
    winner, loser = results
    assert "Traceback" not in winner.err + winner.out
    line = error_line(loser)
    assert "is writing into run directory" in line or "is not empty" in line, line
    assert str(run) in line
    # the winner's run is whole
    assert weights(run)["epoch"] == 2 and finite(weights(run))
    assert strict_json(run / "metrics.json")["epochs"] == 2
    assert same_spec(run / "spec.yaml", spec)
    leftovers = {p.name for p in run.iterdir()} - set(rundir.RUN_FILES)
    assert leftovers == set(), leftovers
    return loser


@probe("default-run-names-do-not-collide", code=0)
def _(ctx):
    ctx.monkeypatch.chdir(ctx.tmp)
    spec = ctx.spec()
    first = ctx.main("train", spec, *FAST)
    assert first.code == 0, first.err
    ctx.freeze()
    second = ctx.main("train", spec, *FAST)
    runs = sorted((ctx.tmp / "runs").iterdir())
    assert len(runs) == 2 and all((r / "checkpoint.pt").is_file() for r in runs)
    return second


# --------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Finished one-epoch runs, copied by the probes: `run` of tiny.yaml and
    `other` of a spec named other with 12 hidden neurons."""
    folder = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SNNCOMPILE_CACHE", str(folder / "cache"))
        for name, fields in (("run", {}), ("other", {"name": "other", "hidden": 12})):
            spec = folder / f"{name}.yaml"
            spec.write_text(spec_text(**fields))
            loop.train(spec, out=folder / name, compile="none", progress=False)
    return folder


def _check(probe: Probe, ctx: Ctx, result: Result) -> None:
    words = [w.format(tmp=ctx.tmp) for w in probe.words]
    output = result.out + result.err
    assert "Traceback" not in output, output
    assert result.code == probe.code, f"exit {result.code}:\n{output}"
    if probe.code == 2:
        line = error_line(result)
        for word in words:
            assert word in line, f"{word!r} not in {line!r}"
    else:
        for word in words:
            assert word in output, f"{word!r} not in {output!r}"
    # nothing earlier changed or lost
    after = snapshot(ctx.tmp)
    for name, (digest, mtime) in ctx.before.items():
        if any(fnmatch(name, pattern) for pattern in probe.changes):
            continue
        assert name in after, f"{name} was lost"
        assert after[name][0] == digest, f"{name} was changed"
        assert after[name][1] == mtime, f"{name} was written (same bytes)"
    if not probe.creates:
        new = sorted(set(after) - set(ctx.before))
        new = [n for n in new if not n.startswith("cache/")]
        assert new == [], f"a refused command left {new}"


@pytest.mark.parametrize(
    "probe", [pytest.param(p, id=p.id, marks=p.marks) for p in PROBES]
)
def test_probe(probe, tmp_path, monkeypatch, capsys, base):
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SNNCOMPILE_DATA", raising=False)
    ctx = Ctx(tmp_path, monkeypatch, capsys, base)
    result = probe.body(ctx)
    assert ctx.before is not None, "the probe ran no command"
    _check(probe, ctx, result)


def test_the_corpus_is_large_enough():
    assert len(PROBES) >= 40
    assert len({p.id for p in PROBES}) == len(PROBES)
