"""Side-by-side benchmark of a spec: snnTorch's tutorial loop, snncompile eager,
compiled and onnxruntime (a thin wrapper around `snncompile bench`).

    python benchmarks/run.py specs/mnist_fc.yaml --repeats 20 --json fc.json
    python benchmarks/run.py specs/mnist_csnn.yaml --repeats 5

Every option of `snncompile bench` applies (see `snncompile bench --help` and the
docstring of benchmarks/bench.py for the method): --batch, --repeats, --run, --warmup,
--no-compile, --reference auto|snntorch|step, --rss, --threads, --seed, --json.
"""

import sys

from snncompile.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
