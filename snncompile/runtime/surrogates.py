"""Spike functions with surrogate gradients, matching snnTorch's formulas.

Every forward pass is the Heaviside step S(U) = 1 if U > 0 else 0 (strict), where
U = mem - threshold; only the backward pass differs. These classes are inlined
verbatim into generated code, so they use nothing but torch and math.
"""

import math

import torch


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


class FastSigmoid(torch.autograd.Function):
    """Fast sigmoid surrogate: dS/dU = 1 / (slope * |U| + 1)^2."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * torch.abs(x) + 1.0) ** 2, None


class Sigmoid(torch.autograd.Function):
    """Sigmoid surrogate: dS/dU = slope * e^(-slope U) / (e^(-slope U) + 1)^2,
    evaluated as slope * sigmoid(slope U) * sigmoid(-slope U): the same value, but
    finite where e^(-slope U) overflows (snnTorch's literal formula gives
    inf / inf = NaN there: for U < -3.47 at slope 25)."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        kx = ctx.slope * x
        return grad * ctx.slope * torch.sigmoid(kx) * torch.sigmoid(-kx), None


class Triangular(torch.autograd.Function):
    """Triangular surrogate as snnTorch defines it: dS/dU = threshold if U < 0,
    -threshold if U >= 0."""

    @staticmethod
    def forward(ctx, x, threshold):
        ctx.save_for_backward(x)
        ctx.threshold = threshold
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        scaled = grad * ctx.threshold
        return torch.where(x >= 0, -scaled, scaled), None


class StraightThrough(torch.autograd.Function):
    """Straight-through estimator: dS/dU = 1."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class SpikeRateEscape(torch.autograd.Function):
    """Escape-noise surrogate: dS/dU = slope * e^(-beta * |U - 1|)."""

    @staticmethod
    def forward(ctx, x, beta, slope):
        ctx.save_for_backward(x)
        ctx.beta = beta
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.slope * torch.exp(-ctx.beta * torch.abs(x - 1)), None, None
