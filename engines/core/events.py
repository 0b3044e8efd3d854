"""What the engine says, typed once for every side: job statuses, the kinds of events the
Dispatcher emits and a session records, the Event itself, one job's record, and the queue an
event stream is read from.

Statuses and event kinds are `str` enums: they compare, hash, print and encode (JSON) as the
plain strings sessions and the daemon's wire have always held, so nothing written changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, AsyncIterator, Iterable


class _Word(str, Enum):
    """A member that is its string wherever text is made of it (str(), f-strings, join)."""

    __str__ = str.__str__
    __format__ = str.__format__


class Status(_Word):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    HELD = "held"  # crashed its worker twice: run again only when asked with force


class EventKind(_Word):
    # a job's life
    SET = "set"  # an A/B set or grid was queued, before its jobs
    QUEUED = "queued"
    MOVED = "moved"
    DEQUEUED = "dequeued"
    LOADING = "loading"
    STARTED = "started"
    STEP = "step"
    PREVIEW = "preview"
    IMAGE = "image"
    STAGE_IMAGE = "stage_image"  # a flow's image before its last stage
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    HELD = "held"
    # the queue and its workers
    PAUSED = "paused"
    RESUMED = "resumed"
    WORKER_SPAWNED = "worker_spawned"
    WORKER_READY = "worker_ready"
    WORKER_EVICTED = "worker_evicted"
    WORKER_EXITED = "worker_exited"
    TELEMETRY = "telemetry"
    # what the user says of the images (the workbench appends them to the session)
    PICK = "pick"
    RATING = "rating"
    # what the session measured of an image, off the render path (diffdeck.engines.service.quality_recorder)
    QUALITY = "quality"


STATUSES = frozenset(Status)
FINISHED = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED, Status.HELD})
UNFINISHED = frozenset({Status.QUEUED, Status.RUNNING})
# The event that ends a job in each finished status bears its name.
FINISHING_EVENTS = frozenset(EventKind(status) for status in FINISHED)
# Dispatcher events that change the session's record; progress, previews and telemetry do not.
RECORDED_EVENTS = frozenset({EventKind.QUEUED, EventKind.STARTED, EventKind.IMAGE, EventKind.STAGE_IMAGE, *FINISHING_EVENTS,
                             EventKind.WORKER_READY, EventKind.SET})
VERDICT_EVENTS = frozenset({EventKind.PICK, EventKind.RATING})


@dataclass
class Event:
    type: EventKind
    job: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRecord:
    """One job as the daemon sends it and the workbench's board shows it; a session holds the
    same fields (less id and progress) under the job's id. `spec` is the JobSpec as a dict."""

    id: str
    spec: dict[str, Any]
    status: Status = Status.QUEUED
    images: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory: int | None = None
    error: str | None = None
    worker_crashes: int = 0
    progress: dict[str, Any] = field(default_factory=dict)  # its last step: image, count, step, total, it_s
    # a flow's images before its last stage: stage, kind, model, image, seed, path, pixel_sha256,
    # timings, peak_memory and, where the next stage (in another worker) takes them, latents
    stages: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "spec": self.spec, "images": self.images,
                "timings": self.timings, "peak_memory": self.peak_memory, "error": self.error,
                "worker_crashes": self.worker_crashes, "progress": self.progress, "stages": self.stages}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobRecord":
        """From `to_dict`'s form, or a session's job entry with its id added (checked by the session)."""
        return cls(data["id"], data["spec"], Status(data["status"]), list(data["images"]),
                   dict(data.get("timings") or {}), data.get("peak_memory"), data.get("error"),
                   data.get("worker_crashes", 0), dict(data.get("progress") or {}), list(data.get("stages") or ()))


# The parts of making an image, as its timings name them: no queue wait, no model load.
RENDER_PARTS = (("prepare", "prepare_s"), ("denoise", "denoise_s"), ("decode", "decode_s"), ("save", "save_s"))


def render_parts(timings: dict[str, Any], hosted: bool = False) -> list[tuple[str, float]]:
    """(name, seconds) of each part recorded, in RENDER_PARTS order; prepare only where it took
    time (a flow's stage), not the nothing a plain job's is. A hosted model's denoise_s is its
    request's seconds, named so."""
    return [("request" if hosted and key == "denoise_s" else name, timings[key]) for name, key in RENDER_PARTS
            if key in timings and (key != "prepare_s" or timings[key] >= 0.0005)]


def render_seconds(timings: dict[str, Any]) -> float | None:
    """What making the images took, RENDER_PARTS added up; None while denoise, decode or save is not
    known (prepare, which records before flows lack, counts where it is)."""
    parts = [timings.get(key, 0.0 if key == "prepare_s" else None) for _, key in RENDER_PARTS]
    return sum(parts) if all(isinstance(p, (int, float)) for p in parts) else None


def rendering_timings(made: Iterable[dict[str, Any]]) -> dict[str, float]:
    """What rendering took (prepare, denoise, decode, save), added up over images or stage images
    (their `timings`; total_s, when each was made counted from its job's submit, left out)."""
    totals: dict[str, float] = {}
    for image in made:
        for key, seconds in image["timings"].items():
            if key != "total_s":
                totals[key] = totals.get(key, 0.0) + seconds
    return {key: round(seconds, 4) for key, seconds in totals.items()}


class EventStream:
    """Events as they come to one reader, from the moment it subscribed: one at a time (`async
    for`, which ends after `end`), or all that are waiting (`drain`, to coalesce redraws).
    `subscribers`: the list that feeds it, which `close` takes it off."""

    def __init__(self, subscribers: list["EventStream"] | None = None):
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()  # None: no more events
        self._subscribers = subscribers
        if subscribers is not None:
            subscribers.append(self)

    def put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def end(self) -> None:
        self._queue.put_nowait(None)

    def backlog(self) -> int:
        """Events put and not yet taken: how far behind this reader is."""
        return self._queue.qsize()

    def drain(self) -> list[Event]:
        """The events waiting right now, without waiting for more."""
        events = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                self._queue.put_nowait(None)  # the end stays, for the next read
                break
            events.append(event)
        return events

    def close(self) -> None:
        if self._subscribers is not None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return event
