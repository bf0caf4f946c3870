"""`snncompile eval --nir`: test accuracy of a NIR file in NIR's semantics.

The written graph runs in snncompile's independent numpy reference simulation
(snncompile/export/nir_sim.py: forward Euler with the file's dt, float64) on
the spec's test split; its output is decoded as the spec's decoding does. What
hardware fed the file would score before any hardware-specific quantization:
the spec's own accuracy for an exact export, less for an `--approximate` one.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch

from ..spec.errors import UserError
from ..spec.load import as_spec
from .loop import Score, _bar, make_loss
from .onnx_eval import _check_network, eval_split

SPIKE_DECODINGS = ("rate", "latency")  # decoded from spikes; the rest from membranes


def _outputs(s, path) -> tuple[str | None, str | None, str | None]:
    """(node whose spikes, node whose membrane, kind) the Output node shows:
    a firing neuron gives both, an LI/I node its membrane, anything else only
    what reaches the Output (spikes if it is a Threshold)."""
    from ..export.nir_sim import ANALOG, FIRING, kind

    preds = s.preds(s.output)
    if len(preds) != 1:
        return None, None, f"{len(preds)} nodes"
    (last,) = preds
    typ = kind(s.nodes[last])
    if typ in FIRING:
        return last, last, typ
    if typ in ANALOG:
        return None, last, typ
    return (last if typ == "Threshold" else None), None, typ


def evaluate_nir(
    spec,
    nir_path,
    data_root=None,
    limit_test: int | None = None,
    batch_size: int | None = None,
    dt: float | None = None,
    download: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Test-set metrics of a NIR file run in the numpy NIR reference.

    Input: the raw sample at every step (direct encoding), else the spike train
    of snncompile's own encoder, the global RNG seeded with train.seed before
    the first batch as `snncompile eval` does, so an exact export gives the
    checkpoint's accuracy. dt: the file's (its snncompile metadata), else 1.
    """
    import snncompile

    from ..export.nir import input_description, own_metadata, read_nir
    from ..export.nir_sim import shape_text, simulate, structure
    from ..export.verify import encode_inputs

    spec = as_spec(spec)
    graph = snncompile.analyze(spec)
    nir_graph = read_nir(nir_path)  # every failure one UserError line
    meta = own_metadata(nir_graph)
    if meta:
        _check_network({"spec": json.dumps(meta.get("spec"))}, graph, nir_path)
    s = structure(nir_graph)
    if s.shapes[s.input] != tuple(graph.input_shape):
        raise UserError(
            f"{nir_path} takes input of shape {shape_text(s.shapes[s.input])}, "
            f"the spec {shape_text(graph.input_shape)}"
        )
    out_shape = tuple(graph.output.out_shape)
    if s.shapes[s.output] != out_shape:
        raise UserError(
            f"{nir_path} gives output of shape {shape_text(s.shapes[s.output])}, "
            f"the spec's output layer {shape_text(out_shape)}"
        )
    if dt is None:
        dt = float(meta.get("dt", 1.0))
    if not dt > 0 or not math.isfinite(dt):
        raise UserError(f"--dt must be a positive number, got {dt}")
    spiking, membrane, typ = _outputs(s, nir_path)
    decoding = graph.decoding
    needs_spikes = decoding in SPIKE_DECODINGS
    if needs_spikes and spiking is None:
        raise UserError(
            f"decoding '{decoding}' needs the output's spikes; {nir_path}'s Output "
            f"is fed by {typ}, which does not spike"
        )
    if not needs_spikes and membrane is None:
        raise UserError(
            f"decoding '{decoding}' needs the output layer's membrane; "
            f"{nir_path}'s Output is fed by {typ}, which has none"
        )
    # the loss where it is defined as in training: both outputs, no rate
    # regularization (which needs every layer of the spec, not of the file)
    loss_of, regularized = make_loss(graph)
    with_loss = spiking is not None and membrane is not None and not regularized
    test = eval_split(spec, graph, data_root, limit_test, download)
    size = batch_size or graph.train["eval_batch_size"]
    direct = graph.encoding["type"] == "direct"
    score = Score(graph, "cpu")
    total_loss = 0.0
    seen = 0
    started = time.perf_counter()
    bar = _bar(progress, math.ceil(len(test) / size), 0, "NIR reference")
    with bar, torch.random.fork_rng():
        torch.manual_seed(spec.train.seed)
        for raw, labels, mask in test.batches(size):
            x = encode_inputs(graph, raw).double().numpy()
            if direct:
                x = np.broadcast_to(x, (graph.steps, *x.shape))
            trace = simulate(s, x, dt)
            spk = mem = None
            if spiking is not None:
                spk = torch.from_numpy(np.ascontiguousarray(trace.out[spiking]))
                spk = spk.float()
            if membrane is not None:
                mem = torch.from_numpy(np.ascontiguousarray(trace.v[membrane]))
                mem = mem.float()
            if spk is None:
                spk = torch.zeros_like(mem)
            if mem is None:
                mem = torch.zeros_like(spk)
            score.add(spk, mem, labels, mask)
            if with_loss:
                total_loss += float(loss_of(spk, mem, labels, None, mask)) * len(labels)
            seen += len(labels)
            bar.update(1)
            bar.set_postfix(score.postfix(seen))
    n = len(test)
    result = {
        "name": graph.name,
        **{f"test_{k}": v for k, v in score.result(n).items()},
    }
    if with_loss:
        result["test_loss"] = total_loss / max(n, 1)
    result.update(
        test_samples=n,
        samples=n,
        nir=str(nir_path),
        dt=dt,
        input=meta.get("input") or input_description(graph),
        exact=not meta.get("approximations") if meta else None,
        approximations=list(meta.get("approximations", [])),
        metadata=bool(meta),
        seconds=time.perf_counter() - started,
    )
    return result
