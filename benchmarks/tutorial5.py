"""snnTorch Tutorial 5's training run, as the tutorial writes it: the baseline of
`benchmarks/epoch.py`.

One epoch of a 784-1000-10 network of snntorch.Leaky neurons (beta 0.95, 25
steps, snnTorch's default ATan surrogate) on MNIST through torchvision's
DataLoader (per-sample PIL transforms, batch 128, shuffled, drop_last), the loss
summed over steps of the output membrane's cross entropy, Adam lr 5e-4 and betas
(0.9, 0.999); after each training step the tutorial draws one test batch and
records its loss; after the epoch it measures spike-count accuracy on the test
set. Prints one JSON line of wall times (the loop, its per-step test-batch
monitoring, the test pass) and the accuracy.

    python benchmarks/tutorial5.py --data-root ../shared/data [--no-monitor]

--no-monitor leaves out the per-step test batch (the loop then only trains).
Needs snntorch (`pip install -e '.[test]'`); written for this benchmark after
the tutorial's structure, not copied from it.
"""

import argparse
import json
import time

import snntorch as snn
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

BATCH, STEPS, BETA = 128, 25, 0.95


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 1000)
        self.lif1 = snn.Leaky(beta=BETA)
        self.fc2 = nn.Linear(1000, 10)
        self.lif2 = snn.Leaky(beta=BETA)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(STEPS):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--no-monitor", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    transform = transforms.Compose(
        [
            transforms.Resize((28, 28)),
            transforms.Grayscale(),
            transforms.ToTensor(),
            transforms.Normalize((0,), (1,)),
        ]
    )
    train_set = datasets.MNIST(args.data_root, train=True, transform=transform)
    test_set = datasets.MNIST(args.data_root, train=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=BATCH, shuffle=True, drop_last=True)
    net = Net()
    loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4, betas=(0.9, 0.999))

    loop_started = time.perf_counter()
    monitor_seconds = 0.0
    for data, targets in train_loader:
        net.train()
        _, mem_rec = net(data.view(BATCH, -1))
        loss_val = torch.zeros(1)
        for step in range(STEPS):
            loss_val += loss(mem_rec[step], targets)
        optimizer.zero_grad()
        loss_val.backward()
        optimizer.step()
        loss_val.item()  # the tutorial appends it to its loss history
        if not args.no_monitor:
            monitor_started = time.perf_counter()
            with torch.no_grad():
                net.eval()
                test_data, test_targets = next(iter(test_loader))
                _, test_mem = net(test_data.view(BATCH, -1))
                test_loss = torch.zeros(1)
                for step in range(STEPS):
                    test_loss += loss(test_mem[step], test_targets)
                test_loss.item()
            monitor_seconds += time.perf_counter() - monitor_started
    loop_seconds = time.perf_counter() - loop_started

    test_started = time.perf_counter()
    total = correct = 0
    with torch.no_grad():
        net.eval()
        for data, targets in test_loader:
            test_spk, _ = net(data.view(data.size(0), -1))
            _, predicted = test_spk.sum(dim=0).max(1)
            total += targets.size(0)
            correct += (predicted == targets).sum().item()
    test_seconds = time.perf_counter() - test_started
    print(
        json.dumps(
            {
                "loop_seconds": loop_seconds,
                "monitor_seconds": monitor_seconds,
                "test_seconds": test_seconds,
                "epoch_seconds": loop_seconds + test_seconds,
                "process_seconds": time.perf_counter() - started,
                "test_accuracy": correct / total,
                "test_samples": total,
            }
        )
    )


if __name__ == "__main__":
    main()
