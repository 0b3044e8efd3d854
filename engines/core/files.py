"""Writing a file that matters (a session record, settings, the prompt history): whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_whole(path: Path, data: bytes) -> None:
    """`path` holding `data`, whole or not at all: written beside it, flushed to the disk, then
    renamed over it. On failure the partial file is removed and the OSError raised."""
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
