"""Output decodings: ``spk, mem: [T, B, C]`` -> class scores ``[B, C]`` (or, for
regression, predictions ``[B, K]``), and the metrics of each task.

The predicted class is ``scores.argmax(-1)`` (ties go to the lowest index, as in
snnTorch's ``accuracy_*`` helpers).  Self-contained (imports only ``torch``) so
the source can be inlined verbatim into generated scripts.
"""

import torch


def decode_rate(spk, mem):
    """Spike-count score: ``s[b, c] = sum_t spk[t, b, c]``."""
    return spk.sum(dim=0)


def decode_latency(spk, mem):
    """First-spike score: ``s[b, c] = -t_first[b, c]`` (earlier spike wins).

    ``t_first = min{t : spk[t] != 0}``; a neuron that never fires gets the
    shadow time ``T - 1``, exactly as ``snntorch.functional.accuracy_temporal``
    (so a silent neuron ties with one that first fires at the last step).
    """
    steps = spk.shape[0]
    t = torch.arange(steps, device=spk.device).view((steps,) + (1,) * (spk.dim() - 1))
    first = torch.where(spk != 0, t, steps - 1).amin(dim=0)
    return -first.to(spk.dtype if spk.is_floating_point() else torch.float32)


def decode_max_membrane(spk, mem):
    """Peak-membrane score: ``s[b, c] = max_t mem[t, b, c]``."""
    return mem.amax(dim=0)


def decode_mean_membrane(spk, mem):
    """Mean-membrane score: ``s[b, c] = (1 / T) * sum_t mem[t, b, c]``."""
    return mem.mean(dim=0)


def decode_last_membrane(spk, mem):
    """Last-step membrane: ``s[b, c] = mem[T - 1, b, c]``."""
    return mem[-1]


def accuracy(scores, targets):
    """Correct count: ``n = sum_b 1[argmax_c scores[b, c] == targets[b]]``.

    Returns a 0-dim int64 tensor on the scores' device (no host sync).
    """
    return (scores.argmax(dim=-1) == targets).sum()


def regression_sums(pred, targets):
    """Sums of a batch for MSE, MAE and R^2 (one float64 tensor, no host sync):
    ``[sum (p - y)^2, sum |p - y|, sum y, sum y^2, count]`` over every element."""
    err = (pred - targets).double()
    y = targets.double()
    count = torch.full((), y.numel(), dtype=torch.float64, device=y.device)
    return torch.stack(
        [err.square().sum(), err.abs().sum(), y.sum(), y.square().sum(), count]
    )


def regression_metrics(sums):
    """MSE, MAE and R^2 from accumulated ``regression_sums``:
    ``R^2 = 1 - SSE / SST``, ``SST = sum y^2 - (sum y)^2 / n`` (all outputs pooled)."""
    sse, sae, total, square, n = (float(v) for v in sums)
    sst = square - total * total / n if n else 0.0
    r2 = 1 - sse / sst if sst > 0 else None  # undefined for constant targets
    return {"mse": sse / n, "mae": sae / n, "r2": r2} if n else {}


def decode_by_length(decode, spk, mem, mask):
    """Scores [B, C] of padded sequences of different lengths: each sample is
    decoded from its own first L steps (``mask [T, B]`` marks real steps)."""
    lengths = mask.sum(dim=0)
    scores = None
    for length in lengths.unique().tolist():
        group = (lengths == length).nonzero().squeeze(1)
        part = decode(spk[:length, group], mem[:length, group])
        if scores is None:
            scores = part.new_zeros((spk.shape[1], *part.shape[1:]))
        scores[group] = part
    return scores
