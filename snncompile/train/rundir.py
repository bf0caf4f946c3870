"""The run directory: nothing of an earlier run is lost, and failures to
write are one-line errors.

- `--out R` into a directory holding anything is refused unless --overwrite
  (which removes only the files a run writes); resuming continues a run in its
  own directory. Default names (runs/<name>-<time>[-k]) are created atomically,
  so two runs started at once get two directories.
- A lock (`.snncompile.lock`, an flock held while training) refuses a second
  writer into the same directory; it goes when the run ends, and a crashed run's
  lock is free again (the kernel releases it with the process).
- A command never writes over one of its inputs (the spec, a checkpoint).
- Problems known before work starts (not a directory, no permission, a disk too
  full for a checkpoint, `ulimit -f` below one) are UserErrors before the data
  is loaded; a write that fails later (disk full, file too large) is one too,
  naming the file, and the previous checkpoint stays (checkpoints are written
  to a temporary file and renamed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from datetime import datetime
from pathlib import Path

from ..paths import make_directory
from ..spec.errors import UserError, first_line
from . import logs

LOCK_NAME = ".snncompile.lock"
# what a run writes into its directory (--overwrite removes these only)
RUN_FILES = (
    "checkpoint.pt",
    "best.pt",
    "metrics.json",
    logs.CSV_NAME,
    "curves.png",
    "raster.png",
    "spec.yaml",
)


def reason(err: BaseException, path=None) -> str:
    """The cause of a failed write in a few words. torch.save says only that
    its write failed (a RuntimeError): the file size limit or the free space
    under `path` tell why."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = first_line(err)
    if not isinstance(err, RuntimeError) or path is None:
        return text
    limit = _file_size_limit()
    if limit is not None:
        return (
            f"File too large (the file size limit, ulimit -f, is {limit / 1e6:.3g} MB)"
        )
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = None
    if free is not None and free < 16 * 2**20:
        return f"No space left on device ({free / 1e6:.3g} MB free)"
    return f"write failed ({text})"


def write_error(path, err: BaseException, note: str = "") -> UserError:
    return UserError(f"cannot write {path}: {reason(err, path)}{note}")


def _file_size_limit() -> int | None:
    """`ulimit -f` in bytes (None: unlimited)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if limit == resource.RLIM_INFINITY else limit


def same_path(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


# --------------------------------------------------------------------------- creating
def default_dir(name: str, root: str | os.PathLike = "runs") -> Path:
    """A new, empty runs/<name>-<time>[-k], created here (never an existing one)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(root)
    make_directory(root, "runs folder")
    suffix = 1
    while True:
        path = root / (f"{name}-{stamp}" + (f"-{suffix}" if suffix > 1 else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            suffix += 1
        except OSError as err:
            raise UserError(
                f"cannot create run directory {path}: {reason(err)}"
            ) from None


def check_out(out) -> None:
    """UserError for an --out that names no directory."""
    if out is not None and not str(out).strip():
        raise UserError("--out is empty: name the run directory")


def entries(path: Path) -> list[str]:
    """What a directory holds, besides the lock."""
    try:
        return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UserError(f"cannot read run directory {path}: {reason(err)}") from None


def refuse_non_empty(path: Path) -> None:
    held = entries(path)
    if held:
        shown = ", ".join(held[:4]) + (
            f" and {len(held) - 4} more" if len(held) > 4 else ""
        )
        raise UserError(
            f"run directory {path} is not empty (it holds {shown}); pass --overwrite "
            "to replace the run in it, --resume it to continue it, or choose "
            "another --out"
        )


def clear(path: Path) -> None:
    """--overwrite: remove an earlier run's files (nothing else)."""
    for name in RUN_FILES:
        target = path / name
        if target.is_dir():
            raise UserError(f"--overwrite: {target} is a directory, not a run file")
        try:
            target.unlink(missing_ok=True)
        except OSError as err:
            raise UserError(
                f"--overwrite: cannot remove {target}: {reason(err)}"
            ) from None
    for tmp in path.glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
    logs.remove_events(path)


def refuse_inputs(path: Path, inputs, writes=RUN_FILES) -> None:
    """UserError if a file this run writes into `path` is one of its inputs."""
    for given in inputs:
        if given is None:
            continue
        given = Path(given)
        for name in writes:
            target = path / name
            if target.exists() and given.exists() and same_path(target, given):
                raise UserError(
                    f"{given} is an input of this command and the run would write "
                    f"over it as {target}; choose another --out"
                )


def prepare(out, resume, name: str) -> Path:
    """The run directory (--out, else the resumed one, else a new default),
    created; UserError if it cannot be. Then `Lock` it and `check_contents`."""
    check_out(out)
    if out is None and resume is None:
        return default_dir(name)
    path = Path(out if out is not None else resume)
    make_directory(path, "run directory")
    return path


def check_contents(path: Path, resume, overwrite: bool, inputs=()) -> set[str]:
    """Refuse a non-empty directory unless it is the run being resumed or
    --overwrite (then its run files go); refuse writing over an input. Returns
    the run files not to write (a resumed run's spec.yaml given as its spec)."""
    in_place = resume is not None and same_path(path, resume)
    keep = set()
    if in_place:
        spec_file = path / "spec.yaml"
        for given in inputs:
            if given is not None and spec_file.exists() and same_path(given, spec_file):
                keep.add("spec.yaml")
        return keep
    refuse_inputs(path, inputs)
    if entries(path):
        if not overwrite:
            refuse_non_empty(path)
        clear(path)
    return keep


# --------------------------------------------------------------------------- lock
class Lock:
    """An exclusive flock on <run dir>/.snncompile.lock (holding the owner's pid)
    while a run writes the directory; `release()` removes it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd = None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusive create
            self._create_exclusive()
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(
                    f"cannot write into run directory {run_dir}: {reason(err)}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(self._busy(run_dir)) from None
                raise UserError(f"cannot lock {self.path}: {reason(err)}") from None
            try:  # the file we locked must still be the one at the path
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its owner removed it meanwhile: lock the new one
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message

    def _create_exclusive(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise UserError(self._busy(self.path.parent)) from None
        except OSError as err:
            raise UserError(f"cannot lock {self.path}: {reason(err)}") from None
        with contextlib.suppress(OSError):
            os.write(self.fd, f"{os.getpid()}\n".encode())

    def _busy(self, run_dir) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        who = f" (pid {pid})" if pid.isdigit() else ""
        return (
            f"another process{who} is writing into run directory {run_dir}; wait "
            "for it to finish or choose another --out"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


# --------------------------------------------------------------------------- space
def check_space(path: Path, nbytes: int, what: str = "a checkpoint") -> None:
    """UserError if `nbytes` (about what one checkpoint takes, twice: the new
    one is written beside the old) cannot be written under `path`."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = None
    if free is not None and free < 2 * nbytes:
        raise UserError(
            f"not enough space in {path}: {free / 1e6:.1f} MB free, {what} of this "
            f"network takes about {nbytes / 1e6:.1f} MB (written beside the previous "
            "one, so twice that is needed)"
        )
    limit = _file_size_limit()
    if limit is not None and limit < nbytes:
        raise UserError(
            f"the file size limit (ulimit -f) is {limit / 1e6:.1f} MB, below the "
            f"{nbytes / 1e6:.1f} MB of {what} of this network"
        )


@contextlib.contextmanager
def file_size_errors():
    """Writes past `ulimit -f` fail with EFBIG (an OSError) instead of killing
    the process by SIGXFSZ (main thread only; restored after)."""
    sig = getattr(signal, "SIGXFSZ", None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sig, previous)
