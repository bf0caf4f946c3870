"""Output decodings and task metrics, public: each ``decode_*`` turns the output
layer's records ``spk, mem: [T, B, C]`` into class scores ``[B, C]`` (the
predicted class is ``scores.argmax(-1)``) or, for regression, predictions
``[B, K]``.

``accuracy`` counts correct predictions; ``regression_sums`` and
``regression_metrics`` give MSE, MAE and R^2 over batches; ``decode_by_length``
decodes padded sequences from their own real steps. ``snncompile.decode_fn(spec)``
gives a spec's decoding as one function, ``snncompile.predict`` scores raw
inputs. The definitions are in snncompile/runtime/decode.py (inlined into
generated scripts).
"""

from .runtime.decode import (
    accuracy,
    decode_by_length,
    decode_last_membrane,
    decode_latency,
    decode_max_membrane,
    decode_mean_membrane,
    decode_rate,
    regression_metrics,
    regression_sums,
)

__all__ = [
    "accuracy",
    "decode_by_length",
    "decode_last_membrane",
    "decode_latency",
    "decode_max_membrane",
    "decode_mean_membrane",
    "decode_rate",
    "regression_metrics",
    "regression_sums",
]
