"""Generated datasets, pure torch, inlined verbatim into generated scripts."""

import math

import torch

REGRESSION_SEEDS = {True: 3, False: 4}  # train, test split of synthetic_regression


def synthetic_regression(shape, outputs, count, seed):
    """`count` sums of `outputs` (K) sinusoids over the n input values of
    `shape`, in [0, 1], and their amplitudes as float targets [count, K]:
    x_i = 1/2 + 1/(2K) sum_k a_k sin(2 pi (k + 1) i / n + phi_k) + noise,
    a_k uniform in [0, 1], phases uniform; seeded by `seed` alone."""
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(seed)
    amplitudes = torch.rand(count, outputs, generator=gen)
    phases = torch.rand(count, outputs, 1, generator=gen) * (2 * math.pi)
    frequency = torch.arange(1, outputs + 1, dtype=torch.float32).view(1, -1, 1)
    position = torch.arange(n, dtype=torch.float32) / n
    waves = torch.sin(2 * math.pi * frequency * position + phases)
    signal = (amplitudes.unsqueeze(-1) * waves).sum(1) / (2 * outputs) + 0.5
    noise = torch.randn(count, n, generator=gen) * 0.01
    return (signal + noise).clamp_(0, 1).reshape(count, *shape), amplitudes


def validation_split(count, fraction, seed=20_240_601):
    """(training, validation) sample indices, each sorted: a fixed random
    `fraction` of `count` samples is held out (at least one), the same for every
    training seed."""
    held = max(1, round(count * fraction))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values
