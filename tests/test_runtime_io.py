"""Compare snncompile.runtime encode/decode/losses with snnTorch."""

import importlib.util
import pathlib

import pytest
import torch
from snntorch import functional as SF
from snntorch import spikegen, surrogate

RUNTIME = pathlib.Path(__file__).resolve().parents[1] / "snncompile" / "runtime"


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"_snncompile_runtime_{name}", RUNTIME / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


enc = _load("encode")
dec = _load("decode")
los = _load("losses")

T, B, C = 7, 5, 4
SEEDS = [0, 1, 2]


def _mem(seed, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    mem = torch.randn(T, B, C, generator=gen) * 1.5 + 0.5
    return mem.requires_grad_(requires_grad)


def _targets(seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, C, (B,), generator=gen)


def _spk(mem):
    return surrogate.atan()(mem - 1.0)


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize("seed", SEEDS)
def test_encode_direct(seed):
    x = torch.rand(B, 3, 2, generator=torch.Generator().manual_seed(seed))
    out = enc.encode_direct(x, T)
    assert out.shape == (T, B, 3, 2)
    assert out.data_ptr() == x.data_ptr()  # a view, not a copy
    for t in range(T):
        torch.testing.assert_close(out[t], x, rtol=0, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gain", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("shape", [(B, C), (B, 1, 3, 3)])
def test_encode_rate_same_seed(seed, gain, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 1.2
    x = x - 0.1  # exercise clamping on both ends
    torch.manual_seed(seed)
    ref = spikegen.rate(x, num_steps=T, gain=gain)
    torch.manual_seed(seed)
    out = enc.encode_rate(x, T, gain=gain)
    assert out.shape == (T, *shape)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # explicit generator reproduces the same stream as the global seed
    gen = torch.Generator().manual_seed(seed)
    torch.testing.assert_close(enc.encode_rate(x, T, gain=gain, generator=gen), ref)


def test_encode_rate_is_random():
    x = torch.full((B, C), 0.5)
    torch.manual_seed(0)
    a = enc.encode_rate(x, T)
    b = enc.encode_rate(x, T)
    assert not torch.equal(a, b)


LATENCY_CASES = [
    {},
    {"linear": True},
    {"normalize": True},
    {"linear": True, "normalize": True},
    {"clip": True},
    {"linear": True, "clip": True, "threshold": 0.2},
    {"normalize": True, "clip": True, "threshold": 0.3},
    {"tau": 5.0},
    {"tau": 5.0, "clip": True, "threshold": 0.05},
    {"tau": 2.0, "linear": True},
    {"tau": 20.0, "linear": True, "threshold": 0.5},
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kwargs", LATENCY_CASES, ids=str)
def test_encode_latency(seed, kwargs):
    x = torch.rand(B, 3, 3, generator=torch.Generator().manual_seed(seed))
    x[0, 0, 0] = 0.0
    x[0, 0, 1] = 1.0
    x[1, 0, 0] = 0.005  # below the default threshold
    ref = spikegen.latency(x, num_steps=T, bypass=True, **kwargs)
    out = enc.encode_latency(x, T, **kwargs)
    assert out.shape == ref.shape == (T, B, 3, 3)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.1, 0.3])
@pytest.mark.parametrize("off_spike", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_encode_delta(seed, threshold, off_spike, padding):
    x = torch.rand(T, B, C, generator=torch.Generator().manual_seed(seed))
    ref = spikegen.delta(x, threshold=threshold, off_spike=off_spike, padding=padding)
    out = enc.encode_delta(x, threshold=threshold, off_spike=off_spike, padding=padding)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    if off_spike:
        assert (out < 0).any()


# ---------------------------------------------------------------- decodings


def _rand_spikes(seed, p=0.3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, C, generator=gen) < p).float()


def _snn_acc(value):
    return round(float(value) * B)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_decode_rate(seed, p):
    spk = _rand_spikes(seed, p)
    mem = _mem(seed, requires_grad=False)
    targets = _targets(seed)
    scores = dec.decode_rate(spk, mem)
    assert scores.shape == (B, C)
    torch.testing.assert_close(scores, spk.sum(0))
    assert scores.argmax(-1).tolist() == spk.sum(0).max(1)[1].tolist()
    n = dec.accuracy(scores, targets)
    assert n.dim() == 0 and int(n) == _snn_acc(SF.accuracy_rate(spk, targets))


def _snn_temporal_pred(spk):
    """Class picked by snnTorch's accuracy_temporal, recovered per sample."""
    preds = []
    for b in range(B):
        hits = [
            c
            for c in range(C)
            if SF.accuracy_temporal(spk[:, b : b + 1], torch.tensor([c])) == 1.0
        ]
        assert len(hits) == 1
        preds.append(hits[0])
    return preds


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [0.02, 0.1, 0.3])
def test_decode_latency(seed, p):
    spk = _rand_spikes(seed, p)
    if seed % 2:
        spk[:, 0] = 0.0  # sample 0: no output spikes at all
        spk[:, 1] = 0.0
        spk[T - 1, 1, 2] = 1.0  # only a last-step spike: ties with silent ones
    mem = _mem(seed, requires_grad=False)
    targets = _targets(seed)
    scores = dec.decode_latency(spk, mem)
    assert scores.shape == (B, C)
    assert scores.argmax(-1).tolist() == _snn_temporal_pred(spk)
    n = dec.accuracy(scores, targets)
    assert int(n) == _snn_acc(SF.accuracy_temporal(spk, targets))


@pytest.mark.parametrize("seed", SEEDS)
def test_decode_membrane(seed):
    mem = _mem(seed, requires_grad=False)
    spk = _spk(mem)
    targets = _targets(seed)
    mx = dec.decode_max_membrane(spk, mem)
    mean = dec.decode_mean_membrane(spk, mem)
    torch.testing.assert_close(mx, torch.stack(list(mem)).max(0)[0])
    torch.testing.assert_close(mean, sum(mem[t] for t in range(T)) / T)
    ref_correct = (mem.max(0)[0].argmax(-1) == targets).sum()
    assert int(dec.accuracy(mx, targets)) == int(ref_correct)


def test_accuracy_counts():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    targets = torch.tensor([1, 1, 0])
    n = dec.accuracy(scores, targets)
    assert n.dtype == torch.int64 and n.dim() == 0 and int(n) == 2


# ---------------------------------------------------------------- losses


def _tutorial5_loss(spk, mem, targets):
    loss = torch.zeros((1,), dtype=mem.dtype)
    for step in range(mem.shape[0]):
        loss = loss + torch.nn.functional.cross_entropy(mem[step], targets)
    return loss


LOSS_CASES = [
    ("ce_membrane", {}, _tutorial5_loss),
    ("ce_rate", {}, lambda s, m, y: SF.ce_rate_loss()(s, y)),
    ("ce_count", {}, lambda s, m, y: SF.ce_count_loss()(s, y)),
    ("mse_count", {}, lambda s, m, y: SF.mse_count_loss()(s, y)),
    (
        "mse_count",
        {"correct_rate": 0.8, "incorrect_rate": 0.2},
        lambda s, m, y: SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)(s, y),
    ),
    (
        "mse_count",
        {"correct_rate": 0.3, "incorrect_rate": 0.3},
        lambda s, m, y: SF.mse_count_loss(correct_rate=0.3, incorrect_rate=0.3)(s, y),
    ),
    ("ce_max_membrane", {}, lambda s, m, y: SF.ce_max_membrane_loss()(m, y)),
    ("mse_membrane", {}, lambda s, m, y: SF.mse_membrane_loss()(m, y)),
    (
        "mse_membrane",
        {"on_target": 1.5, "off_target": -0.5},
        lambda s, m, y: SF.mse_membrane_loss(on_target=1.5, off_target=-0.5)(m, y),
    ),
    (
        "mse_membrane",
        {"on_target": 0.2, "off_target": 0.7},
        lambda s, m, y: SF.mse_membrane_loss(on_target=0.2, off_target=0.7)(m, y),
    ),
    ("ce_temporal", {}, lambda s, m, y: SF.ce_temporal_loss()(s, y)),
    (
        "ce_temporal",
        {"inverse": "reciprocal"},
        lambda s, m, y: SF.ce_temporal_loss(inverse="reciprocal")(s, y),
    ),
]


def _value_and_grad(fn, seed):
    mem = _mem(seed)
    spk = _spk(mem)
    spk.retain_grad()
    value = fn(spk, mem, _targets(seed))
    value.sum().backward()
    return value.detach().reshape(()), mem.grad, spk.grad


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "name,params,ref_fn",
    LOSS_CASES,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(LOSS_CASES)],
)
def test_loss_matches_snntorch(seed, name, params, ref_fn):
    fn = getattr(los, f"loss_{name}")
    value, gmem, gspk = _value_and_grad(lambda s, m, y: fn(s, m, y, **params), seed)
    ref_value, ref_gmem, ref_gspk = _value_and_grad(ref_fn, seed)
    assert fn(*(_spk(_mem(seed)), _mem(seed), _targets(seed)), **params).dim() == 0
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(gmem, ref_gmem)
    if gspk is None or ref_gspk is None:
        assert gspk is None and ref_gspk is None
    else:
        torch.testing.assert_close(gspk, ref_gspk)
    # the gradient must actually reach the inputs for the test to mean anything
    assert gmem is not None and gmem.abs().sum() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_ce_temporal_silent_and_late(seed):
    """Leaf binary spikes incl. silent neurons (shadow spike at T-1)."""
    spk = _rand_spikes(seed, 0.1)
    spk[:, 0, :] = 0.0
    spk[T - 1, 0, 1] = 1.0
    targets = _targets(seed)
    a = spk.clone().requires_grad_(True)
    b = spk.clone().requires_grad_(True)
    out = los.loss_ce_temporal(a, None, targets)
    ref = SF.ce_temporal_loss()(b, targets)
    out.backward()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad[T - 1, 0].abs().sum() > 0


def test_ce_temporal_bad_inverse():
    with pytest.raises(ValueError):
        los.loss_ce_temporal(_rand_spikes(0), None, _targets(0), inverse="bogus")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("target", [None, 0.05, 0.4])
def test_rate_regularization(seed, target):
    gen = torch.Generator().manual_seed(seed)
    layers = [
        (torch.rand(T, B, 6, generator=gen) < 0.2).float().requires_grad_(True),
        (torch.rand(T, B, 3, 2, generator=gen) < 0.5).float().requires_grad_(True),
    ]
    weight = 0.7
    out = los.rate_regularization(layers, weight, target=target)
    if target is None:
        ref = weight * sum(s.sum() / s.numel() for s in layers)
    else:
        ref = weight * sum((s.sum() / s.numel() - target) ** 2 for s in layers)
    assert out.dim() == 0
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out, layers)
    ref_grads = torch.autograd.grad(ref, layers)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert float(los.rate_regularization([], weight, target)) == 0.0
