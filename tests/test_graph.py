"""Graph specs: `inputs`, merges (`add`, `concat`), `blocks`, and their errors.

The residual example (specs/mnist_sew_resnet.yaml) is also covered by every
test parametrized over specs/ (schedules, codegen, export, compile modes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import snncompile
from snncompile import SpecError
from snncompile.ir import passes
from snncompile.lower import optimize

HEAD = """\
snncompile: 1
name: graph_test
input: {{shape: {shape}, encoding: {{type: direct}}}}
steps: 5
defaults: {{beta: 0.8, threshold: 0.5}}
"""
TAIL = """\
train: {dataset: synthetic, batch_size: 4}
"""


def spec_text(layers: str, shape="[8]", blocks: str = "") -> str:
    return HEAD.format(shape=shape) + blocks + "layers:\n" + layers + TAIL


def problems(text: str) -> list:
    with pytest.raises(SpecError) as err:
        snncompile.analyze(snncompile.loads(text, file="g.yaml"))
    return err.value.problems


RESIDUAL = """\
  - {type: linear, name: fc1, out_features: 6}
  - {type: leaky, name: lif1}
  - {type: linear, name: fc2, out_features: 6}
  - {type: leaky, name: lif2}
  - {type: add, name: sum, inputs: [lif1, lif2]}
  - {type: linear, name: fc3, out_features: 3, inputs: [sum]}
  - {type: leaky, name: out}
"""


def test_inputs_default_to_the_layer_before():
    graph = snncompile.analyze(snncompile.loads(spec_text(RESIDUAL)))
    reads = {n.name: n.inputs for n in graph.nodes}
    assert reads["fc1"] == ("input",)
    assert reads["fc2"] == ("lif1",)
    assert reads["sum"] == ("lif1", "lif2")
    assert graph.consumers("lif1") == (graph.node("fc2"), graph.node("sum"))
    assert graph.output.name == "out" and not graph.is_chain()


def test_nodes_are_in_topological_order_even_when_written_out_of_order():
    layers = """\
  - {type: linear, name: late, out_features: 3, inputs: [early]}
  - {type: linear, name: early, out_features: 4, inputs: [input]}
  - {type: leaky, name: out, inputs: [late]}
"""
    graph = snncompile.analyze(snncompile.loads(spec_text(layers)))
    assert [n.name for n in graph.nodes] == ["early", "late", "out"]


def test_concat_joins_the_feature_axis():
    layers = """\
  - {type: linear, name: a, out_features: 3}
  - {type: linear, name: b, out_features: 5, inputs: [input]}
  - {type: concat, name: both, inputs: [a, b]}
  - {type: leaky, name: out}
"""
    spec = snncompile.loads(spec_text(layers))
    graph = snncompile.analyze(spec)
    assert graph.node("both").out_shape == (8,)
    net = snncompile.build(spec, seed=0)
    x = torch.rand(2, 8)
    expected = torch.cat([net.a(x), net.b(x)], dim=-1)
    _, mem = net(x)
    assert mem.shape == (5, 2, 8)
    torch.testing.assert_close(mem[0], expected)  # mem[0] = input at step 0


BLOCK = """\
blocks:
  res:
    - {type: linear, name: fc, out_features: 8}
    - {type: leaky, name: lif}
    - {type: add, name: add, inputs: [lif, input]}
"""


def test_blocks_are_instantiated_under_their_use_names():
    layers = """\
  - {type: block, use: res}
  - {type: block, use: res, name: second}
  - {type: linear, name: head, out_features: 3, inputs: [res1]}
  - {type: leaky, name: out}
"""
    # res1 (auto name) reads the input; second reads res1's last layer; head
    # reads res1 by its use name, so `second` feeds nothing: an error
    found = problems(spec_text(layers, blocks=BLOCK))
    assert any("second_add is not used" in p.message for p in found)
    layers = """\
  - {type: block, use: res}
  - {type: block, use: res, name: second}
  - {type: linear, name: head, out_features: 3}
  - {type: leaky, name: out}
"""
    graph = snncompile.analyze(snncompile.loads(spec_text(layers, blocks=BLOCK)))
    names = [n.name for n in graph.nodes]
    assert names[:6] == [
        "res1_fc",
        "res1_lif",
        "res1_add",
        "second_fc",
        "second_lif",
        "second_add",
    ]
    assert graph.node("res1_add").inputs == ("res1_lif", "input")
    assert graph.node("second_fc").inputs == ("res1_add",)
    assert graph.node("second_add").inputs == ("second_lif", "res1_add")
    assert graph.node("second_fc").origin == "layers[1] > blocks.res[0]"


def test_add_of_mismatched_shapes_names_both_inputs():
    layers = """\
  - {type: linear, name: a, out_features: 3}
  - {type: linear, name: b, out_features: 4, inputs: [input]}
  - {type: add, name: both, inputs: [a, b]}
  - {type: leaky, name: out}
"""
    (problem,) = problems(spec_text(layers))
    assert problem.line == 9 and problem.path == ("layers", 2)
    assert "a (linear) gives [3]" in problem.message
    assert "b (linear) gives [4]" in problem.message


def test_unknown_input_suggests_a_name():
    layers = """\
  - {type: linear, name: hidden, out_features: 3}
  - {type: leaky, name: out, inputs: [hiden]}
"""
    (problem,) = problems(spec_text(layers))
    assert problem.path == ("layers", 1, "inputs", 0)
    assert "unknown input 'hiden' (did you mean 'hidden'?)" in problem.message
    assert problem.line == 8


def test_a_cycle_is_listed():
    layers = """\
  - {type: linear, name: a, out_features: 3, inputs: [c]}
  - {type: leaky, name: b}
  - {type: linear, name: c, out_features: 3}
  - {type: leaky, name: out, inputs: [c]}
"""
    (problem,) = problems(spec_text(layers))
    assert "cycle: a -> b -> c -> a" in problem.message
    assert "recurrence" in problem.message


def test_a_layer_that_reads_itself_is_a_cycle():
    layers = """\
  - {type: linear, name: a, out_features: 3, inputs: [a]}
  - {type: leaky, name: out}
"""
    (problem,) = problems(spec_text(layers))
    assert "cycle: a -> a" in problem.message


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            "  - {type: add, inputs: [input]}\n  - {type: leaky}\n",
            "add1 (add) takes at least 2 inputs, got 1",
        ),
        (
            (
                "  - {type: linear, name: a, out_features: 8}\n"
                "  - {type: linear, out_features: 2, inputs: [a, input]}\n"
                "  - {type: leaky}\n"
            ),
            "fc1 (linear) takes 1 input, got 2",
        ),
        (
            (
                "  - {type: linear, name: dead, out_features: 3}\n"
                "  - {type: leaky, inputs: [input]}\n"
            ),
            "dead is not used",
        ),
        (
            "  - {type: block, use: ress}\n  - {type: leaky}\n",
            "unknown block 'ress' (did you mean 'res'?)",
        ),
        (
            "  - {type: linear, name: input, out_features: 3}\n  - {type: leaky}\n",
            "name 'input' is taken by the network itself",
        ),
        (
            (
                "  - {type: linear, name: a, out_features: 3}\n"
                "  - {type: linear, name: b, out_features: 3, inputs: [input]}\n"
                "  - {type: concat, inputs: [a, b]}\n"
                "  - {type: flatten}\n  - {type: leaky}\n"
            ),
            None,  # valid: concat then flatten of [6]
        ),
    ],
)
def test_graph_errors(layers, message):
    text = spec_text(layers, blocks=BLOCK)
    if message is None:
        snncompile.analyze(snncompile.loads(text))
        return
    found = problems(text)
    assert any(message in p.message for p in found), [p.message for p in found]
    assert all(p.line is not None for p in found)


def test_errors_inside_a_block_point_into_the_block():
    blocks = """\
blocks:
  bad:
    - {type: conv2d, out_channels: 2, kernel_size: 3}
"""
    (problem,) = problems(
        spec_text("  - {type: block, use: bad}\n  - {type: leaky}\n", blocks=blocks)
    )
    assert problem.path == ("blocks", "bad", 0)
    assert "bad1_conv1 (conv2d) needs [channels, height, width]" in problem.message
    assert problem.line == 8


def test_unknown_field_in_a_block_is_located():
    blocks = """\
blocks:
  res:
    - {type: leaky, betta: 0.5}
"""
    with pytest.raises(SpecError) as err:
        snncompile.loads(spec_text("  - {type: block, use: res}\n", blocks=blocks))
    (problem,) = err.value.problems
    assert problem.path == ("blocks", "res", 0, "betta")
    assert "did you mean 'beta'?" in problem.message


def test_passes_each_alone():
    spec = snncompile.load("specs/mnist_fc.yaml")
    graph = snncompile.analyze(spec)
    hoisted = passes.hoist(graph, passes.Plan())
    assert hoisted.hoisted == {"flatten1", "fc1"}
    batched = passes.time_batch(graph, hoisted)
    assert batched.batched == {"fc2"} and not batched.per_step
    fused = passes.fuse_leaky_linear(graph, batched)
    assert dict(fused.fused) == {"lif1": "fc2"}
    # a Leaky whose spikes are also read elsewhere keeps its own node
    residual = snncompile.analyze(snncompile.loads(spec_text(RESIDUAL)))
    plan = passes.plan(residual, fuse=True)
    assert "lif1" not in plan.fused and dict(plan.fused) == {}


@pytest.mark.parametrize(
    "mode",
    [
        "none",
        "native",
        pytest.param("neurons", marks=pytest.mark.compile),
        pytest.param("model", marks=pytest.mark.compile),
    ],
)
def test_residual_accelerated_matches_plain(mode):
    spec = snncompile.loads(spec_text(RESIDUAL))
    plain = snncompile.build(spec, seed=0)
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(3)
    fast = snncompile.build(spec)
    fast.load_state_dict(plain.state_dict())
    fast, _ = optimize.apply(fast, mode), None
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(0))
    spk_p, mem_p, rec_p = plain(x, all_spikes=True)
    spk_f, mem_f, rec_f = fast(x, all_spikes=True)
    for name in rec_p:
        assert torch.equal(rec_p[name], rec_f[name]), name
    assert 0 < spk_p.mean() < 1
    torch.testing.assert_close(mem_p, mem_f, rtol=0, atol=1e-6)
    (mem_p.square().mean() + spk_p.sum()).backward()
    (mem_f.square().mean() + spk_f.sum()).backward()
    grads = dict(getattr(fast, "_orig_mod", fast).named_parameters())
    for name, param in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-5, atol=1e-6)


SPEC_FILES = sorted(
    Path(__file__).resolve().parents[1].joinpath("specs").glob("*.yaml")
)


@pytest.mark.parametrize("mode", ["none", "native"])
@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_every_example_spec_accelerated_matches_plain(path, mode):
    """The fast kernels on top give the plain model's spikes in every layer, and
    its membranes and gradients up to float summation order."""
    spec = snncompile.load(path)
    plain = snncompile.build(spec, seed=0)
    fast = optimize.apply(snncompile.build(spec), mode)
    fast.load_state_dict(plain.state_dict())
    graph = plain.graph
    gen = torch.Generator().manual_seed(0)
    shape = (graph.steps or 9, 3) if graph.sequence_input else (3,)  # auto: any T
    x = torch.rand(*shape, *graph.input_shape, generator=gen)
    if graph.encoding["type"] == "spikes":
        x = (x < 0.3).float()
    for net in (plain, fast):
        net.eval()  # dropout off; batch norm on running statistics
    outputs = []
    for net in (plain, fast):
        torch.manual_seed(1)  # rate coding draws the same spikes
        outputs.append(net(x, all_spikes=True))
    (spk_p, mem_p, rec_p), (spk_f, mem_f, rec_f) = outputs
    for name in rec_p:
        assert torch.equal(rec_p[name], rec_f[name]), name
    torch.testing.assert_close(mem_f, mem_p, rtol=1e-5, atol=1e-5)
    (mem_p.square().mean() + spk_p.sum()).backward()
    (mem_f.square().mean() + spk_f.sum()).backward()
    grads = dict(fast.named_parameters())
    for name, param in plain.named_parameters():
        if param.grad is not None:
            scale = max(1.0, param.grad.abs().max().item())
            torch.testing.assert_close(
                grads[name].grad, param.grad, rtol=1e-4, atol=1e-5 * scale, msg=name
            )
