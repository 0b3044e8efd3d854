"""A session on a read-only disk (an archive, another user's) is read, never written: replay
checks it into a folder of its own."""

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import diffdeck

EXAMPLE = Path(__file__).resolve().parents[2] / "sessions" / "examples" / "demo-red-circle"


@pytest.mark.slow
def test_a_read_only_session_replays_into_a_folder_of_its_own(small_disk, tmp_path):
    shutil.copytree(EXAMPLE, small_disk / "example")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = diffdeck("replay", str(small_disk / "example"), "--check", "--into", "checks", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "replay-1" in str(list((tmp_path / "checks").iterdir()))
    refused = diffdeck("replay", str(small_disk / "example"), cwd=tmp_path)  # into itself: it cannot be written
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
