"""One error type for everything a user can get wrong in a spec.

Each problem names the file, line and column of the offending key or value and
its field path, so that `snncompile validate` can print them all at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PathPart = str | int
Path = tuple[PathPart, ...]


def format_path(path: Path) -> str:
    """('layers', 2, 'beta') -> 'layers[2].beta'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


@dataclass(frozen=True)
class Problem:
    """One located problem in a spec file."""

    file: str
    line: int | None
    column: int | None
    path: Path
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {format_path(self.path)}: {self.message}"


class SpecError(Exception):
    """A spec (or a file that should hold one) is invalid; holds every problem found."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(
            problems, key=lambda p: (p.file, p.line or 0, p.column or 0, p.message)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class UserError(Exception):
    """Any other mistake a user can fix (bad path, missing data, bad checkpoint).

    The CLI prints its message without a traceback and exits with status 2.
    """


def first_line(err: BaseException) -> str:
    """An exception's message, first line only (its type where it has none)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
