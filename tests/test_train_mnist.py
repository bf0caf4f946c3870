"""Real MNIST: the snnTorch Tutorial 5 network learns from a few hundred iterations."""

import json
import os
import pathlib

import pytest

from snncompile.cli import main

ROOT = pathlib.Path(__file__).parents[1]


def mnist_root():
    env = os.environ.get("SNNCOMPILE_DATA")
    path = pathlib.Path(env) if env else ROOT.parent / "shared" / "data"
    if not (path / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found in {path} (set SNNCOMPILE_DATA)")
    return path


@pytest.mark.slow
def test_mnist_fc_reaches_85_percent_in_300_iterations(tmp_path, capsys):
    root = mnist_root()
    spec = str(ROOT / "specs" / "mnist_fc.yaml")
    args = ["--data-root", str(root), "--no-download", "--limit-test", "2000"]
    train = ["train", spec, "--out", str(tmp_path), "--quiet"]
    assert (
        main(train + args + ["--limit-train", str(300 * 128), "--device", "cpu"][:-2])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iterations_per_epoch"] == 300
    assert metrics["test_samples"] == 2000
    assert metrics["test_accuracy"] > 0.85
    capsys.readouterr()
    # the saved checkpoint gives the same accuracy when evaluated on its own
    assert main(["eval", spec, "--checkpoint", str(tmp_path), "--json"] + args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_accuracy"] == metrics["test_accuracy"]
