"""`snncompile eval --onnx`: test accuracy of an exported model in onnxruntime."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..lower import checkpoint as ckpt
from ..spec.errors import UserError, first_line
from ..spec.load import as_spec
from .data import load_split
from .loop import Score

NETWORK_KEYS = (*ckpt.NETWORK_KEYS, "blocks")  # what fixes the exported graph


def _check_network(meta: dict, graph, onnx_path) -> None:
    """UserError unless the model was exported from this spec's network: the
    spec in its metadata (snncompile export writes it) against this one, part
    by part; a model without it (another exporter): its spec name."""
    try:
        exported = json.loads(meta["spec"]) if "spec" in meta else None
    except ValueError:
        raise UserError(
            f"{onnx_path} holds a spec in its metadata that is not readable JSON"
        ) from None
    if not isinstance(exported, dict):
        name = meta.get("spec_name", graph.name)
        if name != graph.name:
            raise UserError(
                f"{onnx_path} was exported from spec '{name}', not '{graph.name}'"
            )
        return
    given = json.loads(graph.spec_json)
    differ = [k for k in NETWORK_KEYS if exported.get(k) != given.get(k)]
    if differ:
        raise UserError(
            f"{onnx_path} was exported from a different network (spec "
            f"'{exported.get('name')}'); these parts differ from this spec: "
            + ", ".join(differ)
        )


def eval_split(spec, graph, data_root, limit_test, download):
    """The spec's test split as evaluation reads it (its normalization; the
    `limit_test` given, else the spec's)."""
    norm = spec.train.normalize
    return load_split(
        graph,
        train=False,
        root=data_root,
        limit=limit_test if limit_test is not None else spec.train.limit_test,
        normalize=norm.model_dump() if norm else None,
        download=download,
    )


def evaluate_onnx(
    spec,
    onnx_path,
    data_root=None,
    limit_test: int | None = None,
    batch_size: int | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Test-set accuracy of an exported model (either mode) through onnxruntime.

    The test split and its rate coding are those of `snncompile eval`: the same
    data module, and the global RNG seeded with train.seed before the first batch,
    so a faithful export gives the PyTorch accuracy.
    """
    import snncompile

    from ..export.verify import encode_inputs, run_session, session

    spec = as_spec(spec)
    graph = snncompile.analyze(spec)
    if not Path(onnx_path).is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist")
    try:
        sess = session(onnx_path)
    except Exception as err:  # noqa: BLE001 - not an ONNX file, or a broken one
        raise UserError(f"cannot load {onnx_path}: {first_line(err)}") from None
    meta = sess.get_modelmeta().custom_metadata_map
    _check_network(meta, graph, onnx_path)
    mode = meta.get("mode", "sequence")
    test = eval_split(spec, graph, data_root, limit_test, download)
    score = Score(graph, "cpu")
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(spec.train.seed)
        size = batch_size or graph.train["eval_batch_size"]
        for raw, labels, mask in test.batches(size):
            _, spk, mem = run_session(sess, graph, mode, encode_inputs(graph, raw))
            score.add(spk, mem, labels, mask)
    return {
        "name": graph.name,
        **{f"test_{k}": v for k, v in score.result(len(test)).items()},
        "test_samples": len(test),
        "samples": len(test),
        "onnx": str(onnx_path),
        "mode": mode,
        "seconds": time.perf_counter() - started,
    }
