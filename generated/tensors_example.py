"""Train `tensors_example` on your tensor files with plain PyTorch; needs only torch, and numpy for .npz or h5py for .h5 files:

    python tensors_example.py --data-root DATA --epochs 10 --out runs/tensors_example

Generated from the spec `tensors_example` by `snncompile codegen` (regenerate rather than
edit). `Net` maps input [T, B, 16] to (spk, mem) of the output layer,
each [T, B, 4]; --out receives metrics.json and model.pt.
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

NAME = "tensors_example"
DESCRIPTION = "A recurrent SNN on your own variable-length time series"

# spec `train`: the defaults of the command-line options
EPOCHS = 10
SEED = 0
DEVICE = "auto"
LIMIT_TRAIN = None
LIMIT_TEST = None
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 32


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


class Recurrent(nn.Module):
    """Feedback of a layer's previous spikes: all-to-all linear, one-to-one gain V,
    or a same-padded conv2d over feature maps."""

    def __init__(self, kind, features=None, V=1.0, learn=True, kernel_size=None):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.linear = nn.Linear(features, features)
        elif kind == "conv":
            padding = (kernel_size[0] // 2, kernel_size[1] // 2)
            self.conv = nn.Conv2d(features, features, kernel_size, padding=padding)
        elif learn:
            self.V = nn.Parameter(torch.tensor(float(V)))
        else:
            self.register_buffer("V", torch.tensor(float(V)))

    def forward(self, spk):
        if self.kind == "linear":
            return self.linear(spk)
        if self.kind == "conv":
            return self.conv(spk)
        return spk * self.V


class RLeaky(SpikingNeuron):
    """Recurrent leaky neuron (snnTorch RLeaky), b = clamp(beta, 0, 1):

    m[t] = b * mem[t-1] + I[t] + R(spk[t-1])
    subtract: mem[t] = m[t] - reset[t] * threshold
    zero:     mem[t] = m[t] - reset[t] * m[t]
    none:     mem[t] = m[t]
    """

    state_names = ("spk", "mem")

    def __init__(self, shape, beta, recurrent=None, **kwargs):
        super().__init__(shape, beta, **kwargs)
        self.recurrent = recurrent

    def step(self, cur, state):
        spk, mem = state
        reset = self.reset_signal(mem)
        mem = self.beta.clamp(0, 1) * mem + cur + self.recurrent(spk)
        if self.reset_mode == "subtract":
            mem = mem - reset * self.threshold
        elif self.reset_mode == "zero":
            mem = mem - reset * mem
        spk = self.fire(mem)
        return spk, (spk, mem)


def time_batched(layer, x):
    """Run `layer` once over all steps: [T, B, ...] -> [T * B, ...] -> [T, B, ...]."""
    out = layer(x.flatten(0, 1))
    return out.reshape(x.shape[0], -1, *out.shape[1:])


class Net(nn.Module):
    """Spiking network `tensors_example`, 0 time steps."""

    steps = 0

    def __init__(self):
        super().__init__()
        # layers[0] fc1 (linear): [16] -> [64]
        self.fc1 = nn.Linear(16, 64)
        # layers[1] lif1 (rleaky): [64] -> [64]; state: spk, mem
        self.lif1 = RLeaky(
            (64,),
            beta=0.9,
            surrogate=ATan,
            surrogate_args=(2.0,),
            recurrent=Recurrent("linear", features=64),
        )
        # layers[2] fc2 (linear): [64] -> [4]
        self.fc2 = nn.Linear(64, 4)
        # layers[3] lif2 (leaky): [4] -> [4]; state: mem
        self.lif2 = Leaky((4,), beta=0.9, surrogate=ATan, surrogate_args=(2.0,))

    def forward(self, x, all_spikes=False):
        """x [T, B, 16] -> (spk, mem) of lif2, each [T, B, 4].

        With all_spikes=True, also returns every spiking layer's spikes by name.
        """
        h = time_batched(self.fc1, x)  # [64]
        spk_lif1, _ = self.lif1(h, record_mem=False)
        h = time_batched(self.fc2, spk_lif1)  # [4]
        spk_lif2, mem_lif2 = self.lif2(h)
        if all_spikes:
            return spk_lif2, mem_lif2, {"lif1": spk_lif1, "lif2": spk_lif2}
        return spk_lif2, mem_lif2


# ------------------------------------------------------------------------ decoding
# spec `decoding: max_membrane`: output records -> class scores [B, C].


def decode_max_membrane(spk, mem):
    """Peak-membrane score: ``s[b, c] = max_t mem[t, b, c]``."""
    return mem.amax(dim=0)


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
        return decode_max_membrane(spk, mem)
    return decode_by_length(decode_max_membrane, spk, mem, mask)


# ------------------------------------------------------------------------ loss
# spec `loss: ce_max_membrane`.


def loss_ce_max_membrane(spk, mem, targets):
    """Peak-membrane cross entropy: ``L = CE(max_t mem[t], y)``.

    Matches ``snntorch.functional.ce_max_membrane_loss()`` (gradient flows to
    the first arg-max step only).
    """
    return F.cross_entropy(mem.max(dim=0).values, targets)


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
        loss = loss_ce_max_membrane(spk, mem, targets)
    else:  # padded sequences: each sample over its own steps
        loss = loss_by_length(loss_ce_max_membrane, spk, mem, targets, mask)
    return loss, spk, mem


# ------------------------------------------------------------------------ data
# spec `train.dataset: tensors`, held in memory and scaled batch by batch.


FILES = {"train": "my_data/train.npz", "test": "my_data/test.npz"}  # under --data-root
VAL_FRACTION = 0.1  # held out of training


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file."""


def read_tensors(path, inputs_key, targets_key, lengths_key=None):
    """Samples, targets (and sequence lengths) from a .npz (numpy, no pickles),
    .pt (a dict of tensors) or .h5 file, as torch tensors."""
    import torch

    keys = [k for k in (inputs_key, targets_key, lengths_key) if k]
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as f:
                found = list(f.files)
                arrays = {k: torch.from_numpy(f[k]) for k in keys if k in f.files}
        elif suffix == ".pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise DataError(
                    f"{path}: holds a {type(data).__name__}, not a dict of tensors"
                )
            found = list(data)
            arrays = {k: torch.as_tensor(data[k]) for k in keys if k in data}
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                found = list(f.keys())
                arrays = {k: torch.from_numpy(f[k][()]) for k in keys if k in f}
        else:
            raise DataError(
                f"{path}: unknown file type {suffix!r} (use .npz, .pt or .h5)"
            )
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader's complaint about the bytes
        text = str(err)
        if "WeightsUnpickler error:" in text:  # not torch's advice, its reason
            reason = text.split("WeightsUnpickler error:", 1)[1].strip()
            text = "torch.load(weights_only=True): " + reason.split(". ")[0]
        text = text.strip().splitlines()
        if os.path.isfile(path) and not os.path.getsize(path):
            text = ["an empty file"]
        what = {".npz": "a numpy .npz file", ".pt": "a torch file"}.get(
            suffix, "an HDF5 file"
        )
        raise DataError(
            f"{path}: cannot be read as {what} "
            f"({text[0] if text else type(err).__name__})"
        ) from None
    for key in keys:
        if key not in arrays:
            raise DataError(
                f"{path}: no array {key!r} (it has: {', '.join(map(str, found)) or 'none'})"
            )
    return tuple(
        arrays.get(k) if k else None for k in (inputs_key, targets_key, lengths_key)
    )


def validation_split(count, fraction, seed=20_240_601):
    """(training, validation) sample indices, each sorted: a fixed random
    `fraction` of `count` samples is held out (at least one), the same for every
    training seed."""
    held = max(1, round(count * fraction))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def load_split(root, train, limit, device):
    """Your arrays: inputs, targets and lengths."""
    inputs, labels, lengths = read_tensors(
        os.path.join(root, FILES["train" if train else "test"]),
        "inputs",
        "targets",
        "lengths",
    )
    inputs = inputs.to(torch.uint8) if inputs.dtype == torch.bool else inputs
    labels = labels.to(torch.int64)
    if lengths is None:  # sequences of one length
        lengths = torch.full((len(labels),), inputs.shape[1])
    if train:  # without the validation hold-out (as snncompile train)
        keep = validation_split(len(labels), VAL_FRACTION)[0]
        inputs, labels = inputs[keep], labels[keep]
        lengths = lengths[keep]
    return (
        inputs[:limit].to(device),
        labels[:limit].to(device),
        lengths[:limit].to(device),
    )


def to_input(inputs, lengths, index):
    """Stored sequences at `index` (padded) -> the model's input [T, B, 16]
    up to the longest, and the mask [T, B] of real steps (None if all are as long)."""
    x = inputs[index]
    lengths = lengths[index]
    x = x[:, : int(lengths.max())].to(torch.float32)
    steps = torch.arange(x.shape[1], device=x.device)
    mask = steps.unsqueeze(1) < lengths.unsqueeze(0)
    x = x.reshape(*x.shape[:2], 16).transpose(0, 1)
    return x, (None if bool(mask.all()) else mask)


# ------------------------------------------------------------------------ training
# spec `train.optimizer: adam`, `train.schedule: none`.


def make_optimizer(model):
    """The spec's optimizer over all parameters of the model."""
    return torch.optim.Adam(model.parameters(), lr=0.005, fused=True)


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
