"""Run an exported model in onnxruntime and compare it with the PyTorch net.

The reference is the net's own forward (`snncompile.build`, eval mode, hard
spikes) on the raw input; the ONNX model gets that input encoded the same way
(rate coding under the same RNG seed), so the whole path is compared.

A spike is a threshold comparison, so two correct float32 computations may
disagree where the membrane lies within rounding of the threshold; one such
flip changes that neuron's later membrane (its reset) and every layer after it.
So for each sample, t0 is the first step at which its PyTorch run has any
neuron, in any layer, within `NEAR` of its threshold. Before t0 the two runs
must give identical spikes and membranes within ATOL + RTOL * |mem|; from t0 on
a difference may be a legitimate flip, so it is counted and reported, not
failed. Samples with no such step (most of them) must also predict the same
class, unless their top two scores tie within `TIE`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..runtime import encode as encode_module
from .wrappers import decoder, membranes, state_names

NEAR = 1e-5  # |mem - threshold| below which a spike may flip under rounding
# Membranes must agree within ATOL + RTOL * |mem|. ATOL alone suffices at the
# threshold's scale (largest difference measured on the example specs: 7.6e-6).
# float32 rounding is relative, though: at |mem| = 50 one ulp is 3.8e-6, so
# ATOL is under 3 ulps there; RTOL (about 8 ulps) gives large membranes, as
# membrane-decoded nets reach, room for a few roundings per step.
ATOL = 1e-5
RTOL = 1e-6
TIE = 1e-5  # score gap of the top two classes below which argmax may flip
BATCHES = (1, 7)
SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


EXAMPLE_STEPS = 12  # T of random test input for `steps: auto` (each batch's T)


def encode_inputs(graph, raw: torch.Tensor, generator=None) -> torch.Tensor:
    """What the ONNX model takes for raw input: the frame, or the encoded train."""
    enc = dict(graph.encoding)
    kind = enc.pop("type")
    if kind == "direct" or kind == "spikes":
        return raw
    if kind == "rate":
        return encode_module.encode_rate(raw, graph.steps, generator=generator, **enc)
    if kind == "latency":
        return encode_module.encode_latency(raw, graph.steps, **enc)
    return encode_module.encode_delta(raw, **enc)


def run_session(sess, graph, mode: str, x: torch.Tensor):
    """(scores, spk, mem) from onnxruntime; step mode runs the T-step loop here."""
    if mode == "sequence":
        outs = sess.run(["scores", "spk", "mem"], {"x": x.numpy()})
        return tuple(torch.from_numpy(o) for o in outs)
    direct = graph.encoding["type"] == "direct"
    batch = x.shape[0] if direct else x.shape[1]
    names = [name for _, _, name in state_names(graph)]
    states = [
        np.zeros((batch,) + tuple(node.out_shape), np.float32)
        for node, _, _ in state_names(graph)
    ]
    outputs = ["spk", "mem", *(f"{n}_out" for n in names)]
    spks, mems = [], []
    for t in range(graph.steps if direct else x.shape[0]):
        frame = x if direct else x[t]
        feed = {"x_t": frame.numpy(), **dict(zip(names, states))}
        spk, mem, *states = sess.run(outputs, feed)
        spks.append(spk)
        mems.append(mem)
    spk, mem = torch.from_numpy(np.stack(spks)), torch.from_numpy(np.stack(mems))
    return decoder(graph)(spk, mem), spk, mem


def _raw(graph, batch: int, gen: torch.Generator, scale: float) -> torch.Tensor:
    shape = (batch,) + tuple(graph.input_shape)
    kind = graph.encoding["type"]
    if kind == "spikes":
        steps = graph.steps or EXAMPLE_STEPS
        return (torch.rand((steps,) + shape, generator=gen) < 0.5).float()
    if kind == "delta":
        return torch.rand((graph.steps,) + shape, generator=gen)
    return torch.rand(shape, generator=gen) * scale


def _reference(net, graph, raw, seed: int):
    """PyTorch: output (scores, spk, mem), the ONNX input, membranes of every layer."""
    record: dict[str, torch.Tensor] = {}
    handles = membranes(net, record)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            spk, mem = net(raw)
    finally:
        for handle in handles:
            handle.remove()
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # rate coding draws what the net's forward drew
        x = encode_inputs(graph, raw)
    return (decoder(graph)(spk, mem), spk, mem), x, record


def _input_scale(net, graph, seed: int) -> float:
    """Smallest factor on [0, 1) frames that makes the layers fire (direct only).

    Scores each scale by sum over spiking layers of min(rate, 5%): layers deep in
    a randomly initialized net may stay silent whatever the input.
    """
    if graph.encoding["type"] != "direct":
        return 1.0
    best, best_score = SCALES[0], -1.0
    for scale in SCALES:
        raw = _raw(graph, max(BATCHES), torch.Generator().manual_seed(seed), scale)
        spikes = net(raw, all_spikes=True)[2]
        score = sum(min(float(s.float().mean()), 0.05) for s in spikes.values())
        if score > best_score + 1e-9:
            best, best_score = scale, score
        if score >= 0.05 * len(spikes) - 1e-9:
            break  # every layer fires enough
    return best


def _near_threshold(net, record) -> torch.Tensor:
    """Per time step and sample: count of neurons within NEAR of threshold."""
    counts = 0
    for name, mem in record.items():
        near = (mem - getattr(net, name).threshold).abs() <= NEAR
        counts = counts + near.flatten(2).sum(-1)
    return counts  # [T, B]


def compare(net, ref, got, record) -> dict[str, Any]:
    """Figures and failures of one batch (ref, got: (scores, spk, mem))."""
    (ref_scores, ref_spk, ref_mem), (scores, spk, mem) = ref, got
    steps = ref_spk.shape[0]
    out_layer = getattr(net, net.graph.neuron_nodes[-1].name)
    near_out = (ref_mem - out_layer.threshold).abs() <= NEAR
    near_events = _near_threshold(net, record)  # [T, B]
    t = torch.arange(steps).view(-1, 1)
    first = torch.where(near_events > 0, t, steps).amin(0)  # [B], T if none
    strict = (t < first).view(steps, -1, *([1] * (ref_mem.dim() - 2)))  # [T, B, 1]
    clean = first == steps  # [B]
    spk_diff = spk != ref_spk
    mem_diff = (mem - ref_mem).abs()
    close = mem_diff <= ATOL + RTOL * ref_mem.abs()
    if net.graph.task == "regression":  # predictions are numbers: as membranes
        near = (scores - ref_scores).abs() <= ATOL + RTOL * ref_scores.abs()
        pred_diff = ~near.all(-1)
        near_tie = torch.zeros_like(pred_diff)
    else:
        top2 = ref_scores.float().topk(min(2, ref_scores.shape[-1]), dim=-1).values
        near_tie = (top2[:, 0] - top2[:, -1]).abs() <= TIE
        pred_diff = scores.argmax(-1) != ref_scores.argmax(-1)
    differing = spk_diff.flatten(2).any(-1).any(0) | ~close.flatten(2).all(-1).all(0)
    strict_diff = mem_diff.masked_select(strict.expand_as(mem_diff))
    figures = {
        "batch": int(ref_spk.shape[1]),
        "max_mem_diff": float(mem_diff.max()),
        "max_mem_diff_strict": float(strict_diff.max()) if strict_diff.numel() else 0.0,
        "strict_fraction": round(float(strict.float().mean()), 4),
        "spike_mismatches": int(spk_diff.sum()),
        "spike_mismatches_near_threshold": int((spk_diff & near_out).sum()),
        "near_threshold_events": int(near_events.sum()),
        "near_threshold_samples": int((~clean).sum()),
        "near_threshold_samples_differing": int((~clean & differing).sum()),
        "prediction_mismatches": int(pred_diff.sum()),
        "prediction_mismatches_near_tie": int((pred_diff & near_tie).sum()),
    }
    failures = []
    bad_spikes = int((spk_diff & strict).sum())
    if bad_spikes:
        failures.append(f"{bad_spikes} spikes differ before any near-threshold step")
    bad_preds = int((pred_diff & clean & ~near_tie).sum())
    if bad_preds:
        failures.append(f"{bad_preds} predictions differ")
    bad_mem = int((~close & strict).sum())
    if bad_mem:
        failures.append(
            f"{bad_mem} membranes differ by more than {ATOL:g} + {RTOL:g}*|mem| "
            f"(max {figures['max_mem_diff_strict']:.3g})"
        )
    return figures | {"failures": failures}


def verify_onnx(net, onnx_path, mode: str, seed: int = 0) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch at batch 1 and 7; returns figures and verdict."""
    from .onnx import _Inference

    graph = net.graph
    sess = session(onnx_path)
    results, failures, rates = [], [], []
    with _Inference(net), torch.no_grad():
        scale = _input_scale(net, graph, seed)
        for batch in BATCHES:
            raw = _raw(graph, batch, torch.Generator().manual_seed(seed + batch), scale)
            ref, x, record = _reference(net, graph, raw, seed + batch)
            figures = compare(net, ref, run_session(sess, graph, mode, x), record)
            rates.append(float(ref[1].mean()))
            failures += [f"batch {batch}: {f}" for f in figures.pop("failures")]
            results.append(figures)
    summary = {
        key: max(r[key] for r in results)
        for key in ("max_mem_diff", "max_mem_diff_strict")
    }
    for key in (
        "spike_mismatches",
        "spike_mismatches_near_threshold",
        "near_threshold_events",
        "near_threshold_samples",
        "near_threshold_samples_differing",
        "prediction_mismatches",
    ):
        summary[key] = sum(r[key] for r in results)
    notes = []
    if max(rates) == 0 and graph.output.descriptor.spiking:
        notes.append(
            "the output layer never fired on the sample inputs, so output spikes "
            "were not exercised (random weights?)"
        )
    return {
        "passed": not failures,
        "notes": notes,
        "failures": failures,
        "input_scale": scale,
        "output_spike_rate": round(sum(rates) / len(rates), 4),
        **summary,
        "batches": results,
    }
