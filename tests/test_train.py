"""Training and evaluation from a spec (snncompile.train) on tiny synthetic data."""

import argparse
import json
import os
import pathlib
import signal
import struct

import pytest
import torch

import snncompile
from snncompile.cli import main
from snncompile.lower import checkpoint as ckpt
from snncompile.spec.errors import UserError
from snncompile.train import loop
from snncompile.train.data import Split, load_split
from snncompile.train.loop import evaluate, make_scheduler


def train(spec, **options):
    """loop.train on the eager kernels: every compiled kernel is compiled for each
    new shape (tests/test_compiled.py checks them; test_compiled_training_* here
    trains through them)."""
    options.setdefault("compile", "none")
    return loop.train(spec, **options)


TINY = """
snncompile: 1
name: tiny
input: {{shape: [1, 8, 8], encoding: {encoding}}}
steps: 8
defaults: {{beta: 0.9}}
layers:
  - type: flatten
  - {{type: linear, name: fc1, out_features: {hidden}}}
  - {{type: leaky, name: lif1}}
  - {{type: dropout, p: 0.1}}
  - {{type: linear, name: fc2, out_features: 10}}
  - {{type: leaky, name: lif2}}
loss: {{type: ce_rate, rate_regularization: {{weight: 0.01}}}}
train:
  dataset: synthetic
  batch_size: 64
  epochs: 2
  optimizer: {{type: adam, lr: 0.01}}
  schedule: {{type: step, step_size: 1, gamma: 0.5}}
  limit_train: {limit_train}
  limit_test: 256
  device: cpu
"""


def write_spec(
    tmp_path, name="tiny.yaml", encoding="{type: rate}", hidden=32, limit_train=512
):
    path = tmp_path / name
    path.write_text(
        TINY.format(encoding=encoding, hidden=hidden, limit_train=limit_train)
    )
    return path


def data_dir():
    env = os.environ.get("SNNCOMPILE_DATA")
    path = (
        pathlib.Path(env)
        if env
        else pathlib.Path(__file__).parents[2] / "shared" / "data"
    )
    return path if (path / "MNIST" / "raw").is_dir() else None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny 2-epoch run, shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("trained")
    spec = write_spec(tmp)
    metrics = train(spec, out=tmp / "run", progress=False)
    return spec, tmp / "run", metrics


def plain(value):
    """Whether a checkpoint value holds only plain Python types and tensors."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


# --------------------------------------------------------------------------- learning
def test_learns_far_above_the_untrained_network(trained):
    spec_path, _, metrics = trained
    spec = snncompile.load(spec_path)
    untrained = evaluate(spec, net=snncompile.build(spec, seed=spec.train.seed))
    assert metrics["test_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert metrics["test_accuracy"] > untrained["test_accuracy"] + 0.3
    first, last = metrics["history"]
    assert last["train_loss"] < first["train_loss"]


def test_run_directory_has_every_file(trained):
    spec_path, run, metrics = trained
    for name in (
        "checkpoint.pt",
        "metrics.json",
        "curves.png",
        "raster.png",
        "spec.yaml",
    ):
        assert (run / name).is_file(), name
    for name in ("curves.png", "raster.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    for key in (
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "seconds",
    ):
        assert all(isinstance(h[key], float) for h in saved["history"]), key
    assert saved["test_accuracy"] == saved["history"][-1]["test_accuracy"]
    assert set(saved["firing_rates"]) == {"lif1", "lif2"}
    assert all(0 <= r <= 1 for r in saved["firing_rates"].values())
    assert (saved["name"], saved["seed"], saved["device"]) == ("tiny", 0, "cpu")
    assert snncompile.load(run / "spec.yaml") == snncompile.load(spec_path)


def test_checkpoint_loads_weights_only_and_reproduces_the_test_accuracy(trained):
    spec_path, run, metrics = trained
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    assert plain(payload)
    assert payload["epoch"] == 2 and payload["version"] == snncompile.__version__
    assert snncompile.loads(payload["spec"], fmt="json") == snncompile.load(spec_path)
    # the evaluation from the file agrees with the one made during training
    result = evaluate(spec_path, checkpoint=run / "checkpoint.pt")
    assert result["test_accuracy"] == metrics["test_accuracy"]
    assert result["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    assert result["firing_rates"] == pytest.approx(metrics["firing_rates"], rel=1e-6)


# --------------------------------------------------------------------------- resume
def without_times(history):
    return [
        {k: v for k, v in h.items() if k not in ("seconds", "eval_seconds")}
        for h in history
    ]


def assert_same_weights(run_a, run_b):
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["iteration_loss"], b["iteration_loss"])


def test_resume_after_an_epoch_is_bit_identical(tmp_path, trained):
    spec, run_full, full = trained
    train(spec, out=tmp_path / "run", epochs=1, progress=False)
    resumed = train(spec, resume=tmp_path / "run", epochs=2, progress=False)
    assert_same_weights(run_full, tmp_path / "run")
    assert without_times(resumed["history"]) == without_times(full["history"])


def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_bit_identically(
    tmp_path, trained, capsys
):
    spec, run_full, _ = trained

    def interrupt(epoch, iteration):
        if (epoch, iteration) == (1, 3):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(spec, out=tmp_path / "run", progress=False, on_iteration=interrupt)
    # the hint names the spec file it was given, not a placeholder
    command = f"snncompile train {spec} --resume {tmp_path / 'run'}"
    assert command in capsys.readouterr().err
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (payload["epoch"], payload["step"]) == (0, 3)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["interrupted"]
    train(spec, resume=tmp_path / "run", progress=False)
    assert_same_weights(run_full, tmp_path / "run")


def test_resume_refuses_a_different_network_or_seed(tmp_path, trained):
    _, run, _ = trained
    other = write_spec(tmp_path, hidden=16)
    with pytest.raises(UserError, match="different network.*layers"):
        train(other, resume=run, epochs=3, progress=False)
    with pytest.raises(UserError, match="--seed 5"):
        train(trained[0], resume=run, epochs=3, seed=5, progress=False)
    with pytest.raises(UserError, match="finished all 2 epochs"):
        train(trained[0], resume=run, progress=False)
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    del payload["optimizer"]
    ckpt.save(tmp_path / "checkpoint.pt", payload)
    with pytest.raises(UserError, match="cannot resume .* no optimizer"):
        train(trained[0], resume=tmp_path, epochs=3, progress=False)


def test_eval_accepts_a_bare_state_dict(trained, tmp_path):
    spec, run, metrics = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    torch.save(state, tmp_path / "model.pt")  # what generated scripts write
    result = evaluate(spec, checkpoint=tmp_path / "model.pt")
    assert result["test_accuracy"] == metrics["test_accuracy"]
    state["fc2.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(
        UserError, match=r"wrong shape: fc2.bias \[7\] \(the spec has \[10\]\)"
    ):
        evaluate(spec, checkpoint=tmp_path / "model.pt")


# --------------------------------------------------------------------------- CLI
def test_eval_command_prints_and_json_matches_training(trained, capsys):
    spec, run, metrics = trained
    assert main(["eval", str(spec), "--checkpoint", str(run / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy: {metrics['test_accuracy']:.2%}" in out
    assert "lif1" in out and "lif2" in out
    assert main(["eval", str(spec), "--checkpoint", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_accuracy"] == metrics["test_accuracy"]
    assert result["test_samples"] == 256
    assert (
        main(
            [
                "eval",
                str(spec),
                "--checkpoint",
                str(run),
                "--json",
                "--limit-test",
                "64",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["test_samples"] == 64


def test_train_command_writes_the_run_and_summary(tmp_path, capsys):
    spec = write_spec(tmp_path, limit_train=128)
    args = [
        "train",
        str(spec),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--quiet",
        "--compile",
        "none",
    ]
    assert main(args + ["--seed", "3", "--limit-test", "64"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"test accuracy {metrics['test_accuracy']:.2%}" in out
    assert (metrics["seed"], metrics["epochs"], metrics["test_samples"]) == (3, 1, 64)
    assert metrics["train_samples"] == 128


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "is not a readable checkpoint"),
        (None, "no checkpoint at"),
    ],
)
def test_eval_reports_a_missing_or_corrupt_checkpoint(
    tmp_path, capsys, content, message
):
    spec = write_spec(tmp_path)
    path = tmp_path / "checkpoint.pt"
    if content is not None:
        path.write_bytes(content)
    assert main(["eval", str(spec), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_reports_a_truncated_or_mismatched_checkpoint(tmp_path, trained, capsys):
    spec, run, _ = trained
    data = (run / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(spec), "--checkpoint", str(tmp_path / "cut.pt")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err
    other = write_spec(tmp_path, hidden=16)
    assert main(["eval", str(other), "--checkpoint", str(run)]) == 2
    assert "different network" in capsys.readouterr().err
    # same spec, weights of another shape: caught by the state dict check
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload["model"]["fc1.weight"] = torch.zeros(3, 3)
    ckpt.save(tmp_path / "bad.pt", payload)
    assert main(["eval", str(spec), "--checkpoint", str(tmp_path / "bad.pt")]) == 2
    assert "fc1.weight [3, 3] (the spec has [32, 64])" in capsys.readouterr().err


MNIST_SPEC = pathlib.Path(__file__).parents[1] / "specs" / "mnist_fc.yaml"


def test_missing_dataset_names_the_expected_files(tmp_path, capsys):
    root = tmp_path / "nowhere"
    code = main(["train", str(MNIST_SPEC), "--data-root", str(root), "--no-download"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert str(root / "MNIST" / "raw" / name) in err
    assert "--data-root" in err


def test_failed_download_names_the_reason_and_files(tmp_path, capsys, monkeypatch):
    import torchvision.datasets

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: offline")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    monkeypatch.setenv("SNNCOMPILE_DATA", str(tmp_path / "env_root"))
    code = main(["train", str(MNIST_SPEC), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "offline" in err
    assert (
        str(tmp_path / "env_root" / "MNIST" / "raw" / "train-images-idx3-ubyte") in err
    )


# --------------------------------------------------------------------------- data
def _write_mnist(raw: pathlib.Path, seed: int) -> dict:
    """Tiny MNIST files in torchvision's raw layout (IDX); returns the tensors."""
    raw.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    written = {}
    for prefix, count in (("train", 6), ("t10k", 4)):
        images = torch.randint(0, 256, (count, 28, 28), generator=gen).to(torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=gen).to(torch.uint8)
        head = struct.pack(">IIII", 0x803, count, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            head + images.numpy().tobytes()
        )
        head = struct.pack(">II", 0x801, count)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            head + labels.numpy().tobytes()
        )
        written[prefix] = (images, labels)
    return written


def test_decoded_dataset_is_cached(tmp_path, monkeypatch):
    """A split decoded by torchvision is kept in the cache and read back without
    it; changed files, a corrupt cache file or an unwritable cache decode again."""
    from snncompile.train import data

    raw = tmp_path / "data" / "MNIST" / "raw"
    written = _write_mnist(raw, 0)
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path / "cache"))
    decoded = []
    read = data._read
    monkeypatch.setattr(data, "_read", lambda *a: decoded.append(1) or read(*a))
    graph = snncompile.analyze(snncompile.load(MNIST_SPEC))

    def train_split():
        return load_split(graph, True, root=tmp_path / "data", download=False)

    first = train_split()
    images, labels = written["train"]
    assert torch.equal(first.inputs[:, 0], images) and torch.equal(
        first.labels, labels.long()
    )
    (cached,) = (tmp_path / "cache" / "datasets").glob("mnist-train-*.pt")
    again = train_split()
    assert len(decoded) == 1  # from the cache
    assert torch.equal(again.inputs, first.inputs) and torch.equal(
        again.labels, first.labels
    )
    cached.write_bytes(b"not a tensor file")
    assert torch.equal(train_split().inputs, first.inputs) and len(decoded) == 2
    assert torch.equal(train_split().inputs, first.inputs) and len(decoded) == 2
    changed = _write_mnist(raw, 1)["train"][0]  # new contents: a new key
    os.utime(raw / "train-images-idx3-ubyte", ns=(1, 1))
    assert torch.equal(train_split().inputs[:, 0], changed) and len(decoded) == 3
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(blocked / "cache"))  # cannot be made
    assert torch.equal(train_split().inputs[:, 0], changed) and len(decoded) == 4


def test_mnist_batches_equal_torchvision_to_tensor_and_normalize():
    root = data_dir()
    if root is None:
        pytest.skip("MNIST not found (set SNNCOMPILE_DATA)")
    from torchvision import datasets, transforms

    spec = snncompile.load(MNIST_SPEC)
    graph = snncompile.analyze(spec)
    norm = {"mean": [0.1307], "std": [0.3081]}
    split = load_split(
        graph, False, root=root, limit=50, normalize=norm, download=False
    )
    tv = datasets.MNIST(
        root,
        train=False,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(norm["mean"], norm["std"])]
        ),
    )
    x, y, mask = split.batch(torch.arange(10, 20))
    assert mask is None  # still images: no padding
    expected = torch.stack([tv[i][0] for i in range(10, 20)])
    assert x.shape == (10, 1, 28, 28)
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)
    assert y.tolist() == [tv[i][1] for i in range(10, 20)]


def test_batches_cover_a_permutation_and_drop_last():
    inputs = torch.arange(10, dtype=torch.float32).view(10, 1)
    split = Split(inputs, torch.arange(10), (1,))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    seen = [y for _, y, _ in split.batches(4, order, drop_last=True)]
    assert [len(y) for y in seen] == [4, 4] and split.num_batches(4, True) == 2
    assert torch.cat(seen).tolist() == order[:8].tolist()
    assert [len(y) for _, y, _ in split.batches(4)] == [4, 4, 2]
    assert [y.tolist() for _, y, _ in split.batches(4, skip=2)] == [[8, 9]]


def test_sequence_encodings_get_time_major_inputs(tmp_path):
    spec = write_spec(
        tmp_path, encoding="{type: delta, threshold: 0.5}", limit_train=128
    )
    metrics = train(spec, out=tmp_path / "run", epochs=1, progress=False)
    assert metrics["test_samples"] == 256
    graph = snncompile.analyze(snncompile.load(spec))
    x = load_split(graph, False, limit=4).batch(slice(0, 4))[0]
    assert x.shape == (8, 4, 1, 8, 8)


@pytest.mark.parametrize(
    "schedule, reference",
    [
        (
            "{type: cosine, eta_min: 0.001}",
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, 12, eta_min=0.001
            ),
        ),
        ("{type: step, step_size: 2, gamma: 0.5}", None),
    ],
)
def test_schedules_follow_torch(tmp_path, schedule, reference):
    text = (
        write_spec(tmp_path)
        .read_text()
        .replace("{type: step, step_size: 1, gamma: 0.5}", schedule)
    )
    spec = snncompile.loads(text)
    ours = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    theirs = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = make_scheduler(ours, spec, per_epoch=3, total=12)
    if reference is None:  # StepLR stepped once per epoch of 3 iterations
        ref = torch.optim.lr_scheduler.StepLR(theirs, step_size=2, gamma=0.5)
    else:
        ref = reference(theirs)
    for it in range(12):
        assert ours.param_groups[0]["lr"] == pytest.approx(
            theirs.param_groups[0]["lr"]
        ), it
        ours.step()  # no gradients: only keeps the scheduler's call order check quiet
        theirs.step()
        sched.step()
        if reference is not None or (it + 1) % 3 == 0:
            ref.step()


def test_eval_onnx_agrees_with_the_checkpoint(trained, tmp_path, capsys):
    export = pytest.importorskip("snncompile.export.onnx")
    spec, run, metrics = trained
    export.export_onnx(spec, tmp_path / "tiny.onnx", checkpoint=run / "checkpoint.pt")
    args = ["eval", str(spec), "--onnx", str(tmp_path / "tiny.onnx"), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_samples"] == metrics["test_samples"]
    assert result["test_accuracy"] == metrics["test_accuracy"]


@pytest.mark.compile
def test_compiled_training_matches_eager(tmp_path):
    """`snncompile train`'s default, the neuron loops compiled, trains bit for bit
    like the eager kernels on layers this small (no fused linear gradient: the
    same gradient arithmetic); a last partial batch runs eagerly (no compile for
    one call)."""
    spec = write_spec(tmp_path, limit_train=160)  # batches of 64, 64 and 32
    spec.write_text(spec.read_text() + "  drop_last: false\n")
    options = {"epochs": 1, "limit_test": 200, "progress": False}  # 3 x 64 + 8
    eager = train(spec, out=tmp_path / "eager", compile="none", **options)
    compiled = train(spec, out=tmp_path / "compiled", compile="neurons", **options)
    assert eager["compile_seconds"] is None and compiled["compile_seconds"] > 0
    cache = compiled["compile_cache"]
    assert cache["cache_hits"] + cache["cache_misses"] > 0
    a = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    assert len(a["iteration_loss"]) == 3
    assert torch.equal(a["iteration_loss"], b["iteration_loss"])
    assert a["model"].keys() == b["model"].keys()
    for name, weight in a["model"].items():
        assert torch.equal(b["model"][name], weight), name
    assert compiled["test_accuracy"] == eager["test_accuracy"]


@pytest.mark.compile
def test_whole_model_compile_trains_like_eager(tmp_path):
    # the rate code: compile_model runs torch's own Bernoulli on the global RNG
    spec = write_spec(tmp_path, limit_train=128)
    eager = train(spec, out=tmp_path / "eager", epochs=1, progress=False)
    compiled = train(
        spec, out=tmp_path / "compiled", epochs=1, compile="model", progress=False
    )
    assert compiled["compile_seconds"] > 0 and eager["compile_seconds"] is None
    a = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()  # no torch.compile key prefix
    # the first loss is a pure forward pass of the same weights on the same spikes
    torch.testing.assert_close(
        a["iteration_loss"][0], b["iteration_loss"][0], rtol=1e-4, atol=1e-5
    )
    assert abs(compiled["test_accuracy"] - eager["test_accuracy"]) < 0.1


def test_training_runs_eagerly_when_torch_compile_cannot(tmp_path, monkeypatch, capsys):
    """Without a working C compiler the default --compile auto, and
    --compile neurons, say so once and train eagerly instead of failing at the
    first step."""
    from snncompile.lower import optimize

    monkeypatch.setattr(optimize, "compile_problem", lambda: "no C++ compiler")
    monkeypatch.setattr(optimize, "native_problem", lambda: "no C compiler")
    spec = write_spec(tmp_path, limit_train=128)
    metrics = loop.train(spec, out=tmp_path / "run", epochs=1, progress=False)
    err = capsys.readouterr().err
    assert "no compiled kernels here (no C compiler); running eagerly" in err
    assert metrics["compile"] == "none" and metrics["compile_seconds"] is None
    options = {"epochs": 1, "progress": False, "compile": "neurons"}
    metrics = loop.train(spec, out=tmp_path / "run2", **options)
    err = capsys.readouterr().err
    assert "torch.compile cannot build kernels here (no C++ compiler)" in err
    assert metrics["compile"] == "none"


def test_compile_modes():
    from snncompile.lower import optimize
    from snncompile.train.command import configure_train

    assert [optimize.as_mode(m) for m in (True, False, "model")] == [
        "auto",
        "none",
        "model",
    ]
    with pytest.raises(UserError, match="compile mode must be one of"):
        optimize.as_mode("fast")
    parser = argparse.ArgumentParser()
    configure_train(parser)
    assert parser.parse_args(["s.yaml"]).compile == "auto"
    assert parser.parse_args(["s.yaml", "--compile"]).compile == "auto"
    assert parser.parse_args(["s.yaml", "--compile", "native"]).compile == "native"
    assert parser.parse_args(["s.yaml", "--compile", "neurons"]).compile == "neurons"
    assert parser.parse_args(["s.yaml", "--compile", "none"]).compile == "none"
