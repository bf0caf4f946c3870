"""Training curves and spike rasters as PNG files.

Uses matplotlib's object API with the Agg canvas directly, so no pyplot state
and no global backend switch.
"""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _save(fig: Figure, path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


def curves(
    history: list[dict], iteration_loss: list[float], path, metric="accuracy"
) -> None:
    """Per-iteration training loss; per-epoch loss and `metric` (accuracy, or a
    regression's mse), train and test."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_it, ax_loss, ax_acc = fig.subplots(1, 3)
    ax_it.plot(range(1, len(iteration_loss) + 1), iteration_loss, lw=0.8)
    ax_it.set(xlabel="iteration", ylabel="loss", title="training loss per iteration")
    epochs = [h["epoch"] for h in history]
    tested = [h for h in history if h.get("test_loss") is not None]
    label = {"mse": "MSE"}.get(metric, metric)
    for ax, key, name in ((ax_loss, "loss", "loss"), (ax_acc, metric, label)):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(
            [h["epoch"] for h in tested],
            [h[f"test_{key}"] for h in tested],
            "s-",
            label="test",
        )
        ax.set(xlabel="epoch", ylabel=name, title=f"{name} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    _save(fig, path)


def raster(records: dict, sample: str, path) -> None:
    """One panel per spiking layer: neuron index against time step for one sample.

    `records` maps layer name -> spike record [T, neurons...] of that sample;
    `sample` says what it is (its label and the prediction).
    """
    fig = Figure(figsize=(8, 2.2 * len(records) + 0.6), layout="constrained")
    axes = fig.subplots(len(records), 1, squeeze=False)[:, 0]
    for ax, (name, spk) in zip(axes, records.items()):
        spk = spk.reshape(spk.shape[0], -1)
        t, neuron = (spk != 0).nonzero(as_tuple=True)
        size = 30 if spk.shape[1] <= 50 else 4 if spk.shape[1] <= 200 else 1
        ax.scatter(t.tolist(), neuron.tolist(), s=size, c="k", marker="|")
        ax.set(
            xlim=(-0.5, spk.shape[0] - 0.5),
            ylim=(-0.5, spk.shape[1] - 0.5),
            ylabel="neuron",
            title=f"{name}: {int(t.numel())} spikes, {spk.shape[1]} neurons",
        )
    axes[-1].set_xlabel("time step")
    fig.suptitle(f"spike raster of one test sample ({sample})")
    _save(fig, path)
