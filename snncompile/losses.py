"""Training losses, public: each takes the output layer's records
``spk, mem: [T, B, C]`` and the targets (labels ``[B]``, or regression targets
``[B, K]``) and returns a 0-dim tensor.

The ``loss_*`` functions match ``snntorch.functional``'s losses (value and
gradient); ``rate_regularization`` is the firing-rate penalty a spec's
``loss.rate_regularization`` adds; the ``*by_length`` / ``masked_*`` forms score
padded sequences of different lengths. ``snncompile.loss_fn(spec)`` gives a
spec's whole loss as one function. The definitions are in
snncompile/runtime/losses.py (inlined into generated scripts).
"""

from .runtime.losses import (
    loss_by_length,
    loss_ce_count,
    loss_ce_max_membrane,
    loss_ce_membrane,
    loss_ce_rate,
    loss_ce_temporal,
    loss_l1,
    loss_mse,
    loss_mse_count,
    loss_mse_membrane,
    masked_rate_regularization,
    rate_regularization,
    regression_readout,
)

__all__ = [
    "loss_by_length",
    "loss_ce_count",
    "loss_ce_max_membrane",
    "loss_ce_membrane",
    "loss_ce_rate",
    "loss_ce_temporal",
    "loss_l1",
    "loss_mse",
    "loss_mse_count",
    "loss_mse_membrane",
    "masked_rate_regularization",
    "rate_regularization",
    "regression_readout",
]
