"""Where the daemon listens: a runtime folder others may open is refused, not used; a socket that
is another user's, or that a live program listens on, is never removed to make room."""

import os
import socket
import stat
import time
from pathlib import Path

import pytest
from helpers import diffdeck


def runtime_folder() -> Path:
    return Path(os.environ["XDG_RUNTIME_DIR"]) / "diffdeck"


def serve_refused(tmp_path) -> str:
    started = time.monotonic()
    result = diffdeck("serve", "--foreground", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert time.monotonic() - started < 30 and "Traceback" not in line
    return line


def test_a_runtime_folder_open_to_others_is_refused_and_left_as_it_is(tmp_path):
    folder = runtime_folder()
    folder.mkdir()
    folder.chmod(0o777)
    line = serve_refused(tmp_path)
    assert f"{folder} is open to other users (mode 0777)" in line and f"chmod 700 {folder}" in line
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 and list(folder.iterdir()) == []


def test_a_live_listener_that_is_not_a_daemon_keeps_its_socket(tmp_path):
    folder = runtime_folder()
    folder.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(folder / "engine.sock"))
        listener.listen()  # never answers: not a diffdeck daemon
        line = serve_refused(tmp_path)
        assert "a program that is not a diffdeck daemon listens on it" in line, line
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(folder / "engine.sock"))  # still its socket, still listening


@pytest.mark.skipif(os.getuid() != 0, reason="a socket of another user needs root to make")
def test_a_socket_of_another_user_is_not_removed(tmp_path):
    folder = runtime_folder()
    folder.mkdir(mode=0o700)
    path = folder / "engine.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # closed without listening: what a dead daemon leaves
    os.chown(path, 65534, 65534)
    line = serve_refused(tmp_path)
    assert f"{path} is a socket of uid 65534, not yours; not touching it" in line
    assert path.lstat().st_uid == 65534

