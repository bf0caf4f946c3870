"""ONNX on real data: a briefly trained mnist_fc gives the same test predictions
in onnxruntime as in PyTorch, and `evaluate_onnx` (train/onnx_eval.py) / `snncompile eval --onnx`
report the same accuracy."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import torch

import snncompile
from snncompile.cli import main
from snncompile.export import verify
from snncompile.export.onnx import _Inference, export_onnx
from snncompile.export.wrappers import decoder
from snncompile.runtime.losses import loss_ce_membrane
from snncompile.train.onnx_eval import evaluate_onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(
    os.environ.get("SNNCOMPILE_DATA") or ROOT.parent / "shared" / "data"
)
TEST_SAMPLES = 2000
ITERATIONS, BATCH = 100, 64  # a few seconds on 2 cores; about 85% accuracy

pytestmark = pytest.mark.slow


def _mnist(train: bool):
    torchvision = pytest.importorskip("torchvision")
    if not (DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST not found under {DATA} (set SNNCOMPILE_DATA)")
    data = torchvision.datasets.MNIST(str(DATA), train=train, download=False)
    return data.data.unsqueeze(1).float() / 255, data.targets


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """mnist_fc after 100 Adam steps of 64 images, and its checkpoint."""
    images, labels = _mnist(train=True)
    spec = snncompile.load(ROOT / "specs" / "mnist_fc.yaml")
    torch.manual_seed(0)
    net = snncompile.build(spec, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    # one thread: these small steps barely gain from a second, and on a busy
    # machine its spin-waiting made them ten times slower
    torch.set_num_threads(1)
    try:
        _train(net, optimizer, images, labels, order)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("mnist_fc")
    checkpoint = folder / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "spec": net.graph.spec_json}, checkpoint)
    return spec, net, checkpoint, folder


def _train(net, optimizer, images, labels, order):
    for i in range(ITERATIONS):
        index = order[i * BATCH : (i + 1) * BATCH]
        spk, mem = net(images[index])
        loss = loss_ce_membrane(spk, mem, labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _torch_predictions(net, images, batch=1000):
    decode = decoder(net.graph)
    preds = []
    with _Inference(net), torch.no_grad():
        for i in range(0, len(images), batch):
            preds.append(decode(*net(images[i : i + batch])).argmax(-1))
    return torch.cat(preds)


def test_onnx_predictions_match_pytorch(trained):
    spec, net, checkpoint, folder = trained
    path = folder / "mnist_fc.onnx"
    report = export_onnx(spec, path, checkpoint=checkpoint, verify=True)
    assert report["verification"]["passed"], report["verification"]["failures"]
    images, labels = _mnist(train=False)
    images, labels = images[:TEST_SAMPLES], labels[:TEST_SAMPLES]
    sess = verify.session(path)
    scores = np.concatenate(
        [
            sess.run(["scores"], {"x": images[i : i + 1000].numpy()})[0]
            for i in range(0, TEST_SAMPLES, 1000)
        ]
    )
    onnx_pred = torch.from_numpy(scores).argmax(-1)
    torch_pred = _torch_predictions(net, images)
    same = float((onnx_pred == torch_pred).float().mean())
    torch_acc = float((torch_pred == labels).float().mean())
    onnx_acc = float((onnx_pred == labels).float().mean())
    print(
        f"identical predictions {same:.2%}; accuracy torch {torch_acc:.2%} onnx {onnx_acc:.2%}"
    )
    assert torch_acc > 0.5, "training did not work: the comparison would be weak"
    assert same >= 0.999
    assert abs(torch_acc - onnx_acc) <= 0.0005
    # evaluate_onnx reads the test set itself and gets the same figure
    result = evaluate_onnx(spec, path, data_root=DATA, limit_test=TEST_SAMPLES)
    assert result["test_samples"] == TEST_SAMPLES
    # (its batches may differ from ours: a sample at the threshold may flip)
    assert abs(result["test_accuracy"] - onnx_acc) <= 1 / TEST_SAMPLES


def test_step_model_and_eval_cli(trained, capsys):
    spec, _, checkpoint, folder = trained
    step = folder / "mnist_fc_step.onnx"
    export_onnx(spec, step, mode="step", checkpoint=checkpoint)
    seq = folder / "mnist_fc_seq.onnx"
    export_onnx(spec, seq, checkpoint=checkpoint)
    limit = 1000
    by_step = evaluate_onnx(spec, step, data_root=DATA, limit_test=limit)
    by_seq = evaluate_onnx(spec, seq, data_root=DATA, limit_test=limit)
    assert by_step["mode"] == "step" and by_seq["mode"] == "sequence"
    assert abs(by_step["test_accuracy"] - by_seq["test_accuracy"]) <= 1 / limit
    args = ["eval", str(ROOT / "specs" / "mnist_fc.yaml"), "--onnx", str(seq)]
    args += ["--data-root", str(DATA), "--limit-test", str(limit), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_accuracy"] == pytest.approx(by_seq["test_accuracy"], abs=1e-12)
