"""The commands around the engine daemon: `diffdeck serve`, `status`, `stop`, `attach --stdio`,
`fetch` (a copy of its session), and rendering through a daemon (`diffdeck render --engine
daemon`, `--remote HOST`).

Never imports torch: the daemon's workers do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from engines.daemon import Daemon, DaemonError, Place, hold_lock, place, socket_path
from engines.engine_client import EngineClient, save_image
from engines.recorded import RecordedQueue
from engines.registry import load_registry
from engines.session import Session, SessionError, new_session_dir
from engines.spec import JobSpec, SpecError

from .follow import exit_status, follow_jobs

ENGINES = ("auto", "local", "daemon")
START_TIMEOUT_S = 60.0

Connect = Callable[[], Awaitable[EngineClient]]


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the engine as a daemon: renders outlive the terminal")
    serve.add_argument("--foreground", action="store_true", help="stay in this terminal (for systemd or a tmux pane)")
    serve.add_argument("--session", type=Path, metavar="DIR",
                       help="session to write (default: the last daemon's, if it left jobs unfinished, else a new one)")
    serve.set_defaults(run=cmd_serve)

    status = commands.add_parser("status", help="the daemon's workers, queue and memory")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    stop = commands.add_parser("stop", help="stop the daemon after the running job (queued jobs stay queued)")
    stop.add_argument("--now", action="store_true", help="at once: the running job is queued again for next time")
    stop.set_defaults(run=cmd_stop)

    fetch = commands.add_parser("fetch", help="copy the daemon's session here: its record and its images, whole")
    fetch.add_argument("folder", type=Path, metavar="DIR", help="a new folder for the copy")
    fetch.add_argument("--remote", metavar="HOST", help="the daemon on HOST, over ssh")
    fetch.set_defaults(run=cmd_fetch)

    attach = commands.add_parser("attach", parents=[common],
                                 help="connect stdin and stdout to the daemon (what --remote runs over ssh)")
    attach.add_argument("--stdio", action="store_true", required=True, help="speak the protocol on stdin and stdout")
    attach.set_defaults(run=cmd_attach)


def add_engine_options(parser: argparse.ArgumentParser, fetch: bool = True) -> None:
    parser.add_argument("--engine", choices=ENGINES, default=os.environ.get("DIFFDECK_ENGINE", "auto"),
                        help="local: render in this process; daemon: through the daemon (started if none "
                             "runs); auto: the daemon if one runs and no --session is given, else local "
                             "(default: $DIFFDECK_ENGINE or auto)")
    parser.add_argument("--remote", metavar="HOST",
                        help="render on HOST's daemon over ssh (ssh HOST diffdeck attach --stdio)")
    if fetch:
        parser.add_argument("--fetch", type=Path, metavar="DIR",
                            help="through a daemon: copy the finished images here too (they stay in its session)")


# serve, status, stop, attach

def cmd_serve(args: argparse.Namespace) -> int:
    if not args.foreground:
        if _answers():
            raise DaemonError(f"a diffdeck daemon is already running on {socket_path()} (diffdeck status)")
        state = start_daemon(args.models, args.session)
        print(f"diffdeck daemon running (pid {state['pid']}) on {socket_path()}, session {state['session']}; "
              f"log: {place().log}; diffdeck status shows it, diffdeck stop stops it")
        return 0
    where = place()
    lock = hold_lock(where)  # before the session is chosen: no two daemons resume one session
    try:
        registry = load_registry(args.models)
        # absolute: the daemon's paths are read by clients in other folders, or on other machines
        session = Session.open((args.session or _session_to_resume(where) or new_session_dir()).resolve())
        return asyncio.run(_serve(Daemon(RecordedQueue(registry, session), where)))
    finally:
        os.close(lock)


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop, True)
    await daemon.serve()
    return 0


def _session_to_resume(where: Place) -> Path | None:
    """After a crash (kill -9, say), the last daemon's session, so its queue resumes. One that
    cannot be read is left alone, and the daemon starts a new one."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, SessionError):
        folder = Path(json.loads(where.state.read_text())["session"])
        if folder.is_dir() and Session.open(folder, create=False).unfinished():
            return folder
    return None


def start_daemon(models: str | None, session: Path | None = None) -> dict[str, Any]:
    """Start `diffdeck serve --foreground` in a process session of its own (the terminal's ctrl+c
    and hang-up do not reach it); its state once it answers."""
    log = place().log
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [sys.executable, "-m", "tui", "serve", "--foreground", *(["--models", models] if models else []),
               *(["--session", str(session.resolve())] if session else [])]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DaemonError(f"the daemon exited at start (status {process.returncode}); see {log}")
        with contextlib.suppress(DaemonError):
            state = asyncio.run(_state())
            if state["pid"] == process.pid:
                return state
        time.sleep(0.1)
    raise DaemonError(f"the daemon did not answer within {START_TIMEOUT_S:.0f} s; see {log}")


async def _state() -> dict[str, Any]:
    async with await EngineClient.connect() as client:
        return await client.call("state")


def _answers() -> bool:
    try:
        asyncio.run(_state())
        return True
    except DaemonError:
        return False


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = asyncio.run(_state())
    except DaemonError as e:
        print(f"diffdeck: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"daemon pid {state['pid']} (diffdeck {state['version']}), session {state['session']}, "
          f"{state['clients'] - 1} other client(s) attached" + (", queue paused" if state["paused"] else ""))
    for name, worker in state["workers"].items():
        busy = f", rendering {worker['job']}" if worker["job"] and worker["state"] == "busy" else ""
        print(f"  worker {name}: {worker['state']} (pid {worker['pid']}, about {worker['memory_gb']:.1f} GB){busy}")
    telemetry = state["telemetry"]
    for gpu in telemetry["gpus"] or []:
        print(f"  GPU {gpu['index']} {gpu['name']}: {gpu['memory_used'] / 2**30:.1f} of "
              f"{gpu['memory_total'] / 2**30:.1f} GiB used")
    if not telemetry["gpus"]:
        print(f"  no GPU figures: {telemetry['gpu_problem']}; RAM {telemetry['ram_used'] / 2**30:.1f} "
              f"of {telemetry['ram_total'] / 2**30:.1f} GiB used")
    jobs = {job["id"]: job for job in state["jobs"]}
    running = [job for job in state["jobs"] if job["status"] == "running"]
    for job in running + [jobs[job_id] for job_id in state["queue"]]:
        print(f"  {job['id']} {job['status']:8} {job['spec']['model']}: {job['spec']['prompt']}")
    done = sum(job["status"] == "done" for job in state["jobs"])
    print(f"  {len(state['queue'])} queued, {len(running)} running, {done} done since the daemon started")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    async def stop() -> dict[str, Any]:
        async with await EngineClient.connect() as client:
            answer = await client.call("stop", now=args.now)
            async for _event in client.events():  # until the daemon closes the connection as it exits
                pass
            return answer
    try:
        answer = asyncio.run(stop())
    except DaemonError as e:
        print(f"diffdeck: {e}", file=sys.stderr)
        return 1
    print(f"diffdeck daemon stopped; {answer['queued_left']} queued job(s) stay queued in its session for next time")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.folder.exists() and (not args.folder.is_dir() or any(args.folder.iterdir())):
        raise SessionError(f"{args.folder} exists and is not an empty folder; fetch into a new one")
    connect = remote_connection(args.remote) if args.remote else EngineClient.connect
    return asyncio.run(_fetch_session(connect, args.folder))


async def _fetch_session(connect: Connect, folder: Path) -> int:
    """The daemon's session as of now, written as a session folder of this machine's: open it,
    replay it, resume it here."""
    async with await connect() as client:
        session = Session(folder, client.hello["record"])
        missing = 0
        for job_id, job in session.jobs.items():
            for image in job["images"]:
                try:
                    path = save_image(await client.call("image", job=job_id, image=image["image"]), session.images_dir)
                except DaemonError as e:
                    print(f"diffdeck: {job_id} image {image['image']}: {e}", file=sys.stderr)
                    missing += 1
                    continue
                image["path"] = str(path.relative_to(folder))
        session.compact()
    images = sum(len(job["images"]) for job in session.jobs.values())
    print(f"fetched {len(session.jobs)} job(s) and {images - missing} image(s) into {folder}"
          + (f"; {missing} image(s) could not be read there" if missing else ""))
    return 1 if missing else 0


def cmd_attach(args: argparse.Namespace) -> int:
    """Bytes between stdin/stdout and the daemon's socket, both ways, until either side closes.
    A daemon is started if none runs, so `--remote HOST` needs nothing started there."""
    if not _answers():
        start_daemon(args.models)
    return asyncio.run(_pipe(socket_path()))


async def _pipe(path: Path) -> int:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        daemon_out, daemon_in = await asyncio.open_unix_connection(str(path))
    except OSError as e:
        raise DaemonError(f"could not reach the daemon on {path}: {e}") from None

    async def upstream() -> None:
        while chunk := await stdin.read(65536):
            daemon_in.write(chunk)
            await daemon_in.drain()

    async def downstream() -> None:
        while chunk := await daemon_out.read(65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # either side gone: the line is over
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # a broken pipe either way is the end, not an error
    daemon_in.close()
    return 0


# rendering through a daemon

def daemon_connection(args: argparse.Namespace) -> Connect | None:
    """How to reach the daemon this render should use; None: render in this process."""
    if args.engine not in ENGINES:  # from $DIFFDECK_ENGINE, which argparse does not check
        raise SpecError("--engine", f"{args.engine!r} is not one of {', '.join(ENGINES)}")
    if args.session and (args.remote or args.engine == "daemon"):
        raise SpecError("--session", "a daemon writes its own session (diffdeck status names it); "
                                     "--engine local renders into another")
    if args.remote:
        return remote_connection(args.remote)
    if args.engine == "local" or (args.engine == "auto" and args.session):
        return None  # --session names a folder of the user's: that render writes it itself
    running = _answers()  # one probe: each is a connection, a hello and a state
    if not running and args.engine == "auto":
        return None
    if not running:
        start_daemon(args.models)
    return EngineClient.connect


def remote_connection(host: str) -> Connect:
    """`ssh HOST diffdeck attach --stdio`, the two commands as $DIFFDECK_SSH and $DIFFDECK_REMOTE say."""
    ssh = shlex.split(os.environ.get("DIFFDECK_SSH", "ssh"))
    remote = shlex.split(os.environ.get("DIFFDECK_REMOTE", "diffdeck"))
    return lambda: EngineClient.over_command([*ssh, host, *remote, "attach", "--stdio"])


async def render_attached(connect: Connect, specs: list[JobSpec], as_json: bool, fetch: Path | None) -> int:
    """Queue the jobs on the daemon and print each image as it is saved there (and copy them into
    `fetch`, if given). ctrl+c detaches: the jobs go on, and `diffdeck status` shows them."""
    async with await connect() as client:
        jobs = {}
        for spec in specs:
            job = await client.call("submit", spec=spec.to_dict())
            jobs[job["id"]] = job["spec"]["model"]
        print(f"diffdeck: {', '.join(jobs)} queued on the daemon (session {client.hello['session']}); "
              "ctrl+c detaches, the renders go on", file=sys.stderr)
        following = asyncio.create_task(follow_jobs(client.events(), jobs, as_json))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, following.cancel)
        try:
            ended = await following
        except asyncio.CancelledError:
            print(f"diffdeck: detached; {', '.join(jobs)} go on in the daemon (diffdeck status)", file=sys.stderr)
            return 0
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        unseen = [job_id for job_id in jobs if job_id not in ended]
        if unseen:
            print(f"diffdeck: error: {client.closed_because}; not seen finishing: {', '.join(unseen)}", file=sys.stderr)
            return 1
        if fetch:
            await _fetch(client, list(jobs), fetch)
        return exit_status(ended)


async def _fetch(client: EngineClient, job_ids: list[str], folder: Path) -> None:
    jobs = {job["id"]: job for job in (await client.call("state"))["jobs"]}
    for job_id in job_ids:
        for image in jobs[job_id]["images"]:
            path = save_image(await client.call("image", job=job_id, image=image["image"]), folder)
            print(f"fetched {path}", file=sys.stderr)
