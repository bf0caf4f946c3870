"""What a run records (issue 17): metrics.csv always, TensorBoard event files
with --tensorboard (read back by tensorboard's own reader), strict JSON."""

import csv
import json
import math
import pathlib
import signal
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from snncompile.cli import main
from snncompile.train import logs, loop

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

ROOT = pathlib.Path(__file__).resolve().parents[1]

CLASSIFIER = """\
snncompile: 1
name: tiny
input: {shape: [1, 6, 6], encoding: {type: rate}}
steps: 6
defaults: {beta: 0.9}
layers:
  - type: flatten
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 10}
  - {type: leaky, name: lif2}
loss: {type: ce_rate}
train:
  dataset: synthetic
  batch_size: 16
  epochs: 2
  optimizer: {type: adam, lr: 0.01}
  schedule: {type: cosine, warmup_steps: 3}
  limit_train: 160
  limit_test: 64
  device: cpu
"""
REGRESSION = """\
snncompile: 1
name: tiny_regression
task: regression
input: {shape: [12], encoding: {type: direct}}
steps: 6
defaults: {beta: 0.9}
layers:
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 3}
  - {type: li, name: readout}
decoding: {type: mean_membrane}
loss: {type: mse, readout: mean_membrane}
train:
  dataset: synthetic_regression
  batch_size: 16
  epochs: 1
  optimizer: {type: adam, lr: 0.003}
  limit_train: 64
  limit_test: 32
  device: cpu
"""


def train(spec, **options):
    options.setdefault("compile", "none")
    options.setdefault("progress", False)
    return loop.train(spec, **options)


def write(tmp_path, text=CLASSIFIER, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def events(run):
    """{tag: [(step, value)]} of a run's TensorBoard files, by tensorboard."""
    accumulator = EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logged")
    spec = write(tmp)
    metrics = train(spec, out=tmp / "run", tensorboard=True, log_every=4)
    return spec, tmp / "run", metrics


# --------------------------------------------------------------------------- CSV
def test_csv_has_a_row_every_n_iterations_and_every_epoch(logged):
    _, run, metrics = logged
    table = rows(run)
    assert list(table[0])[:6] == [
        "kind",
        "epoch",
        "iteration",
        "step",
        "lr",
        "grad_norm",
    ]
    assert {"rate_lif1", "rate_lif2", "test_accuracy", "train_accuracy"} <= set(
        table[0]
    )
    steps = [(r["epoch"], r["iteration"]) for r in table if r["kind"] == "step"]
    # 10 iterations an epoch: rows at 4, 8 and the last one
    assert steps == [(e, i) for e in ("1", "2") for i in ("4", "8", "10")]
    epochs = [r for r in table if r["kind"] == "epoch"]
    assert [int(r["step"]) for r in epochs] == [10, 20]
    for row, entry in zip(epochs, metrics["history"]):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert float(row[key]) == entry[key], key
    assert float(epochs[-1]["rate_lif2"]) == pytest.approx(
        metrics["firing_rates"]["lif2"]
    )
    # the learning rate each row's iteration used: after 3 of warmup the full
    # one, then cosine over the 17 iterations after it
    assert float(table[0]["lr"]) == 0.01
    assert float(table[1]["lr"]) == pytest.approx(
        0.01 * (1 + math.cos(math.pi * 4 / 17)) / 2
    )
    assert all(float(r["grad_norm"]) > 0 for r in table)


def test_csv_is_written_without_tensorboard(tmp_path):
    spec = write(tmp_path)
    train(spec, out=tmp_path / "run", epochs=1)
    table = rows(tmp_path / "run")
    # every 20 iterations (the default) and at the last: 10 iterations here
    assert [(r["kind"], r["step"]) for r in table] == [("step", "10"), ("epoch", "10")]
    assert not (tmp_path / "run" / "tensorboard").exists()


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_files_read_back_with_tensorboard(logged):
    _, run, metrics = logged
    found = events(run)
    for tag in (
        "train/loss",
        "train/accuracy",
        "train/lr",
        "train/grad_norm",
        "epoch/train_loss",
        "epoch/train_accuracy",
        "epoch/test_loss",
        "epoch/test_accuracy",
        "epoch/lr",
        "firing_rate/lif1",
        "firing_rate/lif2",
    ):
        assert tag in found, (tag, sorted(found))
    assert [s for s, _ in found["train/loss"]] == [4, 8, 10, 14, 18, 20]
    assert [s for s, _ in found["epoch/test_accuracy"]] == [10, 20]
    accuracy = [v for _, v in found["epoch/test_accuracy"]]
    expected = [h["test_accuracy"] for h in metrics["history"]]
    assert accuracy == pytest.approx(expected)
    rates = dict(found["firing_rate/lif1"])
    assert rates[20] == pytest.approx(metrics["firing_rates"]["lif1"])
    table = rows(run)
    csv_lr = [float(r["lr"]) for r in table if r["kind"] == "step"]
    assert [v for _, v in found["train/lr"]] == pytest.approx(csv_lr)


def test_tensorboard_records_the_regression_metrics(tmp_path, capsys):
    spec = write(tmp_path, REGRESSION, "regression.yaml")
    args = ["train", str(spec), "--out", str(tmp_path / "run"), "--quiet",
            "--compile", "none", "--tensorboard", "--log-every", "2"]  # fmt: skip
    assert main(args) == 0
    found = events(tmp_path / "run")
    for tag in ("epoch/test_mse", "epoch/test_mae", "epoch/test_r2", "train/mse",
                "epoch/train_mse", "firing_rate/lif1", "train/grad_norm"):  # fmt: skip
        assert tag in found, (tag, sorted(found))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert found["epoch/test_mse"][-1][1] == pytest.approx(metrics["test_mse"])
    table = rows(tmp_path / "run")
    assert "test_r2" in table[0] and "test_accuracy" not in table[0]


def test_a_resumed_run_continues_its_logs_without_duplicates(tmp_path, logged):
    spec, full_run, _ = logged

    def interrupt(epoch, iteration):
        if (epoch, iteration) == (1, 6):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(spec, out=tmp_path / "run", tensorboard=True, log_every=4,
              on_iteration=interrupt)  # fmt: skip
    # a crash after the checkpoint left a row past it: the resume drops it
    with open(tmp_path / "run" / "metrics.csv", "a") as handle:
        handle.write("step,1,8,8,0.5,0.5,9.9,0.1,,,,,\n")
    train(spec, resume=tmp_path / "run", tensorboard=True, log_every=4)

    def comparable(table):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in table]

    assert comparable(rows(tmp_path / "run")) == comparable(rows(full_run))
    found = events(tmp_path / "run")
    steps = [s for s, _ in found["train/loss"]]
    assert steps == sorted(set(steps)) == [4, 8, 10, 14, 18, 20]
    assert [v for _, v in found["train/loss"]] == pytest.approx(
        [v for _, v in events(full_run)["train/loss"]]
    )


# --------------------------------------------------------------------------- JSON
def test_strict_json_writes_null_for_nan_and_infinity():
    value = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": "x"}
    assert json.loads(logs.dumps(value)) == {
        "a": None,
        "b": [None, None, 1.5],
        "c": "x",
    }
    assert "NaN" not in logs.dumps(value) and "Infinity" not in logs.dumps(value)


def test_eval_json_is_strict(tmp_path, logged, capsys, monkeypatch):
    spec, run, _ = logged
    real = loop.evaluate

    def with_nan(*args, **options):
        result = real(*args, **options)
        result["test_loss"] = float("nan")
        return result

    monkeypatch.setattr(loop, "evaluate", with_nan)
    assert main(["eval", str(spec), "--checkpoint", str(run), "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(token):
        raise ValueError(token)

    assert json.loads(out, parse_constant=refuse)["test_loss"] is None


def test_metrics_json_is_strict_after_divergence(tmp_path):
    spec = write(tmp_path, CLASSIFIER.replace("lr: 0.01", "lr: 1.0e+300"))
    with pytest.raises(loop.safeguards.Diverged):
        train(spec, out=tmp_path / "run")
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda token: pytest.fail(token))


def test_the_test_install_includes_tensorboard_and_optuna():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")  # pragma: no cover
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    test = " ".join(project["optional-dependencies"]["test"])
    assert "tensorboard" in test and "optuna" in test
