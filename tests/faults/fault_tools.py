"""What the fault tests share besides tests/helpers.py (diffdeck as a real process, optionally
under a file-size limit): a prompt, and a disk to fill (the `small_disk` fixture, in conftest.py)."""

from __future__ import annotations

from pathlib import Path

PROMPT = "a large red circle on a blue background"


def fill(disk: Path) -> None:
    """Write into `disk` until it has no room left."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with open(disk / "filler", "ab", buffering=0) as f:  # the last partial page too
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
