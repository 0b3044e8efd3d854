"""A Dispatcher bound to a Session: every event recorded as it comes, the session's unfinished
jobs queued again at start, and at shut-down whatever is queued or running left queued in the
session, so the next start resumes it. The workbench and the engine daemon both run one, and
drive it through its Engine calls (diffdeck.engines.service.engine).

UI side: never imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
from pathlib import Path
from typing import Any, Callable

from diffdeck.engines.core.events import Event, EventKind, EventStream, JobRecord, Status
from diffdeck.engines.core.flow_checks import route_job
from diffdeck.engines.core.registry import Registry, RegistryError
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.hosted.estimate import pricer
from diffdeck.engines.queue.dispatcher import Dispatcher, Job
from diffdeck.engines.queue.telemetry import WorkerView
from diffdeck.engines.record.session import Session, SessionWriteError
from diffdeck.engines.service.costs import Costs
from diffdeck.engines.service.engine import Engine
from diffdeck.engines.service.quality_recorder import QualityRecorder
from diffdeck.engines.sets.variants import VariantSet
from PIL import Image


class RecordedQueue(Engine):
    def __init__(self, registry: Registry, session: Session, **dispatcher_options):
        self.session = session
        self.costs = Costs(registry, session)  # the budgets, and the day's spend ledger
        self.dispatcher = Dispatcher(registry, session.images_dir, first_job_number=session.next_job_number(),
                                     first_set_number=session.next_set_number(), admit=self._admit,
                                     **dispatcher_options)
        self.recording: asyncio.Task | None = None
        self._recorder: EventStream | None = None
        self._closed = False
        self._problem: str | None = None
        self._followers: list[EventStream] = []
        self.refused: list[tuple[str, str]] = []  # unfinished jobs of the session that could not be resumed
        # told of each pick, rating and quality measure once it is recorded (a daemon: its clients)
        self.listeners: list[Callable[[Event], None]] = []
        self.quality = QualityRecorder(session, self._tell)  # each image measured, off the render path

    def start(self, resume: bool = True) -> list[tuple[str, str]]:
        """Start recording, measuring and rendering and, with `resume`, queue the session's unfinished
        jobs again and measure the images it holds unmeasured. Returns (and keeps in `refused`) the
        jobs that could not be (an unknown model, say), each with why: they stay queued in the
        session, for another day."""
        self._recorder = self.dispatcher.subscribe()
        self.dispatcher.start()
        self.recording = asyncio.create_task(self._record(self._recorder))
        self.quality.start(backlog=resume)
        for job in self.session.unfinished() if resume else ():
            try:
                self.dispatcher.restore(job)
            except (SpecError, RegistryError) as e:
                self.refused.append((job.id, str(e)))
        return self.refused

    def subscribe(self) -> EventStream:
        """The Dispatcher's events, each once the session has recorded it: a client that shows an
        image has it on record. The stream ends where the recording stops (a write error)."""
        return EventStream(self._followers)

    async def _record(self, events: EventStream) -> None:
        try:
            async for event in events:
                self.costs.record_event(event)
                if event.type == EventKind.IMAGE:
                    self.quality.recorded(event.job, event.data["image"])
                for stream in list(self._followers):
                    stream.put(event)
        finally:
            for stream in list(self._followers):
                stream.end()

    # the Engine's calls

    async def submit(self, spec: JobSpec) -> JobRecord:
        return self.dispatcher.submit(self._routed(spec)).record()

    async def submit_set(self, variants: VariantSet) -> tuple[str, list[str]]:
        routed = tuple(dataclasses.replace(variant, spec=self._routed(variant.spec)) for variant in variants.variants)
        set_id, jobs = self.dispatcher.submit_set(dataclasses.replace(variants, variants=routed))
        return set_id, [job.id for job in jobs]

    def _routed(self, spec: JobSpec) -> JobSpec:
        """The job routed here, where prices are known: a route's money cap (`max_cost_usd:`) applies.
        One that cannot be routed comes back as it is, for the Dispatcher to refuse, naming it."""
        registry = self.dispatcher.registry
        try:
            return route_job(spec, registry, price=pricer(registry))
        except (SpecError, RegistryError):
            return spec

    def _admit(self, ids: list[str], specs: list[JobSpec]) -> None:
        """The budgets, kept before the Dispatcher queues anything (BudgetError names the estimate)."""
        self.costs.admit(ids, specs, self.dispatcher.jobs.values())

    async def cancel(self, job_id: str) -> bool:
        return self.dispatcher.cancel(job_id)

    async def cancel_all(self) -> int:
        return self.dispatcher.cancel_all()

    async def move(self, job_id: str, position: int) -> None:
        self.dispatcher.move(job_id, position)

    async def retry(self, job_id: str, force: bool = False) -> JobRecord:
        return self.dispatcher.retry(job_id, force).record()

    async def pause(self) -> None:
        self.dispatcher.pause()

    async def resume(self) -> None:
        self.dispatcher.resume()

    async def pick(self, set_id: str, image: int, left: str, right: str, winner: str | None) -> None:
        self._tell(self.session.pick(set_id, image, left, right, winner))

    async def rate(self, job_id: str, image: int, stars: int) -> None:
        self._tell(self.session.rate(job_id, image, stars))

    async def state(self) -> dict[str, Any]:
        d = self.dispatcher
        return {"session": str(self.session.folder), "paused": d.paused,
                "jobs": [job.record().to_dict() for job in d.jobs.values()], "queue": [job.id for job in d.queue],
                "workers": {name: {"state": w.state, "pid": w.pid, "job": w.job_id, "memory_gb": w.memory_gb}
                            for name, w in d.workers.items()},
                "memory_budget_gb": d.memory_budget_gb,
                "devices": [slot.state() for slot in d.devices],  # each with its workers and running job
                "telemetry": d.telemetry.sample([WorkerView(w.pid, w.model, w.state) for w in d.all_workers() if w.pid])}

    async def image(self, job_id: str, image: int, max_side: int | None = None) -> dict[str, str]:
        if job_id not in self.dispatcher.jobs:
            raise ValueError(f"no job {job_id!r} in this engine")
        return image_png(self.dispatcher.jobs[job_id], image, max_side, self.session.resolve)

    def _tell(self, said: dict[str, Any]) -> None:
        event = Event(EventKind(said["type"]), said.get("job"), {k: v for k, v in said.items() if k not in ("type", "job")})
        for listener in self.listeners:
            listener(event)

    async def shut_down(self) -> str | None:
        """Stop the workers, leaving queued and running jobs queued in the session, and compact
        it. So the recording stops before the Dispatcher cancels what it has. Returns what could
        not be written, in words (None when everything was): the journal (the session stopped
        being recorded there) or session.yaml (the journal still holds everything). The workers
        stop either way."""
        if not self._closed:
            self._closed = True
            self._problem = await self._shut_down()
        return self._problem

    async def _shut_down(self) -> str | None:
        if self.recording is not None:
            self.recording.cancel()
            await asyncio.gather(self.recording, return_exceptions=True)
        self.quality.close()
        try:
            if self._recorder is not None:
                for event in self._recorder.drain():  # emitted, not yet written
                    self.costs.record_event(event)
            for job in self.dispatcher.jobs.values():
                if job.status == Status.RUNNING:  # stopped by the user, not crashed: queued, not counted
                    self.session.append({"type": EventKind.QUEUED, "job": job.id, "spec": job.spec.to_dict(),
                                         "position": 0, "worker_crashes": job.worker_crashes})
        except SessionWriteError:
            pass  # the session's write_error says it
        finally:
            if self._recorder is not None:
                self._recorder.close()
            await self.dispatcher.close()
        if self.session.write_error is not None:
            return str(self.session.write_error)
        if self.session.jobs:
            try:
                await asyncio.to_thread(self.session.compact)
            except SessionWriteError as e:
                return str(e)
        return None


def image_png(job: Job, index: int, max_side: int | None, resolve: Callable[[str], Path]) -> dict[str, str]:
    """One image of a job as base64 PNG, for a client on another machine: whole (the file, its
    metadata chunks included), or fitted within `max_side` pixels for a thumbnail."""
    record = next((image for image in job.images if image["image"] == index), None)
    if record is None:
        raise ValueError(f"{job.id} has no image {index} (yet)")
    path = resolve(record["path"])  # a resumed job's earlier images are recorded relative to the session
    if max_side is not None and int(max_side) < 1:
        raise ValueError("max_side is a number of pixels, at least 1")
    if max_side is None:
        data = path.read_bytes()
    else:
        try:
            with Image.open(path) as image:
                image.thumbnail((int(max_side), int(max_side)))
                out = io.BytesIO()
                image.save(out, "PNG")
                data = out.getvalue()
        except Image.DecompressionBombError as e:  # a file changed in the session folder since
            raise ValueError(f"{job.id} image {index}: {e}") from None
    return {"name": path.name, "png": base64.b64encode(data).decode("ascii")}
