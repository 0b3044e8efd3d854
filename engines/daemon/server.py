"""The engine daemon: a RecordedQueue (Dispatcher, workers, session) served on a Unix socket, so
renders go on when the terminal that asked for them goes away.

The socket lives in the user's runtime directory (a folder of mode 0700, the socket 0600), and a
connection from another user is refused by its peer credentials as well. The protocol is the
Dispatcher's own API as JSON lines, one object a line:

    client: {"hello": {"protocol": 2}}
    daemon: {"hello": {"protocol": 2, "version": ..., "session": ..., "jobs": [...], "queue": [...], "paused": ...}}
    client: {"id": 1, "call": "submit", "args": {"spec": {...}}}   (or submit_set, cancel, cancel_all,
            move, retry, pause, resume, pick, rate, state, stop, image: a PNG as base64, whole or
            fitted to max_side)
    daemon: {"id": 1, "result": {...}}  or  {"id": 1, "error": "..."}   (an answer may come before
            the events its call caused)
    daemon: {"event": {"type": "progress", "job": "job-0001", "data": {...}}}  (every event, to every
            client; a pick or rating one client made comes to all as an event too)

The hello carries the session's whole record (jobs, sets, picks, ratings), so a client can draw
what happened before it attached and follow the events from there, and the daemon's models with
their defaults (diffdeck.engines.core.registry.Registry.menu) and routes (route_menu), which may not
be the client's.

Each call is one of DaemonCalls' (diffdeck.engines.daemon.wire), answered by the RecordedQueue's
method of that name (CALLS says how its arguments come over the wire), or by the daemon itself
(state, stop). A long message goes as pages (wire).

A client of another protocol version gets {"error": ...} naming both versions, then the line
closes. UI side: never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from diffdeck.engines import __version__
from diffdeck.engines.core.events import Event, EventStream, JobRecord, Status
from diffdeck.engines.core.files import write_whole
from diffdeck.engines.core.registry import RegistryError
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.daemon.wire import LINE_LIMIT, PROTOCOL, DaemonError, encode, read_message
from diffdeck.engines.record.session import SessionError, SessionWriteError
from diffdeck.engines.sets.variants import VariantSet

if TYPE_CHECKING:  # the client imports this module: it needs not the Dispatcher's modules
    from diffdeck.engines.service.recorded_queue import RecordedQueue

MAX_BACKLOG = 50_000  # events; previews, steps and telemetry make a few a second
MAX_WHOLE = 2**31 - 1  # what a whole-number argument may be (a position, an image, stars, pixels)


def socket_path() -> Path:
    if os.environ.get("DIFFDECK_SOCKET"):
        return Path(os.environ["DIFFDECK_SOCKET"])
    base = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(base) / "diffdeck" if base else Path(tempfile.gettempdir()) / f"diffdeck-{os.getuid()}") / "engine.sock"


@dataclass(frozen=True)
class Place:
    """A daemon's files. The socket and its lock live in the runtime directory; the state (which
    session to resume after a crash) and the log outlive it, under $XDG_STATE_HOME, since logind
    empties the runtime directory at the last logout."""

    socket: Path

    @property
    def lock(self) -> Path:
        return self.socket.with_name(self.socket.name + ".lock")

    @property
    def state(self) -> Path:
        return self._kept(".json")

    @property
    def log(self) -> Path:
        return self._kept(".log")

    def _kept(self, suffix: str) -> Path:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        tag = hashlib.sha256(str(self.socket.absolute()).encode()).hexdigest()[:8]
        return base / "diffdeck" / f"engine-{tag}{suffix}"


def place() -> Place:
    return Place(socket_path())


def own_folder(folder: Path) -> None:
    """Make `folder` (0700), or check that the one there is a real folder of this user's that
    nobody else may write in: whoever may could remove the socket and put theirs there."""
    try:
        folder.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise DaemonError(f"{folder} is not a folder of this user's; set DIFFDECK_SOCKET to a path of your own") from None
        if info.st_mode & 0o022:
            raise DaemonError(f"{folder} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                              f"make it yours alone (chmod 700 {folder}) or set DIFFDECK_SOCKET to a path "
                              "in a folder of your own") from None


def hold_lock(where: Place) -> int:
    """The daemon's lock, held for its life (the returned descriptor): one daemon per socket,
    and none resumes a session another is still writing."""
    own_folder(where.socket.parent)
    try:
        fd = os.open(where.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # a link there is never followed
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror or str(e)
        raise DaemonError(f"cannot take the daemon's lock {where.lock}: {why}; not touching it "
                          "(remove it, or set DIFFDECK_SOCKET elsewhere)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(f"a diffdeck daemon is already running on {where.socket} (diffdeck status)") from None
    return fd


def event_message(event: Event) -> dict[str, Any]:
    return {"event": {"type": event.type, "job": event.job, "data": event.data}}


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux); None where the
    platform does not say, and the socket's mode is the only check."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


class Daemon:
    """Serves a RecordedQueue on `where.socket`; the caller holds the lock (`hold_lock`)."""

    def __init__(self, engine: RecordedQueue, where: Place):
        self.engine, self.where = engine, where
        self.dispatcher = engine.dispatcher
        self._stop, self._now = asyncio.Event(), asyncio.Event()
        self._connections: dict[asyncio.StreamWriter, EventStream] = {}
        self.failure: str | None = None  # why it stopped of itself: its session could not be written
        engine.listeners.append(self._pass_on)

    async def serve(self) -> int:
        """Serve until `stop` is called; then shut down, leaving unfinished jobs queued in the
        session. Returns the exit status: 1 when the session could not be written, else 0."""
        _take_socket_path(self.where.socket)
        previous = os.umask(0o177)  # the socket is born 0600: no moment where another user may connect
        try:
            server = await asyncio.start_unix_server(self._client, path=str(self.where.socket), limit=LINE_LIMIT)
        finally:
            os.umask(previous)
        _write_atomically(self.where.state, {"pid": os.getpid(), "session": str(self.engine.session.folder)})
        for job_id, error in self.engine.start():
            print(f"diffdeck serve: {job_id} not resumed: {error}", flush=True)
        self.engine.recording.add_done_callback(self._recording_ended)
        print(f"diffdeck serve: pid {os.getpid()} listening on {self.where.socket}, "
              f"session {self.engine.session.folder}", flush=True)
        try:
            await self._stop.wait()
            running = [j.finished.wait() for j in self.dispatcher.jobs.values() if j.status == Status.RUNNING]
            if running and not self._now.is_set():  # after the running job, unless told "now" meanwhile
                self.dispatcher.pause()
                now = asyncio.ensure_future(self._now.wait())
                await asyncio.wait([asyncio.ensure_future(asyncio.gather(*running)), now],
                                   return_when=asyncio.FIRST_COMPLETED)
                now.cancel()
        finally:
            server.close()
            for writer, events in list(self._connections.items()):  # before the shut-down's cancellations
                events.close()
                with contextlib.suppress(ConnectionError, RuntimeError):
                    writer.write(encode({"error": f"the daemon stopped: {self.failure}" if self.failure else
                                                  "the daemon stopped; unfinished jobs stay queued in its session"}))
                    writer.close()
            problem = await self.engine.shut_down()
            if problem and problem != self.failure:  # compacting its session: the journal holds it all
                print(f"diffdeck serve: {problem}", flush=True)
            self.where.socket.unlink(missing_ok=True)
            if not self.failure and not self.engine.session.unfinished():
                self.where.state.unlink(missing_ok=True)
        return 1 if self.failure else 0

    def stop(self, now: bool = False) -> None:
        if now:
            self._now.set()
        self._stop.set()

    def _recording_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self._fail(str(error) if isinstance(error, SessionWriteError) else
                       f"the session is no longer recorded ({error})")

    def _fail(self, why: str) -> None:
        """The session cannot be written: say so once, and stop at once; nothing renders unrecorded."""
        if self.failure is None:
            self.failure = why
            print(f"diffdeck serve: {why}; stopping", flush=True)
        self.stop(now=True)

    async def state(self) -> dict[str, Any]:
        """The engine's state, and the daemon's own: its protocol, version, pid and clients."""
        state = await self.engine.state()
        return {"protocol": PROTOCOL, "version": __version__, "pid": os.getpid(), "session": state.pop("session"),
                "paused": state.pop("paused"), "clients": len(self._connections), **state}

    async def stopping(self, now: bool) -> dict[str, Any]:
        """The `stop` call: stop, and say what stays queued and what runs on till then."""
        jobs = self.dispatcher.jobs.values()
        queued = sum(job.status == Status.QUEUED for job in jobs)
        running = [job.record().to_dict() for job in jobs if job.status == Status.RUNNING]
        self.stop(now)
        return {"queued_left": queued, "running": running}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid is not None and uid != os.getuid():
                writer.write(encode({"error": f"this diffdeck daemon belongs to uid {os.getuid()}; uid {uid} refused"}))
                return
            hello = (await read_message(reader) or {}).get("hello")
            if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
                theirs = hello.get("protocol") if isinstance(hello, dict) else None
                writer.write(encode({"error": f"this daemon speaks diffdeck protocol {PROTOCOL} (diffdeck {__version__}); "
                                              f"the client spoke {theirs}: run the same diffdeck version on both ends"}))
                return
            events = self._connections[writer] = self.dispatcher.subscribe()  # before the snapshot: nothing falls between
            registry = self.dispatcher.registry
            writer.write(encode({"hello": {**await self.state(), "record": self.engine.session.record,
                                           "models": registry.menu(), "routes": registry.route_menu()}}))
            forward = asyncio.create_task(_forward(events, writer))
            try:
                while (request := await read_message(reader)) is not None:
                    writer.write(encode(await self._answer(request)))
            finally:
                forward.cancel()
        except (ConnectionError, ValueError) as e:  # gone mid-line, garbage, a line past the limit
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(encode({"error": f"closing the connection: {e}"}))
        finally:
            events = self._connections.pop(writer, None)
            if events is not None:
                events.close()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        call, args = request.get("call"), request.get("args") or {}
        try:
            if not isinstance(args, dict):
                raise ValueError(f"the arguments of {call!r} must be a JSON object")
            if not isinstance(call, str) or call not in CALLS:
                raise ValueError(f"unknown call {call!r}")
            return {"id": request.get("id"), "result": await CALLS[call](self, args)}
        except KeyError as e:
            return {"id": request.get("id"), "error": f"{call!r} needs the argument {e}"}
        except SessionWriteError as e:  # a pick or a rating
            self._fail(str(e))
            return {"id": request.get("id"), "error": str(e)}
        except (SpecError, RegistryError, SessionError, ValueError, TypeError, OSError) as e:
            return {"id": request.get("id"), "error": str(e)}

    def _pass_on(self, event: Event) -> None:
        """What a user said of an image (a pick, a rating) or the engine measured of it (its quality),
        once recorded, to every client as an event."""
        for events in self._connections.values():
            events.put(event)


Args = dict[str, Any]  # a call's arguments as they come over the wire

# Each call of DaemonCalls: its arguments from the wire's, and its answer as the wire's. The
# engine's calls go to the daemon's RecordedQueue; state and stop are the daemon's own.
CALLS: dict[str, Callable[[Daemon, Args], Awaitable[Any]]] = {
    "submit": lambda d, a: _as_dict(d.engine.submit(JobSpec.from_dict(a["spec"]))),
    "submit_set": lambda d, a: _set_queued(d.engine.submit_set(VariantSet.from_dict(a["set"]))),
    "cancel": lambda d, a: d.engine.cancel(a["job"]),
    "cancel_all": lambda d, a: d.engine.cancel_all(),
    "move": lambda d, a: d.engine.move(a["job"], _whole(a, "position")),
    "retry": lambda d, a: _as_dict(d.engine.retry(a["job"], bool(a.get("force")))),
    "pause": lambda d, a: d.engine.pause(),
    "resume": lambda d, a: d.engine.resume(),
    "pick": lambda d, a: d.engine.pick(a["set"], _whole(a, "image"), a["left"], a["right"], a["winner"]),
    "rate": lambda d, a: d.engine.rate(a["job"], _whole(a, "image"), _whole(a, "stars")),
    "state": lambda d, a: d.state(),
    "image": lambda d, a: d.engine.image(a["job"], _whole(a, "image"),
                                         None if a.get("max_side") is None else _whole(a, "max_side")),
    "stop": lambda d, a: d.stopping(bool(a.get("now"))),
}


async def _as_dict(record: Awaitable[JobRecord]) -> dict[str, Any]:
    return (await record).to_dict()


async def _set_queued(queued: Awaitable[tuple[str, list[str]]]) -> dict[str, Any]:
    set_id, jobs = await queued
    return {"set": set_id, "jobs": jobs}


def _whole(args: dict[str, Any], key: str) -> int:
    """A whole-number argument as JSON gives it; never true, 2.5, 1e400 (inf), NaN or "3"."""
    value = args[key]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_WHOLE:
        return value
    if isinstance(value, (list, dict)):
        what = "a list" if isinstance(value, list) else "an object"
    else:  # as JSON wrote it: true, 2.5, Infinity, NaN, null, "3"; or an integer past the bound
        what = "a larger one" if isinstance(value, int) and not isinstance(value, bool) else json.dumps(value)[:40]
    raise ValueError(f"{key} must be a whole number of at most {MAX_WHOLE:,}, not {what}")


async def _forward(events: EventStream, writer: asyncio.StreamWriter) -> None:
    """Every event to one client. A client that stops reading only stalls this task, and is let
    go once it is MAX_BACKLOG events behind; a client that is gone ends it. The renders never
    wait for either."""
    with contextlib.suppress(ConnectionError):
        async for event in events:
            if events.backlog() > MAX_BACKLOG:
                writer.write(encode({"error": f"this client fell {MAX_BACKLOG} events behind; disconnected"}))
                writer.close()
                return
            writer.write(encode(event_message(event)))
            await writer.drain()


def _take_socket_path(path: Path) -> None:
    """With the lock held, a socket of ours left at `path` that nobody listens on is a dead
    daemon's: remove it. Anything else there is not ours to touch."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    elsewhere = "set DIFFDECK_SOCKET elsewhere"
    if not stat.S_ISSOCK(info.st_mode):
        raise DaemonError(f"{path} exists and is not a socket; not touching it ({elsewhere})")
    if info.st_uid != os.getuid():
        raise DaemonError(f"{path} is a socket of uid {info.st_uid}, not yours; not touching it ({elsewhere})")
    listener = _listener_at(path)
    if listener:
        raise DaemonError(f"{path} is in use: {listener} listens on it; not replacing it "
                          f"(stop it, or {elsewhere})")
    path.unlink()


def _listener_at(path: Path) -> str | None:
    """Who listens on the socket at `path`, in words; None when nobody does (a dead one's socket)."""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError as e:
            return f"something this user cannot connect to ({e.strerror or e})"
        try:
            probe.sendall(encode({"hello": {"protocol": PROTOCOL}}))
            answer = json.loads(probe.makefile("rb").readline(LINE_LIMIT))
            if isinstance(answer, dict) and {"hello", "error", "part"} & answer.keys():
                return "a diffdeck daemon"
        except (OSError, ValueError):
            pass
        return "a program that is not a diffdeck daemon"


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_whole(path, json.dumps(data).encode())
