"""A Dispatcher bound to a Session: every event recorded as it comes, the session's unfinished
jobs queued again at start, and at shut-down whatever is queued or running left queued in the
session, so the next start resumes it. The workbench and the engine daemon both run one.

UI side: never imports torch.
"""

from __future__ import annotations

import asyncio

from diffdeck.engines.core.registry import Registry, RegistryError
from diffdeck.engines.core.spec import SpecError
from diffdeck.engines.queue.dispatcher import RUNNING, Dispatcher, EventStream
from diffdeck.engines.record.session import Session, SessionWriteError


class RecordedQueue:
    def __init__(self, registry: Registry, session: Session, **dispatcher_options):
        self.session = session
        self.dispatcher = Dispatcher(registry, session.images_dir, first_job_number=session.next_job_number(),
                                     first_set_number=session.next_set_number(), **dispatcher_options)
        self.recording: asyncio.Task | None = None
        self._recorder: EventStream | None = None
        self._closed = False
        self._problem: str | None = None

    def start(self) -> list[tuple[str, str]]:
        """Start recording and rendering, and queue the session's unfinished jobs again. Returns
        the jobs that could not be (an unknown model, say), each with why: they stay queued in
        the session, for another day."""
        self._recorder = self.dispatcher.subscribe()
        self.dispatcher.start()
        self.recording = asyncio.create_task(self.session.record_events(self._recorder))
        refused = []
        for job_id, job in self.session.unfinished():
            try:
                self.dispatcher.restore(job_id, job["spec"], job["images"], job["worker_crashes"])
            except (SpecError, RegistryError) as e:
                refused.append((job_id, str(e)))
        return refused

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
        try:
            if self._recorder is not None:
                for event in self._recorder.drain():  # emitted, not yet written
                    self.session.record_event(event)
            for job in self.dispatcher.jobs.values():
                if job.status == RUNNING:  # stopped by the user, not crashed: queued, not counted
                    self.session.append({"type": "queued", "job": job.id, "spec": job.spec.to_dict(),
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
