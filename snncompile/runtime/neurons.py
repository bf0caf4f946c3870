"""Spiking neuron layers with snnTorch's exact dynamics.

Conventions shared by every neuron (snnTorch's defaults):
- the reset at step t comes from the previous membrane:
  reset[t] = H(mem[t-1] - threshold), detached from the graph;
- decays are clamped: beta and alpha enter as clamp(., 0, 1);
- spk[t] = S(mem[t] - threshold), S the Heaviside step (strict >) forward and
  the surrogate's derivative backward.
- states run in float32 at least: a bfloat16 or float16 input current (from
  layers under autocast) is cast to float32 first, as mixed precision does
  (the matrix products in low precision, the recurrence in float32).

`step` advances one time step; `forward` runs a whole sequence [T, B, ...] by
calling `step` once per step. These classes are inlined verbatim into generated
code (only torch is used); snncompile puts fused and compiled kernels on top of
them (snncompile/lower/kernels.py), with the same spikes.
"""

import torch
from torch import nn


class SpikingNeuron(nn.Module):
    """Parameters, firing and the time loop shared by every neuron type."""

    state_names = ("mem",)

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
        if cur.dtype in (torch.bfloat16, torch.float16):  # from autocast's layers
            cur = cur.float()  # the states in float32: no drift over the steps
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


class IF(Leaky):
    """Integrate-and-fire without leak: Leaky with beta fixed at 1,

    subtract: mem[t] = mem[t-1] + I[t] - reset[t] * threshold
    zero:     mem[t] = (1 - reset[t]) * mem[t-1] + I[t]
    none:     mem[t] = mem[t-1] + I[t]
    (1 * x is x exactly in floating point: the same values as these lines).
    """

    def __init__(self, shape, **kwargs):
        super().__init__(shape, 1.0, **kwargs)


class Synaptic(SpikingNeuron):
    """Synaptic-current LIF (snnTorch Synaptic), a = clamp(alpha), b = clamp(beta):

    syn[t] = a * syn[t-1] + I[t]
    m[t]   = b * mem[t-1] + syn[t]
    subtract: mem[t] = m[t] - reset[t] * threshold
    zero:     mem[t] = m[t] - m[t] * reset[t]
    none:     mem[t] = m[t]
    """

    state_names = ("syn", "mem")

    def __init__(self, shape, alpha, beta, learn_alpha=False, **kwargs):
        super().__init__(shape, beta, **kwargs)
        self.constant("alpha", alpha, learn_alpha)

    def step(self, cur, state):
        syn, mem = state
        reset = self.reset_signal(mem)
        syn = self.alpha.clamp(0, 1) * syn + cur
        mem = self.beta.clamp(0, 1) * mem + syn
        if self.reset_mode == "subtract":
            mem = mem - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = mem - mem * reset
        return self.fire(mem), (syn, mem)


class Cuba(SpikingNeuron):
    """Current-based LIF that resets in the step it fires (NIR's CubaLIF under
    snncompile's forward Euler, see snncompile/export/nir.py), a = clamp(alpha),
    b = clamp(beta):

    syn[t] = a * syn[t-1] + I[t]
    subtract: mem[t] = b * (mem[t-1] - reset[t] * threshold) + syn[t]
    zero:     mem[t] = b * ((1 - reset[t]) * mem[t-1]) + syn[t]
    none:     mem[t] = b * mem[t-1] + syn[t]

    with reset[t] = spk[t-1], detached, as every neuron's. `mem` is the membrane
    before its reset (NIR's v, the value that fires: spk[t] = S(mem[t] -
    threshold)); the membrane after the reset, the one carried on, is
    (1 - spk[t]) * mem[t] (zero) or mem[t] - spk[t] * threshold (subtract), so
    the reset acts in the step that fires and the next step's input and current
    are kept. Unlike Synaptic, whose reset zeroes the whole next update
    (snnTorch's, one step late), only the old membrane is reset; and a
    subtracted threshold decays with it. With a = 0 and zero reset it is Leaky.
    """

    state_names = ("syn", "mem")

    def __init__(self, shape, alpha, beta, learn_alpha=False, **kwargs):
        super().__init__(shape, beta, **kwargs)
        self.constant("alpha", alpha, learn_alpha)

    def step(self, cur, state):
        syn, mem = state
        reset = self.reset_signal(mem)
        syn = self.alpha.clamp(0, 1) * syn + cur
        beta = self.beta.clamp(0, 1)
        if self.reset_mode == "subtract":
            mem = beta * (mem - reset * self.threshold) + syn
        elif self.reset_mode == "zero":
            mem = beta * ((1 - reset) * mem) + syn
        else:
            mem = beta * mem + syn
        return self.fire(mem), (syn, mem)


class Alpha(SpikingNeuron):
    """Alpha neuron (snnTorch Alpha), a = clamp(alpha), b = clamp(beta), a > b:

    exc[t] = a * exc[t-1] + I[t];  inh[t] = b * inh[t-1] - I[t]
    mem[t] = tau * (exc[t] + inh[t]),  tau = log(a) / (log(b) - log(a)) + 1
    subtract: exc[t] -= threshold * reset[t]; inh[t] -= inh[t] * reset[t];
              mem[t] += inh[t-1] * reset[t]
    zero:     each of exc[t], inh[t], mem[t] -= itself * reset[t]
    """

    state_names = ("syn_exc", "syn_inh", "mem")

    def __init__(self, shape, alpha, beta, learn_alpha=False, **kwargs):
        super().__init__(shape, beta, **kwargs)
        self.constant("alpha", alpha, learn_alpha)

    def step(self, cur, state):
        exc, inh, mem = state
        reset = self.reset_signal(mem)
        a = self.alpha.clamp(0, 1)
        b = self.beta.clamp(0, 1)
        new_exc = a * exc + cur
        new_inh = b * inh - cur
        tau = torch.log(a) / (torch.log(b) - torch.log(a)) + 1
        new_mem = tau * (new_exc + new_inh)
        if self.reset_mode == "subtract":
            new_exc = new_exc - self.threshold * reset
            new_inh = new_inh - (b * inh - cur) * reset
            new_mem = new_mem - (-inh) * reset
        elif self.reset_mode == "zero":
            new_exc = new_exc - new_exc * reset
            new_inh = new_inh - new_inh * reset
            new_mem = new_mem - new_mem * reset
        return self.fire(new_mem), (new_exc, new_inh, new_mem)


class Recurrent(nn.Module):
    """Feedback of a layer's previous spikes: all-to-all linear, one-to-one gain V,
    or a same-padded conv2d over feature maps."""

    def __init__(self, kind, features=None, V=1.0, learn=True, kernel_size=None):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.linear = nn.Linear(features, features)
        elif kind == "conv":
            padding = (kernel_size[0] // 2, kernel_size[1] // 2)
            self.conv = nn.Conv2d(features, features, kernel_size, padding=padding)
        elif learn:
            self.V = nn.Parameter(torch.tensor(float(V)))
        else:
            self.register_buffer("V", torch.tensor(float(V)))

    def forward(self, spk):
        if self.kind == "linear":
            return self.linear(spk)
        if self.kind == "conv":
            return self.conv(spk)
        return spk * self.V


class RLeaky(SpikingNeuron):
    """Recurrent leaky neuron (snnTorch RLeaky), b = clamp(beta, 0, 1):

    m[t] = b * mem[t-1] + I[t] + R(spk[t-1])
    subtract: mem[t] = m[t] - reset[t] * threshold
    zero:     mem[t] = m[t] - reset[t] * m[t]
    none:     mem[t] = m[t]
    """

    state_names = ("spk", "mem")

    def __init__(self, shape, beta, recurrent=None, **kwargs):
        super().__init__(shape, beta, **kwargs)
        self.recurrent = recurrent

    def step(self, cur, state):
        spk, mem = state
        reset = self.reset_signal(mem)
        mem = self.beta.clamp(0, 1) * mem + cur + self.recurrent(spk)
        if self.reset_mode == "subtract":
            mem = mem - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = mem - reset * mem
        spk = self.fire(mem)
        return spk, (spk, mem)


class RSynaptic(SpikingNeuron):
    """Recurrent synaptic neuron (snnTorch RSynaptic), a, b clamped to [0, 1]:

    syn[t] = a * syn[t-1] + I[t] + R(spk[t-1])
    m[t]   = b * mem[t-1] + syn[t]
    subtract: mem[t] = m[t] - reset[t] * threshold
    zero:     mem[t] = m[t] - m[t] * reset[t]
    none:     mem[t] = m[t]
    """

    state_names = ("spk", "syn", "mem")

    def __init__(self, shape, alpha, beta, learn_alpha=False, recurrent=None, **kwargs):
        super().__init__(shape, beta, **kwargs)
        self.constant("alpha", alpha, learn_alpha)
        self.recurrent = recurrent

    def step(self, cur, state):
        spk, syn, mem = state
        reset = self.reset_signal(mem)
        syn = self.alpha.clamp(0, 1) * syn + cur + self.recurrent(spk)
        mem = self.beta.clamp(0, 1) * mem + syn
        if self.reset_mode == "subtract":
            mem = mem - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = mem - mem * reset
        spk = self.fire(mem)
        return spk, (spk, syn, mem)


class Lapicque(SpikingNeuron):
    """Lapicque's RC-circuit neuron (snnTorch Lapicque): a leaky neuron set by
    the resistance R, capacitance C and time step dt of an RC circuit,

    base[t] = I[t] * R * (1 / (R * C)) * dt + (1 - dt / (R * C)) * mem[t-1]
    subtract: mem[t] = base[t] - reset[t] * threshold
    zero:     mem[t] = base[t] - reset[t] * base[t]
    none:     mem[t] = base[t]

    Given beta (0 < beta < 1), the missing one of R and C follows from
    beta = exp(-dt / (R * C)) as snnTorch derives it (beta alone: R = 1), so the
    decay is 1 - dt / (R * C) = 1 + log(beta); beta itself is kept but unused.
    R, C, dt and beta are buffers (snnTorch's are not learnable either).
    """

    def __init__(self, shape, beta=None, R=None, C=None, time_step=1.0, **kwargs):
        super().__init__(shape, 0.0 if beta is None else beta, **kwargs)
        self.constant("time_step", time_step, False)
        dt = self.time_step
        if beta is None:  # R and C
            self.constant("R", R, False)
            self.constant("C", C, False)
            self.beta = torch.exp(-dt / (R * C))  # R * C in float64, as snnTorch
        elif C is None:  # beta, and R or nothing (R = 1)
            self.constant("R", 1.0 if R is None else R, False)
            self.register_buffer("C", dt / (self.R * torch.log(1 / self.beta)))
        else:  # beta and C
            self.constant("C", C, False)
            self.register_buffer("R", dt / (self.C * torch.log(1 / self.beta)))

    def step(self, cur, state):
        (mem,) = state
        reset = self.reset_signal(mem)
        R, C, dt = self.R, self.C, self.time_step
        base = cur * R * (1 / (R * C)) * dt + (1 - (dt / (R * C))) * mem
        if self.reset_mode == "subtract":
            mem = base - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = base - reset * base
        else:
            mem = base
        return self.fire(mem), (mem,)


class LI(SpikingNeuron):
    """Leaky integrator readout that never spikes, b = clamp(beta, 0, 1):

    mem[t] = b * mem[t-1] + I[t]
    spk[t] = 0

    (snnTorch Leaky with reset "none" and a threshold it never reaches.) Its
    threshold is +inf, so no membrane is ever near it.
    """

    def __init__(self, shape, beta, learn_beta=False, per_neuron=False):
        super().__init__(
            shape,
            beta,
            threshold=float("inf"),
            learn_beta=learn_beta,
            per_neuron=per_neuron,
        )

    def step(self, cur, state):
        (mem,) = state
        mem = self.beta.clamp(0, 1) * mem + cur
        return torch.zeros_like(mem), (mem,)


class ALIF(SpikingNeuron):
    """Adaptive-threshold LIF (Bellec et al. 2018's LSNN neuron, as in Yin et
    al. 2021), b = clamp(beta, 0, 1), r = clamp(rho, 0, 1); all states start at
    zero (spk[-1] = a[-1] = mem[-1] = 0):

    a[t]     = r * a[t-1] + (1 - r) * spk[t-1]
    thr[t]   = threshold + adapt * a[t]
    reset[t] = H(mem[t-1] - thr[t-1]), detached
    m[t]     = I[t] + R(spk[t-1])   (R: the recurrent feedback; none in alif)
    subtract: mem[t] = b * mem[t-1] + m[t] - reset[t] * thr[t-1]
    zero:     mem[t] = b * ((1 - reset[t]) * mem[t-1]) + m[t]
    none:     mem[t] = b * mem[t-1] + m[t]
    spk[t]   = S(mem[t] - thr[t])

    So thr[t] counts the spikes up to t-1, and a reset takes off the threshold
    the membrane crossed. At a steady rate of one spike per step a tends to 1:
    adapt is the most the threshold rises (Bellec et al.'s beta).
    """

    state_names = ("spk", "a", "mem")

    def __init__(
        self,
        shape,
        beta,
        rho,
        adapt=1.8,
        learn_rho=False,
        learn_adapt=False,
        recurrent=None,
        **kwargs,
    ):
        super().__init__(shape, beta, **kwargs)
        self.constant("rho", rho, learn_rho)
        self.constant("adapt", adapt, learn_adapt)
        self.recurrent = recurrent

    def fire_at(self, mem, threshold):
        """spk = S(mem - threshold), for a threshold of each neuron and step."""
        shifted = mem - threshold
        if self.hard or self.surrogate is None:
            return (shifted > 0).to(mem.dtype)
        return self.surrogate.apply(shifted, *self.surrogate_args)

    def step(self, cur, state):
        spk, a, mem = state
        last = self.threshold + self.adapt * a  # thr[t-1]
        reset = (mem - last > 0).to(mem.dtype)
        rho = self.rho.clamp(0, 1)
        a = rho * a + (1 - rho) * spk
        if self.recurrent is not None:
            cur = cur + self.recurrent(spk)
        beta = self.beta.clamp(0, 1)
        if self.reset_mode == "subtract":
            mem = beta * mem + cur - reset * last
        elif self.reset_mode == "zero":
            mem = beta * ((1 - reset) * mem) + cur
        else:
            mem = beta * mem + cur
        spk = self.fire_at(mem, self.threshold + self.adapt * a)
        return spk, (spk, a, mem)
