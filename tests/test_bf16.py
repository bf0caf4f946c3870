"""`train.precision: bf16` keeps the fast kernels: under bfloat16 autocast the
matrix products run in bfloat16 and every neuron layer casts its input current
to float32 (runtime/neurons.py, runtime/fused.py, native/neurons.py), so the
eager fused kernels (`--compile none`) and the C kernels (`native`) give the
plain model's spikes and membranes exactly, gradients up to bfloat16 rounding."""

from pathlib import Path

import pytest
import torch

import snncompile
from snncompile import native
from snncompile.lower import optimize
from snncompile.train import loop, plots

NATIVE = pytest.param(
    "native",
    marks=pytest.mark.skipif(
        native.problem() is not None, reason=f"native kernels: {native.problem()}"
    ),
)

# every path a layer can take: Leaky by leaky.c (time-invariant input, learnable
# beta and threshold), Synaptic, RLeaky with a linear recurrence (the product by
# torch between C calls, in bfloat16 under autocast) and ALIF by neurons.c, LI
TYPES = """\
snncompile: 1
name: bf16_types
input: {shape: [12], encoding: {type: direct}}
steps: 5
defaults: {beta: 0.9, surrogate: {type: atan}}
layers:
  - {type: linear, name: fc1, out_features: 24}
  - {type: leaky, name: lif1, learn_beta: true, learn_threshold: true}
  - {type: linear, name: fc2, out_features: 20}
  - {type: synaptic, name: syn1, alpha: 0.8}
  - {type: linear, name: fc3, out_features: 16}
  - {type: rleaky, name: rlif1, recurrence: {type: linear}}
  - {type: linear, name: fc4, out_features: 12}
  - {type: ralif, name: alif1, rho: 0.9, adapt: 0.5, recurrence: {type: linear}}
  - {type: linear, name: fc5, out_features: 4}
  - {type: li, name: readout}
decoding: {type: max_membrane}
loss: {type: ce_max_membrane}
train: {dataset: synthetic, batch_size: 8, device: cpu}
"""

# a hidden Leaky layer wide enough (batch 8 x 2100 >= LeakySequence.small_step)
# that the fused node's backward forms the next linear layer's gradients in
# its loop; under autocast the product itself is autocast's, in bfloat16
WIDE = """\
snncompile: 1
name: bf16_wide
input: {shape: [12], encoding: {type: direct}}
steps: 5
defaults: {beta: 0.9, surrogate: {type: atan}}
layers:
  - {type: linear, name: fc1, out_features: 2100}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 4}
  - {type: leaky, name: lif2}
loss: {type: ce_rate}
train: {dataset: synthetic, batch_size: 8, device: cpu}
"""

TRAIN = """\
snncompile: 1
name: bf16_tiny
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
  batch_size: 32
  epochs: 1
  optimizer: {type: adam, lr: 0.01}
  limit_train: 96
  limit_test: 32
  device: cpu
  precision: bf16
"""


def _under_bf16(spec, mode):
    """Records, output membrane and gradients of one forward and backward under
    bfloat16 autocast, in `mode`, from the same weights and input."""
    net = snncompile.build(spec, seed=0)
    model = optimize.apply(net, mode)
    x = torch.rand((8, 12), generator=torch.Generator().manual_seed(1)) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mem, records = model(x, all_spikes=True)
        loss = mem.square().mean() + sum(s.mean() for s in records.values())
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    return records, mem, grads


@pytest.mark.parametrize("mode", ["none", NATIVE])
@pytest.mark.parametrize("text", [TYPES, WIDE], ids=["types", "wide"])
def test_every_kernel_gives_the_plain_models_spikes_under_bf16(mode, text, monkeypatch):
    spec = snncompile.loads(text)
    ran = []  # the C kernels' calls that ran (not a fallback)
    if mode == "native":
        sequence, scan = native.neurons.sequence, native.LeakyKernels.scan

        def spy_sequence(lib, neuron, cur, *args):
            out = sequence(lib, neuron, cur, *args)
            ran.append(("neurons.c", type(neuron).__name__, out is not None))
            return out

        def spy_scan(self, cur, b, threshold, *args):
            ran.append(("leaky.c", cur.dtype, self._fits(cur, b, threshold)))
            return scan(self, cur, b, threshold, *args)

        monkeypatch.setattr(native.neurons, "sequence", spy_sequence)
        monkeypatch.setattr(native.LeakyKernels, "scan", spy_scan)
    records, mem, grads = _under_bf16(spec, "plain")
    fast_records, fast_mem, fast_grads = _under_bf16(spec, mode)
    assert mem.dtype == fast_mem.dtype == torch.float32  # float32 states
    assert torch.equal(fast_mem, mem)
    for name, spikes in records.items():
        assert spikes.dtype == fast_records[name].dtype == torch.float32
        assert torch.equal(fast_records[name], spikes), name
    assert sum(s.sum() for s in records.values()) > 0  # something fired
    for name, grad in grads.items():  # bfloat16 products: bfloat16 rounding
        assert fast_grads[name] is not None, name
        err = (fast_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert err < 3e-2, (name, float(err))
    if mode == "native":
        assert ("leaky.c", torch.float32, True) in ran
        for kind in ("Synaptic", "RLeaky", "ALIF", "LI") if text == TYPES else ():
            assert ("neurons.c", kind, True) in ran, kind


def _train(tmp_path, mode, capsys):
    """One epoch of 3 iterations in `mode`: (metrics, stderr, checkpoint)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TRAIN)
    run = tmp_path / mode
    metrics = loop.train(path, out=run, compile=mode, progress=False)
    err = capsys.readouterr().err
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    return metrics, err, payload


@pytest.mark.parametrize("mode", ["none", NATIVE])
def test_bf16_training_keeps_the_kernels_and_the_plain_losses(
    tmp_path, mode, capsys, monkeypatch
):
    monkeypatch.setattr(plots, "_save", lambda figure, path: Path(path).touch())
    plain, _, reference = _train(tmp_path, "plain", capsys)
    metrics, err, payload = _train(tmp_path, mode, capsys)
    assert metrics["compile"] == mode and "runs the model as generated" not in err
    losses, expected = payload["iteration_loss"], reference["iteration_loss"]
    assert len(losses) == 3
    # the first forward is the plain model's exactly (native: its loss by loss.c,
    # to rounding); then the updates differ by bfloat16 rounding of gradients
    assert losses[0] == pytest.approx(expected[0], rel=1e-6 if mode == "native" else 0)
    torch.testing.assert_close(losses, expected, rtol=2e-2, atol=0)
    assert metrics["test_loss"] == pytest.approx(plain["test_loss"], rel=2e-2)
    for name, weight in payload["model"].items():  # three Adam steps of lr 0.01
        assert weight.dtype == torch.float32, name
        torch.testing.assert_close(weight, reference["model"][name], rtol=0, atol=0.03)
