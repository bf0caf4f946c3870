"""Training losses on output records ``spk, mem: [T, B, C]`` and labels ``[B]``.

Each ``loss_*`` reproduces the matching ``snntorch.functional`` loss (value and
gradient, snnTorch defaults, reduction='mean', no class weights) but returns a
0-dim tensor.  Self-contained (imports only ``torch``) so the source can be
inlined verbatim into generated scripts.
"""

import torch
import torch.nn.functional as F


def loss_ce_membrane(spk, mem, targets):
    """Per-step membrane cross entropy: ``L = sum_t CE(mem[t], y)``.

    ``CE`` is batch-mean cross entropy (snnTorch tutorial 5); evaluated as one
    flattened ``CE`` over ``[T * B, C]`` times ``T``.
    """
    steps = mem.shape[0]
    logits = mem.reshape(-1, mem.shape[-1])
    return F.cross_entropy(logits, targets.repeat(steps)) * steps


def loss_ce_rate(spk, mem, targets):
    """Per-step spike cross entropy: ``L = (1 / T) * sum_t CE(spk[t], y)``.

    Matches ``snntorch.functional.ce_rate_loss()``; equal to one ``CE`` over the
    flattened ``[T * B, C]`` record.
    """
    steps = spk.shape[0]
    logits = spk.reshape(-1, spk.shape[-1])
    return F.cross_entropy(logits, targets.repeat(steps))


def loss_ce_count(spk, mem, targets):
    """Spike-count cross entropy: ``L = CE(sum_t spk[t], y)``.

    Matches ``snntorch.functional.ce_count_loss()``.
    """
    return F.cross_entropy(spk.sum(dim=0), targets)


def loss_mse_count(spk, mem, targets, correct_rate=1.0, incorrect_rate=0.0):
    """Spike-count MSE: ``L = mean_{b,c} (n[b, c] - n*[b, c])^2 / T``.

    ``n = sum_t spk[t]``; target ``n* = int(T * correct_rate)`` for the label
    class and ``int(T * incorrect_rate)`` otherwise (truncated to int, as in
    ``snntorch.functional.mse_count_loss``; note the extra division by ``T``).
    """
    steps = spk.shape[0]
    on = int(steps * correct_rate)
    off = int(steps * incorrect_rate)
    count = spk.sum(dim=0)
    one_hot = F.one_hot(targets.long(), count.shape[-1]).to(count.dtype)
    if on > off:
        target = torch.clamp(one_hot * on, min=off)
    else:
        target = one_hot * on + (1 - one_hot) * off
    return F.mse_loss(count, target) / steps


def loss_ce_max_membrane(spk, mem, targets):
    """Peak-membrane cross entropy: ``L = CE(max_t mem[t], y)``.

    Matches ``snntorch.functional.ce_max_membrane_loss()`` (gradient flows to
    the first arg-max step only).
    """
    return F.cross_entropy(mem.max(dim=0).values, targets)


def loss_mse_membrane(spk, mem, targets, on_target=1.0, off_target=0.0):
    """Membrane MSE to a constant target: ``L = mean_{t,b,c} (mem - u*)^2``.

    ``u*[b, c] = on_target`` for the label class, else ``off_target`` (if
    ``on_target > off_target`` the off value is ``max(0, off_target)``, as
    snnTorch's ``clamp``).  Equals ``(1 / T) sum_t MSE(mem[t], u*)`` of
    ``snntorch.functional.mse_membrane_loss(on_target, off_target)``.
    """
    one_hot = F.one_hot(targets.long(), mem.shape[-1]).to(mem.dtype)
    if on_target > off_target:
        target = torch.clamp(one_hot * on_target, min=off_target)
    else:
        target = one_hot * on_target + (1 - one_hot) * off_target
    return F.mse_loss(mem, target.unsqueeze(0).expand_as(mem))


def loss_ce_temporal(spk, mem, targets, inverse="negate"):
    """First-spike-time cross entropy: ``L = CE(g(t_first), y)``.

    ``t_first[b, c] = min{t : spk[t, b, c] != 0}`` (``T - 1`` if silent),
    ``g(t) = -t`` (``inverse='negate'``) or ``1 / (t + 1)`` ('reciprocal').
    Straight-through gradient as snnTorch's ``SpikeTime.FirstSpike``:
    ``d t_first / d spk[t] = -1[t == t_first]``.  Matches
    ``snntorch.functional.ce_temporal_loss(inverse)`` for binary spikes.
    """
    if inverse not in ("negate", "reciprocal"):
        raise ValueError("inverse must be 'negate' or 'reciprocal'")
    steps = spk.shape[0]
    t = torch.arange(steps, device=spk.device).view((steps,) + (1,) * (spk.dim() - 1))
    first = torch.where(spk != 0, t, steps - 1).amin(dim=0)
    picked = (spk * (t == first.unsqueeze(0)).to(spk.dtype)).sum(dim=0)
    spike_time = first.to(spk.dtype) - (picked - picked.detach())
    if inverse == "negate":
        logits = -spike_time
    else:
        logits = 1 / (spike_time + 1)
    return F.cross_entropy(logits, targets)


def regression_readout(spk, mem, readout):
    """What a regression loss compares with targets [B, K]: ``mem`` [T, B, K]
    itself (every_membrane), ``mem[T-1]`` (last_membrane), ``mean_t mem[t]``
    (mean_membrane) or the spike rate ``mean_t spk[t]`` (rate)."""
    if readout == "every_membrane":
        return mem
    if readout == "last_membrane":
        return mem[-1]
    if readout == "mean_membrane":
        return mem.mean(dim=0)
    if readout == "rate":
        return spk.mean(dim=0)
    raise ValueError(f"unknown readout {readout!r}")


def loss_mse(spk, mem, targets, readout="every_membrane"):
    """Mean squared error against float targets ``y [B, K]``:
    ``L = mean (r - y)^2`` over every element of the readout ``r``
    (``regression_readout``; every_membrane: ``(1 / T) sum_t MSE(mem[t], y)``)."""
    pred = regression_readout(spk, mem, readout)
    return F.mse_loss(pred, targets.expand_as(pred))


def loss_l1(spk, mem, targets, readout="every_membrane"):
    """Mean absolute error against float targets ``y [B, K]``:
    ``L = mean |r - y|`` over every element of the readout (see ``loss_mse``)."""
    pred = regression_readout(spk, mem, readout)
    return F.l1_loss(pred, targets.expand_as(pred))


def rate_regularization(spk_list, weight, target=None):
    """Firing-rate penalty over layers ``l`` with records ``s_l: [T, B, ...]``.

    ``r_l = mean(s_l)`` (spikes per neuron per step);
    ``R = weight * sum_l r_l`` if ``target is None`` (L1-style sparsity),
    else ``R = weight * sum_l (r_l - target)^2``.
    """
    total = None
    for spk in spk_list:
        rate = spk.mean()
        term = rate if target is None else (rate - target) ** 2
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return weight * total


def loss_by_length(loss, spk, mem, targets, mask, **params):
    """A batch loss over padded sequences of different lengths: each group of
    samples with the same length L (``mask [T, B]`` marks real steps) is scored
    on its own first L steps, ``L = sum_g (B_g / B) loss(spk[:L, g], mem[:L, g])``,
    so padded steps never count and every sample weighs as in a batch-mean loss."""
    lengths = mask.sum(dim=0)
    total = None
    for length in lengths.unique().tolist():
        group = (lengths == length).nonzero().squeeze(1)
        part = loss(spk[:length, group], mem[:length, group], targets[group], **params)
        part = part * (group.numel() / targets.shape[0])
        total = part if total is None else total + part
    return total


def masked_rate_regularization(spk_list, mask, weight, target=None):
    """``rate_regularization`` counting only real steps: ``r_l`` is the mean of
    ``s_l`` over the steps that ``mask [T, B]`` marks."""
    total = None
    for spk in spk_list:
        m = mask.view(*mask.shape, *(1,) * (spk.dim() - 2)).to(spk.dtype)
        rate = (spk * m).sum() / (m.sum() * (spk[0, 0].numel()))
        term = rate if target is None else (rate - target) ** 2
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return weight * total
