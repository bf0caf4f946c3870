"""Train `fashion_recurrent_latency` on Fashion-MNIST with plain PyTorch; needs only torch and torchvision:

    python fashion_recurrent_latency.py --data-root DATA --epochs 1 --out runs/fashion_recurrent_latency

Generated from the spec `fashion_recurrent_latency` by `snncompile codegen` (regenerate rather than
edit). `Net` maps input [B, 1, 28, 28] to (spk, mem) of the output layer,
each [T, B, 10]; --out receives metrics.json and model.pt.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

NAME = "fashion_recurrent_latency"
DESCRIPTION = "Latency-coded Fashion-MNIST with recurrent leaky neurons"

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


class FastSigmoid(torch.autograd.Function):
    """Fast sigmoid surrogate: dS/dU = 1 / (slope * |U| + 1)^2."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * torch.abs(x) + 1.0) ** 2, None


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


def encode_latency(
    x, steps, tau=1.0, threshold=0.01, linear=False, normalize=False, clip=False
):
    """Latency code: one spike per element at step ``round(t_s)``.

    Logarithmic (RC charging) code, ``x_c = max(x, thr + 1e-7)``:
    ``t_s = tau * ln(x_c / (x_c - thr))``; linear code:
    ``t_s = min(tau * (1 - x), tau * (1 - thr))`` (with ``normalize`` the linear
    ``tau = T - 1``, the log code is rescaled ``t_s * (T - 1) / max(t_s)``).
    ``out[t] = 1`` iff ``t == round(min(t_s, T - 1))`` and ``round(t_s) <= T - 1``;
    with ``clip`` elements below ``thr`` never fire.  Matches
    ``snntorch.spikegen.latency`` (first_spike_time=0, on_target=1, off_target=0);
    ``x`` is expected in ``[0, 1]`` (snnTorch's range check is not repeated here).
    """
    if not x.is_floating_point():
        x = x.float()
    if linear:
        if normalize:
            tau = steps - 1
        spike_time = torch.clamp_max(-tau * (x - 1), -tau * (threshold - 1))
    else:
        xc = torch.clamp(x, min=threshold + 1e-7)
        spike_time = tau * torch.log(xc / (xc - threshold))
        if normalize:
            spike_time = spike_time * (steps - 1) / torch.max(spike_time)
    step_idx = torch.round(torch.clamp_max(spike_time, steps - 1)).long()
    fires = torch.round(spike_time).long() <= steps - 1
    if clip:
        fires = fires & (x >= threshold)
    t = torch.arange(steps, device=x.device).view((steps,) + (1,) * x.dim())
    out = (t == step_idx.unsqueeze(0)) & fires.unsqueeze(0)
    return out.to(x.dtype)


class Net(nn.Module):
    """Spiking network `fashion_recurrent_latency`, 30 time steps."""

    steps = 30

    def __init__(self):
        super().__init__()
        # layers[0] flatten1 (flatten): [1, 28, 28] -> [784]
        self.flatten1 = nn.Flatten()
        # layers[1] fc1 (linear): [784] -> [256]
        self.fc1 = nn.Linear(784, 256)
        # layers[2] rlif1 (rleaky): [256] -> [256]; state: spk, mem
        self.rlif1 = RLeaky(
            (256,),
            beta=0.9,
            learn_beta=True,
            surrogate=FastSigmoid,
            surrogate_args=(25.0,),
            recurrent=Recurrent("linear", features=256),
        )
        # layers[3] fc2 (linear): [256] -> [10]
        self.fc2 = nn.Linear(256, 10)
        # layers[4] rlif2 (rleaky): [10] -> [10]; state: spk, mem
        self.rlif2 = RLeaky(
            (10,),
            beta=0.9,
            learn_beta=True,
            learn_threshold=True,
            per_neuron=True,
            surrogate=FastSigmoid,
            surrogate_args=(25.0,),
            recurrent=Recurrent("one_to_one", V=0.5, learn=True),
        )

    def forward(self, x, all_spikes=False):
        """x [B, 1, 28, 28] -> (spk, mem) of rlif2, each [T, B, 10].

        With all_spikes=True, also returns every spiking layer's spikes by name.
        """
        x = encode_latency(
            x,
            self.steps,
            tau=5.0,
            threshold=0.01,
            linear=True,
            normalize=True,
            clip=False,
        )  # [T, B, ...]
        h = time_batched(self.flatten1, x)  # [784]
        h = time_batched(self.fc1, h)  # [256]
        spk_rlif1, _ = self.rlif1(h, record_mem=False)
        h = time_batched(self.fc2, spk_rlif1)  # [10]
        spk_rlif2, mem_rlif2 = self.rlif2(h)
        if all_spikes:
            return spk_rlif2, mem_rlif2, {"rlif1": spk_rlif1, "rlif2": spk_rlif2}
        return spk_rlif2, mem_rlif2


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


# ------------------------------------------------------------------------ loss
# spec `loss: ce_max_membrane`.


def loss_ce_max_membrane(spk, mem, targets):
    """Peak-membrane cross entropy: ``L = CE(max_t mem[t], y)``.

    Matches ``snntorch.functional.ce_max_membrane_loss()`` (gradient flows to
    the first arg-max step only).
    """
    return F.cross_entropy(mem.max(dim=0).values, targets)


def forward_loss(model, x, targets):
    """Run the model on a batch: (loss, spk, mem) of the output layer."""
    spk, mem = model(x)
    loss = loss_ce_max_membrane(spk, mem, targets)
    return loss, spk, mem


# ------------------------------------------------------------------------ data
# spec `train.dataset: fashion_mnist`, held in memory and scaled batch by batch.


def load_split(root, train, limit, device):
    """One FashionMNIST split: uint8 images [N, 1, 28, 28], labels [N]."""
    dataset = torchvision.datasets.FashionMNIST(root, train=train, download=True)
    inputs = dataset.data.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return inputs[:limit].to(device), labels[:limit].to(device)


def to_input(x):
    """Stored samples [N, 1, 28, 28] -> one model input batch."""
    return x.to(torch.float32).div_(255)  # as torchvision's ToTensor


# ------------------------------------------------------------------------ training
# spec `train.optimizer: adam`, `train.schedule: step`.


def make_optimizer(model):
    """The spec's optimizer over all parameters of the model."""
    return torch.optim.Adam(model.parameters(), lr=0.001, fused=True)


def make_scheduler(optimizer, per_epoch):
    """Learning-rate factor of each iteration (the scheduler steps every one)."""

    def factor(iteration):
        epoch = iteration // per_epoch
        return 0.5**epoch  # times gamma after every epoch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(model, optimizer, x, targets):
    """One optimizer step on a batch: (loss, spk, mem), detached."""
    loss, spk, mem = forward_loss(model, x, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), spk.detach(), mem.detach()


@torch.no_grad()
def evaluate(model, inputs, labels, seed):
    """Test loss and accuracy; the same input encoding every time (seeded)."""
    model.eval()
    torch.manual_seed(seed)
    total, correct = torch.zeros((), device=labels.device), 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        x = to_input(inputs[start : start + EVAL_BATCH_SIZE])
        y = labels[start : start + EVAL_BATCH_SIZE]
        loss, spk, mem = forward_loss(model, x, y)
        total += loss * y.shape[0]
        correct += accuracy(decode_max_membrane(spk, mem), y)
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
    train_inputs, train_labels = load_split(data_root, True, limit_train, device)
    test_inputs, test_labels = load_split(data_root, False, limit_test, device)
    per_epoch = len(train_labels) // BATCH_SIZE
    if per_epoch == 0:
        raise ValueError(f"{len(train_labels)} training samples: not one batch")
    optimizer = make_optimizer(model)
    scheduler = make_scheduler(optimizer, per_epoch)
    history = []
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch_seed(seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        model.train()
        loss_sum, correct, started = 0, 0, time.perf_counter()
        for start in range(0, per_epoch * BATCH_SIZE, BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            x, y = to_input(train_inputs[index]), train_labels[index]
            loss, spk, mem = train_step(model, optimizer, x, y)
            scheduler.step()
            loss_sum += loss
            correct += accuracy(decode_max_membrane(spk, mem), y)
        entry = {"epoch": epoch, "train_loss": float(loss_sum) / per_epoch}
        entry["train_accuracy"] = int(correct) / (per_epoch * BATCH_SIZE)
        entry["seconds"] = time.perf_counter() - started
        test = evaluate(model, test_inputs, test_labels, seed)
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
