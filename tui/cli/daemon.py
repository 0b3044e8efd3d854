"""The commands around the engine daemon: `diffdeck serve`, `status`, `stop`, `queue`, `logs`,
`attach --stdio`, `fetch` (a copy of its session), and rendering through a daemon (`diffdeck render --engine
daemon`, `--remote HOST`).

Never imports torch: the daemon's workers do.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from diffdeck.engines.core.events import FINISHING_EVENTS, JobRecord, Status
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.core.text import counted, visible
from diffdeck.engines.daemon.client import (
    ENGINES,
    Connect,
    EngineClient,
    choose_engine,
    daemon_holding,
    default_engine,
    remote_connection,
    save_image,
)
from diffdeck.engines.daemon.server import Daemon, Place, hold_lock, place, socket_path
from diffdeck.engines.daemon.wire import DaemonError
from diffdeck.engines.record.session import Session, SessionError, is_session, new_session_dir
from diffdeck.tui.cli.progress import Progress, exit_status, follow_jobs
from diffdeck.tui.workbench_state import DeviceRow

START_TIMEOUT_S = 60.0
WATCH_S = 1.0  # status --watch: seconds between two drawings

COMMANDS = ("serve", "status", "stop", "queue", "logs", "fetch", "attach")  # add_commands', in its order


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the engine as a daemon: renders outlive the terminal")
    serve.add_argument("--foreground", action="store_true", help="stay in this terminal (for systemd or a tmux pane)")
    serve.add_argument("--session", type=Path, metavar="DIR",
                       help="session to write (default: the last daemon's, if it left jobs unfinished, else a new one)")
    serve.add_argument("--new-session", action="store_true",
                       help="start a new session even when the last daemon's left jobs unfinished or cannot be read")
    serve.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run each model's worker on a Ray cluster (ray start --address=ADDRESS); "
                            "without ADDRESS, a local one started now (pip install 'diffdeck[ray]')")
    serve.set_defaults(run=cmd_serve)

    status = commands.add_parser("status", help="the daemon's workers, queue and memory")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help=f"draw it again every {WATCH_S:g} s, until ctrl+c")
    status.set_defaults(run=cmd_status)

    stop = commands.add_parser("stop", help="stop the daemon after the running job (queued jobs stay queued)")
    stop.add_argument("--now", action="store_true", help="at once: the running job is queued again for next time")
    stop.set_defaults(run=cmd_stop)

    queue = commands.add_parser("queue", help="pause, resume, cancel or retry the daemon's jobs",
                                description="The daemon's queue, as the workbench's queue keys have it. "
                                            "(diffdeck resume SESSION is another thing: it renders what a "
                                            "session folder had left queued.)")
    queue.add_argument("action", choices=("pause", "resume", "cancel", "retry"),
                       help="pause: start no new job after the running one; resume: go on; cancel: queued or "
                            "running jobs; retry: failed, cancelled or held jobs, with their seeds")
    queue.add_argument("jobs", nargs="*", metavar="JOB", help="job ids, such as job-0003 (cancel, retry)")
    queue.add_argument("--all", action="store_true", help="cancel every queued and running job")
    queue.add_argument("--force", action="store_true", help="retry a held job too (it stopped its worker twice)")
    queue.add_argument("--remote", metavar="HOST", help="the daemon on HOST, over ssh")
    queue.add_argument("--session", type=Path, metavar="DIR",
                       help="cancel or retry in a session folder nobody is rendering, not the daemon's")
    queue.set_defaults(run=cmd_queue)

    logs = commands.add_parser("logs", help="the daemon's log")
    logs.add_argument("-f", "--follow", action="store_true", help="then what it writes next, until ctrl+c")
    logs.add_argument("-n", "--lines", type=whole_number(), default=40, metavar="N", help="the last N lines (default: 40)")
    logs.set_defaults(run=cmd_logs)

    fetch = commands.add_parser("fetch", help="copy the daemon's session here: its record and its images, whole")
    fetch.add_argument("folder", type=Path, metavar="DIR", help="a new folder for the copy")
    fetch.add_argument("--remote", metavar="HOST", help="the daemon on HOST, over ssh")
    fetch.set_defaults(run=cmd_fetch)

    attach = commands.add_parser("attach", parents=[common],
                                 help="connect stdin and stdout to the daemon (what --remote runs over ssh)")
    attach.add_argument("--stdio", action="store_true", required=True, help="speak the protocol on stdin and stdout")
    attach.set_defaults(run=cmd_attach)


def add_engine_options(parser: argparse.ArgumentParser, fetch: bool = True) -> None:
    parser.add_argument("--engine", choices=ENGINES, default=default_engine(),
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
        state = start_daemon(args.models, args.session, args.new_session, args.ray)
        print(visible(f"diffdeck daemon running (pid {state['pid']}) on {socket_path()}, session {state['session']}; "
                      f"log: {place().log}; diffdeck status shows it, diffdeck stop stops it"))
        return 0
    where = place()
    lock = hold_lock(where)  # before the session is chosen: no two daemons resume one session
    session = None
    try:
        registry = load_registry(args.models)
        options = {} if args.ray is None else on_ray(args.ray)
        folder = args.session or (None if args.new_session else _session_to_resume(where)) or new_session_dir()
        # absolute: the daemon's paths are read by clients in other folders, or on other machines
        session = open_for_writing(folder.resolve())
        from diffdeck.engines.service.recorded_queue import RecordedQueue  # the Dispatcher's modules: not at start

        return asyncio.run(_serve(Daemon(RecordedQueue(registry, session, **options), where)))
    finally:
        if session is not None:
            session.close()
        os.close(lock)


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop, True)
    return await daemon.serve()


def open_for_writing(folder: Path, create: bool = True) -> Session:
    """The session this command writes, its lock taken (a second writer is refused, naming this
    one); what opening it had to mend is said on stderr."""
    session = Session.open_for_writing(folder, this_command(), create)
    for notice in session.notices:
        print(f"diffdeck: {visible(notice)}", file=sys.stderr, flush=True)
    return session


def this_command() -> str:
    """The command this process runs, in words: what a session's lock shows a second writer."""
    return shlex.join(["diffdeck", *sys.argv[1:]])


def _session_to_resume(where: Place) -> Path | None:
    """After a crash (kill -9, say), the last daemon's session, if it left jobs unfinished, so its
    queue resumes. One that cannot be read is named (SessionError) and no new one is started in
    its place, which would abandon its jobs: `serve --new-session` does that when asked."""
    try:
        folder = Path(json.loads(where.state.read_text())["session"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SessionError(f"{where.state} should name the last daemon's session and cannot be read "
                           f"({getattr(e, 'strerror', None) or e}); diffdeck serve --session DIR or --new-session "
                           "says which to write") from None
    if folder.is_dir() and not is_session(folder):
        return None  # killed before it recorded anything: no jobs to abandon
    try:
        session = Session.open(folder, create=False)
    except (SessionError, OSError) as e:
        raise SessionError(f"the last daemon's session cannot be resumed: {e}; nothing was started in its place "
                           "(mend it, or diffdeck serve --new-session starts a new one)") from None
    return folder if session.unfinished() else None


def on_ray(address: str) -> dict[str, Any]:
    """Join the Ray cluster at `address` ("": a local one, started now); the Dispatcher's options
    that run its workers there: what starts a worker, and the cluster's slots as its devices."""
    try:
        from diffdeck.engines.queue import ray_workers
    except ImportError as e:
        if (e.name or "").partition(".")[0] != "ray":
            raise
        raise DaemonError("diffdeck serve --ray needs Ray on this machine: pip install 'diffdeck[ray]'") from None
    try:
        said = ray_workers.join_cluster(address or None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DaemonError(f"could not join the Ray cluster at {address or 'a new local one'}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    print(f"diffdeck: {visible(said)}", file=sys.stderr, flush=True)
    return {"launcher": ray_workers.RayWorker, "devices": ray_workers.cluster_slots()}


def start_daemon(models: str | None, session: Path | None = None, new_session: bool = False,
                 ray: str | None = None) -> dict[str, Any]:
    """Start `diffdeck serve --foreground` in a process session of its own (the terminal's ctrl+c
    and hang-up do not reach it); its state once it answers."""
    log = place().log
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [sys.executable, "-m", "diffdeck.tui", "serve", "--foreground", *(["--models", models] if models else []),
               *(["--session", str(session.resolve())] if session else []), *(["--new-session"] if new_session else []),
               *([] if ray is None else ["--ray", *([ray] if ray else [])])]
    with open(log, "ab") as out:
        start = out.tell()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_bytes()[start:].decode(errors="replace").strip().splitlines()
            why = said[-1].removeprefix("diffdeck: error: ") if said else f"see {log}"
            raise DaemonError(f"the daemon exited at start (status {process.returncode}): {why}")
        with contextlib.suppress(DaemonError):
            state = asyncio.run(_state())
            if state["pid"] == process.pid:
                return state
        time.sleep(0.1)
    raise DaemonError(f"the daemon did not answer within {START_TIMEOUT_S:.0f} s; see {log}")


async def _state() -> dict[str, Any]:
    async with await EngineClient.connect() as client:
        return await client.state()


def _answers() -> bool:
    try:
        asyncio.run(_state())
        return True
    except DaemonError:
        return False


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch and args.json:
        raise SpecError("--watch", "draws the status for a person to read; a program calls status --json when it wants")
    try:
        if args.watch:
            return asyncio.run(_watch_status())
        state = asyncio.run(_state())
    except DaemonError as e:
        print(f"diffdeck: {visible(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # how a watch ends
        return 0
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    for line in status_lines(state):
        print(visible(line))  # every word here is the daemon's
    return 0


async def _watch_status() -> int:
    """The status drawn again every WATCH_S over one connection, until ctrl+c or the daemon stops."""
    async with await EngineClient.connect() as client:
        home = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""  # on a terminal, in place; else one after another
        while True:
            client.events().drain()  # the state says it all; events would only pile up
            try:
                state = await client.state()
            except DaemonError as e:
                print(f"diffdeck: {visible(str(e))}", file=sys.stderr)
                return 0
            print(home + "\n".join(visible(line) for line in status_lines(state)) + ("" if home else "\n"), flush=True)
            await asyncio.sleep(WATCH_S)


def status_lines(state: dict[str, Any]) -> list[str]:
    lines = [f"daemon pid {state['pid']} (diffdeck {state['version']}), session {state['session']}, "
             f"{state['clients'] - 1} other client(s) attached" + (", queue paused" if state["paused"] else "")]
    devices = state.get("devices") or []  # a daemon before several devices has none
    on = {device["job"]: DeviceRow.from_state(device).tag for device in devices if device["job"]} \
        if len(devices) > 1 else {}
    if len(devices) > 1:
        lines += device_lines(devices)
    else:
        for name, worker in state["workers"].items():
            busy = f", rendering {worker['job']}" if worker["job"] and worker["state"] == "busy" else ""
            lines.append(f"  {worker_line(name, worker)}{busy}")
    telemetry = state["telemetry"]
    for gpu in telemetry["gpus"] or []:
        lines.append(f"  GPU {gpu['index']} {gpu['name']}: {gpu['memory_used'] / 2**30:.1f} of "
                     f"{gpu['memory_total'] / 2**30:.1f} GiB used")
    if not telemetry["gpus"]:
        lines.append(f"  no GPU figures: {telemetry['gpu_problem']}; RAM {telemetry['ram_used'] / 2**30:.1f} "
                     f"of {telemetry['ram_total'] / 2**30:.1f} GiB used")
    jobs = {job.id: job for job in map(JobRecord.from_dict, state["jobs"])}
    running = [job for job in jobs.values() if job.status == Status.RUNNING]
    for job in running + [jobs[job_id] for job_id in state["queue"]]:
        where = ", ".join(filter(None, [f"on {on[job.id]}" if job.id in on else "", where_it_is(job)]))
        lines.append(f"  {job.id} {job.status:8} {job.spec['model']}: {job.spec['prompt']}"
                     + (f" ({where})" if job.status == Status.RUNNING else ""))
    done = sum(job.status == Status.DONE for job in jobs.values())
    lines.append(f"  {len(state['queue'])} queued, {len(running)} running, {done} done since the daemon started")
    return lines


def device_lines(devices: list[dict[str, Any]]) -> list[str]:
    """Each device, what it renders, and its workers under it."""
    lines = []
    for device in devices:
        lines.append(f"  {DeviceRow.from_state(device).tag} {device['name']} (budget {device['budget_gb']:.1f} GB): "
                     + (f"rendering {device['job']}" if device["job"] else "idle"))
        lines += [f"    {worker_line(name, worker)}" for name, worker in device["workers"].items()]
    return lines


def worker_line(name: str, worker: dict[str, Any]) -> str:
    return f"worker {name}: {worker['state']} (pid {worker['pid']}, about {worker['memory_gb']:.1f} GB)"


def where_it_is(job: JobRecord) -> str:
    """How far a running job has come: 'image 1/2, step 12/40', or that its model loads."""
    p = job.progress
    return f"image {p['image'] + 1}/{p['count']}, step {p['step']}/{p['total']}" if p else "its model loading"


def cmd_stop(args: argparse.Namespace) -> int:
    async def stop() -> int:
        """Stop the daemon and follow it until it has: what stays queued in its session."""
        async with await EngineClient.connect() as client:
            answer = await client.stop(args.now)
            running = {job.id: job for job in map(JobRecord.from_dict, answer.get("running", []))}
            if running and not args.now:
                print(visible(f"diffdeck: waiting for {', '.join(f'{j} ({where_it_is(job)})' for j, job in running.items())}"
                              " to finish; diffdeck stop --now interrupts it (it stays queued)"), file=sys.stderr, flush=True)
            progress = Progress(sys.stderr) if sys.stderr.isatty() else None
            async for event in client.events():  # until the daemon closes the connection as it exits
                if event.job in running and progress:
                    progress.show(event)
                if event.job in running and event.type in FINISHING_EVENTS:
                    del running[event.job]
            if progress:
                progress.clear()
            return answer["queued_left"] + len(running)  # a running job cut short is queued again
    try:
        left = asyncio.run(stop())
    except DaemonError as e:
        print(f"diffdeck: {visible(str(e))}", file=sys.stderr)
        return 1
    print("diffdeck daemon stopped; " + (f"{counted(left, 'job')} {'stays' if left == 1 else 'stay'} queued in its "
                                         "session for next time" if left else "nothing was left queued"))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    if args.all and args.action != "cancel":
        raise SpecError("--all", "is for cancel: every queued and running job")
    if args.action in ("pause", "resume") and args.jobs:
        raise SpecError("queue", f"{args.action} is for the whole queue; it takes no job ids")
    if args.action in ("cancel", "retry") and not (args.jobs or args.all):
        raise SpecError("queue", f"{args.action} needs job ids, such as job-0003 (diffdeck status lists them)"
                                 + (", or --all" if args.action == "cancel" else ""))
    if args.session is not None:
        return _queue_at_rest(args)
    return asyncio.run(_queue(remote_connection(args.remote) if args.remote else EngineClient.connect, args))


def _queue_at_rest(args: argparse.Namespace) -> int:
    """Cancel or retry jobs in a session folder that no process is rendering (its lock says so):
    the record changes, and `diffdeck resume` or the workbench renders what is queued then."""
    if args.action in ("pause", "resume") or args.remote:
        raise SpecError("--session", "takes cancel or retry, here: a session nobody renders has no queue "
                                     "running to pause (diffdeck resume SESSION renders what it has queued)")
    session = open_for_writing(args.session, create=False)
    try:
        status = 0
        for job_id in [job.id for job in session.unfinished()] if args.all else args.jobs:
            try:
                if args.action == "cancel":
                    said = "cancelled" if session.cancel_at_rest(job_id) else "had finished; nothing to cancel"
                else:
                    session.retry_at_rest(job_id, args.force)
                    said = f"queued again; diffdeck resume {args.session} renders it"
                print(visible(f"{job_id} {said}"))
            except SessionError as e:  # this job; the others go ahead
                print(f"diffdeck: error: {visible(str(e))}", file=sys.stderr)
                status = 2
        session.compact()
    finally:
        session.close()
    return status


async def _queue(connect: Connect, args: argparse.Namespace) -> int:
    """What the workbench's queue keys do, for the daemon's queue: each job refused is named, the others go ahead."""
    async with await connect() as client:
        if args.action in ("pause", "resume"):
            await (client.pause() if args.action == "pause" else client.resume())
            print("diffdeck: the daemon's queue " + ("is paused: the running job finishes, no other starts "
                                                     "(diffdeck queue resume)" if args.action == "pause" else "goes on"))
            return 0
        if args.all:
            print(f"diffdeck: {counted(await client.cancel_all(), 'job')} cancelled")
            return 0
        status = 0
        for job_id in args.jobs:
            try:
                if args.action == "cancel":
                    said = "cancelled" if await client.cancel(job_id) else "had finished; nothing to cancel"
                else:
                    await client.retry(job_id, args.force)
                    said = "queued again"
                print(visible(f"{job_id} {said}"))
            except DaemonError as e:
                print(f"diffdeck: error: {visible(str(e))}", file=sys.stderr)
                status = 2
        return status


def cmd_logs(args: argparse.Namespace) -> int:
    """The daemon's log: its last lines, and with --follow what it writes next, until ctrl+c."""
    log = place().log
    try:
        stream = open(log, "rb")
    except FileNotFoundError:
        raise DaemonError(f"no daemon log at {log} yet (diffdeck serve writes it)") from None
    with stream:
        for line in collections.deque(stream, maxlen=args.lines):
            print(visible(line.decode(errors="replace").rstrip("\n")))  # prompts and errors are in it
        sys.stdout.flush()
        try:
            while args.follow:
                partial = b""
                while not (partial := partial + stream.readline()).endswith(b"\n"):
                    time.sleep(0.2)  # written a piece at a time: a line is shown whole
                print(visible(partial.decode(errors="replace").rstrip("\n")), flush=True)
        except KeyboardInterrupt:
            pass
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
        session = Session.adopt(folder, client.hello.get("record"), "the daemon's session record")
        missing = 0
        for job_id, job in session.jobs.items():
            for image in job["images"]:
                path = session.images_dir / Path(os.path.normpath(image["path"])).name  # adopt kept it inside
                image["path"] = str(path.relative_to(folder))  # where the record says it is here, fetched or not
                try:
                    save_image(await client.image(job_id, image["image"]), session.images_dir, path.name)
                except DaemonError as e:
                    print(visible(f"diffdeck: {job_id} image {image['image']}: {e}"), file=sys.stderr)
                    missing += 1
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
    engine = choose_engine(args.engine, args.session, args.remote, _answers)
    if engine == "remote":
        return remote_connection(args.remote)
    if engine == "start":
        start_daemon(args.models)
    return None if engine == "local" else EngineClient.connect


async def warn_of_a_daemon_holding(models: Iterable[str]) -> None:
    """Before an engine of this process loads `models`: say so if a running daemon holds any of
    them warm already, for each would then take its memory twice."""
    warning = await daemon_holding(models)
    if warning:
        print(visible(f"diffdeck: warning: {warning} (without --session, or with --engine daemon, it renders "
                      "there)"), file=sys.stderr)


async def render_attached(connect: Connect, specs: list[JobSpec], as_json: bool, fetch: Path | None) -> int:
    """Queue the jobs on the daemon and print each image as it is saved there (and copy them into
    `fetch`, if given). ctrl+c detaches: the jobs go on, and `diffdeck status` shows them."""
    async with await connect() as client:
        jobs = {}
        for spec in specs:
            job = await client.submit(spec)
            jobs[job.id] = job
        print(visible(f"diffdeck: {', '.join(jobs)} queued on the daemon (session {client.hello['session']}); "
                      "ctrl+c detaches, the renders go on"), file=sys.stderr)
        following = asyncio.create_task(follow_jobs(client.events(), jobs, as_json))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, following.cancel)
        try:
            ended = await following
        except asyncio.CancelledError:
            print(visible(f"diffdeck: detached; {', '.join(jobs)} {'goes' if len(jobs) == 1 else 'go'} on in the daemon "
                          "(diffdeck status)"), file=sys.stderr)
            return 0
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        unseen = [job_id for job_id in jobs if job_id not in ended]
        if unseen:
            print(visible(f"diffdeck: error: {client.closed_because}; not seen finishing: {', '.join(unseen)}"),
                  file=sys.stderr)
            return 1
        if fetch:
            await _fetch(client, list(jobs), fetch)
        return exit_status(ended)


async def _fetch(client: EngineClient, job_ids: list[str], folder: Path) -> None:
    jobs = {job["id"]: job for job in (await client.state())["jobs"]}
    for job_id in job_ids:
        for image in jobs[job_id]["images"]:
            path = save_image(await client.image(job_id, image["image"]), folder)
            print(visible(f"fetched {path}"), file=sys.stderr)


def whole_number(least: int = 0) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `least`."""
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number" + (f" of at least {least}" if least else ""))
        return int(text)
    return parse
