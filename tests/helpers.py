"""What the tests share: `diffdeck` as a user runs it (a real process, optionally under a file-size
limit), and waiting for something with a deadline of its own, never forever."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")
COMMAND = [sys.executable, "-m", "diffdeck.tui"]


def file_size_limit(limit: int | None):
    """A preexec_fn: files this process (and its workers) write stop growing at `limit` bytes
    (RLIMIT_FSIZE with SIGXFSZ ignored, so a write past it fails with EFBIG as on a full quota)."""
    if limit is None:
        return None

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def environment(env: dict[str, str] | None, file_limit: int | None = None) -> dict[str, str] | None:
    if file_limit is not None:  # Python does not check its bytecode cache's write: one cut short breaks every import
        env = {**(env or {}), "PYTHONDONTWRITEBYTECODE": "1"}
    return {**os.environ, **env} if env else None


def start(*args: str | bytes, cwd: Path, env: dict[str, str] | None = None, file_limit: int | None = None,
          capture: bool = False, **options) -> subprocess.Popen:
    """`diffdeck ARGS` started, not waited for; with `capture`, its stdout and stderr piped as text.
    `options` go to Popen (stdin is /dev/null unless given)."""
    options.setdefault("stdin", subprocess.DEVNULL)
    if capture:
        options.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([*COMMAND, *args], cwd=cwd, env=environment(env, file_limit),
                            preexec_fn=file_size_limit(file_limit),
                            **options)


def diffdeck(*args: str | bytes, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300,
             file_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """`diffdeck ARGS` run to its end, stdin /dev/null; stdout and stderr as text (undecodable bytes
    replaced); `env` adds to this process's environment."""
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=environment(env, file_limit), capture_output=True,
                          encoding="utf-8", errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=file_size_limit(file_limit))


def one_line_error(result: subprocess.CompletedProcess[str], *says: str) -> str:
    """A refusal as the CLI gives one: exit 2, one line naming what is wrong, no traceback."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("diffdeck: error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(part in result.stderr for part in says), result.stderr
    return result.stderr


def write_models(folder: Path, models: dict, budgets: dict | None = None, routes: dict | None = None) -> Path:
    """`folder`/models.yaml naming `models` (name: entry), and its `budgets:` and `routes:` where given."""
    sections = {"models": models, "budgets": budgets, "routes": routes}
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({name: value for name, value in sections.items() if value is not None}))
    return path


def wait_until(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """`condition()`'s first true value, asked every `every` s; an AssertionError naming `what`
    once `timeout` s have passed without one."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(every)
    return value


async def until(pilot, condition: Callable[[], object], timeout: float = 90.0, what: str = "the condition") -> None:
    """`wait_until` for a Textual app under Pilot: the app runs on while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await pilot.pause(0.05)


def readline_within(stream, timeout: float, what: str = "a line") -> str | bytes:
    """One line from a child's pipe, or AssertionError after `timeout` seconds. On a timeout the
    read goes on in a thread nobody waits for, until the child is killed."""
    lines: list[str | bytes] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        raise AssertionError(f"{what} did not come within {timeout} s")
    return lines[0]


def screen_text(app) -> str:
    """Every cell of a Textual app's screen as the terminal gets it, a line per row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
