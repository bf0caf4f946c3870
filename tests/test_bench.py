"""Smoke test of `snncompile bench` on a tiny synthetic spec (no timing claims).

The harness is benchmarks/bench.py, loaded from this checkout by
snncompile/benchmark.py (the command's thin entry)."""

import importlib.util
import json

import pytest
import torch

from snncompile import benchmark
from snncompile.cli import main


def _harness():
    module = benchmark.harness()
    assert module is not None, "benchmarks/bench.py is missing from this checkout"
    return module


TINY = """\
snncompile: 1
name: tiny_bench
input:
  shape: [1, 8, 8]
  encoding: {type: direct}
steps: 4
defaults:
  beta: 0.9
  threshold: 0.5
layers:
  - {type: flatten}
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 3}
  - {type: leaky, name: lif2}
decoding: {type: rate}
loss: {type: ce_membrane}
train:
  dataset: synthetic
  batch_size: 8
  optimizer: {type: adam, lr: 1.0e-3}
"""

ROWS = [
    "snnTorch tutorial loop",
    "snncompile step schedule",
    "snncompile eager, Leaky step loops",
    "snncompile eager",
    "onnxruntime (ONNX)",
]


def _bench(tmp_path, capsys, *extra, text=TINY):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(text)
    out = tmp_path / "bench.json"
    argv = ["bench", str(spec), "--batch", "8", "--repeats", "2", "--warmup", "1"]
    code = main([*argv, "--no-compile", "--json", str(out), *extra])
    return code, capsys.readouterr().out, json.loads(out.read_text())


def test_bench_table_and_exactness(tmp_path, capsys):
    pytest.importorskip("snntorch")
    code, text, report = _bench(tmp_path, capsys, "--no-peers")
    assert code == 0, text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in table[1:]] == ROWS
    assert [r["variant"] for r in report["rows"]] == ROWS
    assert "exactness check: PASSED" in text
    exact = report["exactness"]
    assert exact["passed"] and set(exact["variants"]) == {
        "step",
        "loops",
        "eager",
        "onnx",
    }
    for key, entry in exact["variants"].items():
        assert entry["spikes_equal"] and entry["max_mem_diff"] == 0.0
        assert entry.get("train_spikes_equal") is (None if key == "onnx" else True)
    trained = [r for r in report["rows"] if r["key"] != "onnx"]
    for row in trained:
        assert row["train_samples_per_s"] > 0 and row["peak_train_mb"] > 0
    # the reference row is the unit of every ratio
    assert report["rows"][0]["train_speedup"] == 1.0
    assert report["rows"][0]["infer_speedup"] == 1.0


def test_bench_step_reference(tmp_path, capsys):
    """Without the snnTorch loop the reference is snncompile's per-step schedule."""
    code, text, report = _bench(tmp_path, capsys, "--reference", "step", "--no-peers")
    assert code == 0, text
    assert report["rows"][0]["variant"] == "per-step loop"
    assert "exactness check: PASSED" in text


def test_bench_rate_encoding_compares_the_same_spike_trains(tmp_path, capsys):
    """Rate encoding draws Bernoulli spikes from the global RNG inside each
    variant's forward: every compared forward starts from the same RNG state,
    so each variant reads the same spike train and their spikes agree (they
    used to draw one after another, each its own train: exactness FAILED)."""
    rate = TINY.replace("encoding: {type: direct}", "encoding: {type: rate}")
    code, text, report = _bench(tmp_path, capsys, "--no-peers", text=rate)
    assert code == 0, text
    assert "exactness check: PASSED" in text
    assert report["rows"][0]["variant"] == "per-step loop"
    exact = report["exactness"]
    assert set(exact["variants"]) == {"loops", "eager"}
    for entry in exact["variants"].values():
        assert entry["spikes_equal"] and entry["train_spikes_equal"], entry
        assert entry["max_mem_diff"] < 1e-5


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["bench", str(spec), "--repeats", "0"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [("tpu9", "is not a device"), ("meta", "only cpu and cuda")]
    + ([] if __import__("torch").cuda.is_available() else [("cuda", "no CUDA")]),
)
def test_bench_rejects_bad_devices(tmp_path, capsys, device, message):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["bench", str(spec), "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device"
)
def test_bench_on_cuda(tmp_path, capsys):
    code, text, report = _bench(tmp_path, capsys, "--device", "cuda", "--no-peers")
    assert code == 0, text
    assert report["device"].startswith("cuda")
    assert report["exactness"]["passed"]
    assert "onnx" not in {r["key"] for r in report["rows"]}
    assert all(r["peak_train_mb"] > 0 for r in report["rows"])


def test_compare_outputs_counts_near_threshold_partings():
    """An output neuron that fires in one run and not the other where the two
    membranes agree to rounding is counted, not failed; one where they differ
    more, or any hidden-layer difference, is a real difference."""
    compare_outputs = _harness().compare_outputs

    mem = torch.tensor([[[0.5, 0.2]], [[1.0000001, 0.3]], [[0.4, 0.9]]])
    spk = (mem > 1.0).float()
    close = mem.clone()
    close[1, 0, 0] = 0.9999999  # rounding decides: below the threshold
    close[2, 0, 0] = 1.4  # and after the parting, anything
    records = {"hidden": torch.ones(3, 1, 4)}
    entry = compare_outputs(
        ((close > 1.0).float(), close, records), (spk, mem, records)
    )
    assert not entry["spikes_equal"] and entry["spikes_match"]
    assert entry["near_threshold"] == 1
    far = mem.clone()
    far[1, 0, 0] = 0.5
    entry = compare_outputs(((far > 1.0).float(), far, None), (spk, mem, None))
    assert not entry["spikes_match"] and entry["near_threshold"] == 0
    other = {"hidden": torch.zeros(3, 1, 4)}
    entry = compare_outputs((spk, mem, other), (spk, mem, records))
    assert entry["spikes_match"] is False


def test_native_note_says_built_or_loaded(monkeypatch):
    """The native row's build (or load) happens before any timed call; the
    bench says which, and how long it took."""
    from snncompile import native

    native_note = _harness().native_note

    monkeypatch.setitem(native.STATS, "seconds", 3.25)
    monkeypatch.setitem(native.STATS, "builds", 1)
    assert native_note().startswith("native kernels built in 3.2 s")
    monkeypatch.setitem(native.STATS, "builds", 0)
    assert native_note().startswith("native kernels loaded from")
    assert "3.25 s" in native_note()


def test_package_ships_no_harness():
    """The harness lives in benchmarks/, not in the installed package."""
    assert importlib.util.find_spec("snncompile.bench") is None
    assert benchmark.HARNESS.parent.name == "benchmarks"
    assert benchmark.harness().__file__ == str(benchmark.HARNESS)


def test_bench_without_harness_says_so(tmp_path, monkeypatch, capsys):
    """Where benchmarks/bench.py is missing (a wheel install) the command gives
    one line of error and exit status 2, whatever options follow the spec."""
    monkeypatch.setattr(benchmark, "HARNESS", tmp_path / "benchmarks" / "bench.py")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["bench", str(spec), "--repeats", "3", "--no-compile"]) == 2
    err = capsys.readouterr().err
    message = (
        "error: snncompile bench needs a source checkout: benchmarks/bench.py is "
        "not installed with the package; clone the repository and pip install -e ."
    )
    assert err.splitlines() == [message]
