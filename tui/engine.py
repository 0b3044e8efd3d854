"""The workbench's engine: the Dispatcher in this process (LocalEngine), or an engine daemon it
is attached to, on this machine or over ssh (AttachedEngine). Both take the same commands (their
`calls`: the Engine's, diffdeck.engines.service.engine) and hand the workbench the same events,
and both keep a Session that the views read.

Attached, that Session is a mirror: the daemon's record as its hello carried it, then every event
folded in, and nothing written by the workbench (the daemon records; picks and ratings are sent to
it and come back as events). For a daemon on another machine, the images are fetched as
thumbnails into a cache folder, and the mirror's paths point there.

UI side: never imports torch. The Dispatcher's modules load when the local engine starts, after
the workbench's first frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, NamedTuple

from diffdeck.engines.core.events import RECORDED_EVENTS, VERDICT_EVENTS, Event, EventKind, Status
from diffdeck.engines.core.registry import MAX_CONCURRENCY, Registry, RegistryError
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.core.text import visible
from diffdeck.engines.core.validation import is_int
from diffdeck.engines.daemon.wire import DaemonError
from diffdeck.engines.record.session import Session, SessionError
from diffdeck.engines.record.spend import day_spent, ledger_path
from diffdeck.engines.service.engine import Engine

if TYPE_CHECKING:
    from diffdeck.engines.daemon.client import EngineClient
    from diffdeck.engines.queue.dispatcher import Dispatcher
    from diffdeck.engines.service.recorded_queue import RecordedQueue

FETCHED_PX = 512  # the largest view the workbench draws (the image screen)


def remote_cache() -> Path:
    """Where the images of daemons on other machines are fetched to, a folder per session."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffdeck" / "remote"


class Started(NamedTuple):
    events: AsyncIterator[Event]  # with drain(): those waiting, without waiting
    watched: list  # tasks whose failure means the session is no longer recorded
    refused: list[tuple[str, str]]  # jobs of the session that could not be queued again, and why
    preface: list[Event]  # the engine's state when attached, as events (running jobs, warm workers)
    devices: tuple[dict[str, Any], ...] = ()  # what it renders on (DeviceSlot.state); none from an older daemon


class LocalEngine:
    """A RecordedQueue in this process: its workers stop when the workbench does. The queue is
    built when first needed: the workbench starts it after its first frame (the Dispatcher's
    telemetry starts NVML, which takes a while)."""

    attached = False

    def __init__(self, registry: Registry, session: Session, **dispatcher_options: Any):
        self.session, self.registry = session, registry
        self._dispatcher_options = dispatcher_options
        self._queue: RecordedQueue | None = None
        self.started: Started | None = None

    @property
    def queue(self) -> RecordedQueue:
        if self._queue is None:
            from diffdeck.engines.service.recorded_queue import RecordedQueue

            self._queue = RecordedQueue(self.registry, self.session, **self._dispatcher_options)
        return self._queue

    @property
    def dispatcher(self) -> Dispatcher:
        return self.queue.dispatcher

    def models(self) -> list[str]:
        return list(self.registry.models)

    def describe(self, model: str) -> dict[str, Any]:
        return self.registry.describe(model)

    def routes(self) -> dict[str, dict[str, Any]]:
        return self.registry.route_menu()

    def providers(self) -> dict[str, str]:
        """The hosted models, each with the provider that renders it (models.yaml's; no files looked up)."""
        return {name: spec.kind for name, spec in self.registry.models.items() if spec.hosted}

    def cost_note(self, specs: list[JobSpec]) -> str | None:
        """What the jobs would cost on hosted models, in words (None: nothing to pay, or not known here)."""
        from diffdeck.engines.hosted.estimate import cost_note  # the providers' sizes: not before the first frame

        return cost_note(specs, self.registry)

    def estimate(self, spec: dict[str, Any]) -> float | None:
        """What a job (its spec as recorded) is estimated to cost on hosted models; None: nothing, or not known."""
        from diffdeck.engines.hosted.estimate import job_estimate

        try:
            estimate = job_estimate(JobSpec.from_dict(spec), self.registry)
        except (SpecError, RegistryError):
            return None
        return estimate.usd if estimate.hosted else None

    def day_spend(self) -> tuple[float, float | None] | None:
        """What the spend ledger holds for today, and the day's budget (None: none is set); None where
        the ledger cannot be read."""
        if not any(model.hosted for model in self.registry.models.values()):  # nothing is paid for: not read
            return None
        try:
            return day_spent(ledger_path()), self.registry.budgets.day_usd
        except OSError:
            return None

    def lanes(self) -> dict[str, int]:
        """Each hosted model's lanes: how many of its jobs run at once."""
        return {name: spec.concurrency for name, spec in self.registry.models.items() if spec.hosted}

    def engine_path(self, path: str) -> str:
        """A path of this session's as the engine reads it (an init image's)."""
        return path

    @property
    def where(self) -> str:
        return ""

    @property
    def session_name(self) -> str:
        return self.session.folder.name

    @property
    def paused(self) -> bool:
        return self.dispatcher.paused

    async def start(self) -> Started:
        return self._start()

    def _start(self) -> Started:
        if self.started is None:
            events = self.dispatcher.subscribe()

            def measured(event: Event) -> None:  # the quality measures the recorder makes, as it makes them
                if event.type == EventKind.QUALITY:
                    events.put(event)

            self.queue.listeners.append(measured)  # what the queue records of its own: its quality recorder's
            refused = self.queue.start()
            devices = tuple(slot.state() for slot in self.dispatcher.devices)
            self.started = Started(events, [self.queue.recording], refused, [], devices)
        return self.started

    async def absorb(self, batch: list[Event]) -> list[Event]:
        return batch  # the recorder has them

    @property
    def calls(self) -> Engine:
        """Its commands. They start it if the workbench has not yet, so that nothing is queued
        before the session records it."""
        self._start()
        return self.queue

    async def queue_order(self) -> list[str]:
        return [job.id for job in self.dispatcher.queue]

    async def shut_down(self) -> str | None:
        """Stop the workers; what could not be written to the session, in words (None: nothing)."""
        return await self._queue.shut_down() if self._queue is not None else None


class AttachedEngine:
    """An engine daemon's queue, through an EngineClient. Leaving detaches: the queue goes on.
    Started before the workbench is built: the models it offers are the daemon's."""

    attached = True

    def __init__(self, connect: Callable[[], Awaitable[EngineClient]], where: str, cache: Path | None = None):
        """`cache`: fetch the images into a folder under it (a daemon on another machine);
        None: read them where the daemon wrote them."""
        self._connect, self.where, self._cache = connect, where, cache
        self.client: EngineClient | None = None
        self.session: Session | None = None  # the mirror, from start on
        self._paused = False
        self._daemon_folder = ""
        self._models: dict[str, dict[str, Any]] = {}
        self._routes: dict[str, dict[str, Any]] = {}
        self.started: Started | None = None

    def models(self) -> list[str]:
        return list(self._models)

    def describe(self, model: str) -> dict[str, Any]:
        entry = self._models.get(model)
        if entry is None:
            raise RegistryError(f"unknown model {model!r} on {self.where}; known models: {', '.join(self._models)}")
        if "problem" in entry:
            raise RegistryError(entry["problem"])
        return entry

    def routes(self) -> dict[str, dict[str, Any]]:
        return self._routes

    def providers(self) -> dict[str, str]:
        """The hosted models, each with the provider that renders it (the daemon's menu says)."""
        return {name: visible(hosted["provider"]) for name, hosted in self._hosted().items()
                if isinstance(hosted.get("provider"), str)}

    def cost_note(self, specs: list[JobSpec]) -> str | None:
        """Not known here: the daemon's models file has the prices (and it keeps the budgets)."""
        return None

    def estimate(self, spec: dict[str, Any]) -> float | None:
        return None  # as cost_note: the prices are the daemon's

    def day_spend(self) -> None:
        return None  # the daemon's ledger, on its machine

    def lanes(self) -> dict[str, int]:
        """Each hosted model's lanes, as the daemon's model menu says (an older daemon's: none)."""
        return {name: hosted["lanes"] for name, hosted in self._hosted().items()
                if is_int(hosted.get("lanes")) and 1 <= hosted["lanes"] <= MAX_CONCURRENCY}

    def _hosted(self) -> dict[str, dict[str, Any]]:
        """The `hosted` part of each hosted model's entry in the daemon's model menu."""
        return {name: about["hosted"] for name, about in self._models.items()
                if isinstance(about, dict) and isinstance(about.get("hosted"), dict)}

    def engine_path(self, path: str) -> str:
        """A path of the mirror's as the daemon reads it: in its session folder (an init image's)."""
        return str(Path(self._daemon_folder) / os.path.relpath(path, self.session.folder))

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def remote(self) -> bool:
        return self._cache is not None

    @property
    def session_name(self) -> str:
        """The daemon's session's name (the mirror's folder is named after a hash of where it is)."""
        return Path(self._daemon_folder).name

    async def start(self) -> Started:
        self.client = await self._connect()
        hello = self.client.hello
        self._daemon_folder, self._paused, self._models = hello["session"], hello["paused"], hello["models"]
        routes = hello.get("routes")  # a daemon of an earlier diffdeck has none
        self._routes = {str(name): menu for name, menu in routes.items() if _a_route_menu(menu)} \
            if isinstance(routes, dict) else {}
        folder = Path(self._daemon_folder)
        if self._cache is not None:
            folder = self._cache / hashlib.sha256(f"{self.where}:{self._daemon_folder}".encode()).hexdigest()[:12]
        self.session = Session.adopt(folder, hello.get("record"), f"the session record of the daemon ({self.where})")
        for job_id, job in self.session.jobs.items():
            for image in job["images"]:
                image["path"] = await self._image(job_id, image["image"], image["path"])
        devices = hello.get("devices") or [{"index": 0, "workers": hello["workers"]}]  # an older daemon: one
        on = {device["job"]: device["index"] for device in devices if device.get("job")}
        preface = [Event(EventKind.DEQUEUED, job["id"], {"device": on.get(job["id"])})
                   for job in hello["jobs"] if job["status"] == Status.RUNNING]
        for device in devices:
            for name, worker in device["workers"].items():
                if worker["pid"] and worker["state"] != "exited":
                    model = {"model": name, "pid": worker["pid"]}
                    preface += [Event(EventKind.WORKER_SPAWNED, None, {**model, "device": device["index"]}),
                                Event(EventKind.LOADING if worker["state"] in ("starting", "loading")
                                      else EventKind.WORKER_READY, None, model)]
        if self._paused:
            preface.append(Event(EventKind.PAUSED))
        self.started = Started(self.client.events(), [], [], preface, tuple(hello.get("devices") or ()))
        return self.started

    async def absorb(self, batch: list[Event]) -> list[Event]:
        """Fold the events into the mirror; an image's path becomes the one this machine reads."""
        taken = []
        for event in batch:
            if event.type in (EventKind.IMAGE, EventKind.STAGE_IMAGE):  # a flow's stage images are not fetched
                relative = await self._image(event.job, event.data["image"], event.data["path"]) \
                    if event.type == EventKind.IMAGE else self._relative(event.data["path"])
                event = Event(event.type, event.job, {**event.data, "path": str(self.session.resolve(relative))})
                self.session.apply({"type": event.type, "job": event.job, **event.data, "path": relative})
            elif event.type == EventKind.QUALITY:
                try:
                    self.session.apply({"type": event.type, "job": event.job, **event.data})
                except SessionError:  # not numbers, or of an image the mirror lacks: not worth the connection
                    continue
            elif event.type in RECORDED_EVENTS or event.type in VERDICT_EVENTS:
                self.session.apply({"type": event.type, "job": event.job, **event.data})
            elif event.type in (EventKind.PAUSED, EventKind.RESUMED):
                self._paused = event.type == EventKind.PAUSED
            taken.append(event)
        return taken

    async def _image(self, job_id: str, index: int, path: str) -> str:
        """The image's path in the mirror (relative to its folder), fetched there if need be."""
        if self._cache is None:
            return self._relative(path)
        local = self.session.images_dir / Path(path).name
        if not local.is_file():
            from diffdeck.engines.daemon.client import save_image

            with contextlib.suppress(DaemonError):  # gone from the daemon's disk: drawn as missing, as here
                save_image(await self.client.image(job_id, index, FETCHED_PX), self.session.images_dir)
        return os.path.relpath(local, self.session.folder)

    def _relative(self, path: str) -> str:
        """A path the daemon sent, relative to its session folder."""
        return os.path.relpath(os.path.join(self._daemon_folder, path), self._daemon_folder)

    @property
    def calls(self) -> Engine:
        return self.client

    async def queue_order(self) -> list[str]:
        return (await self.client.state())["queue"]

    async def shut_down(self) -> str | None:
        if self.client is not None:
            await self.client.close()
        return None  # the daemon writes its session


def _a_route_menu(menu: Any) -> bool:
    """Whether a daemon's entry for a route is what Registry.route_menu makes (it is the daemon's say)."""
    return (isinstance(menu, dict) and isinstance(menu.get("about"), str) and isinstance(menu.get("first_stage"), str)
            and isinstance(menu.get("fields"), dict))
