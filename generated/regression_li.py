"""Train `regression_li` on synthetic regression data with plain PyTorch; needs only torch:

    python regression_li.py --epochs 5 --out runs/regression_li

Generated from the spec `regression_li` by `snncompile codegen` (regenerate rather than
edit). `Net` maps input [B, 32] to (spk, mem) of the output layer,
each [T, B, 3]; --out receives metrics.json and model.pt.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NAME = "regression_li"
DESCRIPTION = (
    "Amplitudes of sinusoids from a spiking layer and a leaky-integrator readout"
)

# spec `train`: the defaults of the command-line options
EPOCHS = 5
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


class LI(SpikingNeuron):
    """Leaky integrator readout that never spikes, b = clamp(beta, 0, 1):

    mem[t] = b * mem[t-1] + I[t]
    spk[t] = 0

    (snnTorch Leaky with reset "none" and a threshold it never reaches.) Its
    threshold is +inf, so no membrane is ever near it.
    """

    def __init__(self, shape, beta, learn_beta=False, per_neuron=False):
        super().__init__(
            shape,
            beta,
            threshold=float("inf"),
            learn_beta=learn_beta,
            per_neuron=per_neuron,
        )

    def step(self, cur, state):
        (mem,) = state
        mem = self.beta.clamp(0, 1) * mem + cur
        return torch.zeros_like(mem), (mem,)


def time_batched(layer, x):
    """Run `layer` once over all steps: [T, B, ...] -> [T * B, ...] -> [T, B, ...]."""
    out = layer(x.flatten(0, 1))
    return out.reshape(x.shape[0], -1, *out.shape[1:])


class Net(nn.Module):
    """Spiking network `regression_li`, 16 time steps."""

    steps = 16

    def __init__(self):
        super().__init__()
        # layers[0] fc1 (linear): [32] -> [128]; time-invariant
        self.fc1 = nn.Linear(32, 128)
        # layers[1] lif1 (leaky): [128] -> [128]; state: mem
        self.lif1 = Leaky((128,), beta=0.9, surrogate=ATan, surrogate_args=(2.0,))
        # layers[2] fc2 (linear): [128] -> [3]
        self.fc2 = nn.Linear(128, 3)
        # layers[3] readout (li): [3] -> [3]; state: mem
        self.readout = LI((3,), beta=0.9)

    def forward(self, x, all_spikes=False):
        """x [B, 32] -> (spk, mem) of readout, each [T, B, 3].

        With all_spikes=True, also returns every spiking layer's spikes by name.
        """
        # time-invariant: computed once, shared by all 16 steps
        h = self.fc1(x)  # [128]
        h = h.expand(self.steps, *h.shape)  # [T, B, ...] without a copy
        spk_lif1, _ = self.lif1(h, record_mem=False)
        h = time_batched(self.fc2, spk_lif1)  # [3]
        spk_readout, mem_readout = self.readout(h)
        if all_spikes:
            return spk_readout, mem_readout, {"lif1": spk_lif1, "readout": spk_readout}
        return spk_readout, mem_readout


# ------------------------------------------------------------------------ decoding
# spec `decoding: mean_membrane`: output records -> class scores [B, C].


def decode_mean_membrane(spk, mem):
    """Mean-membrane score: ``s[b, c] = (1 / T) * sum_t mem[t, b, c]``."""
    return mem.mean(dim=0)


def regression_sums(pred, targets):
    """Sums of a batch for MSE, MAE and R^2 (one float64 tensor, no host sync):
    ``[sum (p - y)^2, sum |p - y|, sum y, sum y^2, count]`` over every element."""
    err = (pred - targets).double()
    y = targets.double()
    count = torch.full((), y.numel(), dtype=torch.float64, device=y.device)
    return torch.stack(
        [err.square().sum(), err.abs().sum(), y.sum(), y.square().sum(), count]
    )


def regression_metrics(sums):
    """MSE, MAE and R^2 from accumulated ``regression_sums``:
    ``R^2 = 1 - SSE / SST``, ``SST = sum y^2 - (sum y)^2 / n`` (all outputs pooled)."""
    sse, sae, total, square, n = (float(v) for v in sums)
    sst = square - total * total / n if n else 0.0
    r2 = 1 - sse / sst if sst > 0 else None  # undefined for constant targets
    return {"mse": sse / n, "mae": sae / n, "r2": r2} if n else {}


# ------------------------------------------------------------------------ loss
# spec `loss: mse`.


def regression_readout(spk, mem, readout):
    """What a regression loss compares with targets [B, K]: ``mem`` [T, B, K]
    itself (every_membrane), ``mem[T-1]`` (last_membrane), ``mean_t mem[t]``
    (mean_membrane) or the spike rate ``mean_t spk[t]`` (rate)."""
    if readout == "every_membrane":
        return mem
    if readout == "last_membrane":
        return mem[-1]
    if readout == "mean_membrane":
        return mem.mean(dim=0)
    if readout == "rate":
        return spk.mean(dim=0)
    raise ValueError(f"unknown readout {readout!r}")


def loss_mse(spk, mem, targets, readout="every_membrane"):
    """Mean squared error against float targets ``y [B, K]``:
    ``L = mean (r - y)^2`` over every element of the readout ``r``
    (``regression_readout``; every_membrane: ``(1 / T) sum_t MSE(mem[t], y)``)."""
    pred = regression_readout(spk, mem, readout)
    return F.mse_loss(pred, targets.expand_as(pred))


def forward_loss(model, x, targets):
    """Run the model on a batch: (loss, spk, mem) of the output layer."""
    spk, mem = model(x)
    loss = loss_mse(spk, mem, targets, readout="mean_membrane")
    return loss, spk, mem


# ------------------------------------------------------------------------ data
# spec `train.dataset: synthetic_regression`, held in memory and scaled batch by batch.


def synthetic_regression(shape, outputs, count, seed):
    """`count` sums of `outputs` (K) sinusoids over the n input values of
    `shape`, in [0, 1], and their amplitudes as float targets [count, K]:
    x_i = 1/2 + 1/(2K) sum_k a_k sin(2 pi (k + 1) i / n + phi_k) + noise,
    a_k uniform in [0, 1], phases uniform; seeded by `seed` alone."""
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(seed)
    amplitudes = torch.rand(count, outputs, generator=gen)
    phases = torch.rand(count, outputs, 1, generator=gen) * (2 * math.pi)
    frequency = torch.arange(1, outputs + 1, dtype=torch.float32).view(1, -1, 1)
    position = torch.arange(n, dtype=torch.float32) / n
    waves = torch.sin(2 * math.pi * frequency * position + phases)
    signal = (amplitudes.unsqueeze(-1) * waves).sum(1) / (2 * outputs) + 0.5
    noise = torch.randn(count, n, generator=gen) * 0.01
    return (signal + noise).clamp_(0, 1).reshape(count, *shape), amplitudes


def load_split(train, limit, device):
    """Sums of 3 sinusoids and their amplitudes as targets [N, 3] (the
    same data as `snncompile train`), inputs [N, 32]."""
    count = 2048 if train else 512
    seed = 3 if train else 4
    inputs, targets = synthetic_regression((32,), 3, count, seed)
    return inputs[:limit].to(device), targets[:limit].to(device)


def to_input(x):
    """Stored samples [N, 32] -> one model input batch."""
    return x  # synthetic samples are model inputs already


# ------------------------------------------------------------------------ training
# spec `train.optimizer: adam`, `train.schedule: none`.


def make_optimizer(model):
    """The spec's optimizer over all parameters of the model."""
    return torch.optim.Adam(model.parameters(), lr=0.003, fused=True)


def train_step(model, optimizer, x, targets):
    """One optimizer step on a batch: (loss, spk, mem), detached."""
    loss, spk, mem = forward_loss(model, x, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), spk.detach(), mem.detach()


@torch.no_grad()
def evaluate(model, inputs, labels, seed):
    """Test loss and MSE, MAE and R^2; the same input encoding every time (seeded)."""
    model.eval()
    torch.manual_seed(seed)
    total, sums = torch.zeros((), device=labels.device), 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        x = to_input(inputs[start : start + EVAL_BATCH_SIZE])
        y = labels[start : start + EVAL_BATCH_SIZE]
        loss, spk, mem = forward_loss(model, x, y)
        total += loss * y.shape[0]
        sums += regression_sums(decode_mean_membrane(spk, mem), y)
    return total.item() / len(labels), regression_metrics(sums)


def epoch_seed(seed, epoch):
    """Seed of an epoch: its data order and every random draw in it."""
    return (seed * 1_000_003 + epoch) % 2**63


def train(
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
    train_inputs, train_labels = load_split(True, limit_train, device)
    test_inputs, test_labels = load_split(False, limit_test, device)
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
        loss_sum, sums, started = 0, 0, time.perf_counter()
        for start in range(0, per_epoch * BATCH_SIZE, BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            x, y = to_input(train_inputs[index]), train_labels[index]
            loss, spk, mem = train_step(model, optimizer, x, y)
            loss_sum += loss
            sums += regression_sums(decode_mean_membrane(spk, mem), y)
        entry = {"epoch": epoch, "train_loss": float(loss_sum) / per_epoch}
        entry.update({f"train_{k}": v for k, v in regression_metrics(sums).items()})
        entry["seconds"] = time.perf_counter() - started
        test = evaluate(model, test_inputs, test_labels, seed)
        entry["test_loss"] = test[0]
        entry.update({f"test_{k}": v for k, v in test[1].items()})
        text = f"epoch {epoch}/{epochs}: train loss {entry['train_loss']:.4f}, "
        text += f"MSE {entry['train_mse']:.4g} ({entry['seconds']:.1f} s)"
        if "test_loss" in entry:
            text += f"; test loss {test[0]:.4f}, MSE {test[1]['mse']:.4g}"
            text += f", R^2 {test[1]['r2']:.4g}"
        print(text, flush=True)
        history.append(entry)
    metrics = {"name": NAME, "seed": seed, "device": str(device), "epochs": epochs}
    metrics.update(train_samples=len(train_labels), test_samples=len(test_labels))
    metrics.update({k: v for k, v in history[-1].items() if k.startswith("test_")})
    metrics["history"] = history
    return model, metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
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
    summary = f"test MSE {metrics['test_mse']:.4g}, R^2 {metrics['test_r2']:.4g}"
    print(f"{summary}; wrote {out}")


if __name__ == "__main__":
    main()
