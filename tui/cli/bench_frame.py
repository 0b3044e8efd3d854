"""`diffdeck bench frame`: how long the workbench takes to draw its first frame in a real
terminal, against the smallest Textual app of its kind (diffdeck.tui.cli.minimal_app) measured
in the same run, and what the UI side's import costs.

Each start is a fresh tmux session of a fixed size on a tmux server of the bench's own; a sample
is the time from starting the command to its first frame on the screen (the footer's last key,
which both apps draw, read back with capture-pane). The two apps alternate, so that whatever else
the machine does falls on both alike: the ratio is the point.

Both start from bytecode: diffdeck's modules are compiled into __pycache__ first, as pip compiles
an installed diffdeck (and Textual). Otherwise a checkout run with PYTHONDONTWRITEBYTECODE set
compiles diffdeck from source at every start, which no user's install does.
"""

from __future__ import annotations

import compileall
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffdeck.engines
import diffdeck.themes
import diffdeck.tui
from diffdeck.engines.bench.render_overhead import ui_import_seconds
from diffdeck.engines.core.text import visible

FIRST_FRAME_MARK = "^p palette"  # the footer's command palette key, on both apps' first frame
SIZE = ("100", "30")
POLL_S = 0.005
DEADLINE_S = 60.0


class FrameBenchError(Exception):
    """An app did not draw its first frame, or did not quit; the message holds its screen."""


class Tmux:
    """A tmux server of one bench run, on a socket of its own; one session holds it up between starts."""

    def __init__(self, socket: str):
        self.socket = socket

    def __call__(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=10, stdin=subprocess.DEVNULL)
        if check and done.returncode:
            raise FrameBenchError(f"tmux {args[0]}: {done.stderr.strip()}")
        return done.stdout

    def __enter__(self) -> Tmux:
        self("new-session", "-d", "-s", "holder", "-x", SIZE[0], "-y", SIZE[1], "sleep 86400")
        self("set-option", "-g", "remain-on-exit", "on")  # a crash's last screen stays to be read
        return self

    def __exit__(self, *exc: object) -> None:
        self("kill-server", check=False)


def first_frame_seconds(tmux: Tmux, name: str, command: list[str]) -> float:
    """Start `command` in a fresh session, time it to its first frame, then quit it with ctrl+q."""
    start = time.perf_counter()
    tmux("new-session", "-d", "-s", name, "-x", SIZE[0], "-y", SIZE[1], shlex.join(command))
    while FIRST_FRAME_MARK not in (shown := tmux("capture-pane", "-p", "-t", name)):
        if time.perf_counter() - start > DEADLINE_S or _exited(tmux, name):
            raise FrameBenchError(f"{name} drew no first frame; its screen:\n{shown.rstrip()}")
        time.sleep(POLL_S)
    took = time.perf_counter() - start
    tmux("send-keys", "-t", name, "C-q")
    deadline = time.monotonic() + DEADLINE_S
    while not _exited(tmux, name):
        if time.monotonic() > deadline:
            raise FrameBenchError(f"{name} did not quit on ctrl+q; its screen:\n{tmux('capture-pane', '-p', '-t', name)}")
        time.sleep(0.05)
    tmux("kill-session", "-t", name)
    return took


def _exited(tmux: Tmux, name: str) -> bool:
    return tmux("display-message", "-p", "-t", name, "#{pane_dead}").strip() == "1"


def compile_diffdeck() -> None:
    """diffdeck's modules into bytecode, where they are not already (a folder that cannot be
    written is left as it is: the install's own bytecode is what its starts read)."""
    for package in (diffdeck.engines, diffdeck.tui, diffdeck.themes):
        for folder in package.__path__:
            compileall.compile_dir(folder, quiet=2)


def run_frame_bench(rounds: int, models: str | None = None) -> int:
    if shutil.which("tmux") is None:
        print("diffdeck: error: bench frame measures in tmux, which is not installed", file=sys.stderr)
        return 2
    print(f"diffdeck bench frame: first frame in tmux ({'x'.join(SIZE)}), the workbench (--new, --images off, "
          f"local engine) and a minimal Textual app (Header, TextArea, Footer), {rounds} alternating rounds, "
          "both from bytecode")
    compile_diffdeck()
    try:
        samples = _alternate(rounds, models)
    except FrameBenchError as e:
        print(f"diffdeck: error: {visible(str(e), newlines=True)}", file=sys.stderr)
        return 1
    for name, taken in samples.items():
        print(f"{name}: median {statistics.median(taken):.3f} s, range {min(taken):.3f}-{max(taken):.3f} s")
    ratio = statistics.median(samples["workbench"]) / statistics.median(samples["minimal"])
    print(f"workbench/minimal median ratio {ratio:.2f} (target <= 1.5)")
    print(f"UI-side import of engines + diffdeck.tui.cli.main: {1000 * ui_import_seconds():.0f} ms, best of 5 "
          "(target < 150 ms)")
    return 0


def _alternate(rounds: int, models: str | None) -> dict[str, list[float]]:
    minimal = [sys.executable, "-m", "diffdeck.tui.cli.minimal_app"]
    samples: dict[str, list[float]] = {"minimal": [], "workbench": []}
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-") as tmp, Tmux(f"diffdeck-bench-{os.getpid()}") as tmux:
        for i in range(rounds):
            workbench = [sys.executable, "-m", "diffdeck.tui", "--new", str(Path(tmp) / f"s{i}"), "--images", "off",
                         "--engine", "local", *(["--models", models] if models else [])]
            samples["minimal"].append(first_frame_seconds(tmux, f"minimal{i}", minimal))
            samples["workbench"].append(first_frame_seconds(tmux, f"workbench{i}", workbench))
            print(f"  round {i + 1}: minimal {samples['minimal'][-1]:.3f} s   workbench {samples['workbench'][-1]:.3f} s",
                  flush=True)
    return samples
