"""What the fault tests share: diffdeck as a real process, optionally under a file-size limit
(RLIMIT_FSIZE with SIGXFSZ ignored, so a write past it fails with EFBIG as on a full quota), and
a disk to fill (the `small_disk` fixture, in conftest.py)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

PROMPT = "a large red circle on a blue background"


def file_size_limit(limit: int | None):
    """A preexec_fn: files this process (and its workers) write stop growing at `limit` bytes."""
    if limit is None:
        return None

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def start(*args: str, cwd: Path, file_limit: int | None = None, **options) -> subprocess.Popen:
    """`diffdeck ARGS` started, not waited for."""
    options.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "diffdeck.tui", *args], cwd=cwd, preexec_fn=file_size_limit(file_limit),
                            **options)


def diffdeck(*args: str, cwd: Path, file_limit: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`diffdeck ARGS` run to its end; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "diffdeck.tui", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=file_size_limit(file_limit))


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
