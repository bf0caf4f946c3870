"""Splits of the data sources in spec/datasets.py: read by runtime/sources.py,
checked before the first step, event recordings framed once and cached.

Every problem with the data is a one-line UserError naming the file (exit 2):
missing files (with where the public datasets come from), shapes, dtypes,
labels out of range, count mismatches, NaN or infinite inputs, empty class
folders, truncated event files. Framed events are kept in snncompile's cache
(a file per split keyed by the files' names, sizes and times and the
transform) and memory-mapped when loaded again, so a split larger than memory
pages in from disk instead of failing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from ..cache import cache_dir
from ..lower.checkpoint import save_atomically
from ..runtime import sources as readers
from ..spec.errors import UserError
from .data import SparseFrames, Split, _encoded

FRAMES_VERSION = 2  # bump when framing changes: old cache files are not reused


def resolve(root: Path, path: str) -> Path:
    """A spec path: absolute, or relative to the data root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def validation_file(source, root: Path) -> Path | None:
    """An event dataset's own validation file (SSC's ssc_valid.h5) when it is
    in the dataset's folder, else None."""
    name = getattr(source, "VALID", None)
    if not name:
        return None
    path = resolve(root, source.path or source.FOLDER) / name
    return path if path.is_file() else None


def from_source(graph, source, part: str, root: Path) -> Split:
    """The whole `part` ("train", "val" or "test") of a source, checked."""
    try:
        if source.type == "tensors":
            return _tensors(graph, source, part, root)
        if source.type == "image_folder":
            return _image_folder(graph, source, part, root)
        return _events(graph, source, part, root)
    except readers.DataError as err:
        raise UserError(str(err)) from None


# --------------------------------------------------------------------------- checks
def check(where, inputs, labels, lengths, graph, series: bool) -> None:
    """Refuse data the model cannot train on, naming `where` and the problem."""
    shape = tuple(graph.input_shape)
    n = inputs.shape[0] if inputs.dim() else 0
    if n == 0:
        raise UserError(f"{where}: no samples")
    if labels.dim() == 0 or labels.shape[0] != n:
        count = labels.shape[0] if labels.dim() else "a scalar"
        raise UserError(f"{where}: {n} samples but {count} targets")
    if inputs.dtype.is_complex or not (
        inputs.dtype.is_floating_point or inputs.dtype == torch.bool or _integer(inputs)
    ):
        raise UserError(f"{where}: samples of dtype {inputs.dtype} are not numbers")
    lead = 2 if series else 1
    sample = tuple(inputs.shape[lead:])
    if inputs.dim() < lead or math.prod(sample) != math.prod(shape):
        what = "[N, T, " if series else "[N, "
        raise UserError(
            f"{where}: samples of shape {list(inputs.shape)} do not fit "
            f"{what}{', '.join(map(str, shape))}] (input.shape {list(shape)}"
            + (", time-series input)" if series else ")")
        )
    if inputs.dtype.is_floating_point and not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).flatten(1).any(1).nonzero()[0])
        raise UserError(f"{where}: sample {bad} holds NaN or infinite values")
    if graph.task == "regression":
        if not labels.dtype.is_floating_point:
            raise UserError(
                f"{where}: regression targets must be floats, not {labels.dtype}"
            )
        k = labels.shape[1] if labels.dim() == 2 else 1 if labels.dim() == 1 else -1
        if k != graph.num_classes:
            raise UserError(
                f"{where}: targets of shape {list(labels.shape)}; the output layer "
                f"predicts {graph.num_classes} values per sample"
            )
        if not bool(torch.isfinite(labels).all()):
            raise UserError(f"{where}: targets hold NaN or infinite values")
    else:
        if labels.dim() != 1 or not _integer(labels):
            raise UserError(
                f"{where}: class labels must be integers [N], not {labels.dtype} "
                f"{list(labels.shape)}"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= graph.num_classes:
            raise UserError(
                f"{where}: labels {low}..{high} outside 0..{graph.num_classes - 1} "
                f"(the output layer has {graph.num_classes} neurons)"
            )
    if lengths is not None:
        if lengths.dim() != 1 or lengths.shape[0] != n or not _integer(lengths):
            raise UserError(f"{where}: lengths must be integers [N={n}]")
        if int(lengths.min()) < 1 or int(lengths.max()) > inputs.shape[1]:
            raise UserError(
                f"{where}: lengths {int(lengths.min())}..{int(lengths.max())} outside "
                f"1..{inputs.shape[1]} (the padded T)"
            )


def _integer(t: torch.Tensor) -> bool:
    return (
        not t.dtype.is_floating_point
        and not t.dtype.is_complex
        and t.dtype != torch.bool
    )


def _capped(graph, split: Split) -> Split:
    """Series cut to `steps` when the spec gives a number (it caps T)."""
    if not split.series or not graph.steps or split.inputs.shape[1] <= graph.steps:
        return split
    lengths = split.lengths
    if lengths is not None:
        lengths = lengths.clamp(max=graph.steps)
    inputs = split.inputs
    if isinstance(inputs, SparseFrames):
        inputs = inputs.truncate(graph.steps)
    else:
        inputs = inputs[:, : graph.steps]
    return Split(
        inputs,
        split.labels,
        split.shape,
        series=True,
        lengths=lengths,
        images=split.images,
    )


# --------------------------------------------------------------------------- tensors
def _tensors(graph, source, part: str, root: Path) -> Split:
    path = resolve(root, getattr(source, part))
    if not path.is_file():
        raise UserError(
            f"{path}: no such file (train.dataset.{part}; a relative path is read "
            f"from the data root {root}, set by --data-root or SNNCOMPILE_DATA)"
        )
    inputs, targets, lengths = readers.read_tensors(
        str(path), source.inputs_key, source.targets_key, source.lengths_key
    )
    series = graph.sequence_input and graph.encoding["type"] == "spikes"
    if lengths is not None and not series:
        raise UserError(
            f"{path}: lengths_key {source.lengths_key!r} describes sequences, but the "
            "spec's input is not time series (set `input.encoding: {type: spikes}`)"
        )
    if inputs.dtype == torch.bool:
        inputs = inputs.to(torch.uint8)
    check(path, inputs, targets, lengths, graph, series)
    if graph.task == "regression":
        targets = targets.to(torch.float32).reshape(len(targets), -1)
    else:
        targets = targets.to(torch.int64)
    images = inputs.dtype == torch.uint8 and not series
    split = Split(
        inputs,
        targets,
        tuple(graph.input_shape),
        series=series,
        lengths=None if lengths is None else lengths.to(torch.int64),
        images=images,
    )
    if series:
        return _capped(graph, split)
    return _encoded(graph, split)


# --------------------------------------------------------------------------- images
def _image_folder(graph, source, part: str, root: Path) -> Split:
    folder = resolve(root, getattr(source, part))
    if not folder.is_dir():
        raise UserError(
            f"{folder}: no such folder (train.dataset.{part}: a folder per class of "
            f"images; a relative path is read from the data root {root})"
        )
    empty = [
        d.name for d in sorted(folder.iterdir()) if d.is_dir() and not any(d.iterdir())
    ]
    if empty:
        raise UserError(f"{folder / empty[0]}: empty class folder")
    stamps = _stamps(p for p in folder.rglob("*") if p.is_file())
    key = {"reader": "image_folder", "shape": list(graph.input_shape), "files": stamps}
    cached = _cached(key)
    if cached is None:
        inputs, labels, classes = readers.read_image_folder(
            str(folder), graph.input_shape
        )
        cached = {"inputs": inputs, "labels": labels, "classes": classes}
        _store(key, cached)
    if len(cached["classes"]) != graph.num_classes and graph.task == "classification":
        raise UserError(
            f"{folder}: {len(cached['classes'])} class folders "
            f"({', '.join(cached['classes'][:5])}{', ...' if len(cached['classes']) > 5 else ''}) "
            f"but the output layer has {graph.num_classes} neurons"
        )
    check(folder, cached["inputs"], cached["labels"], None, graph, False)
    split = Split(cached["inputs"], cached["labels"], tuple(graph.input_shape))
    return _encoded(graph, split)


# --------------------------------------------------------------------------- events
def _events(graph, source, part: str, root: Path) -> Split:
    folder = resolve(root, source.path or source.FOLDER)
    if not folder.is_dir():
        raise UserError(
            f"{folder}: no such folder for {source.type} (expected {source.LAYOUT}; "
            f"get it from {source.OBTAIN}, and pass its parent as --data-root or "
            "set train.dataset.path)"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise UserError(
            f"{folder}: empty (expected {source.LAYOUT}; get it from {source.OBTAIN})"
        )
    frames = {k: v for k, v in source.frames.model_dump().items() if v is not None}
    key = {
        "reader": source.reader,
        "part": part,
        "version": FRAMES_VERSION,
        "frames": frames,
        "denoise": source.denoise,
        "downsample": source.downsample,
        "folder": str(folder.resolve()),
        "files": _stamps(files),
    }
    cached = _cached(key)
    if cached is None:
        cached = _frame(source, folder, part, frames)
        _store(key, cached)
    labels, lengths = cached["labels"], cached["lengths"]
    inputs = SparseFrames(
        cached["cells"],
        cached["counts"],
        cached["offsets"],
        lengths,
        tuple(cached["frame"]),
    )
    where = f"{folder} ({part})"
    if int(labels.max()) >= graph.num_classes or int(labels.min()) < 0:
        raise UserError(
            f"{where}: labels {int(labels.min())}..{int(labels.max())} outside "
            f"0..{graph.num_classes - 1} (the output layer has {graph.num_classes} "
            "neurons)"
        )
    fixed = source.frames.fixed
    split = Split(
        inputs,
        labels,
        tuple(graph.input_shape),
        series=True,
        lengths=None if fixed else lengths,
        images=False,
    )
    return _capped(graph, split)


def _frame(source, folder: Path, part: str, frames: dict) -> dict:
    """Read and frame every recording of a split (with a progress bar): inputs
    [N, T_max, ...] of counts (uint8 when they fit), lengths [N], labels [N].
    The reader takes `train`: True, False, or "valid" (its own validation file)."""
    import numpy as np
    from tqdm.auto import tqdm

    started = time.perf_counter()
    train = {"train": True, "test": False, "val": "valid"}[part]
    events, labels = getattr(readers, source.reader)(str(folder), train)
    raw = source.SENSOR
    for i, e in enumerate(events):
        readers.check_events(e, (raw[0], raw[1]), f"{folder}: recording {i}")
    job = (source.sensor(), frames, source.denoise, source.downsample)
    desc = f"framing {source.type} {part}"
    # on a terminal only (disable=None), and cleared before an error's line
    bar = tqdm(events, desc=desc, unit="rec", leave=False, disable=None)
    with bar:
        out = [readers.frame_events(e, *job) for e in bar]
    lengths = torch.tensor([len(f) for f in out], dtype=torch.int64)
    flat = [f.reshape(-1) for f in out]
    cells = [np.flatnonzero(f) for f in flat]
    counts = np.concatenate([f[c] for f, c in zip(flat, cells)])
    dtype = np.uint8 if counts.size == 0 or counts.max() <= 255 else np.int16
    sizes = torch.tensor([len(c) for c in cells], dtype=torch.int64)
    return {  # sparse: SparseFrames in data.py
        "cells": torch.from_numpy(np.concatenate(cells).astype(np.int64)),
        "counts": torch.from_numpy(counts.astype(dtype)),
        "offsets": torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]),
        "lengths": lengths,
        "frame": list(out[0].shape[1:]),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- cache
def _stamps(paths) -> list[str]:
    out = []
    for p in sorted(paths):
        stat = p.stat()
        out.append(f"{p}:{stat.st_size}:{stat.st_mtime_ns}")
    return out


def _cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "datasets" / f"{key['reader']}-{digest}.pt"


def _cached(key: dict) -> dict | None:
    """A cached split, memory-mapped; None when absent or unreadable."""
    path = _cache_file(key)
    if not path.exists():
        return None
    with contextlib.suppress(Exception):
        return torch.load(path, weights_only=True, mmap=True)
    return None


def _store(key: dict, value: dict) -> None:
    """Keep a split in the cache; a read-only or full cache is not an error."""
    path = _cache_file(key)
    with contextlib.suppress(OSError, RuntimeError):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(value, path)
