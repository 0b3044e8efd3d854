"""The Dispatcher's handle on one worker subprocess: start, talk, watch, stop.

UI side: asyncio only. The worker's stderr is kept (its tail) to explain a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Collection

from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.core.worker_protocol import Intervals, ProtocolError, decode, encode
from diffdeck.engines.queue.devices import CPU, Device

STARTING, LOADING, IDLE, BUSY, STOPPING, EXITED = "starting", "loading", "idle", "busy", "stopping", "exited"
_LINE_LIMIT = 1 << 20


class WorkerError(Exception):
    """A worker could not load its model, or died."""


class WorkerProcess:
    """Owns the worker's state: starting -> loading -> idle <-> busy -> stopping -> exited."""

    def __init__(
        self,
        spec: ModelSpec,
        memory_gb: float,
        on_message: Callable[["WorkerProcess", dict[str, Any]], None],
        on_exit: Callable[["WorkerProcess"], None],
        intervals: Intervals = Intervals(),
        device: Device = CPU,
        key_variables: Collection[str] = (),
    ):
        """`key_variables`: every model's API key variable (the registry's): none reaches the worker
        but its own model's."""
        self.spec = spec
        self.device = device  # the one it is pinned to
        self.memory_gb = memory_gb  # the registry's estimate until the worker measures itself
        self.state = STARTING
        self.job_id: str | None = None
        self.environment: dict[str, Any] = {}  # from `hello`
        self.loaded: dict[str, Any] = {}  # from `ready`: load time, family, device, dtype, memory
        self.last_used = time.monotonic()
        self.returncode: int | None = None
        self.stop_requested = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._on_message = on_message
        self._on_exit = on_exit
        self._intervals = intervals
        self._key_variables = frozenset(key_variables)
        self._proc: asyncio.subprocess.Process | None = None
        self._load_error: str | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def model(self) -> str:
        return self.spec.name

    async def start(self) -> None:
        self._proc = await self._launch()
        self._watcher = asyncio.create_task(self._watch())

    async def _launch(self) -> asyncio.subprocess.Process:
        """The worker's process, or what stands for it (diffdeck.engines.queue.ray_workers)."""
        return await spawn_worker(self.spec, self._intervals, self.device, self._key_variables)

    async def wait_ready(self) -> None:
        """Until the model is loaded; WorkerError if it cannot be. Cancelling the waiter
        leaves the load (and this future) alone."""
        await asyncio.shield(self.ready)

    def assign(self, job_id: str, **job: Any) -> None:
        if self.state != IDLE:
            raise WorkerError(f"worker for {self.model!r} {describe_exit(self.returncode)}"
                              if self.state == EXITED else f"worker for {self.model!r} is {self.state}")
        self.state, self.job_id = BUSY, job_id
        self._send("job", id=job_id, **job)

    def cancel(self, job_id: str) -> None:
        if self.state == BUSY and self.job_id == job_id:
            self._send("cancel", id=job_id)

    def release(self) -> None:
        """The job it ran has ended; it is warm and free again."""
        if self.state == BUSY:
            self.state, self.job_id, self.last_used = IDLE, None, time.monotonic()

    def stderr_text(self, lines: int = 12) -> str:
        return "\n".join(list(self.stderr_tail)[-lines:])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ask the worker to finish; kill it if it does not within `grace_s`."""
        if self._proc is None or self.state == EXITED:
            return
        self.stop_requested = True
        if self.state != STOPPING:
            self.state = STOPPING
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._proc.stdin.write(encode("shutdown"))
                self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._exited.wait(), grace_s)
        except asyncio.TimeoutError:
            self.kill()
            await self._exited.wait()

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    def _send(self, message_type: str, /, **fields: Any) -> None:
        self._proc.stdin.write(encode(message_type, **fields))

    async def _watch(self) -> None:
        try:
            await asyncio.gather(self._read_stderr(), self._read_stdout())
        finally:
            self.returncode = await self._proc.wait()
            self.state = EXITED
            if not self.ready.done():
                self.ready.set_exception(WorkerError(self._load_error or (
                    f"worker for {self.model!r} {describe_exit(self.returncode)} while loading; "
                    f"last log lines:\n{self.stderr_text()}")))
            self._exited.set()
            self._on_exit(self)

    async def _read_stderr(self) -> None:
        """In chunks, not lines: a progress bar may never end a line."""
        partial = ""
        while chunk := await self._proc.stderr.read(1 << 16):
            *lines, partial = (partial + chunk.decode(errors="replace")).replace("\r", "\n").split("\n")
            self.stderr_tail.extend(line.rstrip() for line in lines if line.strip())
            partial = partial[-4096:]
        if partial.strip():
            self.stderr_tail.append(partial.rstrip())

    async def _read_stdout(self) -> None:
        async for line in self._proc.stdout:
            try:
                self._handle(decode(line))
            except (ProtocolError, KeyError, TypeError, ValueError) as e:
                self.stderr_tail.append(f"[diffdeck] bad message from the worker: {e!r}")

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello":
            self.state = LOADING
            self.environment = message["environment"]
        elif kind == "ready":
            self.state, self.last_used, self.loaded = IDLE, time.monotonic(), message
            if message["memory"].get("gpu"):
                self.memory_gb = max(self.memory_gb, message["memory"]["gpu"] / 1e9)
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "load_failed":
            self._load_error = message["error"]
        elif kind == "failed" and message["kind"] == "fatal":
            self.state = STOPPING  # it exits next; no job may be given to it
        self._on_message(self, message)


async def spawn_worker(spec: ModelSpec, intervals: Intervals, device: Device = CPU,
                       key_variables: Collection[str] = ()) -> asyncio.subprocess.Process:
    """`python -m diffdeck.engines.worker` for `spec` (a hosted model's: `diffdeck.engines.hosted`),
    its pipes open, pinned to `device` (the only GPU it sees), without the API key variables named in
    `key_variables` but its own model's; it dies with this process."""
    hidden = set(key_variables) - {spec.api_key_env}
    env = {**{name: value for name, value in os.environ.items() if name not in hidden},
           "PYTORCH_ALLOC_CONF": "expandable_segments:True", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if device.visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = device.visible
    # A session of its own: Ctrl-C in the terminal reaches the client, which cancels the
    # job cleanly, instead of killing every worker with it.
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "diffdeck.engines.hosted" if spec.hosted else "diffdeck.engines.worker",
        "--model", json.dumps(spec.to_dict()),
        *intervals.to_args(), "--parent", str(os.getpid()),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, limit=_LINE_LIMIT, start_new_session=True,
    )


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
