"""`snncompile bench --workload open-neuromorphic` and the peer rows
(SpikingJelly, Norse) at a tiny size: the rows run, snncompile's are exact
against snnTorch's, each peer matches its stated equations bit for bit, and a
peer that is not installed gives a note instead of a row (no timing claims).

The harness is benchmarks/bench.py (peers in benchmarks/peers.py), loaded from
this checkout by snncompile/benchmark.py."""

import importlib.util
import json

import pytest
import torch

import snncompile
from snncompile import benchmark
from snncompile.cli import main

TINY_ON = [
    "--workload",
    "open-neuromorphic",
    "--neurons",
    "24",
    "--steps",
    "16",
    "--batch",
    "3",
    "--repeats",
    "1",
    "--warmup",
    "0",
]
INSTALLED = {
    name: importlib.util.find_spec(name) is not None
    for name in ("spikingjelly", "norse")
}


def _harness():
    module = benchmark.harness()
    assert module is not None, "benchmarks/bench.py is missing from this checkout"
    return module


def _peers():
    return _harness().peers_module()


def _run(tmp_path, capsys, *argv):
    out = tmp_path / "bench.json"
    code = main(["bench", *argv, "--json", str(out)])
    text = capsys.readouterr().out
    return code, text, json.loads(out.read_text()) if out.exists() else None


def test_open_neuromorphic_rows_exact_against_snntorch(tmp_path, capsys):
    pytest.importorskip("snntorch")
    code, text, report = _run(tmp_path, capsys, *TINY_ON)
    assert code == 0, text
    assert report["workload"] == "open-neuromorphic"
    assert (report["neurons"], report["steps"], report["batch"]) == (24, 16, 3)
    keys = [r["key"] for r in report["rows"]]
    peers = [name for name, present in INSTALLED.items() if present]
    assert keys[0] == "reference" and "eager" in keys
    assert keys[len(keys) - len(peers) :] == peers  # a row for every installed peer
    assert report["rows"][0]["variant"].startswith("snnTorch")
    for row in report["rows"]:
        assert row["train_ms"] > 0 and row["forward_ms"] > 0
        assert row["train_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"])
    assert report["rows"][0]["train_speedup"] == 1.0
    exact = report["exactness"]
    assert exact["passed"] and "exactness check: PASSED" in text
    for key, entry in exact["variants"].items():
        if key in INSTALLED:  # a peer: its own equations exactly, ours informatively
            assert entry["equations_match"] is True, entry
            assert 0.0 < entry["rate"] < 1.0 and entry["informative"]
        else:  # snncompile's rows: snnTorch's spikes and membranes
            assert entry["spikes_equal"], (key, entry)
            assert entry["max_mem_diff"] < 1e-5, (key, entry)
    for peer in peers:
        assert report["differences"][peer]["differences"]
        assert "what differs from snnTorch's Leaky" in text


def test_open_neuromorphic_spike_input(tmp_path, capsys):
    pytest.importorskip("snntorch")
    code, text, report = _run(
        tmp_path, capsys, *TINY_ON, "--input", "spikes", "--no-peers", "--no-compile"
    )
    assert code == 0, text
    assert report["input"] == "spikes"
    assert [r["key"] for r in report["rows"]] == ["reference", "eager"]
    assert report["exactness"]["variants"]["eager"]["spikes_equal"]


def test_workload_spec_is_one_linear_and_one_leaky_layer():
    spec = _harness().open_neuromorphic_spec(neurons=40, steps=7, batch=2)
    graph = snncompile.analyze(spec)
    assert [n.type for n in graph.nodes] == ["linear", "leaky"]
    assert graph.sequence_input and graph.steps == 7
    assert graph.input_shape == (40,) and graph.nodes[-1].out_shape == (40,)
    assert graph.nodes[-1].params["beta"] == 0.95


def test_missing_peer_gives_a_note_not_a_row(tmp_path, capsys, monkeypatch):
    """A peer that is not installed (or does not import) is skipped cleanly."""
    pytest.importorskip("snntorch")
    monkeypatch.setattr(_peers().Peer, "version", lambda self: None)
    code, text, report = _run(tmp_path, capsys, *TINY_ON, "--no-compile")
    assert code == 0, text
    assert [r["key"] for r in report["rows"]] == ["reference", "eager"]
    assert "note: no spikingjelly row: not installed" in text
    assert "note: no norse row: not installed" in text
    assert report["differences"] == {}


def test_no_peers_option(tmp_path, capsys):
    pytest.importorskip("snntorch")
    code, text, report = _run(tmp_path, capsys, *TINY_ON, "--no-peers", "--no-compile")
    assert code == 0, text
    assert [r["key"] for r in report["rows"]] == ["reference", "eager"]
    assert "spikingjelly" not in text and "norse" not in text


@pytest.mark.skipif(not INSTALLED["spikingjelly"], reason="spikingjelly not installed")
def test_stated_equations_catch_a_wrong_difference_list(tmp_path, capsys, monkeypatch):
    """Replace SpikingJelly's stated equations with snnTorch's Leaky (reset at
    the next step, undecayed): the check now fails, so it has teeth."""
    pytest.importorskip("snntorch")

    def leaky(self, current):
        mem = torch.zeros_like(current[0])
        spikes = []
        for x in current:
            reset = (mem > self.threshold).float()
            mem = (1 - 1 / self.tau) * mem + x - reset * self.threshold
            spikes.append((mem > self.threshold).float())
        return torch.stack(spikes), None

    monkeypatch.setattr(_peers().SpikingJellyLIF, "equations", leaky)
    code, text, report = _run(tmp_path, capsys, *TINY_ON, "--no-compile")
    assert code == 1
    entry = report["exactness"]["variants"]["spikingjelly"]
    assert entry["equations_match"] is False and entry["equations_mismatches"]
    assert "DIFFER from its stated equations" in text
    assert "exactness check: FAILED" in text


SPEC = """\
snncompile: 1
name: tiny_peers
input: {shape: [1, 6, 6], encoding: {type: direct}}
steps: 6
defaults: {beta: 0.9, threshold: 0.5}
layers:
  - {type: flatten}
  - {type: linear, name: fc1, out_features: 20}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 4}
  - {type: leaky, name: lif2}
decoding: {type: rate}
loss: {type: ce_membrane}
train: {dataset: synthetic, batch_size: 8, optimizer: {type: adam, lr: 1.0e-3}}
"""


@pytest.mark.skipif(not any(INSTALLED.values()), reason="no peer library installed")
def test_spec_bench_peer_rows(tmp_path, capsys):
    """mnist_fc-like spec: peer rows train and infer, match their stated
    equations in every layer, and step the default (unfused) optimizer."""
    pytest.importorskip("snntorch")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    argv = [str(spec), "--batch", "8", "--repeats", "1", "--warmup", "0", "--run", "2"]
    code, text, report = _run(tmp_path, capsys, *argv, "--no-compile")
    assert code == 0, text
    rows = {r["key"]: r for r in report["rows"]}
    for peer, present in INSTALLED.items():
        assert (peer in rows) is present
        if present:
            assert rows[peer]["train_ms"] > 0 and rows[peer]["infer_ms"] > 0
            entry = report["exactness"]["variants"][peer]
            assert entry["equations_match"] is True, entry
            assert entry["records"] == 3  # output, lif1, lif2
    assert report["exactness"]["passed"]


def test_peer_reasons():
    """What a peer row cannot express is named (and gives a note, no row)."""
    peers = _peers()
    base = snncompile.loads(SPEC)
    assert peers.SPIKINGJELLY.reason(snncompile.analyze(base)) is None
    for old, new, reason in [
        ("threshold: 0.5}", "threshold: 0.5, reset: zero}", "zero reset"),
        (
            "{type: leaky, name: lif1}",
            "{type: synaptic, name: lif1, alpha: 0.8}",
            "synaptic",
        ),
        ("{type: direct}", "{type: rate}", "rate encoding"),
        ("threshold: 0.5}", "threshold: 0.5, surrogate: {type: triangular}}", "tri"),
    ]:
        graph = snncompile.analyze(snncompile.loads(SPEC.replace(old, new)))
        for peer in peers.PEERS:
            assert reason in (peer.reason(graph) or ""), (peer.key, reason)


def test_norse_input_scaling_is_undone():
    """Norse integrates dv = dt/tau (I - v): the layer feeding each neuron is
    scaled by 1/(1 - beta) so that its membrane follows beta v + I."""
    pytest.importorskip("norse")
    peers = _peers()
    net = snncompile.build(snncompile.loads(SPEC), seed=0)
    model = peers.PeerNet(net, net.graph, peers.NORSE)
    for name in ("fc1", "fc2"):
        scaled = model.layers[name].weight / getattr(net, name).weight
        assert torch.allclose(scaled, torch.full_like(scaled, 1 / (1 - 0.9)))


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give a SPEC file, or --workload"),
        (["SPEC", "--workload", "open-neuromorphic"], "not both"),
        (["SPEC", "--neurons", "8"], "--neurons: only with --workload"),
        (["--workload", "open-neuromorphic", "--rss"], "--rss"),
        (["--workload", "open-neuromorphic", "--steps", "0"], "must be >= 1"),
    ],
)
def test_bench_workload_options(tmp_path, capsys, argv, message):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    argv = [str(spec) if a == "SPEC" else a for a in argv]
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--workload", "open-neuromorphic", "--neurons", "8", "--no-peers"],
        ["SPEC", "--repeats", "3", "--no-peers"],
    ],
)
def test_workload_without_harness_says_so(tmp_path, monkeypatch, capsys, argv):
    """Without benchmarks/bench.py (a wheel install) every form of the command
    gives the one-line error, exit status 2."""
    monkeypatch.setattr(benchmark, "HARNESS", tmp_path / "benchmarks" / "bench.py")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    argv = [str(spec) if a == "SPEC" else a for a in argv]
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: snncompile bench needs a source checkout")
    assert len(err.splitlines()) == 1
