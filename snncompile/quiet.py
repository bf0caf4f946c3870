"""Silencing C++ log output that Python's own streams cannot catch."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _quiet(fd: int, stream):
    """Point file descriptor `fd` at /dev/null meanwhile (C++ code writes there
    directly, past Python's `stream`)."""
    stream.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


def quiet_stderr():
    return _quiet(2, sys.stderr)


def quiet_stdout():
    return _quiet(1, sys.stdout)
