import json

import pytest
import torch

import snncompile
from snncompile.ir import passes


def spec(time, **bn):
    data = {
        "snncompile": 1,
        "name": "bn_time",
        "input": {"shape": [2, 5, 5], "encoding": {"type": "rate"}},
        "steps": 4,
        "layers": [
            {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d", "name": "bn", "time": time, **bn},
            {"type": "leaky", "beta": 0.9},
            {"type": "flatten"},
            {"type": "linear", "out_features": 6},
            {"type": "batchnorm1d", "name": "bn1", "time": time},
            {"type": "leaky", "beta": 0.9},
            {"type": "linear", "out_features": 3},
            {"type": "leaky", "beta": 0.9},
        ],
        "train": {"dataset": "synthetic"},
    }
    return snncompile.loads(json.dumps(data), fmt="json")


@pytest.mark.parametrize("time", ["per_step", "joint"])
def test_plan(time):
    plan = passes.plan(snncompile.analyze(spec(time)))
    assert ({"bn", "bn1"} <= plan.per_step) == (time == "per_step")
    assert ({"bn", "bn1"} <= plan.batched) == (time == "joint")


def test_joint_statistics_over_time_and_batch():
    net = snncompile.build(spec("joint"), seed=0).train()
    seen = []
    net.bn.register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
    x = torch.rand(5, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    net(x)
    ((inp, out),) = seen
    assert inp.shape[0] == 4 * 5  # [T * B, C, H, W]
    mean = inp.mean((0, 2, 3), keepdim=True)
    var = inp.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (inp - mean) / torch.sqrt(var + 1e-5))
    # eval: running statistics, the same in both schedules
    step = snncompile.build(spec("joint"), "step", seed=0)
    step.load_state_dict(net.state_dict())
    net.eval(), step.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        a = net(x)
        torch.manual_seed(1)
        b = step(x)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
