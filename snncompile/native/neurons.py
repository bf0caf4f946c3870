"""Every neuron type on neurons.c: one autograd node for a layer's whole sequence.

`sequence(lib, neuron, cur, record_mem)` returns what the neuron's plain step
loop returns, (spk, mem) [T, B, ...], computed by neurons.c: the same float
operations in the same order (identical spikes and states), and a backward
derived by hand, equal to autograd's through the step loop up to float
summation order. It returns None where the C code does not apply (another
device or dtype, a convolutional recurrence, a surrogate it does not know, a
class it does not recognize): the caller then runs the step loop. A bfloat16
or float16 input current (from layers under autocast) is cast to float32
first, as the step loop casts it: the states are float32.

A recurrence by a matrix (`recurrence: linear`) runs one step per C call, the
product R(spk[t-1]) by torch in between (the plain model's own call, so the
same values); the backward likewise, its weight gradient one product at the
end. A one-to-one recurrence is elementwise: inside the C loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime import neurons as reference
from ..runtime.fused import sequence_input

LEAKY, RLEAKY, SYNAPTIC, CUBA, ALPHA, ALIF = range(6)
RESETS = {"subtract": 0, "zero": 1, "none": 2}
CARRIES = 3  # neurons.c's MAXC

# runtime class -> neurons.c type; a class is recognized by its name and the
# bytecode of its step (build() runs an inlined copy of runtime/neurons.py)
TYPES = {
    "Leaky": LEAKY,
    "IF": LEAKY,
    "LI": LEAKY,
    "RLeaky": RLEAKY,
    "Lapicque": RLEAKY,
    "Synaptic": SYNAPTIC,
    "RSynaptic": SYNAPTIC,
    "Cuba": CUBA,
    "Alpha": ALPHA,
    "ALIF": ALIF,
}


def _code(function) -> tuple:
    code = function.__code__
    return code.co_code, code.co_consts, code.co_names


METHODS = ("step", "fire", "reset_signal")  # what a type's dynamics run


def runtime_class(neuron) -> str | None:
    """The runtime class whose dynamics `neuron` runs (its name), or None."""
    cls, name = type(neuron), type(neuron).__name__
    if name not in TYPES:
        return None
    ref = getattr(reference, name)
    for method in METHODS:
        if _code(getattr(cls, method)) != _code(getattr(ref, method)):
            return None
    return name


def _flat(tensor, cols):
    """A scalar or per-neuron parameter as [cols] (a view: gradients sum back)."""
    return tensor.reshape(-1).expand(cols)


def describe(neuron, cols: int):
    """(type, reset, rec, params [P, cols], scale, linear) for neurons.c, or
    None: rec 0 none, 1 one-to-one (V in params), 2 by the nn.Linear `linear`;
    `scale` maps the input current first (Lapicque's), or is None."""
    name = runtime_class(neuron)
    if name is None:
        return None
    reset = RESETS.get(neuron.reset_mode)
    threshold = neuron.threshold
    if reset is None:
        return None
    recurrent = getattr(neuron, "recurrent", None)
    rec, V, linear = 0, None, None
    if recurrent is not None:
        if recurrent._forward_hooks or recurrent._forward_pre_hooks:
            return None
        if recurrent.kind == "one_to_one":
            rec, V = 1, recurrent.V
        elif recurrent.kind == "linear" and type(recurrent.linear) is torch.nn.Linear:
            linear = recurrent.linear
            if linear._forward_hooks or linear._forward_pre_hooks:
                return None
            rec = 2
        else:
            return None
    zero = threshold.new_zeros(())
    V = zero if V is None else V
    scale = None
    if name in ("Leaky", "IF"):
        kind, params = LEAKY, [neuron.beta.clamp(0, 1), threshold]
    elif name == "LI":
        kind, params, reset = LEAKY, [neuron.beta.clamp(0, 1), threshold], 2
    elif name == "RLeaky":
        kind, params = RLEAKY, [neuron.beta.clamp(0, 1), threshold, V]
    elif name == "Lapicque":
        R, C, dt = neuron.R, neuron.C, neuron.time_step
        kind, params = RLEAKY, [(1 - (dt / (R * C))), threshold, V]

        def scale(cur):  # Lapicque.step's input term, in its order
            return cur * R * (1 / (R * C)) * dt

    elif name in ("Synaptic", "RSynaptic"):
        a, b = neuron.alpha.clamp(0, 1), neuron.beta.clamp(0, 1)
        kind, params = SYNAPTIC, [a, b, threshold, V]
    elif name == "Cuba":
        a, b = neuron.alpha.clamp(0, 1), neuron.beta.clamp(0, 1)
        kind, params = CUBA, [a, b, threshold]
    elif name == "Alpha":
        a, b = neuron.alpha.clamp(0, 1), neuron.beta.clamp(0, 1)
        tau = torch.log(a) / (torch.log(b) - torch.log(a)) + 1
        kind, params = ALPHA, [a, b, threshold, tau]
    else:  # ALIF
        b, rho = neuron.beta.clamp(0, 1), neuron.rho.clamp(0, 1)
        kind, params = ALIF, [b, threshold, rho, neuron.adapt, V]
    if any(p.numel() not in (1, cols) for p in params):
        return None
    stacked = torch.stack([_flat(p, cols) for p in params])
    return kind, reset, rec, stacked, scale, linear


def supported(neuron, surrogate_kind) -> bool:
    """Whether `sequence` runs this layer (its parameters on the CPU, float32):
    a recognized class, a known surrogate (or none), no convolutional
    recurrence."""
    size = getattr(neuron, "size", ())
    cols = 1
    for extent in size:
        cols *= extent
    try:
        described = describe(neuron, cols)
    except (AttributeError, TypeError, RuntimeError):
        return False
    if described is None:
        return False
    params, linear = described[3], described[5]
    tensors = [params] + ([] if linear is None else [linear.weight])
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if neuron.surrogate is None or neuron.hard:
        return True
    return surrogate_kind(neuron.surrogate.backward) is not None


def _ptr(tensor):
    return None if tensor is None else tensor.data_ptr()


class Call:
    """The shapes and pointers of one layer's kernel calls."""

    def __init__(self, lib, kind, reset, rec, cur, steps, params):
        self.lib, self.kind, self.reset, self.rec = lib, kind, reset, rec
        self.constant = steps is not None
        self.steps = steps if self.constant else cur.shape[0]
        self.shape = cur.shape if self.constant else cur.shape[1:]
        self.rows = self.shape[0]
        self.cols = self.shape[1:].numel()
        self.numel = self.shape.numel()
        self.states = lib.snn_neuron_states(kind)
        self.params = params

    def forward(self, cur, rec, t, count, init, spk, states):
        """Steps t .. t + count - 1 into spk (their [count, E]) and the records
        states [S, T, E] (init: the records, read at t - 1; None at 0)."""
        plane = self.steps * self.numel
        at = t * self.numel * 4  # bytes
        status = self.lib.snn_neuron_forward(
            self.kind, self.reset, self.rec,
            _ptr(cur) + (0 if self.constant else at), self.constant, _ptr(rec),
            count, self.rows, self.cols, _ptr(self.params),
            None if init is None else _ptr(init) + at - self.numel * 4, plane,
            _ptr(spk), _ptr(states) + at, plane, torch.get_num_threads(),
        )  # fmt: skip
        if status:
            raise RuntimeError("snn_neuron_forward: unknown type")


def _run(call, cur, linear, spk_out=None):
    """The forward of a whole sequence: (spk [T, ...], states [S, T, ...])."""
    shape, steps = call.shape, call.steps
    states = cur.new_empty((call.states, steps, *shape))
    if call.rec != 2:
        spk = cur.new_empty((steps, *shape))
        call.forward(cur, None, 0, steps, None, spk, states)
        return spk, states
    # one step per call; each step's spikes a tensor of its own, as the step
    # loop's (the feedback product then sees the same operand layout)
    spks, last = [], cur.new_zeros(shape)
    for t in range(steps):
        rec = F.linear(last, linear.weight.detach(), _detach(linear.bias))
        rec = rec.to(cur.dtype).contiguous()  # under autocast: a bfloat16 product
        last = cur.new_empty(shape)
        call.forward(cur, rec, t, 1, states if t else None, last, states)
        spks.append(last)
    return torch.stack(spks), states


def _detach(tensor):
    return None if tensor is None else tensor.detach()


class NeuronSequence(torch.autograd.Function):
    """(cur, params, weight, bias) -> (spk, mem) of a layer by neurons.c; see the
    module doc. weight and bias: a linear recurrence's (rec 2), else None."""

    @staticmethod
    def forward(ctx, cur, params, weight, bias, options):
        lib, kind, reset, rec, steps, surrogate, linear = options
        cur = cur.contiguous()
        call = Call(lib, kind, reset, rec, cur, steps, params.detach().contiguous())
        spk, states = _run(call, cur, linear)
        ctx.save_for_backward(cur, spk if rec == 2 else None, states)
        ctx.call, ctx.surrogate, ctx.linear = call, surrogate, linear
        ctx.set_materialize_grads(False)
        if surrogate is None:  # as the step loop's: no gradient through spikes
            ctx.mark_non_differentiable(spk)
        return spk, states[-1]

    @staticmethod
    def backward(ctx, grad_spk, grad_mem):
        cur, spk, states = ctx.saved_tensors
        call, (kind, a0, a1) = ctx.call, ctx.surrogate or (0, 0.0, 0.0)
        need_cur, need_params, need_weight, need_bias = ctx.needs_input_grad[:4]
        if grad_spk is None and call.rec == 0 and call.kind != ALIF:
            kind = 0  # no gradient reaches the spikes
        grad_spk = None if grad_spk is None else grad_spk.contiguous()
        grad_mem = None if grad_mem is None else grad_mem.contiguous()
        threads = torch.get_num_threads()
        grad_params = cur.new_zeros(call.params.shape) if need_params else None
        scratch = cur.new_empty((threads, *call.params.shape)) if need_params else None
        plane = call.steps * call.numel
        if call.rec != 2:
            grad_cur = None
            if need_cur:
                grad_cur = (cur.new_zeros if call.constant else cur.new_empty)(
                    cur.shape
                )
            _backward(call, kind, a0, a1, cur, states, 0, call.steps, None,
                      grad_spk, grad_mem, None, grad_cur, grad_params, scratch, threads, plane)  # fmt: skip
            return grad_cur, grad_params, None, None, None
        # one step per call, from the last; the feedback's gradient by torch
        weight = ctx.linear.weight.detach()
        per_step = cur.new_empty((call.steps, *call.shape))  # dL/dR[t] = dL/dI[t]
        carry = cur.new_zeros((CARRIES, *call.shape))
        sent = None  # dL/dspk[t] through R(spk[t]) at step t + 1
        for t in range(call.steps - 1, -1, -1):
            g = None if grad_spk is None else grad_spk[t]
            g = sent if g is None else (g if sent is None else g + sent)
            g = None if g is None else g.contiguous()
            _backward(call, kind, a0, a1, cur, states, t, 1, states if t else None,
                      g, None if grad_mem is None else grad_mem[t], carry,
                      per_step[t], grad_params, scratch, threads, plane, True)  # fmt: skip
            if t:
                sent = per_step[t].mm(weight)
        grad_cur = None
        if need_cur:
            grad_cur = per_step.sum(0) if call.constant else per_step
        grad_weight = grad_bias = None
        flat = per_step.flatten(0, 1)
        if need_weight and call.steps > 1:
            grad_weight = per_step[1:].flatten(0, 1).t().mm(spk[:-1].flatten(0, 1))
        elif need_weight:
            grad_weight = torch.zeros_like(weight)
        if need_bias:
            grad_bias = flat.sum(0)
        return grad_cur, grad_params, grad_weight, grad_bias, None


def _backward(call, kind, a0, a1, cur, states, t, count, init, grad_spk, grad_mem,
              carry, grad_cur, grad_params, scratch, threads, plane, step=False):  # fmt: skip
    """snn_neuron_backward for steps t .. t + count - 1 (`step`: grad_spk,
    grad_mem and grad_cur are that one step's, not the sequence's)."""
    at = t * call.numel * 4
    offset = 0 if step else at  # one step's gradients, or the sequence's
    status = call.lib.snn_neuron_backward(
        call.kind, call.reset, call.rec, kind, a0, a1,
        _ptr(cur) + (0 if call.constant else at), call.constant and not step, count,
        call.rows, call.cols, _ptr(call.params),
        None if init is None else _ptr(init) + at - call.numel * 4, plane,
        _ptr(states) + at, plane,
        None if grad_spk is None else _ptr(grad_spk) + offset,
        None if grad_mem is None else _ptr(grad_mem) + offset,
        _ptr(carry), _ptr(grad_cur), _ptr(grad_params), _ptr(scratch), threads,
    )  # fmt: skip
    if status:
        raise RuntimeError("snn_neuron_backward: unknown type")


def sequence(lib, neuron, cur, record_mem=True, surrogate_kind=None):
    """(spk, mem) of `neuron` over cur [T, B, ...] by neurons.c, as its step loop
    gives them (mem None unless `record_mem`), or None where it does not apply.
    `surrogate_kind(backward)`: neurons.c's number for a surrogate, or None."""
    if cur.device.type != "cpu" or cur.dim() < 3:
        return None
    cur, steps = sequence_input(cur)
    if cur.dtype != torch.float32:
        return None
    shape = cur.shape if steps is not None else cur.shape[1:]
    cols = shape[1:].numel()
    described = describe(neuron, cols)
    if described is None:
        return None
    kind, reset, rec, params, scale, linear = described
    if params.dtype != torch.float32 or params.device.type != "cpu":
        return None
    surrogate = None
    if not neuron.hard and neuron.surrogate is not None:
        number = surrogate_kind(neuron.surrogate.backward)
        if number is None:
            return None
        args = [float(a) for a in neuron.surrogate_args][:2]
        surrogate = (number, *(args + [0.0, 0.0])[:2])
    if scale is not None:
        cur = scale(cur)
    weight = bias = None
    if linear is not None:
        weight, bias = linear.weight, linear.bias
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            return None
    inputs = (cur, params, weight, bias)
    options = (lib, kind, reset, rec, steps, surrogate, linear)
    grad = any(t is not None and t.requires_grad for t in inputs)
    if torch.is_grad_enabled() and grad:
        spk, mem = NeuronSequence.apply(*inputs, options)
    else:
        with torch.no_grad():
            call = Call(
                lib, kind, reset, rec, cur.contiguous(), steps, params.contiguous()
            )
            spk, states = _run(call, cur.contiguous(), linear)
            mem = states[-1]
    return spk, mem if record_mem else None
