"""A real engine daemon for the tests: `diffdeck serve --foreground` in a process of its own,
and the calls the tests make of it from synchronous code."""

import asyncio
import contextlib
import subprocess
from pathlib import Path

from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.daemon.wire import DaemonError
from helpers import diffdeck, start, wait_until

PROMPT = "a large red circle on a blue background"


def serve(cwd: Path, *args: str, file_limit: int | None = None) -> subprocess.Popen:
    """`diffdeck serve --foreground` (under a file-size limit, if given: helpers.file_size_limit),
    once it answers as itself (not a dead daemon's socket)."""
    log = cwd / "daemon.log"
    with open(log, "a") as out:
        daemon = start("serve", "--foreground", *args, cwd=cwd, file_limit=file_limit, stdout=out,
                       stderr=subprocess.STDOUT)

    def answers() -> bool:
        with contextlib.suppress(DaemonError):
            if state()["pid"] == daemon.pid:
                return True
        assert daemon.poll() is None, log.read_text()
        return False
    wait_until(answers, 120, "the daemon to answer", every=0.05)
    return daemon


def call(name: str, **args):
    """One call of the daemon's protocol, on a connection of its own."""
    async def ask():
        async with await EngineClient.connect() as client:
            return await client.call(name, **args)
    return asyncio.run(ask())


def state() -> dict:
    return call("state")


def until_done(job_id: str, timeout: float = 120) -> dict:
    def finished() -> dict | None:
        job = next((j for j in state()["jobs"] if j["id"] == job_id), None)
        return job if job and job["status"] in ("done", "failed", "held", "cancelled") else None
    return wait_until(finished, timeout, f"{job_id} to finish")


def stop(daemon: subprocess.Popen, *args: str) -> None:
    result = diffdeck("stop", *args, cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    assert daemon.wait(timeout=60) == 0
