"""The fault suite's fixtures: a small real disk."""

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real 2 MB tmpfs, mounted for the test; skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("a small real disk needs `mount -t tmpfs`, which is not permitted here"
                    + (f": {mounted.stderr.strip()}" if mounted else " (not root)"))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)
