"""The Python API: train a spec, load a finished run, predict, losses and decoders.

    import snncompile

    run = snncompile.train("specs/mnist_fc.yaml", epochs=1)  # a Run
    run.metrics["test_accuracy"], run.dir                    # metrics.json, its folder
    run = snncompile.load_run("runs/mnist_fc-...")           # the same, later
    scores, classes = run.predict(images)                    # raw samples [B, ...]

snncompile/__init__.py exports these names; importing this module imports no
torch (each function imports it when called). The command line's training
(snncompile/train/loop.py) does the work: `train` here returns a Run where
`snncompile.train.loop.train` returns the metrics dict.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .spec.errors import SpecError, UserError, first_line
from .spec.load import (
    SourceMap,
    apply_overrides,
    cli_overrides,
    load,
    loads,
    validate_data,
)
from .spec.schema import Spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "Prediction",
    "Run",
    "as_spec",
    "decode_fn",
    "load_run",
    "loss_fn",
    "predict",
    "train",
]


# --------------------------------------------------------------------------- specs
def as_spec(spec: Spec | Mapping | str | os.PathLike, overrides=None) -> Spec:
    """A validated Spec from a Spec, a spec file's path or a dict of its fields.

    `overrides`: "path.to.field=value" assignments (as `--set`) applied first.
    A dict is validated as `Spec(**data)` is: every problem located by its
    field path ("<spec NAME>: layers[1].beta: ..."); raises SpecError."""
    overrides = list(overrides or ())
    if isinstance(spec, Spec):
        if not overrides:
            return spec
        source = SourceMap(f"<spec {spec.name}>")
        data = apply_overrides(spec.model_dump(mode="json"), overrides, source)
        return validate_data(data, source)
    if isinstance(spec, Mapping):
        data = dict(spec)
        if overrides:
            data = apply_overrides(data, overrides)
        return Spec.model_validate(data)
    if isinstance(spec, (str, os.PathLike)):
        return load(os.fspath(spec), overrides)
    raise TypeError(
        f"a spec is a Spec, a path or a dict of its fields, not {type(spec).__name__}"
    )


# --------------------------------------------------------------------------- runs
class Prediction(NamedTuple):
    """What `predict` returns: `scores` [B, C], the decoded outputs (class
    scores, or a regression's predicted values [B, K]), and `predictions`:
    the classes `scores.argmax(-1)` [B] (int64), or for regression the
    values themselves."""

    scores: torch.Tensor
    predictions: torch.Tensor


class Run:
    """A run directory and what it holds; `snncompile.train` and `load_run`
    return one.

    Attributes: `dir` (Path of the run directory), `checkpoint` (Path of the
    checkpoint the model comes from: DIR/checkpoint.pt, the last epoch's, or
    DIR/best.pt), `spec` (the validated Spec the run trained: the run's
    effective spec, overrides and --epochs included), `metrics` (the dict
    metrics.json holds; {} before a first epoch ended), `history` (its
    per-epoch rows), `model` (the trained network, built and loaded from the
    checkpoint on first use, in eval mode, on `device`). Methods: `predict(x)`
    and `evaluate()`. `os.fspath(run)` is the run directory.
    """

    def __init__(
        self,
        dir: str | os.PathLike,
        *,
        spec: Spec | None = None,
        metrics: dict | None = None,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        self.dir = Path(dir)
        self.checkpoint = Path(checkpoint) if checkpoint else self.dir / "checkpoint.pt"
        self.device = device
        self._spec = spec
        self._metrics = metrics
        self._state = None  # weights read with the spec, until the model is built
        self._model = None

    def __repr__(self) -> str:
        metrics = self._metrics or {}
        shown = [f"{str(self.dir)!r}"]
        for key in ("name", "epochs", "test_accuracy", "test_mse"):
            if metrics.get(key) is not None:
                value = metrics[key]
                shown.append(
                    f"{key}={value:.4g}"
                    if isinstance(value, float)
                    else f"{key}={value!r}"
                )
        return f"Run({', '.join(shown)})"

    def __fspath__(self) -> str:
        return str(self.dir)

    @property
    def spec(self) -> Spec:
        """The Spec the weights were trained from (the checkpoint's own)."""
        if self._spec is None:
            self._spec, self._state = _read_checkpoint(self.checkpoint)
        return self._spec

    @property
    def metrics(self) -> dict:
        """The dict in DIR/metrics.json ({} where there is none yet)."""
        if self._metrics is None:
            self._metrics = _read_metrics(self.dir / "metrics.json")
        return self._metrics

    @property
    def history(self) -> list[dict]:
        """One row per finished epoch: train_loss, test_loss, test_accuracy (or
        test_mse, ...), seconds, ... (metrics["history"])."""
        return self.metrics.get("history", [])

    @property
    def model(self) -> torch.nn.Module:
        """The trained network (`snncompile.build(spec)` with the checkpoint's
        weights), built on first use; eval mode, on this Run's device."""
        if self._model is None:
            import torch

            from . import build
            from .lower import checkpoint as ckpt

            spec = self.spec
            state = self._state
            if state is None:
                _, state = _read_checkpoint(self.checkpoint)
            with torch.random.fork_rng(devices=[]):  # the caller's RNG untouched
                net = build(spec, seed=spec.train.seed)
            ckpt.load_weights(net, state, f"checkpoint {self.checkpoint}")
            self._model = net.eval().to(_device(self.device))
            self._state = None
        return self._model

    def predict(self, x, **options) -> Prediction:
        """`snncompile.predict(self, x, **options)`: scores and predictions of
        raw input samples (see predict)."""
        return predict(self, x, **options)

    def evaluate(
        self,
        *,
        data_root=None,
        limit_test: int | None = None,
        device: str | None = None,
        download: bool = True,
    ) -> dict:
        """Test loss, the task's metrics (test_accuracy, or test_mse, test_mae,
        test_r2) and per-layer firing rates of the model on the spec's test
        set, as `snncompile eval` reports them (limited to `limit_test`
        samples; on `device`, "cpu", "cuda" or "auto", default the model's,
        where the model then stays)."""
        from .train import loop

        model = self.model
        device = str(_device(device) if device else _device_of(model))
        result = loop.evaluate(
            self.spec,
            net=model,
            data_root=data_root,
            limit_test=limit_test,
            device=device,
            download=download,
        )
        self.device = device
        return result


def train(spec, *, overrides: Sequence[str] | None = None, **options) -> Run:
    """Train a spec and write a run directory; returns its Run.

    `spec`: a spec file's path, a Spec, or a dict of its fields (validated as
    `Spec(**data)`); `overrides`: "path.to.field=value" assignments, as
    `--set`. Options (those of `snncompile train`): out (the run directory:
    new or empty unless `overwrite`; default runs/NAME-TIME), epochs, seed,
    limit_train, limit_test, resume (a run directory to continue), compile
    (a `--compile` mode: the command's default, or "native", "neurons",
    "model", "none", "plain"; snncompile/lower/optimize.py), data_root,
    download, progress (a progress bar on stderr), tensorboard, log_every,
    overwrite, on_iteration(epoch, iteration), on_epoch(epoch, row),
    threads_per_rank.

    Raises SpecError for an invalid spec, UserError (one line) for anything
    else a user can fix, a diverged run included; KeyboardInterrupt after a
    Ctrl-C, with a checkpoint that `resume=` continues.
    """
    from .train import loop

    overrides = list(overrides or ())
    if isinstance(spec, (str, os.PathLike)):
        # the file itself, so that training refuses to write over it (overrides
        # the way the command line's --set reaches the loop)
        path = os.fspath(spec)
        with cli_overrides([path], overrides):
            metrics = loop.train(path, **options)
    else:
        metrics = loop.train(as_spec(spec, overrides), **options)
    return Run(metrics["run_dir"], metrics=metrics)


def load_run(dir: str | os.PathLike, *, best: bool = False, device: str = "cpu") -> Run:
    """The Run of a run directory: its spec, metrics and trained model.

    `dir`: a run directory (the model from its checkpoint.pt, the last epoch's;
    with `best`, from best.pt, which train.early_stopping keeps), or a
    checkpoint file. `device`: where the model goes ("cpu", "cuda", "auto").
    The checkpoint and metrics.json are read now (the model is built on first
    use); a missing or unreadable run is a one-line UserError."""
    path = Path(dir)
    if path.is_file():
        if best:
            raise UserError(f"best=True takes a run directory, not the file {path}")
        checkpoint, run_dir = path, path.parent
    elif not path.exists():
        raise UserError(f"no run directory {path}")
    elif not path.is_dir():
        raise UserError(f"{path} is not a run directory")
    else:
        run_dir = path
        checkpoint = path / ("best.pt" if best else "checkpoint.pt")
        if not checkpoint.is_file():
            why = " (train.early_stopping keeps one)" if best else ""
            raise UserError(
                f"{path} is not a run directory: it has no {checkpoint.name}{why}"
            )
    _device(device)  # an impossible device: refused now
    spec, state = _read_checkpoint(checkpoint)
    run = Run(run_dir, spec=spec, checkpoint=checkpoint, device=device)
    run._state = state
    run.metrics  # noqa: B018 (read now: an unreadable metrics.json is refused here)
    return run


def _read_checkpoint(path: Path) -> tuple[Spec, dict]:
    """The spec and weights of an snncompile checkpoint; UserError if unusable."""
    from .lower import checkpoint as ckpt

    payload = ckpt.load(path)
    text = payload["spec"]
    if not isinstance(text, str):
        raise UserError(f"{path} holds no spec")
    try:
        spec = loads(text, file=f"{path} (its spec)", fmt="json")
    except SpecError as err:
        raise UserError(
            f"{path} holds a spec that is not valid now: {first_line(err)}"
        ) from None
    if not isinstance(payload["model"], dict):
        raise UserError(f"{path} holds no model weights")
    return spec, payload["model"]


def _read_metrics(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


def _device(name) -> torch.device:
    """A device by name ("cpu", "cuda", "cuda:1", "auto": CUDA when present);
    UserError for one that is not here."""
    import torch

    from .train.loop import pick_device

    if str(name) == "auto":
        return pick_device("auto")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device {name!r}: {first_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: no CUDA device is available")
    return device


def _device_of(net) -> torch.device:
    import torch

    for tensor in (*net.parameters(), *net.buffers()):
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- predict
def _network(model_or_run):
    """(module to call, its graph) of a Run, a run directory or a built model."""
    if isinstance(model_or_run, (str, os.PathLike)) and not isinstance(
        model_or_run, Run
    ):
        model_or_run = load_run(model_or_run)
    if isinstance(model_or_run, Run):
        net = model_or_run.model
        return net, net.graph
    for inner in (model_or_run, getattr(model_or_run, "_orig_mod", None)):
        graph = getattr(inner, "graph", None)
        if graph is not None and hasattr(graph, "spec_json"):
            return model_or_run, graph
    raise TypeError(
        "predict takes a Run, a run directory, or a model that snncompile.build or "
        f"snncompile.compile made, not {type(model_or_run).__name__}"
    )


def _series(graph) -> bool:
    """Whether the spec's data are time series [T, B, ...] (event recordings, or
    tensors under a spikes encoding), not samples that become sequences."""
    source = graph.source
    if source is None or source.type == "image_folder":
        return False
    if source.type == "tensors":
        return graph.encoding["type"] == "spikes"
    return True


def _normalization(graph):
    """(mean, std, the shape they apply to) of train.normalize, as the training
    data use it (built-in datasets only), or None."""
    normalize = graph.train.get("normalize")
    if not normalize or graph.source is not None:
        return None
    import torch

    from .train.data import DATASETS

    name = graph.train["dataset"]
    native = tuple(DATASETS[name][3]) if name in DATASETS else tuple(graph.input_shape)
    view = (-1,) + (1,) * (len(native) - 1)
    mean = torch.tensor(list(normalize["mean"]), dtype=torch.float32).view(view)
    std = torch.tensor(list(normalize["std"]), dtype=torch.float32).view(view)
    return mean, std, native


def _shape_error(x, graph, series: bool) -> UserError:
    shape = list(graph.input_shape)
    size = math.prod(shape)
    lead = "[T, B, " if series else "[B, "
    return UserError(
        f"predict: inputs of shape {list(x.shape)} do not fit the spec's samples "
        f"{shape} ({size} values each); pass a batch {lead}{', '.join(map(str, shape))}]"
    )


def _prepare(graph, x, lengths, device):
    """Raw samples -> (model input, mask [T, B] of real steps or None), as the
    training data become batches (snncompile/train/data.py Split.batch)."""
    import torch

    shape = tuple(graph.input_shape)
    if _series(graph):
        x = x.to(device=device, dtype=torch.float32)
        mask = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=device).to(torch.int64)
            if lengths.shape != (x.shape[1],):
                raise UserError(
                    f"predict: lengths has shape {list(lengths.shape)}; the batch "
                    f"has {x.shape[1]} sequences"
                )
        if graph.steps and x.shape[0] > graph.steps:  # the spec's steps cap T
            x = x[: graph.steps]
            lengths = None if lengths is None else lengths.clamp(max=graph.steps)
        if lengths is not None:
            if int(lengths.min()) < 1 or int(lengths.max()) > x.shape[0]:
                raise UserError(
                    f"predict: lengths must be 1..{x.shape[0]} (the steps given)"
                )
            x = x[: int(lengths.max())]
            steps = torch.arange(x.shape[0], device=device)
            mask = steps.unsqueeze(1) < lengths.unsqueeze(0)
            if bool(mask.all()):
                mask = None
        return x.reshape(*x.shape[:2], *shape), mask
    if lengths is not None:
        raise UserError("predict: lengths are for time-series specs only")
    x = x.to(device)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.dtype == torch.uint8:  # images: scaled to [0, 1] as ToTensor does
        x = x.to(torch.float32).div_(255)
    else:
        x = x.to(torch.float32)
    normalization = _normalization(graph)
    if normalization is not None:
        mean, std, native = normalization
        x = x.reshape(x.shape[0], *native)
        x = (x - mean.to(device)) / std.to(device)
    x = x.reshape(x.shape[0], *shape)
    if graph.sequence_input:  # delta or spikes of static samples
        x = x.unsqueeze(0).expand(graph.steps, *x.shape)
        if graph.encoding["type"] == "spikes":
            x = torch.bernoulli(x.clamp(0, 1))
    return x, None


def predict(
    model_or_run,
    x,
    *,
    lengths=None,
    seed: int | None = None,
    batch_size: int | None = None,
) -> Prediction:
    """Scores and predictions of a trained model for raw input samples.

    `model_or_run`: a Run, a run directory, or a model from snncompile.build or
    snncompile.compile (with weights loaded). `x`: a batch of samples as the
    dataset stores them, a tensor or array [B, ...] with the spec's input shape
    (or as many values per sample): uint8 images are scaled to [0, 1], float
    samples are taken as they are, train.normalize is applied (built-in
    datasets), and samples become the network's input as the spec's encoding
    says (direct, rate, latency inside the network; delta and spikes repeat a
    static sample over the steps, spikes as a Bernoulli spike train). For a
    time-series spec (event recordings, or tensors under a spikes encoding)
    `x` is [T, B, ...], with `lengths` [B] the real steps of padded sequences.

    Random encodings draw from a generator seeded with `seed` (default: the
    spec's train.seed, as evaluation does: the same inputs in the same batches
    give evaluation's predictions); the global RNG is left as it was. Runs in
    eval mode without gradients, `batch_size` samples at a time (default the
    spec's eval batch size), on the model's device; returns Prediction(scores,
    predictions) on that device.
    """
    import torch

    from . import registry
    from .runtime import decode as decoders

    net, graph = _network(model_or_run)
    series = _series(graph)
    if not torch.is_tensor(x):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"predict: x is not a tensor ({first_line(err)})") from None
    size, lead = math.prod(graph.input_shape), 2 if series else 1
    if x.dim() < lead or math.prod(x.shape[lead:]) != size:
        raise _shape_error(x, graph, series)
    count = x.shape[lead - 1]
    if count == 0:
        raise UserError("predict: the batch is empty")
    if lengths is not None and not torch.is_tensor(lengths):
        lengths = torch.as_tensor(lengths)
    seed = graph.train["seed"] if seed is None else seed
    batch_size = batch_size or graph.train["eval_batch_size"]
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    device = _device_of(net)
    decode = getattr(decoders, registry.DECODERS[graph.decoding])
    training = net.training
    net.eval()
    scores = []
    try:
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, count, batch_size):
                part = slice(start, start + batch_size)
                chunk = x[:, part] if series else x[part]
                chunk_lengths = None if lengths is None else lengths[part]
                inputs, mask = _prepare(graph, chunk, chunk_lengths, device)
                spk, mem = net(inputs)
                if mask is None:
                    scores.append(decode(spk, mem))
                else:
                    scores.append(decoders.decode_by_length(decode, spk, mem, mask))
    finally:
        net.train(training)
    result = torch.cat(scores)
    if graph.task == "regression":
        return Prediction(result, result)
    return Prediction(result, result.argmax(dim=-1))


# --------------------------------------------------------------------------- losses
def _graph(spec):
    """The IR graph of a Spec, spec file, dict, Run or built model."""
    if isinstance(spec, Run):
        spec = spec.spec
    graph = getattr(getattr(spec, "_orig_mod", spec), "graph", None)
    if graph is not None and hasattr(graph, "spec_json"):
        return graph
    if hasattr(spec, "spec_json") and hasattr(spec, "nodes"):  # a Graph
        return spec
    from .ir.analyze import analyze

    return analyze(as_spec(spec))


def loss_fn(spec) -> Callable:
    """The spec's training loss as one function:
    `loss(spk, mem, targets, records=None, mask=None)` -> a 0-dim tensor.

    `spk`, `mem`: the output layer's records [T, B, C] (what the model
    returns); `targets`: labels [B] (int64) or regression targets [B, K];
    `records`: every spiking layer's spikes, `net(x, all_spikes=True)[2]`,
    needed when the spec has loss.rate_regularization (`loss.needs_records`
    says so); `mask` [T, B]: the real steps of padded sequences. `spec`: a Spec,
    a spec file, a dict, a Run or a built model. This is the loss training
    minimizes (snncompile.train.loop.make_loss, which also returns whether
    records are needed)."""
    from .train.loop import make_loss

    function, needs_records = make_loss(_graph(spec))

    def loss(spk, mem, targets, records=None, mask=None):
        if needs_records and records is None:
            raise ValueError(
                "this spec's loss has rate_regularization: pass records, every "
                "spiking layer's spikes (net(x, all_spikes=True) returns spk, mem, "
                "records)"
            )
        return function(spk, mem, targets, records, mask)

    loss.__doc__ = loss_fn.__doc__
    loss.needs_records = needs_records
    return loss


def decode_fn(spec) -> Callable:
    """The spec's output decoding as one function: `decode(spk, mem, mask=None)`
    -> scores [B, C] (predicted class: `.argmax(-1)`), or for regression the
    predicted values [B, K]; with `mask` [T, B] each padded sequence is decoded
    from its own real steps. `spec`: a Spec, a spec file, a dict, a Run or a
    built model."""
    from . import registry
    from .runtime import decode as decoders

    function = getattr(decoders, registry.DECODERS[_graph(spec).decoding])

    def decode(spk, mem, mask=None):
        if mask is None:
            return function(spk, mem)
        return decoders.decode_by_length(function, spk, mem, mask)

    decode.__doc__ = decode_fn.__doc__
    return decode
