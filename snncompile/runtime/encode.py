"""Input encodings: turn a static batch ``[B, *shape]`` into ``[T, B, *shape]``.

Self-contained (imports only ``math``/``torch``) so that the source can be inlined
verbatim into generated scripts.  Semantics follow ``snntorch.spikegen``.
"""

import torch


def encode_direct(x, steps):
    """Direct (constant-current) code: ``out[t] = x`` for ``t = 0..T-1``.

    Returns a broadcast view of ``x`` (no copy), shape ``[T, B, *shape]``.
    """
    return x.unsqueeze(0).expand(steps, *x.shape)


def encode_rate(x, steps, gain=1.0, generator=None):
    """Bernoulli rate code: ``out[t] ~ Bernoulli(clamp(gain * x, 0, 1))``.

    Same as ``snntorch.spikegen.rate(x, num_steps=steps, gain=gain)``: the input is
    repeated along a new leading time axis and sampled with a single
    ``torch.bernoulli`` call, so identical RNG state gives identical spikes.
    """
    if not x.is_floating_point():
        x = x.float()
    reps = (steps,) + (1,) * x.dim()
    prob = torch.clamp(x.repeat(reps) * gain, min=0.0, max=1.0)
    return torch.bernoulli(prob, generator=generator)


def encode_latency(
    x, steps, tau=1.0, threshold=0.01, linear=False, normalize=False, clip=False
):
    """Latency code: one spike per element at step ``round(t_s)``.

    Logarithmic (RC charging) code, ``x_c = max(x, thr + 1e-7)``:
    ``t_s = tau * ln(x_c / (x_c - thr))``; linear code:
    ``t_s = min(tau * (1 - x), tau * (1 - thr))`` (with ``normalize`` the linear
    ``tau = T - 1``, the log code is rescaled ``t_s * (T - 1) / max(t_s)``).
    ``out[t] = 1`` iff ``t == round(min(t_s, T - 1))`` and ``round(t_s) <= T - 1``;
    with ``clip`` elements below ``thr`` never fire.  Matches
    ``snntorch.spikegen.latency`` (first_spike_time=0, on_target=1, off_target=0);
    ``x`` is expected in ``[0, 1]`` (snnTorch's range check is not repeated here).
    """
    if not x.is_floating_point():
        x = x.float()
    if linear:
        if normalize:
            tau = steps - 1
        spike_time = torch.clamp_max(-tau * (x - 1), -tau * (threshold - 1))
    else:
        xc = torch.clamp(x, min=threshold + 1e-7)
        spike_time = tau * torch.log(xc / (xc - threshold))
        if normalize:
            spike_time = spike_time * (steps - 1) / torch.max(spike_time)
    step_idx = torch.round(torch.clamp_max(spike_time, steps - 1)).long()
    fires = torch.round(spike_time).long() <= steps - 1
    if clip:
        fires = fires & (x >= threshold)
    t = torch.arange(steps, device=x.device).view((steps,) + (1,) * x.dim())
    out = (t == step_idx.unsqueeze(0)) & fires.unsqueeze(0)
    return out.to(x.dtype)


def encode_delta(x, threshold=0.1, off_spike=False, padding=False):
    """Delta modulation over an existing time axis ``x: [T, B, ...]``.

    ``d[t] = x[t] - x[t-1]`` with ``x[-1] = 0`` (or ``x[0]`` if ``padding``);
    ``out[t] = 1[d[t] >= thr]`` (``- 1[d[t] <= -thr]`` if ``off_spike``).
    Matches ``snntorch.spikegen.delta``.
    """
    first = x[:1] if padding else torch.zeros_like(x[:1])
    diff = x - torch.cat((first, x[:-1]), dim=0)
    out = (diff >= threshold).to(x.dtype)
    if off_spike:
        out = out - (diff <= -threshold).to(x.dtype)
    return out
