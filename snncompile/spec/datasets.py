"""Data sources a spec may name in `train.dataset` besides the built-in names.

Each source is one model here: its fields (validated like every spec block), the
folder it is looked for in under the data root, the files it expects (for the
error when they are missing) and, for event data, the sensor it was recorded
with. The reader that turns its files into tensors is `runtime/sources.py`'s
function named by `reader`, shared by `snncompile train` and generated scripts.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from ..types.fields import PositiveInt, Strict


def _check_path(value: str | None) -> str | None:
    if value is not None and (not value.strip() or "\x00" in value):
        raise ValueError("a path must be a non-empty file name without NUL bytes")
    return value


class Frames(Strict):
    """How an event stream becomes frames [T, P, H, W] (tonic's ToFrame): a fixed
    number of time bins, or a frame per time window or per event count (then each
    sample has its own T and batches are padded)."""

    n_time_bins: PositiveInt | None = Field(
        None, description="T equal time bins spanning each recording."
    )
    time_window: Annotated[float, Field(gt=0)] | None = Field(
        None, description="One frame per window of this many microseconds."
    )
    event_count: PositiveInt | None = Field(
        None, description="One frame per this many events."
    )

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [
            k
            for k in ("n_time_bins", "time_window", "event_count")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "frames needs exactly one of n_time_bins, time_window, event_count"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def fixed(self) -> bool:
        """Whether every sample gets the same number of frames."""
        return self.n_time_bins is not None


def validation_kind(source, val_fraction: float) -> str | None:
    """Where a run's validation split comes from, judged from the spec alone:
    "file" (the source's `val` file or folder, which wins), "fraction" (held
    out of the training samples by train.val_fraction), "dataset" (the
    dataset's own validation file, VALID, which may be absent: checked at
    load), or None when no validation split can exist."""
    if getattr(source, "val", None) is not None:
        return "file"
    if val_fraction:
        return "fraction"
    if getattr(type(source), "VALID", None):
        return "dataset"
    return None


class EventSource(Strict):
    """Fields every event dataset shares."""

    SENSOR: ClassVar[tuple[int, int, int]]  # tonic's (width, height, polarities)
    CLASSES: ClassVar[int]
    FOLDER: ClassVar[str]  # its folder under the data root, by default
    LAYOUT: ClassVar[str]  # what is expected in the folder (for errors)
    OBTAIN: ClassVar[str]  # where the public files come from
    TWO_D: ClassVar[bool] = True
    VALID: ClassVar[str | None] = None  # its own validation file in the folder

    path: str | None = Field(
        None,
        description="Folder of the dataset: absolute, or relative to the data root "
        "(default: the dataset's usual folder name there).",
    )
    frames: Frames = Field(description="Event-to-frame transform.")
    denoise: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Drop events with no neighbour event within this many "
        "microseconds (tonic's Denoise; 2-D sensors only).",
    )
    downsample: PositiveInt = Field(
        1, description="Divide the sensor's spatial size by this factor."
    )

    _valid_path = field_validator("path")(classmethod(lambda cls, v: _check_path(v)))

    @property
    def reader(self) -> str:
        return f"read_{self.type}"

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one frame: [P, H, W] or, for a 1-D sensor, [channels]."""
        width, height, polarities = self.sensor()
        return (width,) if not self.TWO_D else (polarities, height, width)

    def sensor(self) -> tuple[int, int, int]:
        """The sensor size (W, H, P) after x // downsample and y // downsample."""
        width, height, polarities = self.SENSOR
        cells = lambda size: -(-size // self.downsample)  # ceil
        if not self.TWO_D:
            return (cells(width), 1, 1)
        return (cells(width), cells(height), polarities)


class NMNIST(EventSource):
    SENSOR = (34, 34, 2)
    CLASSES = 10
    FOLDER = "NMNIST"
    LAYOUT = "Train/<digit>/<id>.bin and Test/<digit>/<id>.bin (the extracted zips)"
    OBTAIN = "https://www.garrickorchard.com/datasets/n-mnist (Train.zip, Test.zip)"
    type: Literal["nmnist"] = Field(description="N-MNIST: saccade recordings of MNIST.")


class SHD(EventSource):
    SENSOR = (700, 1, 1)
    CLASSES = 20
    FOLDER = "SHD"
    LAYOUT = "shd_train.h5 and shd_test.h5 (spikes/times, spikes/units, labels)"
    OBTAIN = "https://zenkelab.org/datasets/ (shd_train.h5.gz, shd_test.h5.gz; gunzip)"
    TWO_D = False
    type: Literal["shd"] = Field(
        description="Spiking Heidelberg Digits (700 channels)."
    )


class SSC(EventSource):
    SENSOR = (700, 1, 1)
    CLASSES = 35
    FOLDER = "SSC"
    LAYOUT = "ssc_train.h5, ssc_valid.h5 and ssc_test.h5"
    OBTAIN = "https://zenkelab.org/datasets/ (ssc_*.h5.gz; gunzip)"
    TWO_D = False
    VALID = "ssc_valid.h5"
    type: Literal["ssc"] = Field(
        description="Spiking Speech Commands (700 channels). ssc_valid.h5, when "
        "present, is the validation split (evaluated after every epoch); a "
        "train.val_fraction above 0 holds out part of ssc_train.h5 instead."
    )


class DVSGesture(EventSource):
    SENSOR = (128, 128, 2)
    CLASSES = 11
    FOLDER = "DVSGesture"
    LAYOUT = (
        "ibmGestureTrain/userNN_<lighting>/<class>.npy and ibmGestureTest/... "
        "(tonic's copy), or the original release: userNN_<lighting>.aedat with "
        "userNN_<lighting>_labels.csv, trials_to_train.txt and trials_to_test.txt"
    )
    OBTAIN = (
        "tonic.datasets.DVSGesture(save_to=DATA_ROOT) downloads tonic's copy; the "
        "original is at https://research.ibm.com/interactive/dvsgesture/"
    )
    type: Literal["dvs_gesture"] = Field(description="IBM DVS Gesture (11 classes).")


class Tensors(Strict):
    """Arrays in .npz, .pt or .h5 files: samples [N, ...] or [N, T, ...] and
    targets [N] (classes) or [N, K] (regression)."""

    type: Literal["tensors"] = Field(description="Your own arrays in files.")
    train: str = Field(
        description="File with the training samples (.npz, .pt or .h5), absolute or "
        "relative to the data root."
    )
    test: str = Field(description="File with the test samples.")
    val: str | None = Field(None, description="File with validation samples.")
    inputs_key: str = Field("inputs", description="Name of the samples array.")
    targets_key: str = Field("targets", description="Name of the targets array.")
    lengths_key: str | None = Field(
        None,
        description="Name of an array [N] of each sequence's length, when sequences "
        "[N, T, ...] are padded to a common T.",
    )

    _valid_path = field_validator("train", "test", "val")(
        classmethod(lambda cls, v: _check_path(v))
    )
    reader: ClassVar[str] = "read_tensors"


class ImageFolder(Strict):
    """torchvision's ImageFolder layout: <split folder>/<class name>/<image>."""

    type: Literal["image_folder"] = Field(
        description="Images in a folder per class (torchvision's ImageFolder)."
    )
    train: str = Field(
        description="Folder of the training images, absolute or relative to the "
        "data root."
    )
    test: str = Field(description="Folder of the test images.")
    val: str | None = Field(None, description="Folder of validation images.")

    _valid_path = field_validator("train", "test", "val")(
        classmethod(lambda cls, v: _check_path(v))
    )
    reader: ClassVar[str] = "read_image_folder"


EVENT_SOURCES = (NMNIST, SHD, SSC, DVSGesture)
SOURCES = (*EVENT_SOURCES, Tensors, ImageFolder)
Source = Annotated[Union[SOURCES], Field(discriminator="type")]  # noqa: UP007


def source_model(data: dict):
    """The source model of a validated `train.dataset` mapping."""
    from pydantic import TypeAdapter

    return TypeAdapter(Source).validate_python(data)
