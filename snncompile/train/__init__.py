"""Training and evaluation of a spec: `train(spec, ...)` and `evaluate(spec, ...)`.

data.py loads datasets into memory, loop.py trains and evaluates (checkpoints
are read and written by snncompile/lower/checkpoint.py), onnx_eval.py evaluates
an exported model in onnxruntime, nir_eval.py a NIR file in the numpy NIR
reference simulation, plots.py draws curves and rasters, command.py
is the `snncompile train` / `snncompile eval` command line. `train` and
`evaluate` are imported on first use, so that `snncompile.train.data` does not
load the training loop and matplotlib.
"""

__all__ = ["evaluate", "train"]


def __getattr__(name: str):
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
