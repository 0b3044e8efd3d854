"""A real engine daemon for the tests: `diffdeck serve --foreground` in a process of its own,
and the calls the tests make of it from synchronous code."""

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.daemon.server import DaemonError

PROMPT = "a large red circle on a blue background"


def serve(cwd: Path, *args: str) -> subprocess.Popen:
    """`diffdeck serve --foreground`, once it answers as itself (not a dead daemon's socket)."""
    log = cwd / "daemon.log"
    with open(log, "a") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "diffdeck.tui", "serve", "--foreground", *args], cwd=cwd,
                                  stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(DaemonError):
            if state()["pid"] == daemon.pid:
                return daemon
        assert daemon.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the daemon did not answer"
        time.sleep(0.05)


def call(name: str, **args):
    """One call of the daemon's protocol, on a connection of its own."""
    async def ask():
        async with await EngineClient.connect() as client:
            return await client.call(name, **args)
    return asyncio.run(ask())


def state() -> dict:
    return call("state")


def until_done(job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = next((j for j in state()["jobs"] if j["id"] == job_id), None)
        if job and job["status"] in ("done", "failed", "held", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"{job_id} did not finish")


def stop(daemon: subprocess.Popen, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "diffdeck.tui", "stop", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert daemon.wait(timeout=60) == 0
