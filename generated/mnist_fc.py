"""Train `mnist_fc` on MNIST with plain PyTorch.

A spiking neural network and its training, generated from the spec `mnist_fc` by
`snncompile codegen`: change the spec and regenerate rather than editing this
file. Needs only torch and torchvision:

    python mnist_fc.py --data-root DATA --epochs 1 --out runs/mnist_fc

Every epoch prints the training loss and accuracy and the test loss and accuracy;
--out receives metrics.json and model.pt (the trained state_dict). The model
alone is `Net`: input [B, 1, 28, 28] -> (spk, mem) of the output layer,
each [T, B, 10].
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

NAME = "mnist_fc"
DESCRIPTION = "snnTorch Tutorial 5 - fully connected SNN on MNIST"

# spec `train`: the defaults of the command-line options
EPOCHS = 1
SEED = 0
DEVICE = "auto"
LIMIT_TRAIN = None
LIMIT_TEST = None
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 128


# ------------------------------------------------------------------------ model
# spec `input`, `steps` and `layers`: surrogate gradients, neurons and Net, the
# very source that snncompile.build() executes for this spec.


class ATan(torch.autograd.Function):
    """Arctangent surrogate: dS/dU = (alpha / 2) / (1 + (pi / 2 * alpha * U)^2)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        return alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow(2)) * grad, None


class _SurrogateContext:
    """Stands in for autograd's ctx so a surrogate's backward can run directly."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def surrogate_grad(surrogate, args, shifted, grad):
    """grad * S'(shifted), computed by the surrogate's own backward formula.

    `surrogate` is the autograd.Function or its (forward, backward) pair, plain
    functions that torch.compile can trace. The forward runs on an empty slice
    only to set its constants; every surrogate saves exactly its input, which is
    then the full tensor.
    """
    if not isinstance(surrogate, tuple):
        surrogate = (surrogate.forward, surrogate.backward)
    forward, backward = surrogate
    ctx = _SurrogateContext()
    ctx.saved_tensors = ()
    forward(ctx, shifted[:0], *args)
    ctx.saved_tensors = (shifted,)
    grads = backward(ctx, grad)
    return grads[0] if isinstance(grads, tuple) else grads


def first_reset(threshold, shape, dtype):
    """reset[0] = H(0 - threshold), the reset signal of the zero state (a view)."""
    return (0 - threshold > 0).to(dtype).expand(shape)


def leaky_integrate(out, mem, cur, flag, b, threshold, reset):
    """out = the membrane after one step, by the reference's operations in order.

    flag = reset[t]; for subtract with a scalar threshold `threshold` is a float:
    m - 1 * thr rounds once like the reference's m - (1 * thr), bit for bit.
    """
    if reset == "zero":
        torch.mul(1 - flag, mem, out=out)
        out.mul_(b)
    else:
        torch.mul(b, mem, out=out)
    out.add_(cur)
    if reset == "subtract":
        if isinstance(threshold, float):
            out.sub_(flag, alpha=threshold)
        else:
            out.sub_(flag * threshold)
    return out


def leaky_step(mem, cur, flag, b, threshold, reset):
    """The same step out of place: what torch.compile fuses into one loop."""
    if reset == "zero":
        return b * ((1 - flag) * mem) + cur
    if reset == "subtract":
        return b * mem + cur - flag * threshold
    return b * mem + cur


def leaky_run(cur, b, threshold, steps, reset, record=True, stride=0):
    """The forward pass, eagerly, in place: the spike record [T, B, ...], the
    membrane record (None unless `record`) and, if `stride`, the membranes after
    steps stride - 1, 2 stride - 1, ... before the last (the checkpoints)."""
    constant = steps is not None
    steps = steps if constant else cur.shape[0]
    shape = cur.shape if constant else cur.shape[1:]
    mem_rec = cur.new_empty((steps, *shape)) if record else None
    spk_rec = cur.new_empty((steps, *shape))
    state = None if record else cur.new_empty(shape)  # updated in place
    shifted = cur.new_empty(shape)
    thr = threshold.item() if threshold.dim() == 0 else threshold
    mem = cur.new_zeros(()).expand(shape)  # the zero state, without storage
    flag = first_reset(threshold, shape, cur.dtype)
    checkpoints = []
    for t in range(steps):
        out = mem_rec[t] if record else state
        mem = leaky_integrate(
            out, mem, cur if constant else cur[t], flag, b, thr, reset
        )
        torch.sub(mem, threshold, out=shifted)
        flag = torch.gt(shifted, 0, out=spk_rec[t])  # spk[t] = reset[t + 1]
        if stride and t % stride == stride - 1 and t < steps - 1:
            checkpoints.append(mem.clone())
    saved = torch.stack(checkpoints) if checkpoints else cur.new_empty((0, *shape))
    return spk_rec, mem_rec, saved


def leaky_scan(cur, b, threshold, steps, reset, record=True):
    """The forward pass out of place, for torch.compile (same values as leaky_run):
    the spike record and the membrane record (None unless `record`)."""
    constant = steps is not None
    steps = steps if constant else cur.shape[0]
    mem = torch.zeros_like(cur if constant else cur[0])
    flag = (mem - threshold > 0).to(cur.dtype)
    spks, mems = [], []
    for t in range(steps):
        mem = leaky_step(mem, cur if constant else cur[t], flag, b, threshold, reset)
        flag = (mem - threshold > 0).to(cur.dtype)
        spks.append(flag)
        mems.append(mem)
    return torch.stack(spks), torch.stack(mems) if record else None


def _add(total, term):
    return term if total is None else total + term


def leaky_backward(
    cur, spk_rec, saved, stride, grad_spk, grad_mem, b, threshold, options
):
    """Per-element gradients (cur, b, threshold) of a Leaky sequence, from the end.

    saved: every membrane (stride 0), or those entering segments of `stride` steps,
    the rest recomputed from cur and the spikes. options: reset, surrogate,
    surrogate_args, constant, needs (cur, b, threshold), small (surrogate over a
    segment at once), into (a buffer for the input gradient, None: stacked),
    through (None, or (grad, weight, False): the gradient [T, B, K] of a linear
    layer's output fed by these spikes [T, B, N] and its weight [K, N]: the
    spike gradient it sends, sum_k grad[t, :, k] weight[k], is formed step by
    step, never stored; a kernel provider's backward given True there also
    returns that layer's weight gradient, fourth).
    """
    reset, surrogate, args, constant, needs, small, into, through = options
    need_cur, need_b, need_threshold = needs
    steps, shape = spk_rec.shape[0], spk_rec.shape[1:]
    fire = (grad_spk is not None or through is not None) and surrogate is not None
    first = first_reset(threshold, shape, spk_rec.dtype)
    zero_state = spk_rec.new_zeros(()).expand(shape)
    total = b_sum = fire_sum = reset_sum = after = None  # after: d[t + 1]
    grads = []
    length = stride or steps
    for start in range((steps - 1) // length * length, -1, -length):
        end = min(start + length, steps)
        entering = saved[start // length - 1] if start else zero_state
        if stride:  # recompute this segment's membranes exactly
            mems, mem = [], entering
            for t in range(start, end):
                flag = spk_rec[t - 1] if t else first
                mem = leaky_step(mem, cur, flag, b, threshold, reset)
                mems.append(mem)
        else:
            mems = saved[start:end]
        fired = None
        if fire and small and not stride:
            fired = surrogate_grad(
                surrogate, args, mems - threshold, grad_spk[start:end]
            )
        for t in range(end - 1, start - 1, -1):
            d = None
            if fire:
                if fired is None:
                    shifted = mems[t - start] - threshold
                    g = None if grad_spk is None else grad_spk[t]
                    if through is not None:
                        sent = (through[0][t].unsqueeze(-1) * through[1]).sum(-2)
                        g = sent if g is None else g + sent
                    d = surrogate_grad(surrogate, args, shifted, g)
                else:
                    d = fired[t - start]
                if need_threshold:
                    fire_sum = _add(fire_sum, d)
            if grad_mem is not None:
                d = grad_mem[t] if d is None else d + grad_mem[t]
            if after is not None:  # d[t] += f[t + 1] * d[t + 1]
                factor = b * (1 - spk_rec[t]) if reset == "zero" else b
                d = d + factor * after
            flag = spk_rec[t - 1] if t else first
            if need_b and t:  # the state that b multiplied at step t
                prev = mems[t - start - 1] if t > start else entering
                prev = (1 - flag) * prev if reset == "zero" else prev
                b_sum = _add(b_sum, d * prev)
            if need_threshold and reset == "subtract":
                reset_sum = _add(reset_sum, d * flag)
            if need_cur and constant:
                total = _add(total, d)
            elif need_cur and into is not None:
                into[t].copy_(d)
            elif need_cur:
                grads.append(d)
            after = d
    grad_cur = None
    if need_cur:
        grad_cur = total if constant else into
        grad_cur = torch.stack(grads[::-1]) if grad_cur is None else grad_cur
    grad_b = None
    if need_b:
        grad_b = torch.zeros_like(b) if b_sum is None else b_sum.sum_to_size(b.shape)
    grad_threshold = None
    if need_threshold:
        grad_threshold = torch.zeros_like(threshold)
        for part in (fire_sum, reset_sum):
            if part is not None:
                grad_threshold = grad_threshold - part.sum_to_size(threshold.shape)
    return grad_cur, grad_b, grad_threshold


def torch_compiled(function, kernels={}):  # noqa: B006 - the cache, on purpose
    """`function` through torch.compile, wrapped once per function (dynamo then
    compiles it once per layer and shape; static shapes: the fastest kernels)."""
    if function not in kernels:
        kernels[function] = torch.compile(function, dynamic=False)
    return kernels[function]


def scan_linear(compiled, args, weight, bias, spikes=True):
    """(spk, mem, out) of the scan kernel that `compiled` selects, for args (cur,
    b, threshold, steps, reset, record): out = the linear layer (weight, bias)
    over the spikes where the provider forms it in its loop (its `scan_linear`),
    else None; spk is None where `spikes` is False and that provider kept no
    spike record. Detached: for the forward of a node or under no_grad."""
    both = getattr(compiled, "scan_linear", None) if weight is not None else None
    if both is not None:
        bias = bias if bias is None else bias.detach()
        result = both(*args, weight.detach(), bias, spikes)
        if result is not None:
            return result
    return (*leaky_kernels(compiled)[0](*args), None)


def _recomputed(compiled, plain, surrogate, weight):
    """Whether the backward of a LeakySequence node with a linear layer reads no
    spike record: a `plain` layer (large, constant input, no membrane record)
    with a surrogate, whose provider's backward forms the linear layer's
    gradients in its loop from spikes it recomputes (its
    `recomputes_spikes(k_out, surrogate_backward)`)."""
    recomputes = getattr(compiled, "recomputes_spikes", None)
    if not plain or surrogate is None or weight is None or not recomputes:
        return False
    return bool(recomputes(weight.shape[0], surrogate.backward))


def leaky_kernels(compiled):
    """The (scan, backward) kernels a truthy `compiled` flag selects: leaky_scan
    and leaky_backward through torch.compile (True), or a provider's own."""
    if compiled is True:
        return torch_compiled(leaky_scan), torch_compiled(leaky_backward)
    return compiled.scan, compiled.backward


class LeakySequence(torch.autograd.Function):
    """(cur, b, threshold, weight, bias) -> (spk, mem, out), each [T, B, ...]; see
    the module doc. With a `weight` [K, N] the node also applies the linear layer
    that follows: out = spk @ weight.T + bias (None without a weight)."""

    # elements per step below which per-step kernels cost more in dispatch than in
    # arithmetic: then the surrogate runs once over a whole segment
    small_step = 1 << 14

    @staticmethod
    def forward(ctx, cur, b, threshold, weight, bias, steps, options):
        reset, surrogate, surrogate_args, compiled, record, spikes = options
        constant = steps is not None
        shape = cur.shape if constant else cur.shape[1:]
        length = steps if constant else cur.shape[0]
        # With a constant input the membrane is recomputed in the backward: by the
        # compiled kernel from scratch (in registers, nothing saved), or eagerly one
        # segment of ~sqrt(T) steps at a time from checkpoints (~2 sqrt(T) saved
        # membranes instead of T, for 3 extra operations per step). Small layers
        # keep every membrane: their memory is negligible.
        large = shape.numel() >= LeakySequence.small_step
        stride = 0
        if constant and compiled:
            stride = length
        elif constant and large:
            stride = max(1, round(length**0.5))
        keep = record or not stride  # the membrane record is needed
        out = None
        if compiled:  # detached: the same compiled graph as inference's call
            args = (cur.detach(), b.detach(), threshold.detach(), steps, reset, keep)
            if not spikes:  # kept all the same where the backward reads it
                plain = constant and large and not record
                spikes = not _recomputed(compiled, plain, surrogate, weight)
            spk_rec, mem_rec, out = scan_linear(compiled, args, weight, bias, spikes)
            saved = cur.new_empty((0, *shape))
        else:
            run = leaky_run(cur, b, threshold, steps, reset, keep, stride)
            spk_rec, mem_rec, saved = run
        if weight is not None and out is None:  # time_batched(linear, spk): addmm
            flat = spk_rec.flatten(0, 1)
            out = (
                flat.mm(weight.t())
                if bias is None
                else torch.addmm(bias, flat, weight.t())
            )
            out = out.unflatten(0, spk_rec.shape[:2])
        mems = saved if stride else mem_rec
        # spk_rec is None where not kept (then the provider's backward recomputes)
        ctx.save_for_backward(mems, cur, spk_rec, b, threshold, weight)
        ctx.stride = stride
        ctx.options = (reset, surrogate, surrogate_args, constant, not large)
        ctx.compiled = compiled
        ctx.set_materialize_grads(False)
        return spk_rec, mem_rec if record else None, out

    @staticmethod
    def backward(ctx, grad_spk, grad_mem, grad_out):
        saved, cur, spk_rec, b, threshold, weight = ctx.saved_tensors
        reset, surrogate, args, constant, small = ctx.options
        grad_weight = grad_bias = through = None
        # a provider may also form the linear layer's weight gradient in its loop
        in_loop = getattr(ctx.compiled, "weight_grad_in_loop", False) and not small
        in_loop = in_loop and surrogate is not None  # else no loop runs at all
        in_loop = in_loop and grad_out is not None and ctx.needs_input_grad[3]
        if grad_out is not None:
            flat = grad_out.flatten(0, 1)
            if ctx.needs_input_grad[3] and not in_loop:
                grad_weight = flat.t().mm(spk_rec.flatten(0, 1))
            if ctx.needs_input_grad[4]:
                grad_bias = flat.sum(0)
            if in_loop or surrogate is not None and (ctx.compiled and not small):
                through = (grad_out, weight, in_loop)  # formed inside the loop
            elif surrogate is not None:
                sent = flat.mm(weight).view_as(spk_rec)
                grad_spk = sent if grad_spk is None else grad_spk + sent
        if not in_loop and (
            grad_mem is None
            and (grad_spk is None and through is None or surrogate is None)
        ):
            return None, None, None, grad_weight, grad_bias, None, None
        needs = tuple(ctx.needs_input_grad[:3])
        into = None
        if needs[0] and not constant and not ctx.compiled:
            into = torch.empty_like(cur)
        if surrogate is not None:  # plain functions, for torch.compile to trace
            surrogate = (surrogate.forward, surrogate.backward)
        options = (reset, surrogate, args, constant, needs, small, into, through)
        kernel = leaky_kernels(ctx.compiled)[1] if ctx.compiled else leaky_backward
        grads = kernel(
            cur, spk_rec, saved, ctx.stride, grad_spk, grad_mem, b, threshold, options
        )
        if in_loop:  # (grad_cur, grad_b, grad_threshold, grad_weight)
            *grads, grad_weight = grads
        return (*grads, grad_weight, grad_bias, None, None)


def _time_expanded_base(cur):
    """The [B, ...] tensor that `cur` [T, B, ...] is a stride-0 expand of, or None."""
    base = cur._base
    if cur.dim() < 2 or cur.stride(0) != 0 or base is None:
        return None
    same = (
        base.shape == cur.shape[1:]
        and base.stride() == cur.stride()[1:]
        and base.storage_offset() == cur.storage_offset()
    )
    return base if same else None


def fused_leaky(neuron, cur, steps=None, compiled=False, record_mem=True):
    """`neuron` (a Leaky) over a whole sequence: cur [T, B, ...], or [B, ...] fed at
    each of `steps` steps -> (spk, mem), each [T, B, ...]; mem is None unless
    `record_mem` (a hidden layer needs only its spikes). With `compiled` the
    forward and backward loops run as torch.compile'd kernels (one fused C++
    loop each; compiled on first use per shape).

    Under a whole-model torch.compile this is the neuron's plain step loop
    (`neuron.loop`), which inductor traces and fuses itself."""
    if torch.compiler.is_compiling():
        seq = cur if steps is None else cur.expand(steps, *cur.shape)
        return neuron.loop(seq, record_mem)
    return _leaky_sequence(neuron, cur, steps, compiled, record_mem, None)[:2]


def fused_leaky_linear(neuron, linear, cur, spikes=True):
    """A hidden Leaky layer and the linear layer after it, over a whole sequence:
    cur [T, B, N] -> (spk, out), spk [T, B, N] and out = linear(spk) [T, B, K], the
    same values as running them in turn. One autograd node: with the neuron's
    `compiled` flag and a large layer (not `small_step`) the spike gradient that
    the linear layer sends back (grad_out @ weight) is formed inside the Leaky
    backward loop, step by step, instead of as a [T, B, N] tensor by one skinny
    matrix product (eagerly, or for a small layer: that product). Without the
    fused kernel (under a whole-model torch.compile, `neuron.fused` off, or a
    linear layer with hooks or parametrizations): the two layers in turn.
    `spikes=False`: the caller does not read spk, which may then be None (a
    kernel provider whose backward recomputes the spikes keeps no record)."""
    if torch.compiler.is_compiling() or not neuron.fused or not _plain(linear):
        spk, _ = neuron(cur, record_mem=False)
        out = None
    else:
        compiled = neuron.compiled
        spk, _, out = _leaky_sequence(
            neuron, cur, None, compiled, False, linear, spikes
        )
    if out is None:  # the layers in turn, or no gradient needed: the linear's call
        out = linear(spk.flatten(0, 1)).unflatten(0, spk.shape[:2])
    return spk, out


def _plain(linear):
    """Whether `linear` computes exactly addmm(bias, x, weight.T), so that the
    fused node may read its tensors: a plain nn.Linear (a parametrized one is a
    subclass) without forward hooks."""
    hooks = linear._forward_hooks or linear._forward_pre_hooks
    return type(linear) is torch.nn.Linear and not hooks


def _leaky_sequence(neuron, cur, steps, compiled, record_mem, linear, spikes=True):
    """(spk, mem, out) of fused_leaky / fused_leaky_linear, outside torch.compile;
    out is None without a linear layer (or where computed by the caller); spk may
    be None where not `spikes` (see fused_leaky_linear)."""
    if steps is None:
        base = _time_expanded_base(cur)
        if base is not None:
            cur, steps = base, cur.shape[0]
    b = neuron.beta.clamp(0, 1)
    weight = bias = None
    if linear is not None:
        weight, bias = linear.weight, linear.bias
    inputs = (cur, b, neuron.threshold, weight, bias)
    grad = any(t is not None and t.requires_grad for t in inputs)
    if not (torch.is_grad_enabled() and grad):
        threshold = neuron.threshold.detach()  # as in training: one graph
        args = (cur, b.detach(), threshold, steps, neuron.reset_mode)
        if compiled:
            return scan_linear(compiled, (*args, record_mem), weight, bias, spikes)
        return (*leaky_run(*args, record_mem)[:2], None)
    surrogate = None if neuron.hard else neuron.surrogate
    options = (
        neuron.reset_mode,
        surrogate,
        tuple(neuron.surrogate_args),
        compiled,
        record_mem,
        spikes,
    )
    return LeakySequence.apply(*inputs, steps, options)


class SpikingNeuron(nn.Module):
    """Parameters, firing and the time loop shared by every neuron type."""

    state_names = ("mem",)
    compiled = False  # run the time loop through torch.compile (see module doc)

    def __init__(
        self,
        shape,
        beta,
        threshold=1.0,
        reset="subtract",
        learn_beta=False,
        learn_threshold=False,
        per_neuron=False,
        surrogate=None,
        surrogate_args=(),
    ):
        super().__init__()
        self.size = tuple(shape) if per_neuron else ()
        self.reset_mode = reset
        self.surrogate = surrogate
        self.surrogate_args = tuple(surrogate_args)
        self.hard = False  # True: plain comparison instead of surrogate (inference)
        self.constant("beta", beta, learn_beta)
        self.constant("threshold", threshold, learn_threshold)

    def constant(self, name, value, learn):
        """A scalar or per-neuron parameter, learnable or a buffer."""
        tensor = torch.full(self.size, float(value))
        if learn:
            setattr(self, name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)

    def fire(self, mem):
        """spk = S(mem - threshold)."""
        shifted = mem - self.threshold
        if self.hard or self.surrogate is None:
            return (shifted > 0).to(mem.dtype)
        return self.surrogate.apply(shifted, *self.surrogate_args)

    def reset_signal(self, mem):
        """Detached reset from the previous membrane: H(mem - threshold)."""
        return (mem - self.threshold > 0).to(mem.dtype)

    def init_state(self, cur):
        """Zero states shaped like one step of input."""
        return tuple(torch.zeros_like(cur) for _ in self.state_names)

    def forward(self, cur, record_mem=True):
        """cur [T, B, ...] -> (spk, mem), each [T, B, ...]; mem is None unless
        `record_mem` (a hidden layer passes on only its spikes)."""
        if self.compiled and not torch.compiler.is_compiling():
            return torch_compiled(type(self).loop)(self, cur, record_mem)
        return self.loop(cur, record_mem)

    def loop(self, cur, record_mem=True):
        """The time loop: `step` once per step (what forward runs)."""
        state = self.init_state(cur[0])
        spks, mems = [], []
        # unbind, not cur[t]: indexing would make backward allocate and sum T
        # full-size gradients (quadratic in T); unbind's backward is one stack
        for cur_t in cur.unbind(0):
            spk, state = self.step(cur_t, state)
            spks.append(spk)
            mems.append(state[-1])
        return torch.stack(spks), torch.stack(mems) if record_mem else None


class Leaky(SpikingNeuron):
    """Leaky integrate-and-fire (snnTorch Leaky), b = clamp(beta, 0, 1):

    subtract: mem[t] = b * mem[t-1] + I[t] - reset[t] * threshold
    zero:     mem[t] = b * ((1 - reset[t]) * mem[t-1]) + I[t]
    none:     mem[t] = b * mem[t-1] + I[t]
    """

    fused = True  # False: the plain step loop instead of the fused kernel

    def forward(self, cur, record_mem=True):
        """The whole sequence by the fused kernel: one autograd node, the same
        float operations as `step` (identical spikes and membranes)."""
        if not self.fused:
            return super().forward(cur, record_mem)
        return fused_leaky(self, cur, compiled=self.compiled, record_mem=record_mem)

    def step(self, cur, state):
        (mem,) = state
        reset = self.reset_signal(mem)
        beta = self.beta.clamp(0, 1)
        if self.reset_mode == "subtract":
            mem = beta * mem + cur - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = beta * ((1 - reset) * mem) + cur
        else:
            mem = beta * mem + cur
        return self.fire(mem), (mem,)


class Net(nn.Module):
    """Spiking network `mnist_fc`, 25 time steps."""

    steps = 25

    def __init__(self):
        super().__init__()
        # layers[0] flatten1 (flatten): [1, 28, 28] -> [784]; time-invariant
        self.flatten1 = nn.Flatten()
        # layers[1] fc1 (linear): [784] -> [1000]; time-invariant
        self.fc1 = nn.Linear(
            784,
            1000,
            bias=True,
        )
        # layers[2] lif1 (leaky): [1000] -> [1000]; state: mem
        self.lif1 = Leaky(
            (1000,),
            beta=0.95,
            threshold=1.0,
            reset="subtract",
            learn_beta=False,
            learn_threshold=False,
            per_neuron=False,
            surrogate=ATan,
            surrogate_args=(2.0,),
        )
        # layers[3] fc2 (linear): [1000] -> [10]
        self.fc2 = nn.Linear(
            1000,
            10,
            bias=True,
        )
        # layers[4] lif2 (leaky): [10] -> [10]; state: mem
        self.lif2 = Leaky(
            (10,),
            beta=0.95,
            threshold=1.0,
            reset="subtract",
            learn_beta=False,
            learn_threshold=False,
            per_neuron=False,
            surrogate=ATan,
            surrogate_args=(2.0,),
        )

    def forward(self, x, all_spikes=False):
        """x [B, 1, 28, 28] -> (spk, mem) of lif2, each [T, B, 10].

        With all_spikes=True, also returns every spiking layer's spikes by name.
        """
        # time-invariant prefix: computed once, shared by all 25 steps
        h = x
        h = self.flatten1(h)  # [784]
        h = self.fc1(h)  # [1000]
        h = h.expand(self.steps, *h.shape)  # [T, B, ...] without a copy
        # lif1 and fc2, one node: [10]
        spk_lif1, h = fused_leaky_linear(self.lif1, self.fc2, h, spikes=all_spikes)
        spk_lif2, mem_lif2 = self.lif2(h)
        if all_spikes:
            return spk_lif2, mem_lif2, {"lif1": spk_lif1, "lif2": spk_lif2}
        return spk_lif2, mem_lif2


# ------------------------------------------------------------------------ decoding
# spec `decoding: rate`: output records -> class scores [B, C].


def decode_rate(spk, mem):
    """Spike-count score: ``s[b, c] = sum_t spk[t, b, c]``."""
    return spk.sum(dim=0)


def accuracy(scores, targets):
    """Correct count: ``n = sum_b 1[argmax_c scores[b, c] == targets[b]]``.

    Returns a 0-dim int64 tensor on the scores' device (no host sync).
    """
    return (scores.argmax(dim=-1) == targets).sum()


# ------------------------------------------------------------------------ loss
# spec `loss: ce_membrane`.


def loss_ce_membrane(spk, mem, targets):
    """Per-step membrane cross entropy: ``L = sum_t CE(mem[t], y)``.

    ``CE`` is batch-mean cross entropy (snnTorch tutorial 5); evaluated as one
    flattened ``CE`` over ``[T * B, C]`` times ``T``.
    """
    steps = mem.shape[0]
    logits = mem.reshape(-1, mem.shape[-1])
    return F.cross_entropy(logits, targets.repeat(steps)) * steps


def forward_loss(model, x, targets):
    """Run the model on a batch: (loss, spk, mem) of the output layer."""
    spk, mem = model(x)
    loss = loss_ce_membrane(spk, mem, targets)
    return loss, spk, mem


# ------------------------------------------------------------------------ data
# spec `train.dataset: mnist`, held in memory and scaled batch by batch.


def load_split(root, train, limit, device):
    """One MNIST split: uint8 images [N, 1, 28, 28], labels [N]."""
    dataset = torchvision.datasets.MNIST(root, train=train, download=True)
    inputs = dataset.data.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return inputs[:limit].to(device), labels[:limit].to(device)


def to_input(x):
    """Stored samples [N, 1, 28, 28] -> one model input batch."""
    return x.to(torch.float32).div_(255)  # as torchvision's ToTensor


# ------------------------------------------------------------------------ training
# spec `train.optimizer: adam`, `train.schedule: none`.


def make_optimizer(model):
    """The spec's optimizer over all parameters of the model."""
    return torch.optim.Adam(
        model.parameters(),
        lr=0.0005,
        betas=(0.9, 0.999),
        eps=1e-08,
        weight_decay=0.0,
        fused=True,
    )


def train_step(model, optimizer, x, targets):
    """One optimizer step on a batch: (loss, spk, mem), detached."""
    loss, spk, mem = forward_loss(model, x, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), spk.detach(), mem.detach()


@torch.no_grad()
def evaluate(model, inputs, labels, seed):
    """Test loss and accuracy; the same input encoding every time (seeded)."""
    model.eval()
    torch.manual_seed(seed)
    total = torch.zeros((), device=labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        x = to_input(inputs[start : start + EVAL_BATCH_SIZE])
        y = labels[start : start + EVAL_BATCH_SIZE]
        loss, spk, mem = forward_loss(model, x, y)
        total += loss * y.shape[0]
        correct += accuracy(decode_rate(spk, mem), y)
    return total.item() / len(labels), correct.item() / len(labels)


def epoch_seed(seed, epoch):
    """Seed of an epoch: its data order and every random draw in it."""
    return (seed * 1_000_003 + epoch) % 2**63


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    data_root="data",
    epochs=EPOCHS,
    seed=SEED,
    device=DEVICE,
    limit_train=LIMIT_TRAIN,
    limit_test=LIMIT_TEST,
    compile=False,
):
    """Train from seeded initial weights; returns (model, metrics). `compile`:
    every neuron's time loop through torch.compile (faster; the same forward
    values, gradients equal up to float summation order)."""
    device = pick_device(device)
    torch.manual_seed(seed)
    model = Net().to(device)
    for module in model.modules():
        if isinstance(module, SpikingNeuron):
            module.compiled = compile
    train_inputs, train_labels = load_split(data_root, True, limit_train, device)
    test_inputs, test_labels = load_split(data_root, False, limit_test, device)
    per_epoch = len(train_labels) // BATCH_SIZE
    if per_epoch == 0:
        raise ValueError(f"{len(train_labels)} training samples: not one batch")
    optimizer = make_optimizer(model)
    history = []
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch_seed(seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        started = time.perf_counter()
        for start in range(0, per_epoch * BATCH_SIZE, BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            x, y = to_input(train_inputs[index]), train_labels[index]
            loss, spk, mem = train_step(model, optimizer, x, y)
            loss_sum += loss
            correct += accuracy(decode_rate(spk, mem), y)
        entry = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / per_epoch,
            "train_accuracy": correct.item() / (per_epoch * BATCH_SIZE),
            "seconds": time.perf_counter() - started,
        }
        text = (
            f"epoch {epoch}/{epochs}: train loss {entry['train_loss']:.4f}, "
            f"accuracy {entry['train_accuracy']:.2%} ({entry['seconds']:.1f} s)"
        )
        test_loss, test_accuracy = evaluate(model, test_inputs, test_labels, seed)
        entry.update(test_loss=test_loss, test_accuracy=test_accuracy)
        text += f"; test loss {test_loss:.4f}, accuracy {test_accuracy:.2%}"
        print(text, flush=True)
        history.append(entry)
    metrics = {
        "name": NAME,
        "seed": seed,
        "device": str(device),
        "epochs": epochs,
        "train_samples": len(train_labels),
        "test_samples": len(test_labels),
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "history": history,
    }
    return model, metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--data-root", default="data", help="torchvision data folder")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", default=f"runs/{NAME}", help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:1...")
    parser.add_argument("--limit-train", type=int, default=LIMIT_TRAIN, metavar="N")
    parser.add_argument("--limit-test", type=int, default=LIMIT_TEST, metavar="N")
    parser.add_argument(
        "--compile", action="store_true", help="neuron loops through torch.compile"
    )
    args = parser.parse_args(argv)
    model, metrics = train(
        args.data_root,
        args.epochs,
        args.seed,
        args.device,
        args.limit_train,
        args.limit_test,
        args.compile,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    torch.save(model.state_dict(), out / "model.pt")
    print(f"test accuracy {metrics['test_accuracy']:.2%}; wrote {out}")


if __name__ == "__main__":
    main()
