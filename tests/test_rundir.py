"""Nothing lost (issue 17): run directories are never written over by
accident, a second writer is refused, no command writes over its own input,
failed writes are one-line errors that keep the last checkpoint, the dataset
cache is optional, and eval --onnx checks the exported network."""

import errno
import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

import snncompile
from snncompile.cli import main
from snncompile.lower import checkpoint as ckpt
from snncompile.spec.errors import UserError
from snncompile.train import loop, rundir

SPEC = """\
snncompile: 1
name: tiny
input: {{shape: [1, 6, 6], encoding: {{type: rate}}}}
steps: 6
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
  optimizer: {{type: adam, lr: 0.01}}
  limit_train: 64
  limit_test: 32
  device: cpu
"""


def write(tmp_path, name="tiny.yaml", epochs=1, hidden=16):
    path = tmp_path / name
    path.write_text(SPEC.format(epochs=epochs, hidden=hidden))
    return path


def train(spec, **options):
    options.setdefault("compile", "none")
    options.setdefault("progress", False)
    return loop.train(spec, **options)


def command(spec, out, *more):
    return ["train", str(spec), "--out", str(out), "--quiet", "--compile", "none",
            *more]  # fmt: skip


def snapshot(folder):
    """Every file under `folder` and a digest of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- run dirs
def test_a_run_directory_is_not_written_over(tmp_path, capsys):
    spec = write(tmp_path)
    assert main(command(spec, tmp_path / "run")) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "run")
    assert main(command(spec, tmp_path / "run")) == 2
    err = one_error(capsys)
    assert "run directory" in err and "is not empty" in err and "--overwrite" in err
    assert snapshot(tmp_path / "run") == before
    # any other content counts too
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(command(spec, tmp_path / "other")) == 2
    assert "notes.txt" in one_error(capsys)


def test_overwrite_replaces_the_run_files_only(tmp_path, capsys):
    spec = write(tmp_path, epochs=2)
    train(spec, out=tmp_path / "run", tensorboard=True)
    (tmp_path / "run" / "best.pt").write_bytes(b"an earlier run's")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    old_events = list((tmp_path / "run" / "tensorboard").iterdir())
    assert main(command(spec, tmp_path / "run", "--overwrite", "--epochs", "1")) == 0
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert "best.pt" not in names and "tensorboard" not in names
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert (
        torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    )
    assert old_events and not any(p.exists() for p in old_events)


def test_an_empty_or_new_out_is_used_and_an_empty_name_refused(tmp_path, capsys):
    spec = write(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(command(spec, tmp_path / "empty")) == 0
    assert main(command(spec, tmp_path / "new" / "deeper")) == 0
    capsys.readouterr()
    assert main(["train", str(spec), "--out", "", "--quiet"]) == 2
    assert "--out is empty" in one_error(capsys)


def test_default_run_names_are_new_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = {rundir.default_dir("tiny") for _ in range(3)}
    assert len(made) == 3 and all(p.is_dir() and not any(p.iterdir()) for p in made)
    spec = write(tmp_path)
    one = train(spec)["run_dir"]
    two = train(spec)["run_dir"]
    assert one != two and one.startswith("runs/tiny-")


def test_a_failed_start_leaves_no_new_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path)
    spec.write_text(
        spec.read_text().replace("device: cpu", "device: cpu\n  precision: fp16")
    )
    with pytest.raises(UserError, match="fp16"):
        train(spec)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --------------------------------------------------------------------------- lock
def test_a_second_writer_is_refused(tmp_path, capsys):
    spec = write(tmp_path)
    (tmp_path / "new").mkdir()
    train(spec, out=tmp_path / "run")
    for folder in ("new", "run"):
        lock = rundir.Lock(tmp_path / folder)
        try:
            assert main(command(spec, tmp_path / folder, "--overwrite")) == 2
            err = one_error(capsys)
            assert f"(pid {os.getpid()}) is writing into run directory" in err
            if folder == "run":
                with pytest.raises(UserError, match="is writing into"):
                    train(spec, resume=tmp_path / "run", epochs=2)
        finally:
            lock.release()
    assert main(command(spec, tmp_path / "new")) == 0
    assert not (tmp_path / "new" / rundir.LOCK_NAME).exists()


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    (tmp_path / "run").mkdir()
    code = (
        "import time; from snncompile.train import rundir; "
        f"rundir.Lock({str(tmp_path / 'run')!r}); print('locked', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            rundir.Lock(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    rundir.Lock(tmp_path / "run").release()  # the kernel released the dead one's


# --------------------------------------------------------------------------- inputs
def test_no_command_writes_over_its_input(tmp_path, capsys):
    spec = write(tmp_path)
    assert main(command(spec, tmp_path / "run")) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    before = snapshot(run)
    # the run's own spec.yaml as the spec, --overwrite into that run
    assert main(command(run / "spec.yaml", run, "--overwrite")) == 2
    assert "is an input of this command" in one_error(capsys)
    # export onto the checkpoint or the spec it reads
    for output in (run / "checkpoint.pt", run / "spec.yaml"):
        args = ["export", str(run / "spec.yaml"), "--checkpoint", str(run), "-o",
                str(output)]  # fmt: skip
        assert main(args) == 2
        assert "this command's input" in one_error(capsys)
    assert main(["export", str(spec), "-o", str(run)]) == 2
    assert "is a directory" in one_error(capsys)
    # eval writes nothing
    assert main(["eval", str(spec), "--checkpoint", str(run), "--json"]) == 0
    assert snapshot(run) == before


def test_resuming_in_place_keeps_the_spec_file_it_reads(tmp_path, capsys):
    spec = write(tmp_path)
    run = tmp_path / "run"
    train(spec, out=run)
    text = (run / "spec.yaml").read_bytes()
    args = ["train", str(run / "spec.yaml"), "--resume", str(run), "--epochs", "2",
            "--quiet", "--compile", "none"]  # fmt: skip
    assert main(args) == 0
    assert (run / "spec.yaml").read_bytes() == text
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_nproc_refuses_a_used_out_before_starting_processes(tmp_path, capsys):
    spec = write(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    assert main(command(spec, tmp_path / "run", "--nproc", "2")) == 2
    assert "is not empty" in one_error(capsys)


# --------------------------------------------------------------------------- filesystem
def test_an_out_that_is_a_file_or_under_one_is_an_error(tmp_path, capsys):
    spec = write(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(command(spec, tmp_path / "file")) == 2
    assert "is a file, not a directory" in one_error(capsys)
    assert main(command(spec, tmp_path / "file" / "run")) == 2
    assert "a part of the path is a file" in one_error(capsys)
    assert main(["export", str(spec), "-o", str(tmp_path / "file" / "m.onnx")]) == 2
    assert "is a file, not a directory" in one_error(capsys)


def test_an_unwritable_out_is_an_error(tmp_path, capsys, monkeypatch):
    spec = write(tmp_path)
    (tmp_path / "locked").mkdir()
    real = os.access
    monkeypatch.setattr(
        rundir.os,
        "access",
        lambda path, mode: False if str(path).endswith("locked") else real(path, mode),
    )
    assert main(command(spec, tmp_path / "locked")) == 2
    assert "permission denied" in one_error(capsys)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes anywhere")  # fmt: skip
def test_a_read_only_directory_is_an_error(tmp_path, capsys):
    spec = write(tmp_path)
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        assert main(command(spec, tmp_path / "ro" / "run")) == 2
        assert "Permission denied" in one_error(capsys)
    finally:
        os.chmod(tmp_path / "ro", 0o700)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EFBIG, "File too large"),
    ],
    ids=["torch-full-disk", "enospc", "efbig"],
)
def test_a_failed_checkpoint_write_keeps_the_last_one(
    tmp_path, capsys, monkeypatch, error
):
    spec = write(tmp_path, epochs=2)
    real = ckpt.torch.save
    calls = []

    def save(obj, path, *args, **options):
        calls.append(path)
        if len(calls) == 3:  # the start, epoch 1, then epoch 2 fails
            with open(path, "wb") as handle:
                handle.write(b"half")
            raise error
        return real(obj, path, *args, **options)

    monkeypatch.setattr(ckpt.torch, "save", save)
    assert main(command(spec, tmp_path / "run")) == 2
    err = one_error(capsys)
    assert f"cannot write {tmp_path / 'run' / 'checkpoint.pt'}" in err
    assert "(after epoch 1) is kept" in err
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["epoch"] == 1
    leftovers = [
        p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")
    ]
    assert leftovers == []


def test_a_failed_metrics_write_is_one_line(tmp_path, capsys, monkeypatch):
    spec = write(tmp_path)
    real = type(tmp_path).write_text

    def write_text(self, *args, **options):
        if self.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **options)

    monkeypatch.setattr(type(tmp_path), "write_text", write_text)
    assert main(command(spec, tmp_path / "run")) == 2
    assert "metrics.json: No space left on device" in one_error(capsys)


def test_too_little_space_is_known_before_the_data(tmp_path, capsys, monkeypatch):
    import shutil

    spec = write(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        rundir.shutil, "disk_usage", lambda path: usage._replace(free=1000)
    )
    for name in ("load_training", "load_split"):
        monkeypatch.setattr(
            loop, name, lambda *a, **k: pytest.fail("loaded data first")
        )
    assert main(command(spec, tmp_path / "run")) == 2
    err = one_error(capsys)
    assert "not enough space" in err and "MB free" in err
    assert not (tmp_path / "run").exists()


def test_a_file_size_limit_below_a_checkpoint_is_an_error(tmp_path):
    spec = write(tmp_path, hidden=2000)  # a checkpoint of about 1 MB
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, "
        "(200000, resource.RLIM_INFINITY)); from snncompile.cli import main; "
        f"sys.exit(main({command(spec, tmp_path / 'run')!r}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "file size limit (ulimit -f)" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_writes_past_the_file_size_limit_are_one_line_errors(tmp_path):
    """The limit is above the size estimate, below the real size: the write
    fails with EFBIG (no SIGXFSZ kill) and the first checkpoint stays."""
    spec = write(tmp_path, hidden=2000)
    run_dir = tmp_path / "run"
    code = (
        "import resource, sys\n"
        "from snncompile.cli import main\n"
        "from snncompile.train import loop\n"
        "loop._checkpoint_bytes = lambda net, spec: 1000\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300000, resource.RLIM_INFINITY))\n"
        f"sys.exit(main({command(spec, run_dir)!r}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "File too large" in run.stderr and "Traceback" not in run.stderr


def _write_idx(path, array):
    """An IDX file (MNIST's raw format) of uint8 `array`."""
    header = struct.pack(">I", 0x800 | array.dim())
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def test_a_full_dataset_cache_does_not_stop_training(tmp_path, monkeypatch):
    from snncompile.train import data

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 64), ("t10k", 32)):
        images = torch.randint(0, 256, (count, 28, 28), generator=gen)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", torch.arange(count) % 10)
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path / "cache"))

    def full(obj, path):
        raise RuntimeError(
            "PytorchStreamWriter failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(data, "save_atomically", full)
    spec = tmp_path / "mnist.yaml"
    text = SPEC.replace("dataset: synthetic", "dataset: mnist")
    spec.write_text(text.replace("[1, 6, 6]", "[1, 28, 28]").format(epochs=1, hidden=8))
    metrics = train(
        spec, out=tmp_path / "run", data_root=tmp_path / "data", download=False
    )
    assert metrics["train_samples"] == 64


# --------------------------------------------------------------------------- eval --onnx
def test_eval_onnx_checks_the_exported_network(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from snncompile.export.onnx import export_onnx

    spec = write(tmp_path)
    train(spec, out=tmp_path / "run")
    export_onnx(spec, tmp_path / "tiny.onnx", checkpoint=tmp_path / "run")
    # an edited spec of the same name: refused, naming what differs
    edited = write(tmp_path, "edited.yaml", hidden=12)
    assert snncompile.load(edited).name == "tiny"
    assert main(["eval", str(edited), "--onnx", str(tmp_path / "tiny.onnx")]) == 2
    err = one_error(capsys)
    assert "exported from a different network" in err and "layers" in err
    # the same network under another name (and other training fields): fine
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(spec.read_text().replace("name: tiny", "name: other")
                       .replace("lr: 0.01", "lr: 0.02"))  # fmt: skip
    args = ["eval", str(renamed), "--onnx", str(tmp_path / "tiny.onnx"), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["test_samples"] == 32
