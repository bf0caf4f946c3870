"""Datasets as in-memory tensors, iterated in seeded random order.

A dataset is loaded once into a `Split`: uint8 images (torchvision's `.data`) and
int64 labels, moved to the training device. Each batch is scaled to [0, 1] on the
fly (x / 255, what torchvision's ToTensor does), optionally normalized per channel
and reshaped to the spec's input shape. There are no per-sample transforms and no
DataLoader workers. torchvision decodes a split once; the decoded tensors are kept
in snncompile's cache (snncompile/cache.py) for later processes.

`synthetic` is a generated, learnable dataset of any input shape: each class has a
random prototype in [0, 1] and samples are prototypes plus Gaussian noise.
`synthetic_regression` is its regression twin: each sample is a sum of K sinusoids
(K = the output neurons) sampled over its input values, and the float targets
are their K amplitudes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache import cache_dir
from ..lower.checkpoint import save_atomically
from ..runtime import datasets
from ..spec.datasets import validation_kind
from ..spec.errors import UserError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + (
    "test_batch",
    "batches.meta",
)
# spec name -> (torchvision class, folder under the root, files, sample shape, classes)
DATASETS = {
    "mnist": ("MNIST", "MNIST/raw", MNIST_FILES, (1, 28, 28), 10),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", MNIST_FILES, (1, 28, 28), 10),
    "kmnist": ("KMNIST", "KMNIST/raw", MNIST_FILES, (1, 28, 28), 10),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", CIFAR10_FILES, (3, 32, 32), 10),
}
SYNTHETIC_SIZES = {True: 2048, False: 512}  # train, test samples
SYNTHETIC_NOISE = 0.35


def data_root(root: str | os.PathLike | None) -> Path:
    """--data-root, else $SNNCOMPILE_DATA, else ./data."""
    return Path(root or os.environ.get("SNNCOMPILE_DATA") or "data")


@dataclass
class SparseFrames:
    """Framed events kept sparse (a 1 ms frame is mostly zeros): sample i's
    nonzero counts `counts[offsets[i]:offsets[i + 1]]` at flat positions `cells`
    in its own [T_i, *frame] block. Indexing gives dense frames [B, T, *frame]
    up to the batch's longest sample."""

    cells: torch.Tensor  # int64
    counts: torch.Tensor  # uint8 or int16
    offsets: torch.Tensor  # int64 [N + 1]
    lengths: torch.Tensor  # int64 [N]
    frame: tuple[int, ...]

    def __len__(self) -> int:
        return self.lengths.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), int(self.lengths.max()), *self.frame)

    @property
    def dtype(self) -> torch.dtype:
        return self.counts.dtype

    def _picked(self, index):
        """Positions in `cells` of the samples at `index`, the batch row of
        each, and each sample's count."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, device=self.offsets.device)
        starts = self.offsets[index]
        sizes = self.offsets[index + 1] - starts
        row = torch.repeat_interleave(
            torch.arange(len(index), device=starts.device), sizes
        )
        first = torch.repeat_interleave(starts - (sizes.cumsum(0) - sizes), sizes)
        return torch.arange(int(sizes.sum()), device=starts.device) + first, row, index

    def __getitem__(self, index) -> torch.Tensor:
        position, row, index = self._picked(index)
        steps = int(self.lengths[index].max())
        size = steps * math.prod(self.frame)
        out = torch.zeros(
            len(index) * size, dtype=self.counts.dtype, device=self.counts.device
        )
        out[row * size + self.cells[position]] = self.counts[position]
        return out.view(len(index), steps, *self.frame)

    def subset(self, index) -> SparseFrames:
        position, row, index = self._picked(index)
        sizes = torch.bincount(row, minlength=len(index))
        offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
        return SparseFrames(
            self.cells[position],
            self.counts[position],
            offsets,
            self.lengths[index],
            self.frame,
        )

    def truncate(self, steps: int) -> SparseFrames:
        """Every sample cut to its first `steps` frames."""
        row = torch.repeat_interleave(
            torch.arange(len(self), device=self.cells.device), self.offsets.diff()
        )
        keep = self.cells < steps * math.prod(self.frame)
        sizes = torch.bincount(row[keep], minlength=len(self))
        offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
        return SparseFrames(
            self.cells[keep],
            self.counts[keep],
            offsets,
            self.lengths.clamp(max=steps),
            self.frame,
        )

    def to(self, device) -> SparseFrames:
        return SparseFrames(
            *(
                t.to(device)
                for t in (self.cells, self.counts, self.offsets, self.lengths)
            ),
            self.frame,
        )


@dataclass
class Split:
    """One split in memory: inputs [N, ...] (uint8 0-255 or float) and labels [N]
    (int64 classes) or float regression targets [N, K]. Time-series inputs are
    [N, T, ...] (`series`), padded when `lengths` [N] gives each sample's T."""

    inputs: torch.Tensor
    labels: torch.Tensor
    shape: tuple[int, ...]  # the spec's input shape of one sample (or one step)
    mean: torch.Tensor | None = None  # per-channel normalization, [C, 1, ...]
    std: torch.Tensor | None = None
    steps: int = 0  # > 0: static samples become sequences of this many steps
    sequence: str = ""  # how a static sample becomes a sequence: "repeat" | "bernoulli"
    series: bool = False  # inputs are [N, T, ...] already
    lengths: torch.Tensor | None = None  # int64 [N]: each series' own T (padded)
    images: bool = True  # uint8 inputs are images: scaled by 1/255 (else counts)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> Split:
        move = lambda t: None if t is None else t.to(device)
        return dataclasses.replace(
            self,
            inputs=move(self.inputs),
            labels=move(self.labels),
            mean=move(self.mean),
            std=move(self.std),
            lengths=move(self.lengths),
        )

    def subset(self, index: torch.Tensor) -> Split:
        """The samples at `index` (a validation hold-out, a limit)."""
        pick = lambda t: None if t is None else t[index]
        inputs = self.inputs
        sparse = isinstance(inputs, SparseFrames)
        return dataclasses.replace(
            self,
            inputs=inputs.subset(index) if sparse else inputs[index],
            labels=self.labels[index],
            lengths=pick(self.lengths),
        )

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs [B, *shape] (or [T, B, *shape]) in float32, labels [B], and for
        padded series the mask [T, B] of real steps (else None)."""
        x = self.inputs[index]
        if x.dtype == torch.uint8 and self.images:
            x = x.to(torch.float32).div_(255)
        elif x.dtype != torch.float32:
            x = x.to(torch.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.series:
            mask = None
            if self.lengths is not None:
                lengths = self.lengths[index]
                x = x[:, : int(lengths.max())]
                steps = torch.arange(x.shape[1], device=x.device)
                mask = steps.unsqueeze(1) < lengths.unsqueeze(0)
                if bool(mask.all()):
                    mask = None
            x = x.reshape(*x.shape[:2], *self.shape).transpose(0, 1)
            return x, self.labels[index], mask
        x = x.reshape(x.shape[0], *self.shape)
        if self.steps:
            x = x.unsqueeze(0).expand(self.steps, *x.shape)
            if self.sequence == "bernoulli":  # global RNG: reseeded per epoch
                x = torch.bernoulli(x.clamp(0, 1))
        return x, self.labels[index], None

    def batches(
        self, batch_size: int, order=None, drop_last=False, skip=0, rank=0, world=1
    ):
        """Yield (x, y) over the split, in `order` (a permutation) if given,
        leaving out the first `skip` batches. With `world` > 1 processes, each
        batch of `batch_size` (a global batch) is divided among them and this
        yields process `rank`'s part of it (`shard`; it may be empty when a
        last partial batch has fewer samples than processes)."""
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for start in range(skip * batch_size, stop, batch_size):
            end = min(start + batch_size, len(self))
            if world > 1:
                start, end = shard(start, end, rank, world)
            yield self.batch(slice(start, end) if order is None else order[start:end])

    def batch_size_at(self, step: int, batch_size: int, drop_last=False) -> int:
        """The size of global batch `step` (1-based) of an epoch."""
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        return max(0, min(batch_size, stop - (step - 1) * batch_size))

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        if drop_last:
            return len(self) // batch_size
        return math.ceil(len(self) / batch_size)


def shard(start: int, end: int, rank: int, world: int) -> tuple[int, int]:
    """Process `rank`'s part [lo, hi) of the global batch [start, end) among
    `world` processes: consecutive parts in rank order, their sizes as even as
    possible (the first ones one larger; torch.tensor_split's rule)."""
    size, extra = divmod(end - start, world)
    lo = start + rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def _missing_message(name: str, root: Path, reason: str) -> str:
    cls, folder, files, _, _ = DATASETS[name]
    listing = "\n".join(f"  {root / folder / f}" for f in files)
    return (
        f"dataset {name!r} is not in {root} and could not be downloaded ({reason}).\n"
        f"torchvision.datasets.{cls} expects these files:\n{listing}\n"
        "Put them there, or pass the folder that holds them with --data-root DIR "
        "(or set SNNCOMPILE_DATA)."
    )


def _raw_files(name: str, root: Path) -> list[Path | None]:
    """Each file the dataset's class reads, as present under `root`: itself,
    else its .gz, else None."""
    _, folder, files, _, _ = DATASETS[name]
    present = []
    for f in files:
        found = [
            p for p in (root / folder / f, root / folder / f"{f}.gz") if p.exists()
        ]
        present.append(found[0] if found else None)
    return present


def _have_files(name: str, root: Path) -> bool:
    return all(path is not None for path in _raw_files(name, root))


def _torchvision(name: str, root: Path, train: bool, download: bool):
    """(uint8 inputs [N, C, H, W], int64 labels [N]) of a split: downloaded by
    torchvision if missing, then decoded from the cache or by torchvision."""
    if not _have_files(name, root):
        if not download:
            raise UserError(_missing_message(name, root, "downloads are off"))
        import torchvision.datasets as tvd

        cls = getattr(tvd, DATASETS[name][0])
        try:
            cls(str(root), train=train, download=True)
        except Exception as err:  # noqa: BLE001 (no network, permission, checksum...)
            reason = str(err).strip().splitlines()
            raise UserError(
                _missing_message(name, root, reason[-1] if reason else repr(err))
            ) from None
    return _decoded(name, root, train)


def _decoded(name: str, root: Path, train: bool):
    """The split as torchvision decodes it, kept in the cache (cache_dir() /
    "datasets", a file per split, keyed by the files' paths, sizes and times):
    a later process loads the tensors without importing torchvision (about
    1.1 s of a training process here). Corrupt or unwritable cache: decode."""
    stamps = [str(root.resolve())]
    for path in _raw_files(name, root):
        stat = path.stat()
        stamps.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]
    split = "train" if train else "test"
    cached = cache_dir() / "datasets" / f"{name}-{split}-{digest}.pt"
    if cached.exists():
        with contextlib.suppress(Exception):  # unreadable: decoded and replaced below
            data = torch.load(cached, weights_only=True)
            return data["inputs"], data["labels"]
    inputs, labels = _read(name, root, train)
    # a read-only or full cache: decode again (torch.save raises RuntimeError
    # when the disk fills)
    with contextlib.suppress(OSError, RuntimeError):
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_atomically({"inputs": inputs, "labels": labels}, cached)
    return inputs, labels


def _read(name: str, root: Path, train: bool):
    """Decode a split by torchvision's dataset class."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, DATASETS[name][0])
    try:
        dataset = cls(str(root), train=train, download=False)
    except Exception as err:  # noqa: BLE001 (truncated or corrupt files)
        raise UserError(
            _missing_message(name, root, f"reading failed: {err}")
        ) from None
    inputs = torch.as_tensor(dataset.data)
    if inputs.dim() == 4:  # CIFAR: [N, H, W, C] -> [N, C, H, W]
        inputs = inputs.permute(0, 3, 1, 2).contiguous()
    else:
        inputs = inputs.unsqueeze(1)
    return inputs, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _synthetic(shape, classes: int, train: bool, steps: int):
    """Class prototypes in [0, 1] plus noise, the same for every training seed."""
    prototypes = torch.rand(
        classes, *shape, generator=torch.Generator().manual_seed(1234)
    )
    count = SYNTHETIC_SIZES[train]
    gen = torch.Generator().manual_seed(1 if train else 2)
    labels = torch.randperm(count, generator=gen) % classes
    noise = torch.randn(count, *shape, generator=gen) * SYNTHETIC_NOISE
    return (prototypes[labels] + noise).clamp_(0, 1), labels


def _synthetic_regression(shape, outputs: int, train: bool):
    """runtime/datasets.py's sums of sinusoids (seeds 3 and 4, sizes as
    `_synthetic`); refuses inputs too short to tell the sinusoids apart."""
    n = math.prod(shape)
    if n < 2 * outputs + 1:
        raise UserError(
            f"synthetic_regression tells {outputs} sinusoids apart by their samples: "
            f"it needs at least {2 * outputs + 1} input values, the input shape "
            f"{list(shape)} has {n}"
        )
    seed = datasets.REGRESSION_SEEDS[train]
    return datasets.synthetic_regression(shape, outputs, SYNTHETIC_SIZES[train], seed)


def load_split(
    graph,
    train: bool | str,
    root=None,
    limit: int | None = None,
    normalize=None,
    download: bool = True,
) -> Split | None:
    """The train (True), test (False) or validation ("val") split of the spec's
    dataset, limited to `limit` samples; None for "val" when there is none
    (`validation`). `train.val_fraction` holds out a fixed part of the training
    samples. The training loop takes train and val from `load_training`."""
    part = "val" if train == "val" else "train" if train else "test"
    if part == "test":
        split = _whole(graph, "test", root, normalize, download)
    else:
        split = _training(graph, (part,), root, normalize, download)[part]
    return _limited(split, limit)


def load_training(
    graph, root=None, limit: int | None = None, normalize=None, download: bool = True
) -> tuple[Split, Split | None]:
    """(the training split limited to `limit`, the validation split or None):
    load_split's "train" and "val" in one go, so that a validation part held
    out of the training samples costs no second read of the training data."""
    splits = _training(graph, ("train", "val"), root, normalize, download)
    return _limited(splits["train"], limit), splits["val"]


def validation(graph, root=None) -> str | None:
    """Where the validation split comes from: "file" (the source's `val` file,
    which wins over train.val_fraction; or its dataset's own validation file,
    SSC's ssc_valid.h5, when present and val_fraction is 0), "fraction" (held
    out of the training samples) or None (no validation split)."""
    kind = validation_kind(graph.source, graph.train.get("val_fraction", 0.0))
    if kind == "dataset":
        from .sources import validation_file

        present = validation_file(graph.source, data_root(root)) is not None
        return "file" if present else None
    return kind


def _training(graph, parts, root, normalize, download) -> dict:
    """{"train": Split, "val": Split or None} for the `parts` asked for (the
    others None); the training samples are read at most once."""
    kind = validation(graph, root)
    out = {"train": None, "val": None}
    if "val" in parts and kind == "file":
        out["val"] = _whole(graph, "val", root, normalize, download)
    if "train" in parts or ("val" in parts and kind == "fraction"):
        split = _whole(graph, "train", root, normalize, download)
        if kind != "fraction":
            out["train"] = split
        else:
            fraction = graph.train["val_fraction"]
            kept, held = datasets.validation_split(len(split), fraction)
            if len(kept) == 0:
                raise UserError(
                    f"train.val_fraction {fraction} leaves none of the {len(split)} "
                    "training samples"
                )
            # each part a copy of its samples; the whole goes when this returns
            if "val" in parts:
                out["val"] = split.subset(held)
            if "train" in parts:
                out["train"] = split.subset(kept)
    return out


def _whole(graph, part: str, root, normalize, download) -> Split:
    """The whole `part` ("train", "test" or the source's own "val") as read."""
    source = graph.source
    if source is None:
        return _builtin(graph, part == "train", root, normalize, download)
    from .sources import from_source

    return from_source(graph, source, part, data_root(root))


def _limited(split: Split | None, limit: int | None) -> Split | None:
    if split is not None and limit is not None and limit < len(split):
        return split.subset(torch.arange(limit))
    return split


def _builtin(graph, train: bool, root, normalize, download) -> Split:
    """A split of a built-in dataset (by name)."""
    name = graph.train["dataset"]
    shape = tuple(graph.input_shape)
    if name == "synthetic":
        inputs, labels = _synthetic(shape, graph.num_classes, train, graph.steps)
        native = shape
    elif name == "synthetic_regression":
        inputs, labels = _synthetic_regression(shape, graph.num_classes, train)
        native = shape
    else:
        inputs, labels = _torchvision(name, data_root(root), train, download)
        native = DATASETS[name][3]
        if math.prod(native) != math.prod(shape):
            raise UserError(
                f"dataset {name!r} has samples of shape {list(native)} but the spec's "
                f"input.shape is {list(shape)}"
            )
        if DATASETS[name][4] > graph.num_classes:
            raise UserError(
                f"dataset {name!r} has {DATASETS[name][4]} classes but the output "
                f"layer has {graph.num_classes} neurons"
            )
    mean = std = None
    if normalize:
        mean, std = _normalization(normalize, native, name)
    return _encoded(graph, Split(inputs, labels, shape, mean, std))


def _normalization(normalize, native, name):
    channels = native[0] if len(native) > 1 else 1
    view = (-1,) + (1,) * (len(native) - 1)
    for key in ("mean", "std"):
        if len(normalize[key]) not in (1, channels):
            raise UserError(
                f"train.normalize.{key} has {len(normalize[key])} values; "
                f"dataset {name!r} has {channels} channel(s)"
            )
    mean = torch.tensor(normalize["mean"], dtype=torch.float32).view(view)
    std = torch.tensor(normalize["std"], dtype=torch.float32).view(view)
    return mean, std


def _encoded(graph, split: Split) -> Split:
    """How a static split becomes the model's sequences, from the encoding."""
    kind = graph.encoding["type"]
    if not graph.sequence_input:
        return split
    if kind == "delta":  # a static frame: delta fires at onset
        return dataclasses.replace(split, steps=graph.steps, sequence="repeat")
    # "spikes": a Bernoulli spike train of each sample's intensities
    return dataclasses.replace(split, steps=graph.steps, sequence="bernoulli")
