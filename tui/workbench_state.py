"""What the workbench shows, folded from Dispatcher events. No widgets here: the app applies
events to a Board and hands the widgets what they need to draw.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from diffdeck.engines.core.events import UNFINISHED, Event, JobRecord, Status, render_seconds
from diffdeck.engines.core.flows import denoising_steps, stages_from
from diffdeck.engines.record.session import Session

HISTORY = 60  # telemetry samples kept for the sparklines (about a minute)
# The board's own status: a job of a reopened session that could not be queued again.
NOT_RESUMED = "not resumed"
RowStatus = Status | Literal["not resumed"]


@dataclass
class JobRow(JobRecord):
    """A job's record, with what the board draws of its run: the step, the rate, the preview."""

    status: RowStatus = Status.QUEUED
    preview: bytes | None = None  # the running image's latest step preview (JPEG)

    @property
    def image(self) -> int:
        """The image being rendered, from its last step (`progress`, as the Dispatcher keeps it)."""
        return int(self.progress.get("image") or 0)

    @property
    def step(self) -> int:
        return int(self.progress.get("step") or 0)

    @property
    def total(self) -> int:
        return int(self.progress.get("total") or 0)

    @property
    def it_s(self) -> float | None:
        return self.progress.get("it_s")

    @property
    def count(self) -> int:
        count = self.spec.get("count")
        return count if isinstance(count, int) and count > 0 else 1

    def render_s(self) -> float | None:
        """Time spent making its images: no queue wait, no load."""
        return render_seconds(self.timings)

    @property
    def stage_steps(self) -> list[int]:
        """The steps of each stage of one image: a job without a flow has one stage, as its steps
        counter says (a scheduler may count otherwise than `steps`)."""
        stages = stages_from(self.spec.get("stages") or ())
        return denoising_steps(stages) if stages else [self.total or int(self.spec.get("steps") or 0)]

    @property
    def steps_done(self) -> int:
        per_stage = self.stage_steps
        stage = int(self.progress.get("stage") or 0)
        return self.image * sum(per_stage) + sum(per_stage[:stage]) + self.step

    @property
    def steps_total(self) -> int:
        return self.count * sum(self.stage_steps)

    def eta_s(self) -> float | None:
        """Seconds left at the measured step rate; None before a rate is known."""
        if self.status != Status.RUNNING or not self.it_s:
            return None
        return max(0, self.steps_total - self.steps_done) / self.it_s

    def steps_left(self) -> int:
        """Steps still to render: a job resumed with some images kept renders only the rest."""
        return max(0, self.steps_total - len(self.images) * sum(self.stage_steps))


@dataclass
class Board:
    jobs: dict[str, JobRow] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # jobs that left the queue, in that order
    queue: list[str] = field(default_factory=list)  # queued jobs, in the Dispatcher's order
    telemetry: dict[str, Any] | None = None
    memory_history: dict[int, deque] = field(default_factory=dict)  # GPU index -> used fractions
    ram_history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    warm: dict[str, tuple[str, int]] = field(default_factory=dict)  # model -> (loading / warm, worker pid)
    paused: bool = False
    last_done: str | None = None
    set_ids: list[str] = field(default_factory=list)  # A/B sets and grids, oldest first
    variant_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # job id -> (set id, variant label)
    step_s: dict[str, float] = field(default_factory=dict)  # model -> seconds a step, as its last job took

    def load(self, session: Session) -> None:
        """The jobs of a reopened session, as recorded; image paths made absolute as events have them."""
        for set_id, entry in session.sets.items():
            self._on_set(None, {"set": set_id, **entry})
        for job_id, job in session.jobs.items():
            row = self.jobs[job_id] = JobRow.from_dict({"id": job_id, **job})
            row.images = [{**image, "path": str(session.folder / image["path"])} for image in row.images]
            row.stages = [{**stage, "path": str(session.folder / stage["path"])} for stage in row.stages]
            (self.queue if row.status in UNFINISHED else self.history).append(job_id)
            if row.status == Status.RUNNING:
                row.status = Status.QUEUED  # it is queued again
            elif row.status == Status.DONE:
                self.last_done = job_id
                self._measure(row)

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event.job, event.data)

    def images(self) -> list[tuple[JobRow, dict[str, Any]]]:
        """Every finished image of the session, oldest first."""
        return [(row, image) for row in self.rows() for image in sorted(row.images, key=lambda i: i["image"])]

    def rows(self) -> list[JobRow]:
        return [self.jobs[job_id] for job_id in self.history + self.queue]

    def newest_set(self) -> str | None:
        return self.set_ids[-1] if self.set_ids else None

    def running(self) -> JobRow | None:
        return next((row for row in self.jobs.values() if row.status == Status.RUNNING), None)

    def queue_eta(self) -> tuple[float, int]:
        """Seconds until the queue is empty, at each model's measured rate (the running job's own
        rate for it), and how many jobs are on models not measured yet (not counted in it). Model
        loads are not counted."""
        seconds, unmeasured = 0.0, 0
        running = self.running()
        rows = ([running] if running else []) + [self.jobs[job_id] for job_id in self.queue]
        for row in rows:
            eta = row.eta_s()
            step_s = self.step_s.get(str(row.spec.get("model")))
            if eta is None and step_s is None:
                unmeasured += 1
            else:
                seconds += eta if eta is not None else step_s * row.steps_left()
        return seconds, unmeasured

    def _measure(self, row: JobRow) -> None:
        """A done job's render time per step (decode and save included) stands for its model's rate."""
        render_s, steps = row.render_s(), len(row.images) * sum(row.stage_steps)
        if render_s and steps:
            self.step_s[str(row.spec.get("model"))] = render_s / steps

    # events

    def _on_set(self, job_id: None, data: dict[str, Any]) -> None:
        if data["set"] not in self.set_ids:
            self.set_ids.append(data["set"])
        for variant in data["variants"]:
            self.variant_of[variant["job"]] = (data["set"], variant["label"])

    def _on_queued(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs.get(job_id)
        if row is None:
            row = self.jobs[job_id] = JobRow(job_id, data["spec"])
        else:  # a retry, or a restored job: keep what it already made
            row.status, row.error, row.progress, row.preview = Status.QUEUED, None, {}, None
        self._leave(job_id)
        self.queue.insert(data.get("position", len(self.queue)), job_id)

    def _on_moved(self, job_id: str, data: dict[str, Any]) -> None:
        self._leave(job_id)
        self.queue.insert(data["position"], job_id)

    def _on_started(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.status, row.progress = Status.RUNNING, {"image": 0, "step": 0, "total": int(row.spec.get("steps") or 0)}
        row.timings = {k: data[k] for k in ("queue_wait_s", "load_s") if k in data}

    def _leave(self, job_id: str) -> None:
        for ids in (self.queue, self.history):
            if job_id in ids:
                ids.remove(job_id)

    def _on_step(self, job_id: str, data: dict[str, Any]) -> None:
        self.jobs[job_id].progress = data

    def _on_preview(self, job_id: str, data: dict[str, Any]) -> None:
        self.jobs[job_id].preview = base64.b64decode(data["data"])

    def _on_image(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.images = [i for i in row.images if i["image"] != data["image"]] + [data]
        row.preview = None

    def _on_stage_image(self, job_id: str, data: dict[str, Any]) -> None:
        """A flow's image of a stage before its last (shown in the image view)."""
        row = self.jobs[job_id]
        row.stages = [s for s in row.stages if (s["stage"], s["image"]) != (data["stage"], data["image"])] + [data]

    def _on_done(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.status, row.timings, row.peak_memory = Status.DONE, {**row.timings, **data["timings"]}, data["peak_memory"]
        row.progress, row.preview = {}, None
        self.last_done = job_id
        self._measure(row)

    def _finish(self, status: RowStatus, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.status, row.error, row.progress, row.preview = status, data.get("error"), {}, None
        if job_id in self.queue:  # cancelled or held before it ran
            self._leave(job_id)
            self.history.append(job_id)

    def _on_failed(self, job_id, data):
        self._finish(Status.FAILED, job_id, data)

    def _on_cancelled(self, job_id, data):
        self._finish(Status.CANCELLED, job_id, data)

    def _on_held(self, job_id, data):
        self._finish(Status.HELD, job_id, data)

    def not_resumed(self, job_id: str, error: str) -> None:
        """A job of the reopened session that could not be queued again (its model is gone...)."""
        self._finish(NOT_RESUMED, job_id, {"error": error})

    def _on_dequeued(self, job_id: str, data: dict[str, Any]) -> None:
        self.jobs[job_id].status = Status.RUNNING
        self._leave(job_id)
        self.history.append(job_id)

    def _on_loading(self, job_id, data):
        self.warm[data["model"]] = ("loading", data["pid"])

    def _on_worker_ready(self, job_id, data):
        self.warm[data["model"]] = ("warm", data["pid"])

    def _on_worker_exited(self, job_id, data):
        if self.warm.get(data["model"], (None, None))[1] == data["pid"]:  # not its replacement
            del self.warm[data["model"]]

    _on_worker_evicted = _on_worker_exited

    def _on_paused(self, job_id, data):
        self.paused = True

    def _on_resumed(self, job_id, data):
        self.paused = False

    def _on_telemetry(self, job_id: str | None, data: dict[str, Any]) -> None:
        self.telemetry = data
        for gpu in data.get("gpus") or ():
            history = self.memory_history.setdefault(gpu["index"], deque(maxlen=HISTORY))
            history.append(gpu["memory_used"] / gpu["memory_total"] if gpu["memory_total"] else 0.0)
        if data.get("ram_total"):
            self.ram_history.append(data["ram_used"] / data["ram_total"])


def pressure(fraction: float) -> str:
    """Memory pressure in words, as well as the colour the widgets give it."""
    if fraction >= 0.9:
        return "critical"
    if fraction >= 0.75:
        return "high"
    return "ok"
