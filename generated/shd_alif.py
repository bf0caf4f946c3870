"""Train `shd_alif` on synthetic data with plain PyTorch; needs only torch:

    python shd_alif.py --epochs 3 --out runs/shd_alif

Generated from the spec `shd_alif` by `snncompile codegen` (regenerate rather than
edit). `Net` maps input [T, B, 64] to (spk, mem) of the output layer,
each [T, B, 20]; --out receives metrics.json and model.pt.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NAME = "shd_alif"
DESCRIPTION = "Recurrent adaptive LIF layer with a leaky-integrator readout (SHD-style)"

# spec `train`: the defaults of the command-line options
EPOCHS = 3
SEED = 0
DEVICE = "auto"
LIMIT_TRAIN = None
LIMIT_TEST = None
BATCH_SIZE = 64
EVAL_BATCH_SIZE = 64


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


class ALIF(SpikingNeuron):
    """Adaptive-threshold LIF (Bellec et al. 2018's LSNN neuron, as in Yin et
    al. 2021), b = clamp(beta, 0, 1), r = clamp(rho, 0, 1); all states start at
    zero (spk[-1] = a[-1] = mem[-1] = 0):

    a[t]     = r * a[t-1] + (1 - r) * spk[t-1]
    thr[t]   = threshold + adapt * a[t]
    reset[t] = H(mem[t-1] - thr[t-1]), detached
    m[t]     = I[t] + R(spk[t-1])   (R: the recurrent feedback; none in alif)
    subtract: mem[t] = b * mem[t-1] + m[t] - reset[t] * thr[t-1]
    zero:     mem[t] = b * ((1 - reset[t]) * mem[t-1]) + m[t]
    none:     mem[t] = b * mem[t-1] + m[t]
    spk[t]   = S(mem[t] - thr[t])

    So thr[t] counts the spikes up to t-1, and a reset takes off the threshold
    the membrane crossed. At a steady rate of one spike per step a tends to 1:
    adapt is the most the threshold rises (Bellec et al.'s beta).
    """

    state_names = ("spk", "a", "mem")

    def __init__(
        self,
        shape,
        beta,
        rho,
        adapt=1.8,
        learn_rho=False,
        learn_adapt=False,
        recurrent=None,
        **kwargs,
    ):
        super().__init__(shape, beta, **kwargs)
        self.constant("rho", rho, learn_rho)
        self.constant("adapt", adapt, learn_adapt)
        self.recurrent = recurrent

    def fire_at(self, mem, threshold):
        """spk = S(mem - threshold), for a threshold of each neuron and step."""
        shifted = mem - threshold
        if self.hard or self.surrogate is None:
            return (shifted > 0).to(mem.dtype)
        return self.surrogate.apply(shifted, *self.surrogate_args)

    def step(self, cur, state):
        spk, a, mem = state
        last = self.threshold + self.adapt * a  # thr[t-1]
        reset = (mem - last > 0).to(mem.dtype)
        rho = self.rho.clamp(0, 1)
        a = rho * a + (1 - rho) * spk
        if self.recurrent is not None:
            cur = cur + self.recurrent(spk)
        beta = self.beta.clamp(0, 1)
        if self.reset_mode == "subtract":
            mem = beta * mem + cur - reset * last
        elif self.reset_mode == "zero":
            mem = beta * ((1 - reset) * mem) + cur
        else:
            mem = beta * mem + cur
        spk = self.fire_at(mem, self.threshold + self.adapt * a)
        return spk, (spk, a, mem)


def time_batched(layer, x):
    """Run `layer` once over all steps: [T, B, ...] -> [T * B, ...] -> [T, B, ...]."""
    out = layer(x.flatten(0, 1))
    return out.reshape(x.shape[0], -1, *out.shape[1:])


class Net(nn.Module):
    """Spiking network `shd_alif`, 25 time steps."""

    steps = 25

    def __init__(self):
        super().__init__()
        # layers[0] fc_in (linear): [64] -> [128]
        self.fc_in = nn.Linear(64, 128)
        # layers[1] alif1 (ralif): [128] -> [128]; state: spk, a, mem
        self.alif1 = ALIF(
            (128,),
            beta=0.95,
            learn_beta=True,
            surrogate=ATan,
            surrogate_args=(2.0,),
            rho=0.9,
            adapt=0.5,
            learn_rho=True,
            recurrent=Recurrent("linear", features=128),
        )
        # layers[2] fc_out (linear): [128] -> [20]
        self.fc_out = nn.Linear(128, 20)
        # layers[3] readout (li): [20] -> [20]; state: mem
        self.readout = LI((20,), beta=0.9)

    def forward(self, x, all_spikes=False):
        """x [T, B, 64] -> (spk, mem) of readout, each [T, B, 20].

        With all_spikes=True, also returns every spiking layer's spikes by name.
        """
        h = time_batched(self.fc_in, x)  # [128]
        spk_alif1, _ = self.alif1(h, record_mem=False)
        h = time_batched(self.fc_out, spk_alif1)  # [20]
        spk_readout, mem_readout = self.readout(h)
        if all_spikes:
            return (
                spk_readout,
                mem_readout,
                {"alif1": spk_alif1, "readout": spk_readout},
            )
        return spk_readout, mem_readout


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
# spec `train.dataset: synthetic`, held in memory and scaled batch by batch.


def load_split(train, limit, device):
    """Synthetic classes: a fixed random prototype per class in [0, 1] plus
    Gaussian noise (the same data as `snncompile train`), [N, 64]."""
    generator = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(20, 64, generator=generator)
    count = 2048 if train else 512
    generator = torch.Generator().manual_seed(1 if train else 2)
    labels = torch.randperm(count, generator=generator) % 20
    noise = torch.randn(count, 64, generator=generator) * 0.35
    inputs = (prototypes[labels] + noise).clamp_(0, 1)
    return inputs[:limit].to(device), labels[:limit].to(device)


def to_input(x):
    """Stored samples [N, 64] -> one model input batch."""
    x = x.unsqueeze(0).expand(Net.steps, *x.shape)  # spikes input
    return torch.bernoulli(x.clamp(0, 1))  # spikes of intensities


# ------------------------------------------------------------------------ training
# spec `train.optimizer: adam`, `train.schedule: none`.


def make_optimizer(model):
    """The spec's optimizer over all parameters of the model."""
    return torch.optim.Adam(model.parameters(), lr=0.002, fused=True)


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
        loss_sum, correct, started = 0, 0, time.perf_counter()
        for start in range(0, per_epoch * BATCH_SIZE, BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            x, y = to_input(train_inputs[index]), train_labels[index]
            loss, spk, mem = train_step(model, optimizer, x, y)
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
