"""--compile auto (the default): the fastest correct mode here, measured once per
spec shape and kernel build and cached next to the kernels; native never where
it measured slower than eager; one line says what was chosen and why."""

from __future__ import annotations

import pytest
import torch

import snncompile
from snncompile import native
from snncompile.lower import optimize

SPEC = """
snncompile: 1
name: auto_check
input: {shape: [12], encoding: {type: direct}}
steps: 5
layers:
  - {type: linear, name: fc1, out_features: 40}
  - {type: synaptic, name: syn, alpha: 0.8, beta: 0.9}
  - {type: linear, name: fc2, out_features: 4}
  - {type: leaky, name: out, beta: 0.9}
train: {dataset: synthetic, batch_size: 16}
"""

needs_native = pytest.mark.skipif(
    native.problem() is not None, reason=f"native kernels: {native.problem()}"
)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("auto") / "cache"


@pytest.fixture
def cache(module_cache, monkeypatch):
    """A cache of this module's own (the kernels build into it once), without
    decisions."""
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(module_cache))
    native.library.cache_clear()
    for old in module_cache.glob("native/choices-*"):
        old.unlink()
    yield module_cache
    native.library.cache_clear()


def net():
    return snncompile.build(snncompile.loads(SPEC), seed=0)


@needs_native
def test_measured_once_then_cached_next_to_the_kernels(cache):
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    measured = optimize.CHOICE_STATS["measured"]
    choice = optimize.choose(model)
    assert choice.mode in ("native", "none")
    assert set(choice.times) == {"native", "none"}
    assert choice.times[choice.mode] == min(choice.times.values())
    assert "measured now" in choice.reason and "\n" not in choice.line()
    assert optimize.CHOICE_STATS["measured"] == measured + 1
    # the net and the random number generators are left as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    where = native.choices_file()
    assert where.exists() and where.parent == native._target().parent
    again = optimize.choose(net())
    assert again.mode == choice.mode and "cached" in again.reason
    assert optimize.CHOICE_STATS["measured"] == measured + 1


@needs_native
@pytest.mark.parametrize("faster", ["native", "none"])
def test_native_only_where_it_measured_faster(cache, monkeypatch, faster):
    times = (
        {"native": 2.0, "none": 1.0}
        if faster == "none"
        else {"native": 1.0, "none": 2.0}
    )
    monkeypatch.setattr(
        optimize, "measure", lambda net, modes, size=None: (dict(times), 16)
    )
    assert optimize.choose(net()).mode == faster
    fast = optimize.apply(net(), "auto")  # the cached decision
    layers = optimize.neurons(fast)
    uses_native = [isinstance(m.compiled, native.LeakyKernels) for m in layers]
    assert all(uses_native) if faster == "native" else not any(uses_native)


@needs_native
def test_torch_compile_joins_only_for_a_narrower_build(cache, monkeypatch):
    asked = []

    def measure(net, modes, size=None):
        asked.append(tuple(modes))
        return {mode: 1.0 + i for i, mode in enumerate(modes)}, 16

    monkeypatch.setattr(optimize, "measure", measure)
    monkeypatch.setattr(optimize, "compile_problem", lambda: None)
    monkeypatch.setattr(optimize, "machine_lanes", lambda: native.lanes())
    optimize.choose(net())
    monkeypatch.setattr(optimize, "machine_lanes", lambda: 2 * native.lanes())
    optimize.choose(net())  # another key: measured again, with neurons
    assert asked == [("native", "none"), ("native", "none", "neurons")]


def test_without_a_compiler_eager_and_the_reason_once(monkeypatch, capsys):
    """The fallback is a warning (train prints it once, on stderr)."""
    monkeypatch.setattr(optimize, "native_problem", lambda: "no C compiler found")
    mode, warning = optimize.preflight("auto", net())
    assert mode == "none" and capsys.readouterr().out == ""
    assert warning == (
        "compile: none (no compiled kernels here (no C compiler found); running "
        "eagerly, as --compile none)"
    )


@needs_native
def test_preflight_says_what_and_why_in_one_line(cache, capsys):
    mode, warning = optimize.preflight("auto", net())
    assert mode in ("native", "none") and warning is None
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays clean for --json output
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"compile: {mode} (fastest here: ")
    assert "ms per training step of " in line and " samples, " in line


def test_measure_handles_every_example_shape():
    """A synthetic batch for a spike-train input, also of `steps: auto` (no
    length in the spec), and a regression loss."""
    import dataclasses

    spec = snncompile.loads(
        SPEC.replace("encoding: {type: direct}", "encoding: {type: spikes}")
        .replace("train: {dataset: synthetic", "task: regression\nloss: {type: mse}\n"
                 "decoding: {type: mean_membrane}\ntrain: {dataset: synthetic_regression")
        .replace("{type: leaky, name: out, beta: 0.9}", "{type: li, name: out, beta: 0.9}")
    )  # fmt: skip
    model = snncompile.build(spec, seed=0)
    times, samples = optimize.measure(model, ["none"])
    assert set(times) == {"none"} and times["none"] > 0 and 8 <= samples <= 16
    x, targets = optimize._synthetic_batch(dataclasses.replace(model.graph, steps=0), 3)
    assert x.shape == (100, 3, 12) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert targets.shape == (3, 4) and targets.dtype == torch.float32
