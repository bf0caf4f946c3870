"""Test accuracy of a trained run in NIR's semantics, next to snncompile's own.

Exports the run to NIR (with --approximate where NIR cannot express the spec),
simulates the written graph with the independent numpy reference
(snncompile/export/nir_sim.py: forward Euler, the documented discretization)
on test samples, decodes its output spikes by count, and reports both
accuracies and how many predictions differ. This is what hardware fed the NIR
file would score, before any hardware-specific quantization.

    python benchmarks/nir_accuracy.py RUN_DIR --limit 1000 [--approximate]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import snncompile
from snncompile.export.nir import export_nir, read_nir
from snncompile.export.nir_sim import simulate, structure
from snncompile.train.data import load_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory written by snncompile train")
    parser.add_argument("--limit", type=int, default=1000, help="test samples")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--approximate", action="store_true")
    parser.add_argument("--dt", type=float, default=1.0)
    args = parser.parse_args(argv)

    run = snncompile.load_run(args.run)
    net = run.model.eval()
    graph = net.graph
    if graph.encoding["type"] != "direct":
        sys.exit("this script feeds the static sample at every step: direct encoding")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.nir"
        report = export_nir(
            Path(args.run) / "spec.yaml",
            out,
            checkpoint=Path(args.run),
            dt=args.dt,
            approximate=args.approximate,
        )
        nir_graph = read_nir(out)
    s = structure(nir_graph)
    (last,) = s.preds(s.output)
    split = load_split(graph, False, args.data_root, limit=args.limit)
    ours = theirs = differ = total = 0
    started = time.perf_counter()
    for x, y, _ in split.batches(args.batch):
        with torch.no_grad():
            spk, _ = net(x)
        mine = spk.sum(0).argmax(-1).numpy()
        seq = np.broadcast_to(x.double().numpy(), (graph.steps, *x.shape))
        trace = simulate(s, seq, args.dt)
        ref = trace.out[last].sum(0).argmax(-1)
        labels = y.numpy()
        ours += int((mine == labels).sum())
        theirs += int((ref == labels).sum())
        differ += int((mine != ref).sum())
        total += len(labels)
    seconds = time.perf_counter() - started
    print(f"{graph.name}: {total} test samples, {seconds:.0f} s")
    for note in report["approximations"]:
        print(f"approximation: {note}")
    print(f"snncompile:              {100 * ours / total:.2f}%")
    print(f"NIR reference (numpy):   {100 * theirs / total:.2f}%")
    print(f"predictions that differ: {differ} of {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
