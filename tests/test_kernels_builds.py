"""The native kernels built for other targets compute what this machine's build
does: AVX2 (-march=haswell, 8-float vectors by AVX intrinsics), the compiler's
baseline (-march=native left out: SSE2 on x86-64, NEON on arm64; 4-float
vectors), and 8-float vectors in plain C (-DSNN_LANES=8 without AVX: the
generic code paths). Forward values are identical (no fused multiply-add in
them, sums in a fixed order); gradients agree to float summation order (the
gradient sums use fused multiply-adds where the target has them)."""

from __future__ import annotations

import platform

import pytest
import torch
from test_kernels_neurons import compare, neuron_layer, plain_and_native, spec
from test_native import _assert_forward_matches, _assert_grads_match, _run

import snncompile
from snncompile import native
from snncompile.lower import optimize
from snncompile.runtime import surrogates

pytestmark = pytest.mark.skipif(
    native.problem() is not None, reason=f"native kernels: {native.problem()}"
)

X86 = platform.machine().lower() in ("x86_64", "amd64")
TARGETS = [
    pytest.param(("-march=haswell",), id="avx2", marks=pytest.mark.skipif(
        not X86, reason="an x86 target")),
    pytest.param((), id="baseline"),
    pytest.param(("-DSNN_LANES=8",), id="plain-c-8"),
]  # fmt: skip


def provider(flags):
    try:
        return native.LeakyKernels(native.variant(flags))
    except native.Unavailable as err:  # e.g. a compiler without that target
        pytest.skip(str(err))


@pytest.mark.parametrize("flags", TARGETS)
def test_leaky_kernels_agree_across_builds(flags):
    """leaky.c on a hidden layer + linear layer and an output layer, both
    backward paths (panels: the loss reads no hidden spikes; blocks)."""
    other, own = provider(flags), native.kernels()
    assert other.lib.snn_lanes() in (4, 8, 16)
    for direct in (False, True):
        for constant in (True, False):
            reference = _run(own, "subtract", surrogates.ATan, (2.0,), constant,
                             True, direct=direct)  # fmt: skip
            result = _run(other, "subtract", surrogates.ATan, (2.0,), constant,
                          True, direct=direct)  # fmt: skip
            for a, b in zip(reference[0], result[0]):
                assert (a is None and b is None) or torch.equal(a, b)
            _assert_grads_match(reference[1], result[1])
            eager = _run(False, "subtract", surrogates.ATan, (2.0,), constant,
                         True, direct=direct)  # fmt: skip
            _assert_forward_matches(eager[0], result[0], str(flags))


@pytest.mark.parametrize("flags", TARGETS)
@pytest.mark.parametrize("kind", ["synaptic", "alpha", "ralif", "rleaky"])
def test_neuron_kernels_agree_across_builds(flags, kind):
    """neurons.c: each build against the plain model."""
    layer = neuron_layer(kind, "zero", learn=True, per_neuron=True)
    if kind == "rleaky":
        layer["recurrence"] = {"type": "one_to_one", "V": 0.5}
    the_spec = spec(layer, sequence=True, classes=150)
    plain, _ = plain_and_native(the_spec)
    fast = optimize.compile_neurons(snncompile.build(the_spec), kernels=provider(flags))
    fast.load_state_dict(plain.state_dict())
    x = (torch.rand(7, 9, 5, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    compare(plain, fast, x)
