"""Writers of small event-data files in each dataset's real on-disk format, for
tests: N-MNIST's .bin files, SHD/SSC's HDF5 files, DVS Gesture as tonic's .npy
copy and as the original AEDAT 3.1 release, and a learnable temporal task."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def nmnist_bin(path: Path, x, y, t, p) -> None:
    """One N-MNIST recording: 5 bytes an event, x, y, then polarity (bit 23)
    and a 23-bit time stamp in microseconds, big-endian."""
    x, y, t, p = (np.asarray(v, dtype=np.int64) for v in (x, y, t, p))
    raw = np.zeros((len(x), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = (p << 7) | ((t >> 16) & 0x7F)
    raw[:, 3], raw[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw.tobytes())


def write_nmnist(root: Path, per_class: int = 2, events: int = 60, seed: int = 0):
    """NMNIST/Train|Test/<digit>/<id>.bin with random events whose position
    depends on the digit (a learnable toy)."""
    rng = np.random.default_rng(seed)
    for split in ("Train", "Test"):
        for digit in range(10):
            for i in range(per_class):
                x = np.clip(rng.normal(3 + 3 * digit, 1.5, events), 0, 33).astype(int)
                y = rng.integers(0, 34, events)
                t = np.sort(rng.integers(0, 300_000, events))
                p = rng.integers(0, 2, events)
                nmnist_bin(
                    root / "NMNIST" / split / str(digit) / f"{i:05d}.bin", x, y, t, p
                )


def write_spike_h5(path: Path, times, units, labels) -> None:
    """SHD/SSC layout: spikes/times (seconds) and spikes/units as ragged
    arrays, labels, plus the extra group the real files carry."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        vf = h5py.vlen_dtype(np.dtype("float32"))
        vu = h5py.vlen_dtype(np.dtype("uint16"))
        f.create_dataset("spikes/times", (len(times),), dtype=vf)[:] = times
        f.create_dataset("spikes/units", (len(units),), dtype=vu)[:] = units
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        f.create_dataset("extra/speaker", data=np.zeros(len(labels), dtype=np.uint16))


def sweep_task(n: int, channels: int, seed: int, variable: bool = False):
    """Classes that differ only in spike timing: every channel fires once in
    a sweep up (class 0) or down (class 1) the channels, with jitter; with
    `variable`, each recording lasts 40 to 80 ms, else 60 ms."""
    rng = np.random.default_rng(seed)
    times, units, labels = [], [], []
    for i in range(n):
        label = i % 2
        duration = rng.uniform(0.04, 0.08) if variable else 0.06
        order = np.arange(channels) if label == 0 else np.arange(channels)[::-1]
        t = (np.arange(channels) + 0.5) / channels * duration
        t = np.clip(t + rng.normal(0, 0.002, channels), 0, duration)
        sort = np.argsort(t)
        times.append(t[sort].astype(np.float32))
        units.append(order[sort].astype(np.uint16))
        labels.append(label)
    return times, units, labels


def write_shd(
    root: Path,
    n_train: int = 40,
    n_test: int = 20,
    folder: str = "SHD",
    prefix: str = "shd",
    classes: int = 20,
    n_valid: int = 0,
):
    """SHD/shd_{train,test}.h5 (or SSC/ssc_*.h5, with `n_valid` samples in
    ssc_valid.h5) with random spikes over 700 channels, the channel range set
    by the label."""
    rng = np.random.default_rng(1)
    width = 700 // classes
    for split, n in (("train", n_train), ("test", n_test), ("valid", n_valid)):
        if split == "valid" and not n:
            continue
        times, units, labels = [], [], []
        for i in range(n):
            label = i % classes
            k = 50
            low = width * label
            units.append(rng.integers(low, low + width, k).astype(np.uint16))
            times.append(np.sort(rng.uniform(0, 0.5, k)).astype(np.float32))
            labels.append(label)
        write_spike_h5(root / folder / f"{prefix}_{split}.h5", times, units, labels)


def write_ssc(root: Path, n_valid: int = 21) -> None:
    """SSC/ssc_{train,test,valid}.h5 (no ssc_valid.h5 with `n_valid` 0): SHD's
    format with 35 classes."""
    write_shd(
        root,
        n_train=70,
        n_test=35,
        folder="SSC",
        prefix="ssc",
        classes=35,
        n_valid=n_valid,
    )


def write_dvs_tonic(root: Path, per_class: int = 1, events: int = 80) -> None:
    """tonic's DVS Gesture copy: ibmGesture{Train,Test}/user01_led/<class>.npy,
    rows x, y, p, t (milliseconds)."""
    rng = np.random.default_rng(2)
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        for label in range(11):
            for user in range(per_class):
                rows = np.zeros((events, 4), dtype=np.float64)
                rows[:, 0] = rng.integers(0, 128, events)
                rows[:, 1] = rng.integers(10 * label, 10 * label + 10, events)
                rows[:, 2] = rng.integers(0, 2, events)
                rows[:, 3] = np.sort(rng.integers(0, 1000, events))
                folder = root / "DVSGesture" / split / f"user{user + 1:02d}_led"
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{label}.npy", rows)


def aedat31(path: Path, x, y, p, t, header_extra: str = "") -> None:
    """An AEDAT 3.1 file: '#' header lines, then one polarity-event packet (a
    28-byte header, then events of address and time stamp, little-endian)."""
    x, y, p, t = (np.asarray(v, dtype=np.uint32) for v in (x, y, p, t))
    address = (x << 17) | (y << 2) | (p << 1) | 1
    head = "#!AER-DAT3.1\r\n#Format: RAW\r\n" + header_extra + "#!END-HEADER\r\n"
    n = len(x)
    packet = struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, n, n, n)
    events = np.empty(n, dtype=[("a", "<u4"), ("t", "<u4")])
    events["a"], events["t"] = address, t
    path.write_bytes(head.encode() + packet + events.tobytes())


def write_dvs_aedat(root: Path) -> None:
    """The original DVS Gesture release: a recording per trial holding several
    gestures, cut by its _labels.csv (class numbered from 1, start, end in us)."""
    folder = root / "DvsGesture"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for split, users in (("train", ["user01_led"]), ("test", ["user02_led"])):
        for user in users:
            xs, ys, ps, ts, rows = [], [], [], [], []
            for label in range(1, 12):
                begin = label * 100_000
                t = np.sort(rng.integers(begin, begin + 50_000, 60))
                xs.append(rng.integers(0, 128, 60))
                ys.append(rng.integers(10 * (label - 1), 10 * label, 60))
                ps.append(rng.integers(0, 2, 60))
                ts.append(t)
                rows.append(f"{label},{begin},{begin + 50_000}")
            aedat31(folder / f"{user}.aedat", *map(np.concatenate, (xs, ys, ps, ts)))
            (folder / f"{user}_labels.csv").write_text(
                "class,startTime_usec,endTime_usec\n" + "\n".join(rows) + "\n"
            )
        (folder / f"trials_to_{split}.txt").write_text(
            "\n".join(f"{u}.aedat" for u in users) + "\n"
        )
