"""Where each surrogate, encoding, decoding and loss `type` meets its runtime code.
Adding one means a runtime definition plus a line here. (Layer and neuron types
are descriptors in snncompile/types/.)

Values name top-level definitions in `snncompile/runtime/*.py`; codegen inlines
their source and `build()` executes that same source.
"""

# surrogate type -> (runtime class, spec fields passed positionally to .apply)
SURROGATES = {
    "atan": ("ATan", ("alpha",)),
    "fast_sigmoid": ("FastSigmoid", ("slope",)),
    "sigmoid": ("Sigmoid", ("slope",)),
    "triangular": ("Triangular", ("threshold",)),
    "straight_through": ("StraightThrough", ()),
    "spike_rate_escape": ("SpikeRateEscape", ("beta", "slope")),
}

# encoding type -> runtime function in runtime/encode.py (None: input used as is)
ENCODERS = {
    "direct": "encode_direct",
    "rate": "encode_rate",
    "latency": "encode_latency",
    "delta": "encode_delta",
    "spikes": None,
}

# decoding type -> runtime function in runtime/decode.py
DECODERS = {
    "rate": "decode_rate",
    "latency": "decode_latency",
    "max_membrane": "decode_max_membrane",
    "mean_membrane": "decode_mean_membrane",
    "last_membrane": "decode_last_membrane",
}

# loss type -> runtime function in runtime/losses.py
LOSSES = {
    "ce_membrane": "loss_ce_membrane",
    "ce_rate": "loss_ce_rate",
    "ce_count": "loss_ce_count",
    "mse_count": "loss_mse_count",
    "ce_max_membrane": "loss_ce_max_membrane",
    "mse_membrane": "loss_mse_membrane",
    "ce_temporal": "loss_ce_temporal",
    "mse": "loss_mse",
    "l1": "loss_l1",
}

# what each task accepts (classification: every other loss, every decoding)
REGRESSION_LOSSES = ("mse", "l1")
REGRESSION_DECODINGS = ("mean_membrane", "last_membrane")
