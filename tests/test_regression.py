"""`task: regression`: float targets, mse/l1 losses on the readout, membrane
decodings, MSE/MAE/R^2 metrics, the synthetic_regression data, through train,
the Python API, the generated script and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_codegen import _run_standalone

import snncompile
from snncompile import SpecError
from snncompile.cli import main
from snncompile.codegen.render import render_script
from snncompile.export.onnx import export_onnx
from snncompile.runtime import decode, losses
from snncompile.train import loop
from snncompile.train.data import load_split

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "regression_li.yaml"


def _baseline_mse(graph) -> float:
    """Test MSE of predicting the training targets' mean (per output)."""
    train = load_split(graph, True)
    test = load_split(graph, False)
    mean = train.labels.mean(0)
    return float((test.labels - mean).square().mean())


def test_regression_li_trains_alike_from_cli_api_and_script(tmp_path, capsys):
    """specs/regression_li.yaml: the same figures from `snncompile train`, the
    Python API and the generated script (compile plain: the script's float order),
    and a test MSE at least 5 times below predicting the training mean."""
    assert (
        main(
            [
                "train",
                str(SPEC),
                "--out",
                str(tmp_path / "cli"),
                "--compile",
                "plain",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test MSE" in out and "R^2" in out
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    api = loop.train(SPEC, out=tmp_path / "api", compile="plain", progress=False)
    run, work = _run_standalone(
        tmp_path, REPO / "generated" / "regression_li.py", "--out", "out"
    )
    script = json.loads((work / "out" / "metrics.json").read_text())
    assert cli["task"] == "regression" and "test_accuracy" not in cli
    for key in ("test_mse", "test_mae", "test_r2", "test_loss"):
        assert cli[key] == api[key] == script[key], key
    assert [h["train_mse"] for h in cli["history"]] == [
        h["train_mse"] for h in script["history"]
    ]
    baseline = _baseline_mse(snncompile.analyze(snncompile.load(SPEC)))
    assert cli["test_mse"] * 5 <= baseline, (cli["test_mse"], baseline)
    assert cli["test_r2"] > 0.8
    assert "MSE" in run.stdout


def test_native_training_and_eval(tmp_path, capsys):
    """The default compile mode trains it too; `eval` reports MSE, MAE and R^2."""
    spec = loop.with_train(snncompile.load(SPEC), epochs=1, limit_train=256)
    metrics = loop.train(spec, out=tmp_path / "run", progress=False)
    assert (
        metrics["test_mse"] is not None and (tmp_path / "run" / "curves.png").is_file()
    )
    assert (
        main(["eval", str(SPEC), "--checkpoint", str(tmp_path / "run"), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"test_mse", "test_mae", "test_r2", "test_loss"}
    # the checkpoint's weights give the run's figures (same test set)
    assert result["test_mse"] == pytest.approx(metrics["test_mse"], rel=1e-4)


@pytest.mark.parametrize("mode", ["sequence", "step"])
def test_regression_exports_and_verifies(tmp_path, mode):
    report = export_onnx(SPEC, tmp_path / "r.onnx", mode=mode, verify=True)
    assert report["verification"]["passed"], report["verification"]["failures"]


def test_losses_and_metrics_by_hand():
    gen = torch.Generator().manual_seed(0)
    mem = torch.randn(4, 3, 2, generator=gen)
    spk = (torch.rand(4, 3, 2, generator=gen) > 0.5).float()
    y = torch.rand(3, 2, generator=gen)
    every = sum(((mem[t] - y) ** 2).mean() for t in range(4)) / 4
    torch.testing.assert_close(losses.loss_mse(spk, mem, y), every)
    torch.testing.assert_close(
        losses.loss_mse(spk, mem, y, "last_membrane"), ((mem[-1] - y) ** 2).mean()
    )
    torch.testing.assert_close(
        losses.loss_l1(spk, mem, y, "mean_membrane"), (mem.mean(0) - y).abs().mean()
    )
    torch.testing.assert_close(
        losses.loss_mse(spk, mem, y, "rate"), ((spk.mean(0) - y) ** 2).mean()
    )
    pred = mem.mean(0)
    half = decode.regression_sums(pred[:2], y[:2]) + decode.regression_sums(
        pred[2:], y[2:]
    )
    got = decode.regression_metrics(half)
    err = (pred - y).double()
    sst = ((y.double() - y.double().mean()) ** 2).sum()
    assert got["mse"] == pytest.approx(float(err.square().mean()))
    assert got["mae"] == pytest.approx(float(err.abs().mean()))
    assert got["r2"] == pytest.approx(float(1 - err.square().sum() / sst))
    assert torch.equal(decode.decode_last_membrane(spk, mem), mem[-1])


BASE = """\
snncompile: 1
name: reg
task: {task}
input: {{shape: [9]}}
steps: 4
layers:
  - {{type: linear, out_features: 8}}
  - {{type: leaky, beta: 0.9}}
  - {{type: linear, out_features: {outputs}}}
  - {{type: li, beta: 0.9}}
decoding: {{type: {decoding}}}
loss: {{type: {loss}}}
train: {{dataset: {dataset}}}
"""


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        (
            {"loss": "ce_membrane"},
            ("loss", "type"),
            "task regression needs a regression loss",
        ),
        (
            {"decoding": "rate"},
            ("decoding", "type"),
            "predicts with a membrane decoding",
        ),
        (
            {"task": "classification", "outputs": 3},
            ("loss", "type"),
            "set `task: regression`",
        ),
        ({"dataset": "synthetic"}, ("train", "dataset"), "is a classification dataset"),
    ],
)
def test_task_errors_are_located(fields, path, message):
    values = {
        "task": "regression",
        "outputs": 2,
        "decoding": "mean_membrane",
        "loss": "mse",
        "dataset": "synthetic_regression",
    } | fields
    with pytest.raises(SpecError) as err:
        snncompile.analyze(snncompile.loads(BASE.format(**values), file="r.yaml"))
    found = [p for p in err.value.problems if message in p.message]
    assert found and found[0].path == path and found[0].line is not None, err.value


def test_one_output_is_a_valid_regression():
    text = BASE.format(
        task="regression",
        outputs=1,
        decoding="last_membrane",
        loss="l1",
        dataset="synthetic_regression",
    )
    graph = snncompile.analyze(snncompile.loads(text))
    assert graph.task == "regression" and graph.num_classes == 1
    source = render_script(graph)
    assert "regression_metrics" in source and "accuracy(" not in source


def test_too_few_inputs_for_the_sinusoids_is_one_line(tmp_path, capsys):
    text = BASE.format(
        task="regression",
        outputs=5,
        decoding="mean_membrane",
        loss="mse",
        dataset="synthetic_regression",
    )
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 11 input values" in err and "Traceback" not in err
