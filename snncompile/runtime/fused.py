"""A fused Leaky layer over a whole sequence, with a hand-written backward.

`fused_leaky(neuron, cur)` (what `Leaky.forward` runs) returns exactly what the
step loop `Leaky.loop(cur)` returns (the same float operations in the same
order, so identical spikes and membranes), but records ONE autograd node for
all T steps instead of ~10 per step and saves only what the backward needs: the
spike record (an output anyway) and the membrane record - for a time-invariant
input not even that: ~sqrt(T) checkpoints of a large layer, the rest recomputed
exactly in the backward. A hidden layer can skip returning its membrane record
(`record_mem=False`; a time-varying input still saves it for the backward).
With `compiled=True` the forward and backward loops are torch.compile'd into one
fused C++ loop each (exact as well; for a time-invariant input the backward then
recomputes the membranes in registers and saves none). `compiled` may instead be
a kernel provider: an object whose `scan` and `backward` methods take and return
what leaky_scan and leaky_backward do (snncompile's native C kernels are one); a
`scan_linear` method, if it has one, also applies the linear layer of
`fused_leaky_linear` in its loop (its own summation order: values up to rounding).

Forward, b = clamp(beta, 0, 1), reset[t] = H(mem[t-1] - threshold) = spk[t-1]:
    subtract: mem[t] = b * mem[t-1] + I[t] - reset[t] * threshold
    zero:     mem[t] = b * ((1 - reset[t]) * mem[t-1]) + I[t]
    none:     mem[t] = b * mem[t-1] + I[t]
    spk[t] = S(mem[t] - threshold)
Backward (reset detached, as in snnTorch), with d[t] = dL/dmem[t] in total:
    d[t] = gmem[t] + gspk[t] * S'(mem[t] - threshold) + f[t+1] * d[t+1]
    f[t] = b (subtract, none) or b * (1 - reset[t]) (zero)
    dL/dI[t] = d[t];  dL/db = sum_t d[t] * (prev state entering b at step t)
    dL/dthreshold = -sum_t gspk[t] S'(.) - sum_t reset[t] d[t] (subtract only)
S' is the surrogate's own backward formula (its `backward` is called directly).

A time-invariant input may be passed once, `cur` [B, ...] with `steps=T`, or as
the `expand`ed view [T, B, ...] of such a tensor: then I[t] is the same tensor at
every step and its gradient is summed over T inside the backward.

`fused_leaky_linear(neuron, linear, cur)` makes a hidden Leaky layer and the
linear layer after it one node: in the compiled backward the spike gradient the
linear layer sends back is formed step by step inside the loop. A provider with
a `fits(neuron)` method that says no (its Leaky kernels do not take the layer)
gets the two layers in turn.

Only torch is used. snncompile/lower/kernels.py puts these kernels on top of a
built net; generated code keeps the plain step loops.
"""

import torch


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
    spike record. Detached: for the forward of a node or under no_grad. Under
    autocast the product is autocast's (in low precision, as the plain model's
    linear layer), never the provider's."""
    both = getattr(compiled, "scan_linear", None) if weight is not None else None
    if torch.is_autocast_enabled(args[0].device.type):
        both = None
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
        if grad_out is not None:  # under autocast: the low-precision product's
            grad_out = grad_out.to(weight.dtype)
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


def sequence_input(cur, steps=None):
    """(cur, steps) as the fused and native loops read a sequence [T, B, ...]:
    a stride-0 expand of one [B, ...] tensor as that tensor with steps = T (read
    once; steps given: already so), and a bfloat16 or float16 current (from
    layers under autocast) in float32, as the step loop's states (cast after
    the base is found: no [T, ...] copy)."""
    if steps is None:
        base = _time_expanded_base(cur)
        if base is not None:
            cur, steps = base, cur.shape[0]
    if cur.dtype in (torch.bfloat16, torch.float16):
        cur = cur.float()
    return cur, steps


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
    provider = neuron.compiled
    own = getattr(provider, "fits", None)  # a provider's Leaky kernels run it
    if (
        torch.compiler.is_compiling()
        or not neuron.fused
        or not _plain(linear)
        or (own is not None and not own(neuron))
    ):
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
    cur, steps = sequence_input(cur, steps)
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
