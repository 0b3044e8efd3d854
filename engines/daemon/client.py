"""A client of the engine daemon (diffdeck.engines.daemon.server): over its Unix socket on this machine, or over
a command's stdin and stdout, such as `ssh HOST diffdeck attach --stdio` for a daemon on another
machine. Calls are answered in order of their ids; events arrive as they happen.

UI side: never imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shlex
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Literal

from diffdeck.engines.core.events import Event, EventKind, EventStream, JobRecord
from diffdeck.engines.core.files import write_whole
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.daemon.server import peer_uid, socket_path
from diffdeck.engines.daemon.wire import LINE_LIMIT, PROTOCOL, DaemonCalls, DaemonError, encode, read_message
from diffdeck.engines.sets.variants import VariantSet

KINDS = frozenset(EventKind)


class EngineClient(DaemonCalls):
    """A daemon's engine, driven through its typed calls (DaemonCalls); `call` is the wire's own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 process: asyncio.subprocess.Process | None = None):
        self._reader, self._writer, self._process = reader, writer, process
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._events = EventStream()
        self._reading: asyncio.Task | None = None
        self.hello: dict[str, Any] = {}
        self.closed_because: str | None = None

    async def __aenter__(self) -> "EngineClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @classmethod
    async def connect(cls, path: Path | None = None) -> "EngineClient":
        path = path or socket_path()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonError(f"no diffdeck daemon is listening on {path} (diffdeck serve starts one)") from None
        except OSError as e:
            raise DaemonError(f"cannot connect to {path}: {e}") from None
        theirs = peer_uid(writer.get_extra_info("socket"))
        if theirs is not None and theirs != os.getuid():  # a socket planted where ours should be
            writer.close()
            raise DaemonError(f"the daemon on {path} runs as uid {theirs}, not as you; not talking to it")
        return await cls(reader, writer)._handshake()

    @classmethod
    async def over_command(cls, argv: list[str]) -> "EngineClient":
        """Speak the protocol over a command's stdin and stdout (its stderr is the user's)."""
        try:
            # a process session of its own: ctrl+c detaches this client, it does not kill the line
            process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                           stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
                                                           start_new_session=True)
        except OSError as e:
            raise DaemonError(f"could not run {argv[0]}: {e}") from None
        return await cls(process.stdout, process.stdin, process)._handshake()

    async def _handshake(self) -> "EngineClient":
        try:
            self._writer.write(encode({"hello": {"protocol": PROTOCOL}}))
            answer = await read_message(self._reader)
            if answer is None:
                raise ConnectionError("it closed")
        except (ConnectionError, ValueError) as e:
            await self.close()
            raise DaemonError(f"no diffdeck daemon answered: {e}") from None
        error, self.hello = answer.get("error"), answer.get("hello")
        if error or not isinstance(self.hello, dict):
            await self.close()
            raise DaemonError(str(error or f"what answered is not a diffdeck daemon: {str(answer)[:80]}"))
        self._reading = asyncio.create_task(self._read())
        return self

    async def call(self, name: str, **args: Any) -> Any:
        """One call as the wire has it; raises DaemonError with the daemon's message when it refuses."""
        if self.closed_because:
            raise DaemonError(self.closed_because)
        request_id = next(self._ids)
        answer = self._pending[request_id] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(encode({"id": request_id, "call": name, "args": args}))
            await self._writer.drain()
        except ConnectionError as e:
            self._pending.pop(request_id, None)
            raise DaemonError(f"the connection to the daemon broke: {e}") from None
        return await answer

    # DaemonCalls: each as the daemon's CALLS reads it (diffdeck.engines.daemon.server)

    async def submit(self, spec: JobSpec) -> JobRecord:
        return JobRecord.from_dict(await self.call("submit", spec=spec.to_dict()))

    async def submit_set(self, variants: VariantSet) -> tuple[str, list[str]]:
        queued = await self.call("submit_set", set=variants.to_dict())
        return queued["set"], queued["jobs"]

    async def cancel(self, job_id: str) -> bool:
        return await self.call("cancel", job=job_id)

    async def cancel_all(self) -> int:
        return await self.call("cancel_all")

    async def move(self, job_id: str, position: int) -> None:
        await self.call("move", job=job_id, position=position)

    async def retry(self, job_id: str, force: bool = False) -> JobRecord:
        return JobRecord.from_dict(await self.call("retry", job=job_id, force=force))

    async def pause(self) -> None:
        await self.call("pause")

    async def resume(self) -> None:
        await self.call("resume")

    async def pick(self, set_id: str, image: int, left: str, right: str, winner: str | None) -> None:
        await self.call("pick", set=set_id, image=image, left=left, right=right, winner=winner)

    async def rate(self, job_id: str, image: int, stars: int) -> None:
        await self.call("rate", job=job_id, image=image, stars=stars)

    async def state(self) -> dict[str, Any]:
        return await self.call("state")

    async def image(self, job_id: str, image: int, max_side: int | None = None) -> dict[str, str]:
        return await self.call("image", job=job_id, image=image, max_side=max_side)

    async def stop(self, now: bool = False) -> dict[str, Any]:
        return await self.call("stop", now=now)

    def events(self) -> EventStream:
        """Every event from the moment of attaching, until the connection closes."""
        return self._events

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._writer.close()
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            await self._process.wait()

    async def _read(self) -> None:
        reason = "the daemon closed the connection"
        try:
            while (message := await read_message(self._reader)) is not None:
                if "event" in message:
                    event = message["event"]
                    if event.get("type") in KINDS:  # a kind a newer daemon emits is not this client's to draw
                        self._events.put(Event(EventKind(event["type"]), event.get("job"), event.get("data") or {}))
                elif message.get("id") in self._pending:
                    answer = self._pending.pop(message["id"])
                    if "error" in message:
                        answer.set_exception(DaemonError(message["error"]))
                    else:
                        answer.set_result(message.get("result"))
                elif "error" in message:
                    reason = message["error"]
        except (ConnectionError, ValueError, TypeError, AttributeError) as e:
            reason = f"the connection to the daemon broke: {e}"
        finally:  # however it ends (closed, broken, cancelled), nobody waits for an answer forever
            self.closed_because = reason
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(DaemonError(reason))
            self._pending.clear()
            self._events.end()


def save_image(answer: dict[str, Any], folder: Path, name: str | None = None) -> Path:
    """An image as the daemon's `image` call sends it, written whole into `folder` under `name`,
    else its own name (a file name: never a path that leaves the folder). DaemonError for an
    answer that is not an image's."""
    try:
        name = Path(name or answer["name"]).name
        data = base64.b64decode(answer["png"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise DaemonError(f"the daemon's answer is not an image ({type(e).__name__}: {e})") from None
    if name in ("", ".", ".."):
        raise DaemonError(f"the daemon named an image {name!r}, which is not a file name")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    write_whole(path, data)
    return path


HOLDING_PROBE_S = 5.0  # how long an engine of its own waits to learn what a daemon holds


async def daemon_holding(models: Iterable[str]) -> str | None:
    """Which of `models` a running daemon holds loaded, in words; None when it holds none (or
    none runs, or none answers in time)."""
    try:
        async with await asyncio.wait_for(EngineClient.connect(), HOLDING_PROBE_S) as client:
            state = await asyncio.wait_for(client.state(), HOLDING_PROBE_S)
    except (DaemonError, asyncio.TimeoutError):
        return None
    held = sorted(set(models) & {name for name, worker in state["workers"].items()
                                 if worker["state"] not in ("stopping", "exited")})
    if not held:
        return None
    return (f"the engine daemon (pid {state['pid']}) holds {', '.join(held)} loaded already; rendering it here "
            "loads another copy, in twice the memory")


# which engine a command renders with

ENGINES = ("auto", "local", "daemon")
Connect = Callable[[], Awaitable[EngineClient]]


def default_engine() -> str:
    return os.environ.get("DIFFDECK_ENGINE", "auto")


def choose_engine(engine: str, session: Path | None, remote: str | None,
                  daemon_runs: Callable[[], bool]) -> Literal["local", "remote", "daemon", "start"]:
    """Where a render or the workbench runs: in this process (local), on HOST's daemon over ssh
    (remote), or on this machine's daemon, running (daemon) or to be started (start). `engine`:
    --engine or default_engine(); `session`: a folder the user named; `daemon_runs` is asked
    only when the answer decides it (each time is a connection, a hello and a state)."""
    if engine not in ENGINES:  # from $DIFFDECK_ENGINE, which argparse does not check
        raise SpecError("--engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
    if session and (remote or engine == "daemon"):
        raise SpecError("--session", "a daemon writes its own session (diffdeck status names it); "
                                     "--engine local renders into another")
    if remote:
        return "remote"
    if engine == "local" or (engine == "auto" and session):
        return "local"  # --session names a folder of the user's: that render writes it itself
    if daemon_runs():
        return "daemon"
    return "local" if engine == "auto" else "start"


def remote_connection(host: str) -> Connect:
    """`ssh HOST diffdeck attach --stdio`, the two commands as $DIFFDECK_SSH and $DIFFDECK_REMOTE say."""
    ssh = shlex.split(os.environ.get("DIFFDECK_SSH", "ssh"))
    remote = shlex.split(os.environ.get("DIFFDECK_REMOTE", "diffdeck"))
    return lambda: EngineClient.over_command([*ssh, host, *remote, "attach", "--stdio"])
