"""Data sources: tensor files, image folders and event datasets in their real
on-disk formats, trained from the CLI, the Python API and the generated script
with identical results; padded variable-length sequences; caching; export."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import snncompile
from snncompile.cli import main as cli
from snncompile.codegen.render import render_script
from snncompile.runtime import decode as decoders
from snncompile.runtime import losses
from snncompile.train import loop
from snncompile.train.data import load_split

sys.path.insert(0, str(Path(__file__).parent))
import event_files as ef

REPO = Path(__file__).resolve().parents[1]

FEEDFORWARD = """
snncompile: 1
name: {name}
input: {{shape: {shape}, encoding: {{type: {encoding}}}}}
steps: {steps}
layers:
  - {{type: flatten}}
  - {{type: linear, out_features: {classes}}}
  - {{type: leaky, beta: 0.9}}
train:
  dataset: {dataset}
  batch_size: 8
  epochs: 1
  seed: 3
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path / "cache"))


def _spec(tmp_path, name, dataset, shape, classes, encoding="spikes", steps="auto"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        FEEDFORWARD.format(
            name=name,
            dataset=dataset,
            shape=shape,
            classes=classes,
            encoding=encoding,
            steps=steps,
        )
    )
    return path


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"_gen_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write_tensors(root: Path, suffix: str, series: bool, lengths: bool):
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 12)):
        shape = (n, 6, 3) if series else (n, 3, 4)
        x = rng.random(shape).astype(np.float32)
        y = np.arange(n) % 3
        arrays = {"x": x, "y": y}
        if lengths:
            arrays["len"] = 2 + np.arange(n) % 5
        path = root / f"{split}{suffix}"
        if suffix == ".npz":
            np.savez(path, **arrays)
        elif suffix == ".pt":
            torch.save(
                {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, path
            )
        else:
            import h5py

            with h5py.File(path, "w") as f:
                for k, v in arrays.items():
                    f[k] = v


def _image_folder(root: Path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(("cat", "dog", "emu")):
            folder = root / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (10, 12, 3)) + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


CASES = {
    # id: (writer, dataset mapping, input shape, classes, encoding)
    "nmnist": (
        ef.write_nmnist,
        "{type: nmnist, frames: {n_time_bins: 6}, downsample: 2, denoise: 20000}",
        "[2, 17, 17]",
        10,
        "spikes",
    ),
    "nmnist_time_window": (
        ef.write_nmnist,
        "{type: nmnist, frames: {time_window: 50000}}",
        "[2, 34, 34]",
        10,
        "spikes",
    ),
    "shd": (
        ef.write_shd,
        "{type: shd, frames: {event_count: 10}, downsample: 7}",
        "[100]",
        20,
        "spikes",
    ),
    "ssc": (
        ef.write_ssc,
        "{type: ssc, frames: {n_time_bins: 5}, downsample: 10}",
        "[70]",
        35,
        "spikes",
    ),
    "dvs_gesture_tonic": (
        ef.write_dvs_tonic,
        "{type: dvs_gesture, frames: {n_time_bins: 4}, downsample: 8}",
        "[2, 16, 16]",
        11,
        "spikes",
    ),
    "dvs_gesture_aedat": (
        ef.write_dvs_aedat,
        (
            "{type: dvs_gesture, path: DvsGesture, frames: {time_window: 20000}, "
            "downsample: 8}"
        ),
        "[2, 16, 16]",
        11,
        "spikes",
    ),
    "npz_static": (
        lambda r: _write_tensors(r, ".npz", False, False),
        (
            "{type: tensors, train: train.npz, test: test.npz, inputs_key: x, "
            "targets_key: y}"
        ),
        "[3, 4]",
        3,
        "rate",
    ),
    "pt_series": (
        lambda r: _write_tensors(r, ".pt", True, True),
        (
            "{type: tensors, train: train.pt, test: test.pt, inputs_key: x, "
            "targets_key: y, lengths_key: len}"
        ),
        "[3]",
        3,
        "spikes",
    ),
    "h5_series": (
        lambda r: _write_tensors(r, ".h5", True, False),
        (
            "{type: tensors, train: train.h5, test: test.h5, inputs_key: x, "
            "targets_key: y}"
        ),
        "[3]",
        3,
        "spikes",
    ),
    "image_folder": (
        _image_folder,
        "{type: image_folder, train: imgs/train, test: imgs/test}",
        "[1, 8, 8]",
        3,
        "rate",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_source_trains_alike_from_cli_api_and_script(case, tmp_path, capsys):
    writer, dataset, shape, classes, encoding = CASES[case]
    root = tmp_path / "data"
    root.mkdir()
    writer(root)
    steps = "auto" if encoding == "spikes" else 5
    spec_path = _spec(tmp_path, case, dataset, shape, classes, encoding, steps)
    args = ["--data-root", str(root), "--compile", "none", "--quiet"]
    assert cli(["train", str(spec_path), "--out", str(tmp_path / "cli"), *args]) == 0
    by_cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    spec = snncompile.load(spec_path)
    by_api = loop.train(
        spec, data_root=root, out=tmp_path / "api", progress=False, compile="none"
    )
    script = tmp_path / f"{case}.py"
    script.write_text(render_script(snncompile.analyze(spec)))
    _, by_script = _import(script).train(data_root=str(root))
    capsys.readouterr()
    for metrics in (by_api, by_script):
        assert metrics["test_loss"] == by_cli["test_loss"]
        assert metrics["test_accuracy"] == by_cli["test_accuracy"]
        assert metrics["history"][0]["train_loss"] == by_cli["history"][0]["train_loss"]
    assert by_cli["train_samples"] > 0 and by_cli["test_samples"] > 0


def test_frames_are_tonic_counts_and_cached(tmp_path, monkeypatch):
    """Every event lands in one frame (counts sum to the events kept), and a
    second load reads the cache instead of the files."""
    root = tmp_path / "data"
    ef.write_nmnist(root, per_class=1, events=40)
    spec_path = _spec(
        tmp_path, "nm", "{type: nmnist, frames: {n_time_bins: 5}}", "[2, 34, 34]", 10
    )
    graph = snncompile.analyze(snncompile.load(spec_path))
    split = load_split(graph, True, root=root)
    assert split.inputs.shape == (10, 5, 2, 34, 34)
    dense = split.inputs[torch.arange(10)]  # kept sparse, dense per batch
    from snncompile.runtime import sources

    # tonic's ToFrame bins [t0, t_end): the events at a recording's last time
    # stamp fall outside its last bin (documented in README)
    events, _ = sources.read_nmnist(str(root / "NMNIST"), True)
    kept = sum(int((e["t"] < e["t"].max()).sum()) for e in events)
    assert int(dense.sum()) == kept and kept >= 10 * 40 - 10

    def refuse(*_):
        raise AssertionError("read the files again")

    monkeypatch.setattr(sources, "read_nmnist", refuse)
    again = load_split(graph, True, root=root)
    assert torch.equal(again.inputs[torch.arange(10)], dense)
    # a changed file is a new cache key: read again
    first = min((root / "NMNIST" / "Train" / "0").glob("*.bin"))
    first.write_bytes(first.read_bytes()[:-5])
    with pytest.raises(AssertionError, match="read the files again"):
        load_split(graph, True, root=root)


def _by_sample(function, spk, mem, lengths, *rest):
    return [
        function(spk[: int(n), i : i + 1], mem[: int(n), i : i + 1], *rest)
        for i, n in enumerate(lengths)
    ]


@pytest.mark.parametrize(
    "name",
    [
        "loss_ce_membrane",
        "loss_ce_rate",
        "loss_ce_count",
        "loss_mse_count",
        "loss_ce_max_membrane",
        "loss_mse_membrane",
        "loss_ce_temporal",
    ],
)
def test_padded_loss_is_the_mean_of_unpadded_losses(name):
    """loss_by_length over a padded batch equals the mean of each sample's loss
    on its own steps: what lies in padded steps never counts."""
    gen = torch.Generator().manual_seed(0)
    steps, batch, classes = 9, 6, 4
    lengths = torch.tensor([9, 3, 5, 9, 1, 5])
    mask = torch.arange(steps).unsqueeze(1) < lengths
    mem = torch.randn(steps, batch, classes, generator=gen)
    spk = (torch.rand(steps, batch, classes, generator=gen) < 0.4).float()
    junk = ~mask.unsqueeze(-1)
    mem_junk = torch.where(junk, 1e3, mem)
    spk_junk = torch.where(junk, 1.0, spk)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    function = getattr(losses, name)
    padded = losses.loss_by_length(function, spk_junk, mem_junk, y, mask)
    each = [
        function(spk[: int(n), i : i + 1], mem[: int(n), i : i + 1], y[i : i + 1])
        for i, n in enumerate(lengths)
    ]
    torch.testing.assert_close(padded, torch.stack(each).mean())


@pytest.mark.parametrize(
    "name",
    [
        "decode_rate",
        "decode_latency",
        "decode_max_membrane",
        "decode_mean_membrane",
        "decode_last_membrane",
    ],
)
def test_padded_decoding_reads_real_steps_only(name):
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([4, 7, 2])
    mask = torch.arange(7).unsqueeze(1) < lengths
    mem = torch.randn(7, 3, 5, generator=gen)
    spk = (torch.rand(7, 3, 5, generator=gen) < 0.3).float()
    junk = ~mask.unsqueeze(-1)
    decode = getattr(decoders, name)
    padded = decoders.decode_by_length(
        decode, torch.where(junk, 1.0, spk), torch.where(junk, 1e3, mem), mask
    )
    each = torch.cat(_by_sample(decode, spk, mem, lengths))
    torch.testing.assert_close(padded, each)


def test_padded_batch_gives_each_sample_its_unpadded_result(tmp_path):
    """A padded batch through the model, loss and decoding equals each sample
    run alone on its own steps (the model is causal; the mask does the rest)."""
    root = tmp_path / "data"
    root.mkdir()
    _write_tensors(root, ".npz", True, True)
    spec_path = _spec(
        tmp_path,
        "pad",
        "{type: tensors, train: train.npz, test: test.npz, inputs_key: x, "
        "targets_key: y, lengths_key: len}",
        "[3]",
        3,
    )
    graph = snncompile.analyze(snncompile.load(spec_path))
    split = load_split(graph, False, root=root)
    net = snncompile.build(snncompile.load(spec_path))
    loss_of, _ = loop.make_loss(graph)
    x, y, mask = split.batch(torch.arange(6))
    assert mask is not None and x.shape[0] == int(split.lengths[:6].max())
    spk, mem = net(x)
    together = loss_of(spk, mem, y, None, mask)
    alone = []
    for i in range(6):
        xi, yi, mi = split.batch(torch.tensor([i]))
        assert mi is None
        s, m = net(xi)
        alone.append(loss_of(s, m, yi))
    torch.testing.assert_close(together, torch.stack(alone).mean())


def _sweep_files(root: Path, variable: bool, n_train=160, n_test=80):
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        times, units, labels = ef.sweep_task(n, 700, seed, variable=variable)
        ef.write_spike_h5(root / "SWEEP" / f"shd_{split}.h5", times, units, labels)


SWEEP = """
snncompile: 1
name: sweep
input: {{shape: [20], encoding: {{type: spikes}}}}
steps: auto
layers:
  - {{type: linear, out_features: 32}}
  - {{type: rleaky, beta: 0.9, recurrence: {{type: linear}}}}
  - {{type: linear, out_features: 2}}
  - {{type: leaky, beta: 0.9}}
decoding: {{type: max_membrane}}
loss: {{type: ce_max_membrane}}
train:
  dataset: {{type: shd, path: SWEEP, frames: {frames}, downsample: 35}}
  batch_size: 16
  epochs: 2
  optimizer: {{type: adam, lr: 0.005}}
"""


@pytest.mark.parametrize(
    "variable, frames",
    [(False, "{n_time_bins: 30}"), (True, "{time_window: 2000}")],
    ids=["fixed", "padded"],
)
def test_temporal_task_learns_with_fixed_and_padded_lengths(tmp_path, variable, frames):
    """Two classes that differ only in spike order (every channel fires once,
    in a sweep up or down): a recurrent spec reaches >= 90% test accuracy, with
    recordings of one length (fixed T) as with 40-80 ms (padded, masked)."""
    root = tmp_path / "data"
    _sweep_files(root, variable)
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(SWEEP.format(frames=frames))
    metrics = loop.train(
        snncompile.load(spec_path),
        data_root=root,
        out=tmp_path / "run",
        progress=False,
        compile="none",
    )
    assert metrics["test_accuracy"] >= 0.9
    if variable:
        graph = snncompile.analyze(snncompile.load(spec_path))
        lengths = load_split(graph, True, root=root).lengths
        assert int(lengths.min()) < int(lengths.max())  # really padded


def _val_spec(tmp_path):
    """A tensors spec holding out a quarter of train.npz."""
    return _spec(
        tmp_path,
        "val",
        "{type: tensors, train: train.npz, test: test.npz, inputs_key: x, "
        "targets_key: y}\n  val_fraction: 0.25",
        "[3, 4]",
        3,
        "rate",
        4,
    )


def test_val_fraction_holds_out_a_fixed_part(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _write_tensors(root, ".npz", False, False)
    spec_path = _val_spec(tmp_path)
    graph = snncompile.analyze(snncompile.load(spec_path))
    train, val = load_split(graph, True, root=root), load_split(graph, "val", root=root)
    assert (len(train), len(val)) == (18, 6)
    rows = {tuple(r.tolist()) for r in train.inputs.flatten(1)}
    assert not rows & {tuple(r.tolist()) for r in val.inputs.flatten(1)}
    metrics = loop.train(
        snncompile.load(spec_path),
        data_root=root,
        out=tmp_path / "run",
        progress=False,
        compile="none",
    )
    assert metrics["train_samples"] == 18


def test_val_fraction_reads_the_training_file_once(tmp_path, monkeypatch):
    """The held-out part and the rest come from one read of the training file
    (a second read cost as much again); what each part holds is unchanged."""
    from snncompile.runtime import sources as readers

    root = tmp_path / "data"
    root.mkdir()
    _write_tensors(root, ".npz", False, False)
    spec_path = _val_spec(tmp_path)
    graph = snncompile.analyze(snncompile.load(spec_path))
    apart = load_split(graph, True, root=root), load_split(graph, "val", root=root)
    read, real = [], readers.read_tensors

    def counted(path, *keys):
        read.append(Path(path).name)
        return real(path, *keys)

    monkeypatch.setattr(readers, "read_tensors", counted)
    metrics = loop.train(
        snncompile.load(spec_path),
        data_root=root,
        out=tmp_path / "run",
        progress=False,
        compile="none",
    )
    assert sorted(read) == ["test.npz", "train.npz"]
    assert metrics["train_samples"] == 18
    assert metrics["history"][0]["val_accuracy"] is not None
    read.clear()
    from snncompile.train.data import load_training

    train, val = load_training(graph, root=root, limit=10)
    assert read == ["train.npz"]
    assert torch.equal(train.inputs, apart[0].inputs[:10])
    assert torch.equal(val.inputs, apart[1].inputs) and len(val) == 6


SSC = "{type: ssc, frames: {n_time_bins: 5}, downsample: 10}"


def test_ssc_validates_on_its_own_valid_file(tmp_path, monkeypatch):
    """SSC's ssc_valid.h5, when present, is the validation split (evaluated
    after every epoch, in metrics.json and metrics.csv); the training samples
    are all of ssc_train.h5, as in the generated script."""
    import csv

    from snncompile.runtime import sources as readers

    root = tmp_path / "data"
    ef.write_ssc(root, n_valid=21)
    spec_path = _spec(tmp_path, "sscv", SSC, "[70]", 35)
    graph = snncompile.analyze(snncompile.load(spec_path))
    read, real = [], readers.read_ssc

    def counted(folder, train):
        read.append(train)
        return real(folder, train)

    monkeypatch.setattr(readers, "read_ssc", counted)
    train, val = load_split(graph, True, root=root), load_split(graph, "val", root=root)
    assert read == [True, "valid"]
    assert (len(train), len(val)) == (70, 21)
    _, labels = real(str(root / "SSC"), "valid")
    assert val.labels.tolist() == labels
    metrics = loop.train(
        snncompile.load(spec_path),
        data_root=root,
        out=tmp_path / "run",
        progress=False,
        compile="none",
        epochs=2,
    )
    assert read == [True, "valid", False]  # the splits were cached
    assert metrics["train_samples"] == 70
    assert all(h["val_accuracy"] is not None for h in metrics["history"])
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "epoch"]
    assert [r["val_accuracy"] != "" for r in rows] == [True, True]
    # without the file: no validation split (as before)
    from snncompile.train.data import validation

    assert validation(graph, root) == "file"
    (root / "SSC" / "ssc_valid.h5").unlink()
    assert validation(graph, root) is None
    assert load_split(graph, "val", root=root) is None


def test_ssc_val_fraction_holds_out_of_ssc_train_instead(tmp_path, monkeypatch):
    """train.val_fraction, when set, wins over ssc_valid.h5 (not read)."""
    from snncompile.runtime import sources as readers
    from snncompile.train.data import load_training, validation

    root = tmp_path / "data"
    ef.write_ssc(root, n_valid=21)
    spec_path = _spec(tmp_path, "sscf", SSC + "\n  val_fraction: 0.2", "[70]", 35)
    graph = snncompile.analyze(snncompile.load(spec_path))
    assert validation(graph, root) == "fraction"
    read, real = [], readers.read_ssc
    monkeypatch.setattr(
        readers,
        "read_ssc",
        lambda folder, train: read.append(train) or real(folder, train),
    )
    train, val = load_training(graph, root=root)
    assert read == [True]
    assert (len(train), len(val)) == (56, 14)


def test_event_model_exports_onnx_with_time_major_input(tmp_path):
    root = tmp_path / "data"
    ef.write_nmnist(root, per_class=1)
    spec_path = _spec(
        tmp_path,
        "nmx",
        "{type: nmnist, frames: {n_time_bins: 6}, downsample: 2}",
        "[2, 17, 17]",
        10,
    )
    out = tmp_path / "m.onnx"
    assert cli(["export", str(spec_path), "-o", str(out), "--verify"]) == 0
    import onnx

    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [6, "batch", 2, 17, 17]


def test_variable_length_model_exports_step_graph_not_sequence(tmp_path, capsys):
    spec_path = _spec(
        tmp_path,
        "nmv",
        "{type: nmnist, frames: {time_window: 1000}}",
        "[2, 34, 34]",
        10,
    )
    assert cli(["export", str(spec_path), "-o", str(tmp_path / "s.onnx")]) == 2
    assert "--mode step" in capsys.readouterr().err
    out = tmp_path / "step.onnx"
    assert (
        cli(["export", str(spec_path), "-o", str(out), "--mode", "step", "--verify"])
        == 0
    )


@pytest.mark.parametrize(
    "dataset, shape, encoding, steps, words",
    [
        (
            "{type: nmnist, frames: {n_time_bins: 5}}",
            "[2, 34, 34]",
            "rate",
            5,
            "input.encoding.type",
        ),
        (
            "{type: nmnist, frames: {n_time_bins: 5}}",
            "[1, 28, 28]",
            "spikes",
            "auto",
            "input.shape",
        ),
        (
            "{type: nmnist, frames: {n_time_bins: 5}}",
            "[2, 34, 34]",
            "spikes",
            7,
            "n_time_bins",
        ),
        (
            "{type: shd, frames: {n_time_bins: 5}, denoise: 100}",
            "[700]",
            "spikes",
            "auto",
            "denoise",
        ),
        (
            "{type: nmnist, frames: {n_time_bins: 5, time_window: 10}}",
            "[2, 34, 34]",
            "spikes",
            "auto",
            "exactly one",
        ),
        ("mnist", "[1, 28, 28]", "direct", "auto", "steps"),
        (
            "{type: image_folder, train: a, test: b}",
            "[2, 8, 8]",
            "rate",
            4,
            "input.shape",
        ),
    ],
)
def test_source_spec_errors_are_located(
    tmp_path, capsys, dataset, shape, encoding, steps, words
):
    spec_path = _spec(tmp_path, "bad", dataset, shape, 10, encoding, steps)
    assert cli(["validate", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and words in err and "Traceback" not in err


def test_example_specs_train_on_files_in_their_formats(tmp_path, capsys):
    """specs/tensors_example.yaml reads the files README tells users to write."""
    root = tmp_path / "data" / "my_data"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        lengths = rng.integers(10, 30, n)
        targets = rng.integers(0, 4, n)
        inputs = np.zeros((n, 30, 16), dtype=np.float32)
        for i, (length, label) in enumerate(zip(lengths, targets)):
            inputs[i, :length, 4 * label : 4 * label + 4] = (
                rng.random((length, 4)) < 0.5
            )
        np.savez(root / f"{split}.npz", inputs=inputs, targets=targets, lengths=lengths)
    code = cli(
        [
            "train",
            str(REPO / "specs" / "tensors_example.yaml"),
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
            "--compile",
            "none",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5


def test_val_metrics_follow_any_validation_split(tmp_path):
    """Early stopping and sweeps may watch val_* with SSC's own ssc_valid.h5
    (not only with train.val_fraction); when the file turns out to be missing,
    train refuses in one line naming the field, before the first step."""
    from snncompile.spec.errors import SpecError, UserError

    root = tmp_path / "data"
    ef.write_ssc(root, n_valid=21)
    watched = SSC + "\n  early_stopping: {metric: val_loss, patience: 1}"
    spec_path = _spec(tmp_path, "sscs", watched, "[70]", 35)
    metrics = loop.train(
        snncompile.load(spec_path),
        data_root=root,
        out=tmp_path / "run",
        progress=False,
        compile="none",
        epochs=2,
    )
    assert all(h["val_loss"] is not None for h in metrics["history"])
    swept = _spec(tmp_path, "sweepv", SSC, "[70]", 35)
    swept.write_text(
        swept.read_text() + "sweep: {metric: val_accuracy, trials: 2, parameters: "
        "{train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}}}\n"
    )
    snncompile.load(swept)  # accepted
    (root / "SSC" / "ssc_valid.h5").unlink()
    with pytest.raises(UserError, match=r"train.early_stopping.metric: val_loss "
                       r"needs a validation split.*ssc_valid.h5"):  # fmt: skip
        loop.train(
            snncompile.load(spec_path),
            data_root=root,
            out=tmp_path / "run2",
            progress=False,
            compile="none",
        )
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()
    # a source that can have no validation split is refused at load
    nmnist = _spec(
        tmp_path,
        "novalid",
        "{type: nmnist, frames: {n_time_bins: 5}}\n"
        "  early_stopping: {metric: val_loss}",
        "[2, 34, 34]",
        10,
    )
    with pytest.raises((SpecError, UserError), match="needs a validation split"):
        loop.train(snncompile.load(nmnist), data_root=root, out=tmp_path / "r3")
