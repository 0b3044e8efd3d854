"""The real thing: diffdeck in a real terminal (tmux), driven by send-keys and read back
with capture-pane."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diffdeck.engines.record.session import Session

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


def tmux(*args, socket):
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10)


def screen(socket):
    return tmux("capture-pane", "-p", "-t", "dd", socket=socket).stdout


def wait_for(socket, text, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (shown := screen(socket)):
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen:\n{screen(socket)}")


def test_render_in_tmux_then_quit(tmp_path):
    socket = f"diffdeck-test-{os.getpid()}"
    diffdeck = Path(sys.executable).parent / "diffdeck"
    command = f"cd {tmp_path} && {diffdeck} --new mysession --images halfcell; echo EXITED $?; sleep 30"
    env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "dd", "-x", "100", "-y", "30",
                    command], env=env, check=True, timeout=10)
    try:
        wait_for(socket, "^p palette")
        tmux("send-keys", "-t", "dd", "-l", "a green ring", socket=socket)
        wait_for(socket, "a green ring")  # typed keys are still in flight until they are drawn
        tmux("send-keys", "-t", "dd", "C-j", socket=socket)
        shown = wait_for(socket, " done ")
        assert "a green ring" in shown and "Traceback" not in shown
        wait_for(socket, "last job-0001")  # the timing panel has the breakdown
        tmux("send-keys", "-t", "dd", "C-q", socket=socket)
        shown = wait_for(socket, "EXITED 0", timeout=30)
        assert "diffdeck: session mysession; reopen it with: diffdeck mysession\nEXITED 0" in shown, shown
    finally:
        tmux("kill-server", socket=socket)
    job = Session.open(tmp_path / "mysession").jobs["job-0001"]
    assert job["status"] == "done" and job["spec"]["prompt"] == "a green ring"
