"""Readers of the data sources in spec/datasets.py, each from its own on-disk
format, and the event-to-frame transform.

Shared verbatim by `snncompile train` and the generated scripts that need them
(each function imports what it uses, so a script imports numpy, h5py or tonic
only when its spec reads such data). A reader returns samples and integer
labels; an event reader returns event arrays (numpy structured, fields x, y, t,
p or t, x, p, times in microseconds) that `frame_events` turns into counts.
Every problem with a file is a `DataError` naming the file.
"""

import os


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


def read_spike_h5(path):
    """SHD and SSC: an HDF5 file of per-sample spike times in seconds
    (spikes/times), their channels (spikes/units) and labels. -> (events, labels)"""
    import h5py
    import numpy as np

    dtype = np.dtype([("t", np.int64), ("x", np.int16), ("p", np.int8)])
    try:
        with h5py.File(path, "r") as f:
            for key in ("spikes/times", "spikes/units", "labels"):
                if key not in f:
                    raise DataError(f"{path}: no dataset {key!r} in the file")
            times, units = f["spikes/times"][:], f["spikes/units"][:]
            labels = f["labels"][:]
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    if not len(times) == len(units) == len(labels):
        raise DataError(
            f"{path}: {len(times)} spike-time lists, {len(units)} unit lists and "
            f"{len(labels)} labels differ in number"
        )
    events = []
    for i, (t, x) in enumerate(zip(times, units)):
        if len(t) != len(x):
            raise DataError(f"{path}: sample {i} has {len(t)} times but {len(x)} units")
        if len(x) and int(np.max(x)) >= 700:
            raise DataError(
                f"{path}: sample {i} has unit {int(np.max(x))}, outside the 700 "
                "channels 0..699"
            )
        e = np.zeros(len(t), dtype=dtype)
        e["t"] = np.round(np.asarray(t, dtype=np.float64) * 1e6)
        e["x"] = x
        events.append(e)
    return events, [int(v) for v in labels]


def read_shd(folder, train):
    """Spiking Heidelberg Digits: shd_train.h5 or shd_test.h5 in `folder`."""
    return read_spike_h5(os.path.join(folder, f"shd_{'train' if train else 'test'}.h5"))


def read_ssc(folder, train):
    """Spiking Speech Commands: ssc_train.h5 (train True), ssc_test.h5 (False)
    or the validation split ssc_valid.h5 (train "valid") in `folder`."""
    split = "valid" if train == "valid" else "train" if train else "test"
    return read_spike_h5(os.path.join(folder, f"ssc_{split}.h5"))


def read_dvs_gesture(folder, train):
    """IBM DVS Gesture, in tonic's copy (ibmGesture{Train,Test}/userNN_<light>/
    <class>.npy: rows x, y, p, t in ms) or the original release (userNN_<light>
    .aedat AEDAT 3.1 recordings cut by userNN_<light>_labels.csv rows class,
    start, end in us; trials_to_{train,test}.txt list them). -> (events, labels)"""
    import numpy as np

    dtype = np.dtype(
        [("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)]
    )
    events, labels = [], []
    copy = os.path.join(folder, "ibmGestureTrain" if train else "ibmGestureTest")
    if os.path.isdir(copy):
        for path in _files(copy, "*/*.npy"):
            name = os.path.basename(path)[:-4]
            if not name.isdigit():
                raise DataError(
                    f"{path}: the file name should be its class number (0.npy..10.npy)"
                )
            try:
                rows = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: not a readable .npy file ({err})") from None
            if rows.ndim != 2 or rows.shape[1] != 4:
                raise DataError(
                    f"{path}: expected rows of x, y, p, t, got {rows.shape}"
                )
            e = np.zeros(len(rows), dtype=dtype)
            e["x"], e["y"], e["p"] = rows[:, 0], rows[:, 1], rows[:, 2]
            e["t"] = rows[:, 3].astype(np.int64) * 1000
            check_events(e, (128, 128), path)
            events.append(e)
            labels.append(int(name))
        return events, labels
    from tonic.io import get_aer_events_from_file, read_aedat_header_from_file

    trials = os.path.join(folder, f"trials_to_{'train' if train else 'test'}.txt")
    if not os.path.isfile(trials):
        raise DataError(f"{folder}: neither {copy} nor {trials}")
    with open(trials) as f:
        names = [line.strip() for line in f if line.strip()]
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{trials}: lists {name}, which is not in {folder}")
        with open(path, "rb") as f:
            if not f.read(9) == b"#!AER-DAT":
                raise DataError(f"{path}: not an AEDAT recording (no #!AER-DAT header)")
        try:
            version, start = read_aedat_header_from_file(path)[:2]
            raw = get_aer_events_from_file(path, version, start)
        except Exception as err:  # noqa: BLE001 - tonic's complaint about the bytes
            raise DataError(f"{path}: not an AEDAT 3.1 recording ({err})") from None
        address, stamp = (
            raw["address"].astype(np.int64),
            raw["timeStamp"].astype(np.int64),
        )
        csv = path[:-6] + "_labels.csv"
        if not os.path.isfile(csv):
            raise DataError(
                f"{csv}: no such file (the class, start and end of "
                f"each gesture in {name})"
            )
        try:
            cuts = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
        except ValueError as err:
            raise DataError(f"{csv}: not rows of class, start, end ({err})") from None
        if cuts.size and cuts.shape[1] != 3:
            raise DataError(f"{csv}: {cuts.shape[1]} columns, not class, start, end")
        for k, (label, begin, end) in enumerate(cuts.astype(np.int64)):
            keep = (stamp >= begin) & (stamp < end)
            e = np.zeros(int(keep.sum()), dtype=dtype)
            e["x"] = (address[keep] >> 17) & 0x1FFF
            e["y"] = (address[keep] >> 2) & 0x1FFF
            e["p"] = (address[keep] >> 1) & 1
            e["t"] = stamp[keep] - begin
            check_events(e, (128, 128), f"{path}: gesture {k}")
            events.append(e)
            labels.append(int(label) - 1)  # the release numbers classes from 1
    if not events:
        raise DataError(f"{folder}: no gestures listed in {trials}")
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


def read_image_folder(folder, shape):
    """Images in <folder>/<class>/<file> (torchvision's ImageFolder), converted
    to `shape` [C, H, W] (C 1: grayscale, 3: RGB) as uint8 [N, C, H, W], labels
    in class-name order, and the class names."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    try:
        found = ImageFolder(folder)
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{folder}: {str(err).strip().splitlines()[0]}") from None
    images = []
    for path, _ in found.samples:
        try:
            image = found.loader(path).convert(mode).resize((width, height))
        except Exception as err:  # noqa: BLE001 - a broken or unknown image file
            raise DataError(f"{path}: not a readable image ({err})") from None
        images.append(pil_to_tensor(image))
    labels = torch.tensor(found.targets, dtype=torch.int64)
    return torch.stack(images), labels, list(found.classes)


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
