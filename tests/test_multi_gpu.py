"""One queue over several devices, with real worker processes: two fake GPUs (declared by
DIFFDECK_FAKE_GPUS at the discovery boundary only), each worker pinned to its own with
CUDA_VISIBLE_DEVICES and rendering on the CPU."""

import asyncio
import os
import signal
import time

import pytest
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.registry import DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.session import Session
from helpers import write_models

pytestmark = pytest.mark.slow

TIMEOUT = 180
EVERY_STEP = Intervals(progress_s=0.0, preview_s=60.0)
LONG = {"steps": 150, "width": 128, "height": 128}  # a second or two: long enough to overlap another


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setenv("DIFFDECK_FAKE_GPUS", "2")


async def finished(dispatcher, stream, jobs, timeout=TIMEOUT):
    """Every event, with when it came, up to the end of each of `jobs` (done, failed, cancelled, held)."""
    seen, ending = [], {EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED, EventKind.HELD}
    waiting = {job.id for job in jobs}

    async def collect():
        async for event in stream:
            seen.append((time.monotonic(), event))
            waiting.discard(event.job if event.type in ending else None)
            if not waiting:
                return seen

    return await asyncio.wait_for(collect(), timeout)


def gpu_of(job):
    """The index of the GPU every image of the job was rendered on (one for all)."""
    (index,) = {image["gpu"]["index"] for image in job.images}
    return index


def pinned_to(pid):
    environ = dict(entry.split("=", 1) for entry in
                   open(f"/proc/{pid}/environ", "rb").read().decode().split("\0") if "=" in entry)
    return environ.get("CUDA_VISIBLE_DEVICES")


async def record_all(session: Session, events) -> None:
    """The Dispatcher's events into the session as they come, until cancelled."""
    async for event in events:
        session.record_event(event)


def submit(dispatcher, model="demo", **spec):
    return dispatcher.submit(JobSpec(**{"prompt": "a red circle", "seed": 7, "model": model, **spec}))


async def test_two_devices_run_two_models_at_once_each_worker_pinned_to_its_own(two_gpus, registry, tmp_path):
    session = Session.open(tmp_path / "session")
    async with Dispatcher(registry, session.images_dir, intervals=EVERY_STEP) as d:
        events = d.subscribe()
        recorder = asyncio.create_task(record_all(session, d.subscribe()))
        a, b = submit(d, **LONG), submit(d, "demo2", **LONG)
        seen = await finished(d, events, [a, b])
        assert a.status == b.status == Status.DONE, (a.error, b.error)
        first_step = {job.id: min(t for t, e in seen if e.type == "step" and e.job == job.id) for job in (a, b)}
        done = {job.id: next(t for t, e in seen if e.type == EventKind.DONE and e.job == job.id) for job in (a, b)}
        assert first_step[a.id] < done[b.id] and first_step[b.id] < done[a.id]  # they ran at the same time
        assert {gpu_of(a), gpu_of(b)} == {0, 1}
        assert all(e.data["device"] == gpu_of(job) for job in (a, b) for _, e in seen if e.type == "step" and e.job == job.id)
        for slot in d.devices:
            (worker,) = slot.workers.values()
            assert pinned_to(worker.pid) == str(slot.device.index)
        assert a.images[0]["gpu"] == {"index": gpu_of(a), "name": f"fake GPU {gpu_of(a)}",
                                      "uuid": f"FAKE-GPU-{gpu_of(a)}"}
        await asyncio.sleep(0.1)
        recorder.cancel()
        reopened = Session.open(tmp_path / "session")
        assert [image["gpu"] for image in reopened.jobs[a.id]["images"]] == [image["gpu"] for image in a.images]
        state = [slot.state() for slot in d.devices]
        assert [sorted(s["workers"]) for s in state] == [["demo"], ["demo2"]][::1 if gpu_of(a) == 0 else -1]


async def test_warm_first_then_a_replica_under_queue_pressure(two_gpus, registry, tmp_path):
    async with Dispatcher(registry, tmp_path / "images") as d:
        events = d.subscribe()
        a, b = submit(d), submit(d, "demo2")
        await finished(d, events, [a, b])
        warm = {"demo": gpu_of(a), "demo2": gpu_of(b)}
        # In the other order: each goes where its model is warm, nothing loads.
        later = [submit(d, "demo2"), submit(d)]
        seen = await finished(d, events, later)
        assert [gpu_of(job) for job in later] == [warm["demo2"], warm["demo"]]
        assert not [e for _, e in seen if e.type == EventKind.WORKER_SPAWNED]
        # Three for one model at once: two queued behind the first make the pressure for a replica.
        busy = [submit(d, **LONG) for _ in range(3)]
        seen = await finished(d, events, busy)
        assert all(job.status == Status.DONE for job in busy)
        assert {gpu_of(job) for job in busy} == {0, 1}
        spawned = [e for _, e in seen if e.type == EventKind.WORKER_SPAWNED]
        assert [(e.data["model"], e.data["device"]) for e in spawned] == [("demo", warm["demo2"])]
        assert [sorted(slot.workers) for slot in d.devices][warm["demo2"]] == ["demo", "demo2"]


async def test_eviction_is_per_device_least_recently_used_first(two_gpus, registry, tmp_path):
    # Room for one model on each device.
    async with Dispatcher(registry, tmp_path / "images", memory_budget_gb=0.15) as d:
        events = d.subscribe()
        a, b = submit(d), submit(d, "demo2")
        await finished(d, events, [a, b])
        again = submit(d)  # demo is now the more recently used
        await finished(d, events, [again])
        kept = d.devices[gpu_of(a)].workers["demo"].pid
        third = submit(d, "tiny-sdxl", prompt="a cube", steps=2)
        seen = await finished(d, events, [third])
        assert third.status == Status.DONE, third.error
        evicted = [e.data for _, e in seen if e.type == EventKind.WORKER_EVICTED]
        assert [(e["model"], e["device"], e["reason"]) for e in evicted] == [("demo2", gpu_of(b), "memory budget")]
        assert gpu_of(third) == gpu_of(b)
        assert d.devices[gpu_of(a)].workers["demo"].pid == kept


async def test_a_model_pinned_to_a_gpu_renders_only_there(two_gpus, tmp_path):
    registry = load_registry(write_models(tmp_path, {"pinned": {"source": str(DEMO_FOLDER), "memory_gb": 0.1,
                                                                 "gpus": [1]}}))
    async with Dispatcher(registry, tmp_path / "images") as d:
        events = d.subscribe()
        jobs = [submit(d, "pinned"), submit(d, "pinned")]
        await finished(d, events, jobs)
        assert [gpu_of(job) for job in jobs] == [1, 1]
        assert d.devices[0].workers == {}


async def test_a_worker_killed_on_one_device_leaves_the_other_devices_job_running(two_gpus, registry, tmp_path):
    async with Dispatcher(registry, tmp_path / "images", intervals=EVERY_STEP) as d:
        events = d.subscribe()
        doomed = submit(d, steps=400, width=256, height=256)
        other = submit(d, "demo2", **LONG)
        stepped = set()

        async def both_stepping():
            async for event in events:
                stepped.update({event.job} if event.type == "step" else set())
                if stepped == {doomed.id, other.id}:
                    return

        await asyncio.wait_for(both_stepping(), TIMEOUT)
        survivor = d.workers["demo2"].pid
        os.kill(d.workers["demo"].pid, signal.SIGKILL)
        await finished(d, events, [doomed, other])
        assert doomed.status == Status.FAILED and doomed.error_kind == "crash" and "SIGKILL" in doomed.error
        assert other.status == Status.DONE, other.error
        assert d.workers["demo2"].pid == survivor
