"""The public Python API (snncompile/api.py): snncompile.train -> Run, load_run,
predict on raw inputs, loss_fn / decode_fn, the losses and decoders modules."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

import snncompile
from snncompile import Run, SpecError, UserError
from snncompile.lower import checkpoint as ckpt
from snncompile.runtime import decode as decoders
from snncompile.train import loop
from snncompile.train.data import load_split

TINY = {
    "snncompile": 1,
    "name": "tiny",
    "input": {"shape": [1, 4, 4], "encoding": {"type": "rate"}},
    "steps": 6,
    "defaults": {"beta": 0.9},
    "layers": [
        {"type": "flatten"},
        {"type": "linear", "name": "fc1", "out_features": 12},
        {"type": "leaky", "name": "lif1"},
        {"type": "linear", "name": "fc2", "out_features": 5},
        {"type": "leaky", "name": "lif2"},
    ],
    "loss": {"type": "ce_rate", "rate_regularization": {"weight": 0.01}},
    "train": {
        "dataset": "synthetic",
        "batch_size": 32,
        "eval_batch_size": 32,
        "epochs": 3,
        "optimizer": {"type": "adam", "lr": 0.02},
        "limit_train": 96,
        "limit_test": 48,  # a full batch of 32 and a partial one
        "device": "cpu",
    },
}
QUIET = {"compile": "none", "progress": False}


def tiny(**changes) -> dict:
    """TINY with dotted-path changes ("train.dataset": ..., "input.encoding": ...)."""
    data = copy.deepcopy(TINY)
    for path, value in changes.items():
        *parents, key = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[key] = value
    return data


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A 1-epoch run trained through the API from a spec file, with overrides."""
    tmp = tmp_path_factory.mktemp("api")
    path = tmp / "tiny.json"
    path.write_text(json.dumps(TINY))
    return snncompile.train(
        path, out=tmp / "run", overrides=["train.epochs=1"], **QUIET
    )


def test_train_returns_a_run(run):
    assert isinstance(run, Run)
    assert run.dir.is_dir() and (run.dir / "checkpoint.pt").is_file()
    assert run.checkpoint == run.dir / "checkpoint.pt"
    on_disk = json.loads((run.dir / "metrics.json").read_text())
    assert run.metrics == on_disk
    assert run.metrics["run_dir"] == str(run.dir)
    assert len(run.history) == 1 and run.history[0]["epoch"] == 1
    assert run.spec.name == "tiny" and run.spec.train.epochs == 1  # the override
    model = run.model
    assert isinstance(model, torch.nn.Module) and not model.training
    assert run.model is model  # built once
    assert "tiny" in repr(run) and str(run.dir) in repr(run)


def test_load_run_gives_the_same_spec_metrics_and_predictions(run):
    x = load_split(run.model.graph, False, limit=48).inputs
    loaded = snncompile.load_run(run.dir)
    assert loaded.spec.model_dump() == run.spec.model_dump()
    assert loaded.metrics == run.metrics and loaded.history == run.history
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    a, b = run.predict(x), loaded.predict(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.predictions, b.predictions)
    # a checkpoint file names the run too; a path works wherever a Run does
    assert snncompile.load_run(run.dir / "checkpoint.pt").dir == run.dir
    c = snncompile.predict(str(run.dir), x)
    assert torch.equal(c.scores, a.scores)


def test_predict_on_raw_inputs_matches_evaluate(run):
    """A rate-coded spec: predict draws the encodings evaluation draws."""
    split = load_split(run.model.graph, False, limit=48)
    result = run.evaluate(limit_test=48)
    scores, predictions = snncompile.predict(run, split.inputs)
    assert scores.shape == (48, 5) and predictions.dtype == torch.int64
    accuracy = (predictions == split.labels).double().mean().item()
    assert accuracy == pytest.approx(result["test_accuracy"], abs=1e-12)
    assert result["test_accuracy"] == run.metrics["test_accuracy"]
    # the global random state is not touched, and predict is repeatable
    state = torch.get_rng_state()
    again = run.predict(split.inputs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again.scores, scores)


def _reference(net, split, seed: int, batch_size: int):
    """Scores of every batch the training pipeline makes (Split.batches) under
    evaluation's seeding: what predict must give from the raw samples."""
    decode = snncompile.decode_fn(net)
    out = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, _, mask in split.batches(batch_size):
            spk, mem = net(x)
            out.append(decode(spk, mem, mask))
    return torch.cat(out)


def _tensors_file(path, inputs, targets, lengths=None):
    data = {"inputs": inputs, "targets": targets}
    if lengths is not None:
        data["lengths"] = lengths
    torch.save(data, path)


def _uint8_images(tmp_path) -> dict:
    gen = torch.Generator().manual_seed(5)
    for part in ("train", "test"):
        images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=gen)
        _tensors_file(tmp_path / f"{part}.pt", images, torch.arange(40) % 5)
    return {"type": "tensors", "train": "train.pt", "test": "test.pt"}


def _series(tmp_path) -> dict:
    gen = torch.Generator().manual_seed(6)
    for part in ("train", "test"):
        counts = torch.randint(0, 3, (40, 7, 1, 4, 4), dtype=torch.uint8, generator=gen)
        lengths = torch.randint(2, 8, (40,), generator=gen)
        lengths[0] = 7
        _tensors_file(tmp_path / f"{part}.pt", counts, torch.arange(40) % 5, lengths)
    return {
        "type": "tensors",
        "train": "train.pt",
        "test": "test.pt",
        "lengths_key": "lengths",
    }


CASES = {
    "direct": {"input.encoding": {"type": "direct"}},
    "latency": {"input.encoding": {"type": "latency", "tau": 2.0}},
    "delta": {"input.encoding": {"type": "delta", "threshold": 0.05}},
    "spikes": {"input.encoding": {"type": "spikes"}},
    "normalized": {
        "input.encoding": {"type": "direct"},
        "train.normalize": {"mean": [0.5], "std": [0.25]},
    },
    "uint8_images": {
        "input.encoding": {"type": "direct"},
        "train.dataset": _uint8_images,
    },
    "time_series": {
        "input.encoding": {"type": "spikes"},
        "steps": "auto",
        "train.dataset": _series,
    },
    "regression": {
        "input.encoding": {"type": "direct"},
        "input.shape": [16],
        "layers": [
            {"type": "linear", "name": "fc1", "out_features": 12},
            {"type": "leaky", "name": "lif1"},
            {"type": "linear", "name": "fc2", "out_features": 2},
            {"type": "li", "name": "readout"},
        ],
        "task": "regression",
        "loss": {"type": "mse", "readout": "mean_membrane"},
        "train.dataset": "synthetic_regression",
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_encodes_raw_inputs_as_training_does(case, tmp_path):
    changes = {
        "decoding": {"type": "max_membrane"},
        "loss": {"type": "ce_max_membrane"},
        **CASES[case],
    }
    if callable(changes.get("train.dataset")):
        changes["train.dataset"] = changes["train.dataset"](tmp_path)
    if case == "regression":
        changes["decoding"] = {"type": "mean_membrane"}
        changes["loss"] = CASES[case]["loss"]
    spec = snncompile.Spec.model_validate(tiny(**changes))
    net = snncompile.build(spec, seed=1)
    normalize = spec.train.normalize and spec.train.normalize.model_dump()
    split = load_split(net.graph, False, tmp_path, 48, normalize)  # as evaluate's
    result = loop.evaluate(spec, net=net, data_root=tmp_path, limit_test=48)
    want = _reference(net, split, spec.train.seed, 32)
    series = case == "time_series"
    x = split.inputs.transpose(0, 1) if series else split.inputs
    if case == "uint8_images":
        assert x.dtype == torch.uint8
    lengths = split.lengths if series else None
    scores, predictions = snncompile.predict(net, x, lengths=lengths)
    assert torch.equal(scores, want)
    if case == "regression":
        assert torch.equal(predictions, scores)
        mse = (scores - split.labels).double().square().mean().item()
        assert mse == pytest.approx(result["test_mse"], rel=1e-6)
    else:
        assert torch.equal(predictions, want.argmax(-1))
        accuracy = (predictions == split.labels).double().mean().item()
        assert accuracy == pytest.approx(result["test_accuracy"], abs=1e-12)


def test_train_takes_a_dict_or_a_spec(tmp_path):
    data = tiny(**{"train.limit_train": 32, "train.limit_test": 32})
    run = snncompile.train(data, out=tmp_path / "a", epochs=1, **QUIET)
    assert run.metrics["epochs"] == 1 and run.spec.train.limit_train == 32
    spec = snncompile.Spec.model_validate(data)
    again = snncompile.train(
        spec, out=tmp_path / "b", overrides=["train.seed=3"], epochs=1, **QUIET
    )
    assert again.spec.train.seed == 3 and again.metrics["seed"] == 3
    assert snncompile.load_run(tmp_path / "b").spec.train.seed == 3


# --------------------------------------------------------------------------- errors
def test_spec_errors_are_located(tmp_path):
    bad = tiny()
    bad["layers"][2]["beta"] = 2.5
    with pytest.raises(SpecError) as err:
        snncompile.train(bad, out=tmp_path / "r", **QUIET)
    assert one_line(err).startswith("<spec tiny>: layers[2].beta:")
    assert not (tmp_path / "r").exists()
    with pytest.raises(SpecError) as err:
        snncompile.train(tiny(), overrides=["train.optimiser.lr=1"], **QUIET)
    assert "--set train.optimiser.lr=1" in str(err.value)
    with pytest.raises(TypeError):
        snncompile.train(42)


def test_load_run_refuses_a_missing_or_corrupt_run(run, tmp_path):
    with pytest.raises(UserError) as err:
        snncompile.load_run(tmp_path / "nothing")
    assert "no run directory" in one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        snncompile.load_run(tmp_path / "empty")
    assert "has no checkpoint.pt" in one_line(err)
    with pytest.raises(UserError) as err:
        snncompile.load_run(run.dir, best=True)
    assert "best.pt" in one_line(err)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as err:
        snncompile.load_run(broken)
    assert "not a readable checkpoint" in one_line(err)

    payload = ckpt.load(run.dir)
    (broken / "checkpoint.pt").unlink()
    ckpt.save(broken / "checkpoint.pt", payload)
    (broken / "metrics.json").write_text('{"epochs": 1,')
    with pytest.raises(UserError) as err:
        snncompile.load_run(broken)
    assert "metrics.json is not readable JSON" in one_line(err)

    (broken / "metrics.json").unlink()
    payload["model"] = dict(payload["model"])
    payload["model"]["fc1.weight"] = torch.zeros(3, 3)
    ckpt.save(broken / "checkpoint.pt", payload)
    tampered = snncompile.load_run(broken)  # the weights are checked when built
    assert tampered.metrics == {} and tampered.history == []
    with pytest.raises(UserError) as err:
        tampered.model  # noqa: B018
    assert "fc1.weight [3, 3]" in one_line(err)

    with pytest.raises(UserError) as err:
        snncompile.load_run(run.dir, device="cuda:x")
    one_line(err)


def test_predict_refuses_inputs_that_do_not_fit(run):
    with pytest.raises(UserError) as err:
        run.predict(torch.rand(4, 1, 5, 5))
    assert "[B, 1, 4, 4]" in one_line(err)
    with pytest.raises(UserError) as err:
        run.predict(torch.rand(0, 16))
    one_line(err)
    with pytest.raises(UserError) as err:
        run.predict(torch.rand(4, 16), lengths=[1, 2, 3, 4])
    one_line(err)
    assert run.predict(torch.rand(4, 16).numpy()).scores.shape == (4, 5)
    with pytest.raises(TypeError):
        snncompile.predict(torch.nn.Linear(2, 2), torch.rand(1, 2))


# --------------------------------------------------------------------------- losses
def test_loss_fn_and_decode_fn_are_training_s(run):
    net = run.model
    x, y, _ = load_split(net.graph, False, limit=32).batch(slice(0, 32))
    with torch.no_grad():
        spk, mem, records = net(x, all_spikes=True)
    loss = snncompile.loss_fn(run.spec)
    want, needs = loop.make_loss(net.graph)
    assert loss.needs_records is needs is True
    assert torch.equal(loss(spk, mem, y, records), want(spk, mem, y, records))
    with pytest.raises(ValueError, match="rate_regularization"):
        loss(spk, mem, y)
    plain = snncompile.loss_fn(tiny(loss={"type": "ce_count"}))
    assert not plain.needs_records
    expected = snncompile.losses.loss_ce_count(spk, mem, y)
    assert torch.equal(plain(spk, mem, y), expected)
    decode = snncompile.decode_fn(run)
    assert torch.equal(decode(spk, mem), decoders.decode_rate(spk, mem))
    assert snncompile.decoders.decode_rate is decoders.decode_rate


# --------------------------------------------------------------------------- names
# a docstring of Spec would become the JSON Schema's description (pydantic):
# spec/schema.py documents its fields instead
UNDOCUMENTED = {"__version__", "Spec"}


def test_public_names_exist_and_have_docstrings():
    for module in (snncompile, snncompile.losses, snncompile.decoders):
        for name in module.__all__:
            value = getattr(module, name)
            if name not in UNDOCUMENTED:
                assert (value.__doc__ or "").strip(), f"{module.__name__}.{name}"
    for name in ("predict", "evaluate", "spec", "metrics", "history", "model"):
        assert (getattr(Run, name).__doc__ or "").strip(), f"Run.{name}"
    assert set(snncompile.losses.__all__) >= {"loss_ce_rate", "rate_regularization"}
    assert "decode_latency" in snncompile.decoders.__all__


def test_snncompile_train_is_callable_and_still_the_subpackage():
    """In a fresh interpreter: importing snncompile imports no torch, and
    snncompile.train is both the training function and the subpackage."""
    code = """
import sys
import snncompile
assert "torch" not in sys.modules, "import snncompile imported torch"
assert callable(snncompile.train)
assert "snncompile.train(spec" in snncompile.train.__doc__
import snncompile.train.loop
import snncompile.train.loop as loop_module
from snncompile.train import loop, data
assert loop is loop_module is snncompile.train.loop is sys.modules["snncompile.train.loop"]
assert snncompile.train.train is loop.train and snncompile.train.evaluate is loop.evaluate
assert callable(snncompile.train) and snncompile.train is sys.modules["snncompile.train"]
import pkgutil
assert pkgutil.resolve_name("snncompile.train.loop:make_loss") is loop.make_loss
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "snncompile", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr
