"""The Dispatcher's handle on one worker subprocess: start, talk, watch, stop.

UI side: asyncio only. The worker's stderr is kept (its tail) to explain a crash.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
import time
from typing import Any, Callable

from .protocol import ProtocolError, decode, encode
from .spec import ModelSpec

STARTING, LOADING, IDLE, BUSY, STOPPING, EXITED = "starting", "loading", "idle", "busy", "stopping", "exited"
_LINE_LIMIT = 1 << 20


class WorkerError(Exception):
    """A worker could not load its model, or died."""


class WorkerProcess:
    def __init__(
        self,
        spec: ModelSpec,
        memory_gb: float,
        on_message: Callable[["WorkerProcess", dict[str, Any]], None],
        on_exit: Callable[["WorkerProcess"], None],
        preview_interval_s: float = 0.25,
    ):
        self.spec = spec
        self.memory_gb = memory_gb
        self.state = STARTING
        self.job_id: str | None = None
        self.info: dict[str, Any] = {}  # what `hello` and `ready` said
        self.last_used = time.monotonic()
        self.returncode: int | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._on_message = on_message
        self._on_exit = on_exit
        self._preview_interval_s = preview_interval_s
        self._proc: asyncio.subprocess.Process | None = None
        self._load_error: str | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def model(self) -> str:
        return self.spec.name

    async def start(self) -> None:
        env = {**os.environ, "PYTORCH_ALLOC_CONF": "expandable_segments:True",
               "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engines.worker", "--model", json.dumps(self.spec.to_dict()),
            "--preview-interval", str(self._preview_interval_s),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=_LINE_LIMIT,
        )
        self._tasks = [asyncio.create_task(self._read_stderr()), asyncio.create_task(self._read_stdout())]

    def send(self, message_type: str, /, **fields: Any) -> None:
        if self._proc is None or self._proc.stdin is None or self.state in (STOPPING, EXITED):
            raise WorkerError(f"worker for {self.model!r} is not running")
        self._proc.stdin.write(encode(message_type, **fields))

    def stderr_text(self, lines: int = 12) -> str:
        return "\n".join(list(self.stderr_tail)[-lines:])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ask the worker to finish; kill it if it does not within `grace_s`."""
        if self._proc is None or self.state == EXITED:
            return
        self.state = STOPPING
        try:
            self._proc.stdin.write(encode("shutdown"))
            self._proc.stdin.close()
        except (ConnectionError, RuntimeError):
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._tasks[1]), grace_s)
        except asyncio.TimeoutError:
            self.kill()
            await self._tasks[1]

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def _read_stderr(self) -> None:
        assert self._proc and self._proc.stderr
        async for raw in self._proc.stderr:
            for line in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                if line.strip():
                    self.stderr_tail.append(line.rstrip())

    async def _read_stdout(self) -> None:
        assert self._proc and self._proc.stdout
        try:
            async for line in self._proc.stdout:
                try:
                    message = decode(line)
                except ProtocolError as e:
                    self.stderr_tail.append(f"[diffdeck] {e}")
                    continue
                self._handle(message)
        finally:
            self.returncode = await self._proc.wait()
            await self._tasks[0]
            self.state = EXITED
            if not self.ready.done():
                self.ready.set_exception(WorkerError(self._load_error or (
                    f"worker for {self.model!r} {describe_exit(self.returncode)} while loading; "
                    f"last log lines:\n{self.stderr_text()}")))
            self._on_exit(self)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello":
            self.state = LOADING
            self.info.update(message)
        elif kind == "ready":
            self.state = IDLE
            self.info.update(message)
            self.ready.set_result(None)
        elif kind == "load_failed":
            self._load_error = message["error"]
        self._on_message(self, message)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (killed: out of system memory, or by hand)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {returncode}"
