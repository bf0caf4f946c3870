"""The two schedules of every spec in specs/ compute the same network.

`build(spec, schedule="step")` is the per-step reference loop; "layered" hoists
the time-invariant prefix out of the time loop and runs stateless layers once
over all T * B samples.  Only the order of float sums differs, so spikes must
agree except where a membrane lies within 1e-5 of the threshold, and
membranes and gradients must agree to float tolerance.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import snncompile
from snncompile import registry
from snncompile.runtime import losses

SPEC_FILES = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
BATCH = 4
NEAR = 1e-5  # a membrane this close to threshold may fire in one schedule only
MAX_FLIPS = 1e-3  # ... but such spikes must stay under 0.1% of the elements


def strengthen(net, gain=4.0):
    """Scale every linear / conv weight: a freshly initialized network barely
    spikes in its deeper layers, which would leave little to compare."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.weight.mul_(gain)


def make_input(graph, seed):
    """[B, *shape] in [0, 1], or [T, B, *shape] for spike / delta inputs."""
    gen = torch.Generator().manual_seed(seed)
    if not graph.sequence_input:
        return torch.rand(BATCH, *graph.input_shape, generator=gen)
    x = torch.rand(graph.steps or 6, BATCH, *graph.input_shape, generator=gen)
    if graph.encoding["type"] == "spikes":
        x = (x < 0.3).float()
    return x


def record_membranes(net, schedule):
    """Keep every neuron's membranes [T, B, ...]: the step schedule calls each
    neuron's `step`, the layered one its `forward` over the whole sequence (asked
    for the membrane record even where the net passes on only spikes)."""
    mems = {}
    for node in net.graph.neuron_nodes:
        neuron = getattr(net, node.name)
        steps = mems.setdefault(node.name, [])

        def step(cur, state, _step=neuron.step, _steps=steps):
            spk, state = _step(cur, state)
            _steps.append(state[-1])  # every neuron's last state is mem
            return spk, state

        def forward(cur, record_mem=True, _forward=neuron.forward, _steps=steps):
            spk, mem = _forward(cur, record_mem=True)
            _steps.extend(mem.unbind(0))
            return spk, mem if record_mem else None

        if schedule == "step":
            neuron.step = step
        else:
            neuron.forward = forward
    module = vars(sys.modules[type(net).__module__])
    if schedule != "step" and "fused_leaky_linear" in module:
        # a hidden Leaky fused with the linear layer after it returns no membranes:
        # record them by running the same neuron on the same input
        fused = module["fused_leaky_linear"]

        def fused_leaky_linear(neuron, linear, cur, spikes=True):
            spk, out = fused(neuron, linear, cur, spikes)
            neuron(cur)  # the wrapped forward keeps its membranes
            return spk, out

        module["fused_leaky_linear"] = fused_leaky_linear
    return mems


def run(net, x, seed, schedule):
    """Forward with every layer's spikes and membranes, [T, B, ...] each."""
    mems = record_membranes(net, schedule)
    torch.manual_seed(seed)  # stochastic encodings (rate) draw the same spikes
    spk, mem, spikes = net(x, all_spikes=True)
    return spk, mem, spikes, {name: torch.stack(m) for name, m in mems.items()}


def spec_loss(graph, spk, mem, spikes, targets):
    """The spec's loss (and rate penalty), plus a membrane term so that every
    parameter gets a gradient whichever record the spec's loss reads."""
    params = dict(graph.loss)
    penalty = params.pop("rate_regularization", None)
    loss_fn = getattr(losses, registry.LOSSES[params.pop("type")])
    loss = loss_fn(spk, mem, targets, **params)
    if penalty:
        loss = loss + losses.rate_regularization(list(spikes.values()), **penalty)
    return loss + mem.square().mean()


def disable_dropout(net):
    """In train mode the layered schedule draws one dropout mask over all T * B
    samples while the step schedule draws T masks of B samples in turn: the RNG
    is consumed in another order, so the masks (not the networks) would differ.
    Dropout is therefore compared as in eval(), the identity."""
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.eval()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_layered_matches_step(path, mode):
    spec = snncompile.load(path)
    layered = snncompile.build(spec, schedule="layered", seed=0)
    strengthen(layered)
    step = snncompile.build(spec, schedule="step")
    step.load_state_dict(layered.state_dict())
    for net in (layered, step):
        net.train(mode == "train")
        disable_dropout(net)
    graph = layered.graph
    x = make_input(graph, seed=1)
    targets = torch.randint(
        0, graph.num_classes, (BATCH,), generator=torch.Generator().manual_seed(2)
    )
    if graph.task == "regression":  # float targets, one per output
        targets = torch.rand(
            BATCH, graph.num_classes, generator=torch.Generator().manual_seed(2)
        )

    out_l = run(layered, x, seed=3, schedule="layered")
    out_s = run(step, x, seed=3, schedule="step")
    spk_l, mem_l, spikes_l, mems_l = out_l
    spk_s, mem_s, spikes_s, mems_s = out_s

    assert set(spikes_l) == set(spikes_s) == set(mems_l)
    for name, spk in spikes_s.items():
        rate = spk.mean().item()
        if graph.node(name).descriptor.spiking:  # not a readout such as li
            assert 0.005 < rate < 0.995, (
                f"{name} spike rate {rate:.4f}: weak comparison"
            )
        threshold = getattr(step, name).threshold.detach()
        near = ((mems_s[name] - threshold).abs() < NEAR) | (
            (mems_l[name] - threshold).abs() < NEAR
        )
        flips = spikes_l[name] != spk
        assert not (flips & ~near).any(), f"{name}: spikes differ away from threshold"
        assert flips.sum().item() < MAX_FLIPS * spk.numel(), f"{name}: too many flips"
        # float32 rounding of the GEMMs ([T * B] rows against B rows per step)
        # accumulates over the steps relative to the largest membrane, not each
        # element's own: 4.6e-5 at |mem| up to 228 in mnist_synaptic_rate
        scale = max(1.0, mems_s[name].abs().max().item())
        torch.testing.assert_close(
            mems_l[name], mems_s[name], rtol=1e-5, atol=1e-6 * scale, msg=name
        )
    out = graph.neuron_nodes[-1].name
    assert torch.equal(spk_l, spikes_l[out]) and torch.equal(spk_s, spikes_s[out])
    scale = max(1.0, mem_s.abs().max().item())  # as for every layer above
    torch.testing.assert_close(mem_l, mem_s, rtol=1e-5, atol=1e-6 * scale)

    spec_loss(graph, *out_l[:3], targets).backward()
    spec_loss(graph, *out_s[:3], targets).backward()
    params_l = dict(layered.named_parameters())
    params_s = dict(step.named_parameters())
    assert params_l.keys() == params_s.keys() and params_l
    for name, param in params_s.items():
        assert param.grad is not None, name
        # within 1e-5 of the tensor's largest entry (sums of T * B terms)
        scale = max(1.0, param.grad.abs().max().item())
        torch.testing.assert_close(
            params_l[name].grad, param.grad, rtol=1e-4, atol=1e-5 * scale, msg=name
        )
    # train mode: normalization statistics (buffers) advanced alike
    for (name, buf_l), buf_s in zip(layered.named_buffers(), step.buffers()):
        torch.testing.assert_close(buf_l, buf_s, rtol=1e-5, atol=1e-6, msg=name)
