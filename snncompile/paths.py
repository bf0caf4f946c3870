"""Output folders every command creates the same way: one-line errors for a
file in the way, a missing parent that cannot be made, or no write permission."""

from __future__ import annotations

import os
from pathlib import Path

from .spec.errors import UserError, first_line


def make_directory(path: Path, what: str) -> None:
    """Create folder `path` (named `what` in errors, e.g. "-o", "run
    directory") with its parents; UserError, one line, if it cannot be made
    or written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{what} {path} is a file, not a directory") from None
    except NotADirectoryError:
        raise UserError(
            f"cannot create {what} {path}: a part of the path is a file"
        ) from None
    except OSError as err:
        why = err.strerror or first_line(err)
        raise UserError(f"cannot create {what} {path}: {why}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {what} {path}: permission denied")
