"""Races between commands and a running job, each placed at its worst moment by hand: a cancel
while the model loads and a retry at once, a cancel just after a leg's `done`, a cancel between
two legs. Real workers on the demo model and a copy of it (another model, another worker)."""

import asyncio

import pytest
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.flows import Stage
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.queue.devices import fake_devices
from diffdeck.engines.queue.dispatcher import Dispatcher
from test_engine import until

pytestmark = pytest.mark.slow

QUIET = Intervals(progress_s=1.0, preview_s=1000.0)
TWO_LEGS = (Stage("txt2img", steps=2), Stage("upscale", model="demo2", factor=2, strength=0.5, steps=2))


def ending(job):
    return lambda e: e.job == job.id and e.type in (EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED)


async def test_a_job_cancelled_while_its_model_loads_and_retried_runs_once(registry, tmp_path):
    async with Dispatcher(registry, tmp_path, intervals=QUIET, devices=fake_devices("2")) as d:
        events = d.subscribe()
        job = d.submit(JobSpec(prompt="a red star", steps=2))
        await until(events, lambda e: e.type == EventKind.LOADING)
        d.cancel(job.id)
        d.retry(job.id)
        seen = await until(events, lambda e: e.job == job.id and e.type in (EventKind.DONE, EventKind.FAILED))
        await asyncio.sleep(1)  # the first attempt's load ends, or is stopped, meanwhile
        assert job.status == Status.DONE, job.error
        assert [e.type for e in seen if e.job == job.id].count(EventKind.STARTED) == 1
        assert [slot.job for slot in d.devices] == [None, None]


class CancelAt(Dispatcher):
    """Cancels the first flow at one moment: `after_done`, as the worker's `done` of its first leg
    has come in; else as its second leg is given a device, before its worker has the job."""

    def __init__(self, *args, after_done: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_done, self.fired = after_done, False

    def _on_worker_message(self, worker, message):
        kind, job_id = message["type"], message.get("id")
        super()._on_worker_message(worker, message)
        if self.after_done and kind == "done" and not self.fired:
            self.fired = self.cancel(job_id)

    def _start(self, start):
        later_leg = any(job.id == start.job for job in self._legs_waiting)
        super()._start(start)
        if not self.after_done and later_leg and not self.fired:
            self.fired = self.cancel(start.job)


@pytest.mark.parametrize("after_done", [True, False])
async def test_a_cancel_at_the_end_of_a_leg_or_between_legs_ends_the_flow(registry, tmp_path, after_done):
    async with CancelAt(registry, tmp_path, intervals=QUIET, cancel_grace_s=1.0, after_done=after_done) as d:
        events = d.subscribe()
        warm = d.submit(JobSpec(prompt="a blue square", model="demo2", steps=1, width=64, height=64))
        await until(events, ending(warm))
        job = d.submit(JobSpec(prompt="a red star", seed=3, stages=TWO_LEGS))
        seen = await until(events, ending(job))
        await asyncio.sleep(1.5)  # past the cancel's grace
        assert d.fired and job.status == Status.CANCELLED
        assert not any(e.type == EventKind.IMAGE for e in seen), "no leg after the cancel"
        assert not [e for e in seen if e.type == EventKind.WORKER_EVICTED], "the warm workers stay"
        assert sorted(d.workers) == ["demo", "demo2"]
