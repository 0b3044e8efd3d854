"""Statuses, event kinds and the job record, typed once: what a real queue emits and records is
of those types, and a job's record reads back the same from the session and the daemon's wire."""

import asyncio
import dataclasses
import json
import os

import pytest
from diffdeck.engines.core.events import (
    STATUSES,
    Event,
    EventKind,
    EventStream,
    JobRecord,
    Status,
    render_parts,
    render_seconds,
)
from diffdeck.engines.core.registry import DEMO, Registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.daemon.wire import encode, read_message
from diffdeck.engines.record.session import JOURNAL, RECORD, Session
from diffdeck.engines.service.recorded_queue import RecordedQueue


async def over_the_wire(message: dict) -> dict:
    """`message` as a daemon writes it and a client reads it back."""
    reader = asyncio.StreamReader()
    reader.feed_data(encode(message))
    reader.feed_eof()
    return await read_message(reader)


@pytest.mark.slow
async def test_a_run_and_a_cancel_emit_event_kinds_record_statuses_and_job_records_round_trip(tmp_path):
    session = Session.open_for_writing(tmp_path / "s", "test")
    queue = RecordedQueue(Registry({DEMO.name: DEMO}, None), session, telemetry_interval_s=0.05,
                          intervals=Intervals(progress_s=0.0, preview_s=0.0))
    d = queue.dispatcher
    events = d.subscribe()
    queue.start()
    d.pause()
    done = d.submit(JobSpec(prompt="a red circle", model="demo", steps=2, seed=1))
    cancelled = d.submit(JobSpec(prompt="a blue circle", model="demo", steps=2, seed=2))
    d.move(cancelled.id, 0)
    assert d.cancel(cancelled.id)
    d.resume()
    await asyncio.wait_for(d.wait(done.id), 120)
    live = {job.id: job.record() for job in d.jobs.values()}
    state = await over_the_wire({"result": await queue.state()})
    await asyncio.wait_for(queue.quality.settled(), 60)  # measured off the render path: in before it ends
    assert await queue.shut_down() is None
    session.close()

    emitted = events.drain()
    assert all(type(event.type) is EventKind for event in emitted), {event.type for event in emitted}
    assert {EventKind.QUEUED, EventKind.MOVED, EventKind.CANCELLED, EventKind.PAUSED, EventKind.RESUMED,
            EventKind.DEQUEUED, EventKind.WORKER_SPAWNED, EventKind.LOADING, EventKind.WORKER_READY,
            EventKind.STARTED, EventKind.STEP, EventKind.IMAGE, EventKind.DONE, EventKind.TELEMETRY} <= \
        {event.type for event in emitted}
    assert {job_id: record.status for job_id, record in live.items()} == {done.id: Status.DONE,
                                                                        cancelled.id: Status.CANCELLED}

    # the daemon's state: the same records, read back through its wire
    assert [JobRecord.from_dict(job) for job in state["result"]["jobs"]] == list(live.values())

    # the session: what it recorded is in the statuses' own words, and reads back as each record
    folder = tmp_path / "s"
    assert (folder / JOURNAL).read_bytes() == b"", "compacted at shut-down"
    written = (folder / RECORD).read_text()
    assert f'"{done.id}": {{"spec": ' in written, "the job's line keeps its keys in the order written before"
    assert '"status": "done"' in written and '"status": "cancelled"' in written
    reopened = Session.open(folder, create=False)
    assert all(isinstance(job["status"], str) and job["status"] in STATUSES for job in reopened.jobs.values())
    for job_id, record in live.items():
        images = [{**image, "path": os.path.relpath(image["path"], folder)} for image in record.images]
        job = reopened.job(job_id)
        assert all(isinstance(image.pop("quality"), dict) for image in job.images), "each image measured"
        assert job == dataclasses.replace(record, images=images, progress={})  # progress is not kept
    assert done.images and live[done.id].progress, "a real run, not an empty one"


async def test_one_event_stream_drains_what_waits_and_ends_for_every_reader():
    subscribers = []
    stream = EventStream(subscribers)
    stream.put(first := Event(EventKind.PAUSED))
    stream.end()
    assert stream.drain() == [first] and stream.drain() == []
    assert [event async for event in stream] == [], "the end stays for the next read"
    stream.close()
    assert subscribers == []


def test_statuses_and_kinds_are_their_words_in_text_and_json():
    assert json.dumps({"status": Status.HELD, "type": EventKind.WORKER_READY}) == \
        '{"status": "held", "type": "worker_ready"}'
    assert f"{Status.RUNNING:8}|{EventKind.DONE}" == "running |done" and str(Status.QUEUED) == "queued"
    assert ", ".join(Status) == "queued, running, done, failed, cancelled, held"


def test_render_seconds_count_a_flows_preparing_and_wait_for_what_is_missing():
    assert render_seconds({"prepare_s": 0.24, "denoise_s": 0.5, "decode_s": 0.01, "save_s": 0.002, "load_s": 3.0}) \
        == pytest.approx(0.752), "prepare (a resample, an encode) is render time; the model load is not"
    assert render_seconds({"denoise_s": 0.5, "decode_s": 0.01, "save_s": 0.002}) == pytest.approx(0.512), \
        "records from before flows have no prepare_s"
    assert render_seconds({"denoise_s": 0.5}) is None


def test_render_parts_name_a_flows_preparing_and_not_a_plain_jobs_nothing():
    assert render_parts({"prepare_s": 0.24, "denoise_s": 0.5, "decode_s": 0.01, "load_s": 3.0}) == [
        ("prepare", 0.24), ("denoise", 0.5), ("decode", 0.01)]
    assert render_parts({"prepare_s": 0.0001, "denoise_s": 0.5, "save_s": 0.002}) == [("denoise", 0.5), ("save", 0.002)]
