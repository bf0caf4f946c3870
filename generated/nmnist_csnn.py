"""Train `nmnist_csnn` on N-MNIST with plain PyTorch; needs only torch, numpy and tonic:

    python nmnist_csnn.py --data-root DATA --epochs 1 --out runs/nmnist_csnn

Generated from the spec `nmnist_csnn` by `snncompile codegen` (regenerate rather than
edit). `Net` maps input [T, B, 2, 34, 34] to (spk, mem) of the output layer,
each [T, B, 10]; --out receives metrics.json and model.pt.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NAME = "nmnist_csnn"
DESCRIPTION = "snnTorch Tutorial 7 - convolutional SNN on N-MNIST event frames"

# spec `train`: the defaults of the command-line options
EPOCHS = 1
SEED = 0
DEVICE = "auto"
LIMIT_TRAIN = None
LIMIT_TEST = None
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 128


# ------------------------------------------------------------------------ model
# spec `input`, `steps` and `layers`: surrogate gradients, neurons and Net, the
# very source that snncompile.build() executes for this spec.


class ATan(torch.autograd.Function):
    """Arctangent surrogate: dS/dU = (alpha / 2) / (1 + (pi / 2 * alpha * U)^2)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        return alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow(2)) * grad, None


class SpikingNeuron(nn.Module):
    """Parameters, firing and the time loop shared by every neuron type."""

    state_names = ("mem",)

    def __init__(
        self,
        shape,
        beta,
        threshold=1.0,
        reset="subtract",
        learn_beta=False,
        learn_threshold=False,
        per_neuron=False,
        surrogate=None,
        surrogate_args=(),
    ):
        super().__init__()
        self.size = tuple(shape) if per_neuron else ()
        self.reset_mode = reset
        self.surrogate = surrogate
        self.surrogate_args = tuple(surrogate_args)
        self.hard = False  # True: plain comparison instead of surrogate (inference)
        self.constant("beta", beta, learn_beta)
        self.constant("threshold", threshold, learn_threshold)

    def constant(self, name, value, learn):
        """A scalar or per-neuron parameter, learnable or a buffer."""
        tensor = torch.full(self.size, float(value))
        if learn:
            setattr(self, name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)

    def fire(self, mem):
        """spk = S(mem - threshold)."""
        shifted = mem - self.threshold
        if self.hard or self.surrogate is None:
            return (shifted > 0).to(mem.dtype)
        return self.surrogate.apply(shifted, *self.surrogate_args)

    def reset_signal(self, mem):
        """Detached reset from the previous membrane: H(mem - threshold)."""
        return (mem - self.threshold > 0).to(mem.dtype)

    def init_state(self, cur):
        """Zero states shaped like one step of input."""
        return tuple(torch.zeros_like(cur) for _ in self.state_names)

    def forward(self, cur, record_mem=True):
        """cur [T, B, ...] -> (spk, mem), each [T, B, ...]; mem is None unless
        `record_mem` (a hidden layer passes on only its spikes)."""
        if cur.dtype in (torch.bfloat16, torch.float16):  # from autocast's layers
            cur = cur.float()  # the states in float32: no drift over the steps
        state = self.init_state(cur[0])
        spks, mems = [], []
        # unbind, not cur[t]: indexing would make backward allocate and sum T
        # full-size gradients (quadratic in T); unbind's backward is one stack
        for cur_t in cur.unbind(0):
            spk, state = self.step(cur_t, state)
            spks.append(spk)
            mems.append(state[-1])
        return torch.stack(spks), torch.stack(mems) if record_mem else None


class Leaky(SpikingNeuron):
    """Leaky integrate-and-fire (snnTorch Leaky), b = clamp(beta, 0, 1):

    subtract: mem[t] = b * mem[t-1] + I[t] - reset[t] * threshold
    zero:     mem[t] = b * ((1 - reset[t]) * mem[t-1]) + I[t]
    none:     mem[t] = b * mem[t-1] + I[t]
    """

    def step(self, cur, state):
        (mem,) = state
        reset = self.reset_signal(mem)
        beta = self.beta.clamp(0, 1)
        if self.reset_mode == "subtract":
            mem = beta * mem + cur - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = beta * ((1 - reset) * mem) + cur
        else:
            mem = beta * mem + cur
        return self.fire(mem), (mem,)


def time_batched(layer, x):
    """Run `layer` once over all steps: [T, B, ...] -> [T * B, ...] -> [T, B, ...]."""
    out = layer(x.flatten(0, 1))
    return out.reshape(x.shape[0], -1, *out.shape[1:])


class Net(nn.Module):
    """Spiking network `nmnist_csnn`, 0 time steps."""

    steps = 0

    def __init__(self):
        super().__init__()
        # layers[0] conv1 (conv2d): [2, 34, 34] -> [12, 30, 30]
        self.conv1 = nn.Conv2d(2, 12, kernel_size=(5, 5))
        # layers[1] pool1 (maxpool2d): [12, 30, 30] -> [12, 15, 15]
        self.pool1 = nn.MaxPool2d(kernel_size=(2, 2))
        # layers[2] lif1 (leaky): [12, 15, 15] -> [12, 15, 15]; state: mem
        self.lif1 = Leaky((12, 15, 15), beta=0.5, surrogate=ATan, surrogate_args=(2.0,))
        # layers[3] conv2 (conv2d): [12, 15, 15] -> [32, 11, 11]
        self.conv2 = nn.Conv2d(12, 32, kernel_size=(5, 5))
        # layers[4] pool2 (maxpool2d): [32, 11, 11] -> [32, 5, 5]
        self.pool2 = nn.MaxPool2d(kernel_size=(2, 2))
        # layers[5] lif2 (leaky): [32, 5, 5] -> [32, 5, 5]; state: mem
        self.lif2 = Leaky((32, 5, 5), beta=0.5, surrogate=ATan, surrogate_args=(2.0,))
        # layers[6] flatten1 (flatten): [32, 5, 5] -> [800]
        self.flatten1 = nn.Flatten()
        # layers[7] fc1 (linear): [800] -> [10]
        self.fc1 = nn.Linear(800, 10)
        # layers[8] lif3 (leaky): [10] -> [10]; state: mem
        self.lif3 = Leaky((10,), beta=0.5, surrogate=ATan, surrogate_args=(2.0,))

    def forward(self, x, all_spikes=False):
        """x [T, B, 2, 34, 34] -> (spk, mem) of lif3, each [T, B, 10].

        With all_spikes=True, also returns every spiking layer's spikes by name.
        """
        h = time_batched(self.conv1, x)  # [12, 30, 30]
        h = time_batched(self.pool1, h)  # [12, 15, 15]
        spk_lif1, _ = self.lif1(h, record_mem=False)
        h = time_batched(self.conv2, spk_lif1)  # [32, 11, 11]
        h = time_batched(self.pool2, h)  # [32, 5, 5]
        spk_lif2, _ = self.lif2(h, record_mem=False)
        h = time_batched(self.flatten1, spk_lif2)  # [800]
        h = time_batched(self.fc1, h)  # [10]
        spk_lif3, mem_lif3 = self.lif3(h)
        if all_spikes:
            return (
                spk_lif3,
                mem_lif3,
                {"lif1": spk_lif1, "lif2": spk_lif2, "lif3": spk_lif3},
            )
        return spk_lif3, mem_lif3


# ------------------------------------------------------------------------ decoding
# spec `decoding: rate`: output records -> class scores [B, C].


def decode_rate(spk, mem):
    """Spike-count score: ``s[b, c] = sum_t spk[t, b, c]``."""
    return spk.sum(dim=0)


def accuracy(scores, targets):
    """Correct count: ``n = sum_b 1[argmax_c scores[b, c] == targets[b]]``.

    Returns a 0-dim int64 tensor on the scores' device (no host sync).
    """
    return (scores.argmax(dim=-1) == targets).sum()


def decode_by_length(decode, spk, mem, mask):
    """Scores [B, C] of padded sequences of different lengths: each sample is
    decoded from its own first L steps (``mask [T, B]`` marks real steps)."""
    lengths = mask.sum(dim=0)
    scores = None
    for length in lengths.unique().tolist():
        group = (lengths == length).nonzero().squeeze(1)
        part = decode(spk[:length, group], mem[:length, group])
        if scores is None:
            scores = part.new_zeros((spk.shape[1], *part.shape[1:]))
        scores[group] = part
    return scores


def scores(spk, mem, mask):
    """The decoding; padded sequences over their real steps (`mask`)."""
    if mask is None:
        return decode_rate(spk, mem)
    return decode_by_length(decode_rate, spk, mem, mask)


# ------------------------------------------------------------------------ loss
# spec `loss: mse_count`.


def loss_mse_count(spk, mem, targets, correct_rate=1.0, incorrect_rate=0.0):
    """Spike-count MSE: ``L = mean_{b,c} (n[b, c] - n*[b, c])^2 / T``.

    ``n = sum_t spk[t]``; target ``n* = int(T * correct_rate)`` for the label
    class and ``int(T * incorrect_rate)`` otherwise (truncated to int, as in
    ``snntorch.functional.mse_count_loss``; note the extra division by ``T``).
    """
    steps = spk.shape[0]
    on = int(steps * correct_rate)
    off = int(steps * incorrect_rate)
    count = spk.sum(dim=0)
    one_hot = F.one_hot(targets.long(), count.shape[-1]).to(count.dtype)
    if on > off:
        target = torch.clamp(one_hot * on, min=off)
    else:
        target = one_hot * on + (1 - one_hot) * off
    return F.mse_loss(count, target) / steps


def loss_by_length(loss, spk, mem, targets, mask, **params):
    """A batch loss over padded sequences of different lengths: each group of
    samples with the same length L (``mask [T, B]`` marks real steps) is scored
    on its own first L steps, ``L = sum_g (B_g / B) loss(spk[:L, g], mem[:L, g])``,
    so padded steps never count and every sample weighs as in a batch-mean loss."""
    lengths = mask.sum(dim=0)
    total = None
    for length in lengths.unique().tolist():
        group = (lengths == length).nonzero().squeeze(1)
        part = loss(spk[:length, group], mem[:length, group], targets[group], **params)
        part = part * (group.numel() / targets.shape[0])
        total = part if total is None else total + part
    return total


def forward_loss(model, x, targets, mask=None):
    """Run the model on a batch: (loss, spk, mem) of the output layer; `mask`
    [T, B] marks the real steps of padded sequences."""
    spk, mem = model(x)
    if mask is None:
        loss = loss_mse_count(spk, mem, targets, correct_rate=0.8, incorrect_rate=0.2)
    else:  # padded sequences: each sample over its own steps
        loss = loss_by_length(
            loss_mse_count,
            spk,
            mem,
            targets,
            mask,
            correct_rate=0.8,
            incorrect_rate=0.2,
        )
    return loss, spk, mem


# ------------------------------------------------------------------------ data
# spec `train.dataset: nmnist`, held in memory and scaled batch by batch.


FOLDER = "NMNIST"  # under --data-root
SENSOR = (34, 34, 2)  # (W, H, P) after downsample
FRAMES = {"time_window": 1000.0}  # tonic's ToFrame
DENOISE = 10000.0
DOWNSAMPLE = 1


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file."""


def _files(folder, pattern):
    """The files under `folder` matching `pattern` (glob), sorted by name."""
    import glob

    return sorted(glob.glob(os.path.join(folder, pattern)))


def read_nmnist(folder, train):
    """N-MNIST's extracted layout: Train|Test/<digit>/<id>.bin, each a list of
    5-byte events (tonic.io.read_mnist_file decodes them). -> (events, labels)"""
    import numpy as np
    from tonic.io import read_mnist_file

    split = os.path.join(folder, "Train" if train else "Test")
    dtype = np.dtype(
        [("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)]
    )
    events, labels = [], []
    for digit in range(10):
        for path in _files(os.path.join(split, str(digit)), "*.bin"):
            size = os.path.getsize(path)
            if size % 5:
                raise DataError(f"{path}: truncated ({size} bytes, not 5 per event)")
            e = read_mnist_file(path, dtype=dtype)
            check_events(e, (34, 34), path)
            events.append(e)
            labels.append(digit)
    if not events:
        raise DataError(f"{split}: no <digit>/*.bin files")
    return events, labels


def denoise_events(events, filter_time):
    """tonic's Denoise, vectorized: keep an event when one of its 4 neighbour
    pixels (inside the recording's max x and y) had an earlier event within
    `filter_time` us, or had none yet and t < filter_time (tonic's start-up)."""
    import numpy as np

    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    t, n = events["t"], len(events)
    width, height = int(x.max()) + 1, int(y.max()) + 1
    pixel = x * height + y
    index = np.arange(n)
    order = np.lexsort((index, pixel))  # by pixel, then by arrival
    keys = pixel[order] * n + order
    keep = np.zeros(n, dtype=bool)
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        nx, ny = x + dx, y + dy
        inside = (nx >= 0) & (nx < width) & (ny >= 0) & (ny < height)
        near = nx * height + ny
        # the latest earlier event at the neighbour pixel, if any
        at = np.searchsorted(keys, near * n + index)
        before = order[np.maximum(at - 1, 0)]
        seen = (at > 0) & (pixel[before] == near)
        until = np.where(seen, t[before] + filter_time, filter_time)
        keep |= inside & (until > t)
    return events[keep]


def frame_events(events, sensor, frames, denoise=None, downsample=1):
    """Event counts per frame [T, P, H, W] (or [T, C] for a 1-D sensor of
    (C, 1, 1)): tonic's Denoise and ToFrame (include_incomplete), vectorized; the
    frames' event ranges come from tonic's slicers. `sensor` is (W, H, P) after
    dividing x and y by `downsample`; `frames`: one of n_time_bins, time_window
    (us) or event_count. An empty recording gives zero frames of one step (or
    n_time_bins steps)."""
    import numpy as np
    from tonic.slicers import SliceByEventCount, SliceByTime, SliceByTimeBins

    if denoise and len(events):
        events = denoise_events(events, denoise)
    one_d = sensor[1] == 1 and sensor[2] == 1
    shape = (sensor[0],) if one_d else (sensor[2], sensor[1], sensor[0])
    if not len(events):
        return np.zeros((frames.get("n_time_bins") or 1, *shape), dtype=np.int16)
    if "n_time_bins" in frames:
        slicer = SliceByTimeBins(bin_count=frames["n_time_bins"])
    elif "time_window" in frames:
        slicer = SliceByTime(time_window=frames["time_window"], include_incomplete=True)
    else:
        slicer = SliceByEventCount(
            event_count=frames["event_count"], include_incomplete=True
        )
    bounds = np.array(slicer.get_slice_metadata(events, None), dtype=np.int64)
    bounds = np.minimum(bounds, len(events)).reshape(-1, 2)  # as slicing clips
    begin, sizes = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
    # each framed event's index and frame: the slices, laid end to end
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    picked = np.arange(sizes.sum()) - offsets + np.repeat(begin, sizes)
    frame = np.repeat(np.arange(len(bounds)), sizes)
    x = events["x"][picked].astype(np.int64) // downsample
    cell = frame * int(np.prod(shape))
    if one_d:
        cell += x
    else:
        y = events["y"][picked].astype(np.int64) // downsample
        p = events["p"][picked].astype(np.int64)
        cell += (p * shape[1] + y) * shape[2] + x
    counts = np.bincount(cell, minlength=len(bounds) * int(np.prod(shape)))
    return counts.astype(np.int16).reshape(len(bounds), *shape)


def check_events(events, sensor, where):
    """Refuse events outside the sensor or going back in time."""
    import numpy as np

    for axis, size in zip(("x", "y"), sensor[:2]):
        if axis in events.dtype.names and len(events):
            low, high = int(events[axis].min()), int(events[axis].max())
            if low < 0 or high >= size:
                raise DataError(
                    f"{where}: {axis} {low}..{high} outside the sensor's 0..{size - 1}"
                )
    if len(events) > 1 and np.any(np.diff(events["t"]) < 0):
        raise DataError(f"{where}: event times are not in order")


def sparse_frames(frames):
    """Every sample's frames [T_i, ...] as one sparse tensor [N, T_max * cells]:
    row i holds sample i's frames, flattened (event frames are mostly zeros)."""
    import numpy as np
    import torch

    cells = [np.flatnonzero(f) for f in frames]
    rows = np.repeat(np.arange(len(frames)), [len(c) for c in cells])
    values = np.concatenate([f.reshape(-1)[c] for f, c in zip(frames, cells)])
    size = max(len(f) for f in frames) * frames[0][0].size
    indices = torch.from_numpy(np.stack([rows, np.concatenate(cells)]))
    shape = (len(frames), size)
    values = torch.from_numpy(values)
    inputs = torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)
    return inputs.coalesce()


def load_split(root, train, limit, device):
    """N-MNIST recordings framed into event counts:
    inputs (sparse rows of frames), labels [N], lengths (frames) [N]."""
    events, labels = read_nmnist(os.path.join(root, FOLDER), train)
    job = (SENSOR, FRAMES, DENOISE, DOWNSAMPLE)
    frames = [frame_events(e, *job) for e in events]  # [T_i, ...] each
    labels = torch.tensor(labels)
    frames, labels = frames[:limit], labels[:limit]
    lengths = torch.tensor([len(f) for f in frames])
    inputs = sparse_frames(frames)  # [N, T_max * cells]
    return inputs.to(device), labels.to(device), lengths.to(device)


def to_input(inputs, lengths, index):
    """Stored sequences at `index` (padded) -> the model's input [T, B, 2, 34, 34]
    up to the longest, and the mask [T, B] of real steps (None if all are as long)."""
    x = inputs.index_select(0, index).to_dense()
    x = x.view(len(index), -1, 2, 34, 34)
    lengths = lengths[index]
    x = x[:, : int(lengths.max())].to(torch.float32)
    steps = torch.arange(x.shape[1], device=x.device)
    mask = steps.unsqueeze(1) < lengths.unsqueeze(0)
    x = x.reshape(*x.shape[:2], 2, 34, 34).transpose(0, 1)
    return x, (None if bool(mask.all()) else mask)


# ------------------------------------------------------------------------ training
# spec `train.optimizer: adam`, `train.schedule: none`.


def make_optimizer(model):
    """The spec's optimizer over all parameters of the model."""
    return torch.optim.Adam(model.parameters(), lr=0.02, fused=True)


def train_step(model, optimizer, x, targets, mask=None):
    """One optimizer step on a batch: (loss, spk, mem), detached."""
    loss, spk, mem = forward_loss(model, x, targets, mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), spk.detach(), mem.detach()


@torch.no_grad()
def evaluate(model, inputs, labels, seed, lengths):
    """Test loss and accuracy; the same input encoding every time (seeded)."""
    model.eval()
    torch.manual_seed(seed)
    total, correct = torch.zeros((), device=labels.device), 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        index = torch.arange(start, min(start + EVAL_BATCH_SIZE, len(labels)))
        x, mask = to_input(inputs, lengths, index.to(labels.device))
        y = labels[index]
        loss, spk, mem = forward_loss(model, x, y, mask)
        total += loss * y.shape[0]
        correct += accuracy(scores(spk, mem, mask), y)
    return total.item() / len(labels), int(correct) / len(labels)


def epoch_seed(seed, epoch):
    """Seed of an epoch: its data order and every random draw in it."""
    return (seed * 1_000_003 + epoch) % 2**63


def train(
    data_root="data",
    epochs=EPOCHS,
    seed=SEED,
    device=DEVICE,
    limit_train=LIMIT_TRAIN,
    limit_test=LIMIT_TEST,
    compile=False,
):
    """Train from seeded initial weights; returns (model, metrics). `compile`:
    each neuron layer through torch.compile (the same spikes, faster)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    model = Net().to(device)
    for module in model.modules():
        if compile and isinstance(module, SpikingNeuron):
            module.compile()  # its time loop as one fused kernel
    train_inputs, train_labels, train_lengths = load_split(
        data_root, True, limit_train, device
    )
    test_inputs, test_labels, test_lengths = load_split(
        data_root, False, limit_test, device
    )
    per_epoch = len(train_labels) // BATCH_SIZE
    if per_epoch == 0:
        raise ValueError(f"{len(train_labels)} training samples: not one batch")
    optimizer = make_optimizer(model)
    history = []
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch_seed(seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        model.train()
        loss_sum, correct, started = 0, 0, time.perf_counter()
        for start in range(0, per_epoch * BATCH_SIZE, BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            x, mask = to_input(train_inputs, train_lengths, index)
            y = train_labels[index]
            loss, spk, mem = train_step(model, optimizer, x, y, mask)
            loss_sum += loss
            correct += accuracy(scores(spk, mem, mask), y)
        entry = {"epoch": epoch, "train_loss": float(loss_sum) / per_epoch}
        entry["train_accuracy"] = int(correct) / (per_epoch * BATCH_SIZE)
        entry["seconds"] = time.perf_counter() - started
        test = evaluate(model, test_inputs, test_labels, seed, test_lengths)
        entry["test_loss"], entry["test_accuracy"] = test
        text = f"epoch {epoch}/{epochs}: train loss {entry['train_loss']:.4f}, "
        text += f"accuracy {entry['train_accuracy']:.2%} ({entry['seconds']:.1f} s)"
        if "test_loss" in entry:
            text += f"; test loss {test[0]:.4f}, accuracy {test[1]:.2%}"
        print(text, flush=True)
        history.append(entry)
    metrics = {"name": NAME, "seed": seed, "device": str(device), "epochs": epochs}
    metrics.update(train_samples=len(train_labels), test_samples=len(test_labels))
    metrics.update(test_accuracy=history[-1]["test_accuracy"], history=history)
    metrics["test_loss"] = history[-1]["test_loss"]
    return model, metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--data-root", default="data", help="torchvision data folder")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", default=f"runs/{NAME}", help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:1...")
    parser.add_argument("--limit-train", type=int, default=LIMIT_TRAIN, metavar="N")
    parser.add_argument("--limit-test", type=int, default=LIMIT_TEST, metavar="N")
    parser.add_argument("--compile", action="store_true", help="torch.compile neurons")
    args = vars(parser.parse_args(argv))
    out = Path(args.pop("out"))
    model, metrics = train(**args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    torch.save(model.state_dict(), out / "model.pt")
    print(f"test accuracy {metrics['test_accuracy']:.2%}; wrote {out}")


if __name__ == "__main__":
    main()
