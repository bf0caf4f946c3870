"""Training and evaluation of a spec: `train(spec, ...)` and `evaluate(spec, ...)`.

data.py loads datasets into memory, loop.py trains and evaluates, checkpoint.py
reads and writes checkpoints, plots.py draws curves and rasters, command.py is the
`snncompile train` / `snncompile eval` command line.
"""

from .loop import evaluate, train

__all__ = ["evaluate", "train"]
