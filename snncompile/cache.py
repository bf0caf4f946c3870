"""Where snncompile keeps what it makes once per machine and reuses: the native
kernels (`native/`) and decoded datasets (`datasets/`). SNNCOMPILE_CACHE, else
$XDG_CACHE_HOME/snncompile, else ~/.cache/snncompile; deleting it is safe."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("SNNCOMPILE_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "snncompile"
