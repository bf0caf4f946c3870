"""A corpus of broken data files for `train.dataset` sources, each written
here in its real on-disk format and run through `snncompile train`: every one
must end in exit status 2 and ONE line `error: ...` naming the file (or folder)
and the problem, with no traceback and no checkpoint written."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from snncompile.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import event_files as ef

# --------------------------------------------------------------------------- models
# Each model is a spec without `train.dataset`; a case adds its own dataset.
MODELS = {
    # static samples [4], 10 classes
    "static": {
        "input": {"shape": [4], "encoding": {"type": "direct"}},
        "steps": 2,
        "layers": [
            {"type": "linear", "out_features": 10},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    # time series [N, T, 4], 10 classes
    "series": {
        "input": {"shape": [4], "encoding": {"type": "spikes"}},
        "steps": "auto",
        "layers": [
            {"type": "linear", "out_features": 10},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    # regression of 3 values from static samples [4]
    "regression": {
        "task": "regression",
        "input": {"shape": [4], "encoding": {"type": "direct"}},
        "steps": 2,
        "layers": [
            {"type": "linear", "out_features": 3},
            {"type": "li", "beta": 0.9},
        ],
        "decoding": {"type": "mean_membrane"},
        "loss": {"type": "mse", "readout": "mean_membrane"},
    },
    # grayscale 8x8 images, 10 classes
    "images": {
        "input": {"shape": [1, 8, 8], "encoding": {"type": "direct"}},
        "steps": 2,
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 10},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    # images with two classes
    "images2": {
        "input": {"shape": [1, 8, 8], "encoding": {"type": "direct"}},
        "steps": 2,
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 2},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    "nmnist": {
        "input": {"shape": [2, 34, 34], "encoding": {"type": "spikes"}},
        "steps": "auto",
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 10},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    "shd": {
        "input": {"shape": [700], "encoding": {"type": "spikes"}},
        "steps": "auto",
        "layers": [
            {"type": "linear", "out_features": 20},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    # SHD's 20 classes into 5 outputs
    "shd5": {
        "input": {"shape": [700], "encoding": {"type": "spikes"}},
        "steps": "auto",
        "layers": [
            {"type": "linear", "out_features": 5},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    "ssc": {
        "input": {"shape": [700], "encoding": {"type": "spikes"}},
        "steps": "auto",
        "layers": [
            {"type": "linear", "out_features": 35},
            {"type": "leaky", "beta": 0.9},
        ],
    },
    "dvs": {
        "input": {"shape": [2, 128, 128], "encoding": {"type": "spikes"}},
        "steps": "auto",
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 11},
            {"type": "leaky", "beta": 0.9},
        ],
    },
}

TENSORS = {"type": "tensors", "train": "d/train.npz", "test": "d/test.npz"}
IMAGES = {"type": "image_folder", "train": "img/train", "test": "img/test"}
BINS = {"n_time_bins": 3}


def _x(n=6, *tail):
    return np.random.default_rng(0).random((n, *(tail or (4,)))).astype(np.float32)


def _y(n=6, classes=10):
    return np.arange(n) % classes


def _npz(root, name="d/train.npz", **arrays):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _good_npz(root, name):
    return _npz(root, name, inputs=_x(), targets=_y())


def _png(path: Path, value: int):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _images(root, classes=("a", "b"), per_class=2, split="train"):
    for c in classes:
        for i in range(per_class):
            _png(root / "img" / split / c / f"{i}.png", 40 * i)


def _nmnist_good(root, split="Test", digits=range(10)):
    for d in digits:
        ef.nmnist_bin(
            root / "NMNIST" / split / str(d) / "0.bin",
            [1, 2, 3],
            [4, 5, 6],
            [10, 20, 30],
            [0, 1, 0],
        )


def _shd(root, times, units, labels, name="shd_train.h5"):
    ef.write_spike_h5(root / "SHD" / name, times, units, labels)


def _spikes(n, k=5, unit=3):
    times = [np.linspace(0, 0.01, k).astype(np.float32) for _ in range(n)]
    units = [np.full(k, unit, dtype=np.uint16) for _ in range(n)]
    return times, units


# --------------------------------------------------------------------------- writers
# Each writes the broken data under the data root and returns nothing: the
# table names the file the error must mention.
def w_nothing(root):
    pass


def w_npz_no_inputs(root):
    _npz(root, x=_x(), targets=_y())


def w_npz_wrong_shape(root):
    _npz(root, inputs=_x(6, 5), targets=_y())


def w_targets_count(root):
    _npz(root, inputs=_x(6), targets=_y(5))


def w_labels_out_of_range(root):
    y = _y()
    y[3] = 12
    _npz(root, inputs=_x(), targets=y)


def w_float_labels(root):
    _npz(root, inputs=_x(), targets=_y().astype(np.float32) + 0.5)


def w_nan_inputs(root):
    x = _x()
    x[2, 1] = np.nan
    _npz(root, inputs=x, targets=_y())


def w_inf_inputs(root):
    x = _x()
    x[4, 0] = -np.inf
    _npz(root, inputs=x, targets=_y())


def w_pt_plain_tensor(root):
    (root / "d").mkdir()
    torch.save(torch.zeros(6, 4), root / "d" / "train.pt")


def w_pt_random_bytes(root):
    (root / "d").mkdir()
    (root / "d" / "train.pt").write_bytes(np.random.default_rng(1).bytes(300))


def w_pt_pickled_object(root):
    from fractions import Fraction

    (root / "d").mkdir()
    torch.save({"inputs": Fraction(1, 2), "targets": 0}, root / "d" / "train.pt")


def w_pt_empty(root):
    (root / "d").mkdir()
    (root / "d" / "train.pt").write_bytes(b"")


def w_h5_text(root):
    (root / "d").mkdir()
    (root / "d" / "train.h5").write_text("inputs,targets\n1,2\n")


def w_csv(root):
    (root / "d").mkdir()
    (root / "d" / "train.csv").write_text("inputs,targets\n1,2\n")


def w_npz_pickled(root):
    objects = np.empty(6, dtype=object)
    objects[:] = [[1.0] * 4] * 6
    _npz(root, inputs=objects, targets=_y())


def w_npz_empty(root):
    _npz(root, inputs=np.zeros((0, 4), np.float32), targets=np.zeros(0, np.int64))


def w_lengths_zero(root):
    _npz(root, inputs=_x(6, 5, 4), targets=_y(), lengths=np.array([5, 3, 0, 1, 2, 5]))


def w_lengths_over_t(root):
    _npz(root, inputs=_x(6, 5, 4), targets=_y(), lengths=np.array([5, 3, 9, 1, 2, 5]))


def w_lengths_static(root):
    _npz(root, inputs=_x(), targets=_y(), lengths=np.full(6, 1))


def w_regression_wrong_k(root):
    _npz(root, inputs=_x(), targets=_x(6, 2))


def w_regression_int_targets(root):
    _npz(root, inputs=_x(), targets=np.zeros((6, 3), np.int64))


def w_image_empty_class(root):
    _images(root, ("a", "b"))
    (root / "img" / "train" / "c").mkdir()


def w_image_corrupt_png(root):
    _images(root, ("a", "b"))
    (root / "img" / "train" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot")


def w_image_class_count(root):
    _images(root, ("a", "b", "c"))


def w_image_missing_folder(root):
    _images(root, ("a", "b"), split="test")


def w_nmnist_truncated(root):
    _nmnist_good(root, "Train")
    path = root / "NMNIST" / "Train" / "7" / "0.bin"
    path.write_bytes(path.read_bytes()[:-2])


def w_nmnist_outside(root):
    _nmnist_good(root, "Train")
    ef.nmnist_bin(
        root / "NMNIST" / "Train" / "3" / "00042.bin",
        [1, 50, 3],
        [4, 5, 6],
        [10, 20, 30],
        [0, 1, 0],
    )


def w_nmnist_empty_train(root):
    (root / "NMNIST" / "Train").mkdir(parents=True)
    _nmnist_good(root, "Test")


def w_nmnist_only_empty_folders(root):
    (root / "NMNIST" / "Train").mkdir(parents=True)
    (root / "NMNIST" / "Test").mkdir(parents=True)


def w_shd_no_units(root):
    import h5py

    (root / "SHD").mkdir()
    with h5py.File(root / "SHD" / "shd_train.h5", "w") as f:
        vf = h5py.vlen_dtype(np.dtype("float32"))
        f.create_dataset("spikes/times", (2,), dtype=vf)[:] = _spikes(2)[0]
        f.create_dataset("labels", data=np.array([0, 1], dtype=np.uint16))


def w_shd_ragged_mismatch(root):
    times, units = _spikes(3)
    units[1] = units[1][:4]
    _shd(root, times, units, [0, 1, 2])


def w_shd_labels(root):
    times, units = _spikes(4)
    _shd(root, times, units, [0, 1, 19, 2])


def w_shd_not_hdf5(root):
    (root / "SHD").mkdir()
    (root / "SHD" / "shd_train.h5").write_text("this is not HDF5\n")


def w_shd_unit_outside(root):
    times, units = _spikes(3)
    units[2][1] = 900
    _shd(root, times, units, [0, 1, 2])


def w_ssc_valid_not_hdf5(root):
    ef.write_ssc(root, n_valid=0)  # good ssc_train.h5 and ssc_test.h5
    (root / "SSC" / "ssc_valid.h5").write_text("this is not HDF5\n")


def w_ssc_valid_labels(root):
    ef.write_ssc(root, n_valid=0)
    times, units = _spikes(3)
    ef.write_spike_h5(root / "SSC" / "ssc_valid.h5", times, units, [0, 40, 2])


def w_dvs_missing_aedat(root):
    folder = root / "DVSGesture"
    folder.mkdir()
    ef.aedat31(folder / "user01_led.aedat", [1, 2], [3, 4], [0, 1], [100, 200])
    (folder / "user01_led_labels.csv").write_text(
        "class,startTime_usec,endTime_usec\n1,0,1000\n"
    )
    (folder / "trials_to_train.txt").write_text("user01_led.aedat\nuser09_led.aedat\n")


def w_dvs_missing_labels_csv(root):
    folder = root / "DVSGesture"
    folder.mkdir()
    ef.aedat31(folder / "user01_led.aedat", [1, 2], [3, 4], [0, 1], [100, 200])
    (folder / "trials_to_train.txt").write_text("user01_led.aedat\n")


def w_dvs_npy_columns(root):
    folder = root / "DVSGesture" / "ibmGestureTrain" / "user01_led"
    folder.mkdir(parents=True)
    np.save(folder / "4.npy", np.zeros((5, 3)))


def w_dvs_npy_name(root):
    folder = root / "DVSGesture" / "ibmGestureTrain" / "user01_led"
    folder.mkdir(parents=True)
    np.save(folder / "wave.npy", np.zeros((5, 4)))


def _dvs_trial(root, csv="class,startTime_usec,endTime_usec\n1,0,1000\n"):
    folder = root / "DVSGesture"
    folder.mkdir()
    ef.aedat31(folder / "user01_led.aedat", [1, 2], [3, 4], [0, 1], [100, 200])
    (folder / "user01_led_labels.csv").write_text(csv)
    (folder / "trials_to_train.txt").write_text("user01_led.aedat\n")
    return folder


def w_dvs_aedat_garbage(root):
    folder = _dvs_trial(root)
    (folder / "user01_led.aedat").write_bytes(b"no header here\n" * 4)


def w_dvs_labels_columns(root):
    _dvs_trial(root, "class,startTime_usec\n1,0\n")


def w_dvs_npy_outside(root):
    folder = root / "DVSGesture" / "ibmGestureTrain" / "user01_led"
    folder.mkdir(parents=True)
    rows = np.zeros((3, 4))
    rows[:, 1] = [0, 130, 5]
    np.save(folder / "2.npy", rows)


def w_nmnist_backwards(root):
    _nmnist_good(root, "Train")
    ef.nmnist_bin(
        root / "NMNIST" / "Train" / "5" / "00007.bin",
        [1, 2, 3],
        [4, 5, 6],
        [10, 30, 20],
        [0, 1, 0],
    )


# --------------------------------------------------------------------------- table
def _tensors(**over):
    return {**TENSORS, **over}


PT = {"train": "d/train.pt"}
NMNIST = {"type": "nmnist", "frames": BINS}
SHD = {"type": "shd", "frames": BINS}
DVS = {"type": "dvs_gesture", "frames": BINS}
SSC = {"type": "ssc", "frames": BINS}

# (id, writer, model, train.dataset, the file or folder named, words in the error)
CASES = [
    ("tensors-missing-file", w_nothing, "static", TENSORS, "d/train.npz:",
     ["no such file", "data root"]),
    ("events-missing-folder", w_nothing, "nmnist", NMNIST, "data/NMNIST:",
     ["no such folder", "Train/<digit>/<id>.bin", "garrickorchard.com",
      "--data-root"]),
    ("npz-no-inputs-key", w_npz_no_inputs, "static", TENSORS, "d/train.npz:",
     ["no array 'inputs'", "x, targets"]),
    ("npz-wrong-sample-shape", w_npz_wrong_shape, "static", TENSORS, "d/train.npz:",
     ["[6, 5]", "do not fit"]),
    ("targets-count", w_targets_count, "static", TENSORS, "d/train.npz:",
     ["6 samples but 5 targets"]),
    ("labels-out-of-range", w_labels_out_of_range, "static", TENSORS, "d/train.npz:",
     ["labels 0..12 outside 0..9"]),
    ("float-labels", w_float_labels, "static", TENSORS, "d/train.npz:",
     ["integers", "float32"]),
    ("nan-inputs", w_nan_inputs, "static", TENSORS, "d/train.npz:",
     ["sample 2", "NaN"]),
    ("inf-inputs", w_inf_inputs, "static", TENSORS, "d/train.npz:",
     ["sample 4", "infinite"]),
    ("pt-plain-tensor", w_pt_plain_tensor, "static", _tensors(**PT), "d/train.pt:",
     ["Tensor", "not a dict"]),
    ("pt-random-bytes", w_pt_random_bytes, "static", _tensors(**PT), "d/train.pt:",
     ["cannot be read as a torch file", "Unsupported operand"]),
    ("pt-pickled-object", w_pt_pickled_object, "static", _tensors(**PT),
     "d/train.pt:", ["cannot be read as a torch file", "fractions.Fraction"]),
    ("pt-empty-file", w_pt_empty, "static", _tensors(**PT), "d/train.pt:",
     ["cannot be read as a torch file (an empty file)"]),
    ("h5-text", w_h5_text, "static", _tensors(train="d/train.h5"), "d/train.h5:",
     ["cannot be read as an HDF5 file", "signature"]),
    ("unknown-extension", w_csv, "static", _tensors(train="d/train.csv"),
     "d/train.csv:", ["unknown file type '.csv'"]),
    ("npz-pickled-objects", w_npz_pickled, "static", TENSORS, "d/train.npz:",
     ["cannot be read as a numpy .npz file", "allow_pickle"]),
    ("npz-no-samples", w_npz_empty, "static", TENSORS, "d/train.npz:",
     ["no samples"]),
    ("lengths-zero", w_lengths_zero, "series", _tensors(lengths_key="lengths"),
     "d/train.npz:", ["lengths 0..5 outside 1..5"]),
    ("lengths-over-t", w_lengths_over_t, "series", _tensors(lengths_key="lengths"),
     "d/train.npz:", ["lengths 1..9 outside 1..5"]),
    ("lengths-key-static", w_lengths_static, "static",
     _tensors(lengths_key="lengths"), "d/train.npz:",
     ["lengths_key 'lengths'", "not time series"]),
    ("regression-wrong-k", w_regression_wrong_k, "regression", TENSORS,
     "d/train.npz:", ["[6, 2]", "predicts 3 values"]),
    ("regression-int-targets", w_regression_int_targets, "regression", TENSORS,
     "d/train.npz:", ["must be floats", "int64"]),
    ("image-empty-class", w_image_empty_class, "images2", IMAGES, "img/train/c:",
     ["empty class folder"]),
    ("image-corrupt-png", w_image_corrupt_png, "images2", IMAGES, "img/train/b/bad.png:",
     ["not a readable image"]),
    ("image-class-count", w_image_class_count, "images", IMAGES, "img/train:",
     ["3 class folders", "a, b, c", "10 neurons"]),
    ("image-missing-folder", w_image_missing_folder, "images2", IMAGES, "img/train:",
     ["no such folder"]),
    ("nmnist-truncated", w_nmnist_truncated, "nmnist", NMNIST, "NMNIST/Train/7/0.bin:",
     ["truncated", "13 bytes"]),
    ("nmnist-outside-sensor", w_nmnist_outside, "nmnist", NMNIST, "NMNIST/Train/3/00042.bin:",
     ["x 1..50 outside the sensor's 0..33"]),
    ("nmnist-empty-train", w_nmnist_empty_train, "nmnist", NMNIST, "NMNIST/Train:",
     ["no <digit>/*.bin files"]),
    ("nmnist-only-empty-folders", w_nmnist_only_empty_folders, "nmnist", NMNIST,
     "data/NMNIST:", ["empty", "garrickorchard.com"]),
    ("shd-missing-units", w_shd_no_units, "shd", SHD, "SHD/shd_train.h5:",
     ["no dataset 'spikes/units'"]),
    ("shd-times-units-mismatch", w_shd_ragged_mismatch, "shd", SHD,
     "SHD/shd_train.h5:", ["sample 1", "5 times but 4 units"]),
    ("shd-labels-out-of-range", w_shd_labels, "shd5", SHD, "data/SHD (train):",
     ["labels 0..19 outside 0..4", "5 neurons"]),
    ("shd-not-hdf5", w_shd_not_hdf5, "shd", SHD, "SHD/shd_train.h5:",
     ["not a readable HDF5 file"]),
    ("shd-unit-outside", w_shd_unit_outside, "shd", SHD, "SHD/shd_train.h5:",
     ["sample 2 has unit 900", "700 channels"]),
    ("ssc-valid-not-hdf5", w_ssc_valid_not_hdf5, "ssc", SSC, "SSC/ssc_valid.h5:",
     ["not a readable HDF5 file"]),
    ("ssc-valid-labels-out-of-range", w_ssc_valid_labels, "ssc", SSC,
     "data/SSC (val):", ["labels 0..40 outside 0..34"]),
    ("dvs-missing-aedat", w_dvs_missing_aedat, "dvs", DVS, "user09_led.aedat",
     ["trials_to_train.txt", "not in"]),
    ("dvs-missing-labels-csv", w_dvs_missing_labels_csv, "dvs", DVS,
     "DVSGesture/user01_led_labels.csv:", ["no such file", "user01_led.aedat"]),
    ("dvs-npy-columns", w_dvs_npy_columns, "dvs", DVS, "user01_led/4.npy:",
     ["x, y, p, t", "(5, 3)"]),
    ("dvs-npy-name", w_dvs_npy_name, "dvs", DVS, "user01_led/wave.npy:",
     ["class number"]),
    ("dvs-aedat-garbage", w_dvs_aedat_garbage, "dvs", DVS, "DVSGesture/user01_led.aedat:",
     ["not an AEDAT recording", "#!AER-DAT header"]),
    ("dvs-labels-csv-columns", w_dvs_labels_columns, "dvs", DVS,
     "DVSGesture/user01_led_labels.csv:", ["2 columns", "class, start, end"]),
    ("dvs-npy-outside-sensor", w_dvs_npy_outside, "dvs", DVS, "user01_led/2.npy:",
     ["y 0..130 outside the sensor's 0..127"]),
    ("nmnist-times-out-of-order", w_nmnist_backwards, "nmnist", NMNIST,
     "NMNIST/Train/5/00007.bin:", ["not in order"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("writer", "model", "dataset", "named", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_broken_data_is_one_clean_error(
    tmp_path, monkeypatch, capsys, writer, model, dataset, named, words
):
    monkeypatch.setenv("SNNCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SNNCOMPILE_DATA", raising=False)
    root = tmp_path / "data"
    root.mkdir()
    writer(root)
    # the test split is good wherever the case breaks the training one
    if dataset["type"] == "tensors" and not (root / "d" / "test.npz").exists():
        _good_npz(root, "d/test.npz")
    if dataset["type"] == "image_folder" and not (root / "img" / "test").exists():
        _images(root, ("a", "b"), split="test")
    spec = {
        "snncompile": 1,
        "name": "corpus",
        **MODELS[model],
        "train": {
            "dataset": dataset,
            "batch_size": 4,
            "epochs": 1,
            "device": "cpu",
            "seed": 0,
        },
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "run"
    argv = ["train", str(spec_file), "--data-root", str(root), "--out", str(out)]
    rc = main([*argv, "--compile", "none", "--quiet"])
    err = capsys.readouterr().err
    # a progress bar's \r-separated frames count as lines too
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: "), line
    assert named in line, line
    for word in words:
        assert word in line, line
    assert not list(tmp_path.rglob("checkpoint.pt")), line


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 18
    assert len({case[0] for case in CASES}) == len(CASES)
