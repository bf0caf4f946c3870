"""torch.compile on top (lower/optimize.py) against the eager module: every neuron
type's compiled time loop gives the same spikes and membranes and gradients equal
up to float summation order, in training and in inference, on one small network
holding all five neuron types (one compile per layer keeps this test short)."""

import pytest
import torch

import snncompile
from snncompile.lower.optimize import compile_neurons, neurons

pytestmark = pytest.mark.compile

SPEC = """
snncompile: 1
name: every_neuron
input: {shape: [12], encoding: {type: direct}}
steps: 6
defaults: {beta: 0.8, threshold: 0.5, learn_beta: true, learn_threshold: true}
layers:
  - {type: linear, name: fc1, out_features: 16}
  - {type: leaky, name: lif, per_neuron: true}
  - {type: linear, name: fc2, out_features: 14}
  - {type: synaptic, name: syn, alpha: 0.7, reset: zero}
  - {type: linear, name: fc3, out_features: 12}
  - {type: alpha, name: alp, alpha: 0.9, beta: 0.7}
  - {type: linear, name: fc4, out_features: 10}
  - {type: rleaky, name: rlif, recurrence: {type: linear}}
  - {type: linear, name: fc5, out_features: 4}
  - {type: rsynaptic, name: rsyn, alpha: 0.6, reset: none,
     recurrence: {type: one_to_one, V: 0.5}}
decoding: {type: rate}
loss: {type: ce_rate}
train: {dataset: synthetic, batch_size: 8, optimizer: {type: adam, lr: 0.001}}
"""


def run(net, x, train):
    net.train(train)
    with torch.set_grad_enabled(train):
        spk, mem, records = net(x, all_spikes=True)
        grads = {}
        if train:
            (
                spk.sum() + mem.square().sum() + sum(r.mean() for r in records.values())
            ).backward()
            grads = {name: p.grad for name, p in net.named_parameters()}
    return spk, mem, records, grads


@pytest.mark.parametrize("train", [True, False], ids=["train", "inference"])
def test_compiled_neurons_match_eager(train):
    spec = snncompile.loads(SPEC)
    eager = snncompile.build(spec, seed=0)
    with torch.no_grad():  # enough drive that every layer spikes, but not always
        for name in ("fc1", "fc2", "fc3", "fc4", "fc5"):
            getattr(eager, name).weight.mul_(2.5)
    compiled = snncompile.compile(spec, mode="neurons")
    compiled.load_state_dict(eager.state_dict())
    assert all(m.compiled for m in neurons(compiled)) and len(neurons(compiled)) == 5
    x = torch.rand(8, 12, generator=torch.Generator().manual_seed(1)) * 2
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    spk, mem, rec, grads = run(compiled, x, train)
    # the compiled kernels ran (not a silent fallback to the eager loop)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    spk_ref, mem_ref, rec_ref, grads_ref = run(eager, x, train)
    assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref)
    for name, record in rec_ref.items():
        assert torch.equal(rec[name], record), name
        assert 0 < record.sum() < record.numel(), f"{name} never or always spikes"
    assert set(grads) == set(grads_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compile_neurons_can_be_switched_off():
    net = compile_neurons(snncompile.build(snncompile.loads(SPEC)))
    compile_neurons(net, enabled=False)
    assert not any(m.compiled for m in neurons(net))
